"""Fixtures of the Airflow-side tests: a day's output folder on each storage."""

import pytest


@pytest.fixture(params=["local", "gcs"])
def day(request, tmp_path):
    """A day's output folder, local or in the emulator's bucket."""
    if request.param == "local":
        return str(tmp_path / "embeddings" / "2026-11-28")
    bucket = request.getfixturevalue("gcs_bucket").name
    return f"gs://{bucket}/embeddings/2026-11-28"
