"""`airflow dags test` with publishing on: the day lands in a real PostgreSQL with pgvector,
and a rerun of the day replaces its rows."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector

from tests.e2e.conftest import SMALL_MODEL, airflow_local, write_day

pytestmark = pytest.mark.slow

DAY = "2026-11-25"
TABLE = "image_embeddings"


def test_a_dag_run_publishes_its_day_to_pgvector_and_a_rerun_replaces_it(
    airflow_environ, postgres_uri, tmp_path
):
    with psycopg.connect(postgres_uri, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS serving_e2e WITH (FORCE)")
        admin.execute("CREATE DATABASE serving_e2e")
    serving = postgres_uri.rsplit("/", 1)[0] + "/serving_e2e"
    environ = airflow_environ | {
        "IMAGE_EMBEDDINGS_INPUT_ROOT": str(tmp_path / "images"),
        "IMAGE_EMBEDDINGS_OUTPUT_ROOT": str(tmp_path / "out"),
        "IMAGE_EMBEDDINGS_PUBLISH": "pgvector",
        "IMAGE_EMBEDDINGS_PGVECTOR_CONN_ID": "serving",
        "AIRFLOW_CONN_SERVING": serving,
    }
    good, _ = write_day(environ["IMAGE_EMBEDDINGS_INPUT_ROOT"], DAY, good=5, bad=1)

    for _ in range(2):
        done = airflow_local(environ, "dags", "test", "image_embeddings", DAY)
        log = done.stdout + done.stderr
        assert done.returncode == 0 and "state=success" in log, log[-6000:]
        assert f"Published 5 rows of {DAY} into {TABLE}" in log, log[-6000:]

    with psycopg.connect(serving) as connection:
        register_vector(connection)
        rows = connection.execute(
            f"SELECT day::text, uri, embedding FROM {TABLE} ORDER BY uri"
        ).fetchall()
    assert [(day, uri) for day, uri, _ in rows] == [(DAY, uri) for uri in sorted(good)]
    dims = {vector.dimensions() for _, _, vector in rows}
    assert dims == {SMALL_MODEL[1]}
    assert all(np.isfinite(vector.to_numpy()).all() for _, _, vector in rows)
