"""Fixtures of the DAG tests: a Google connection without credentials, the fake Dataflow API."""

from __future__ import annotations

import json

import pytest

from tests.e2e.fake_dataflow import FakeDataflow, dataflow_client, serving

PROJECT = "photo-project"
REGION = "europe-west1"
ANONYMOUS_CONNECTION = json.dumps(
    {"conn_type": "google_cloud_platform", "extra": {"is_anonymous": True, "project": PROJECT}}
)


@pytest.fixture
def google_connection(monkeypatch):
    """`google_cloud_default` as an environment connection: anonymous, in PROJECT."""
    monkeypatch.setenv("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT", ANONYMOUS_CONNECTION)


@pytest.fixture
def dataflow_api(google_connection, monkeypatch):
    """A fake Dataflow REST API on loopback; every DataflowHook of the test talks to it."""
    from airflow.providers.google.cloud.hooks.dataflow import DataflowHook

    with serving(FakeDataflow(PROJECT, REGION)) as fake:
        monkeypatch.setattr(DataflowHook, "get_conn", lambda hook: dataflow_client(fake.url))
        yield fake
