"""Run the airflow CLI in this process with every DataflowHook on a fake Dataflow REST API."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.e2e.fake_dataflow import point_hook_at  # noqa: E402

if __name__ == "__main__":
    url, *arguments = sys.argv[1:]
    point_hook_at(url)
    from airflow.__main__ import main

    sys.argv = ["airflow", *arguments]
    sys.exit(main())
