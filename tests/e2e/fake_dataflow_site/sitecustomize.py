"""Every process started with FAKE_DATAFLOW_URL set talks to that fake Dataflow REST API."""

import os

if os.environ.get("FAKE_DATAFLOW_URL"):
    from tests.e2e.fake_dataflow import point_hook_once_imported

    point_hook_once_imported(os.environ["FAKE_DATAFLOW_URL"])
