"""Shared fixtures: a GCS emulator and a PostgreSQL with pgvector per session, generated images."""

from __future__ import annotations

import os

import pytest

from tests.gcs_emulator import numbering_batch_parts, running_emulator, running_precondition_server
from tests.postgres_server import running_postgres

TEST_BUCKET = "image-embeddings-test"


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory):
    """Prepared models of the whole session go to one temporary cache, never the user's."""
    folder = tmp_path_factory.mktemp("model_cache")
    saved = os.environ.get("IMAGE_EMBEDDINGS_MODEL_CACHE")
    os.environ["IMAGE_EMBEDDINGS_MODEL_CACHE"] = str(folder)
    yield str(folder)
    if saved is None:
        os.environ.pop("IMAGE_EMBEDDINGS_MODEL_CACHE", None)
    else:
        os.environ["IMAGE_EMBEDDINGS_MODEL_CACHE"] = saved


@pytest.fixture(scope="session")
def gcs_emulator():
    """Start a GCS emulator and point every Google client of this process at it.

    Yields the bucket name; objects are addressed as `gs://BUCKET/...`.
    """
    with running_emulator(TEST_BUCKET) as host:
        saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT")}
        os.environ["STORAGE_EMULATOR_HOST"] = host
        os.environ.setdefault("GOOGLE_CLOUD_PROJECT", "test-project")
        try:
            yield TEST_BUCKET
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture(scope="session")
def precondition_gcs():
    """fake-gcs-server, which honours `ifGenerationMatch` on writes: yields its address, with
    the bucket TEST_BUCKET in it. Tests use folders of their own in it."""
    with running_precondition_server(TEST_BUCKET) as host:
        yield host


@pytest.fixture(scope="session")
def precondition_gcs_for_beam(precondition_gcs):
    """The address of `precondition_gcs` for Beam's gs:// filesystem, whose copies and deletes
    go in batch requests: through a front that numbers their parts, as fake-gcs-server needs."""
    with numbering_batch_parts(precondition_gcs) as host:
        yield host


@pytest.fixture
def gcs_bucket(gcs_emulator):
    """A google-cloud-storage Bucket on the emulator, emptied before the test."""
    from google.cloud import storage

    client = storage.Client.create_anonymous_client()
    bucket = client.bucket(gcs_emulator)
    for blob in client.list_blobs(gcs_emulator):
        blob.delete()
    return bucket


@pytest.fixture(scope="session")
def postgres_uri():
    """A PostgreSQL server with pgvector on loopback for the session: its postgresql:// URI."""
    with running_postgres() as server:
        yield server.uri


@pytest.fixture(params=["local", "gcs"])
def day(request, tmp_path):
    """A day's output folder, local or in the emulator's bucket."""
    if request.param == "local":
        return str(tmp_path / "embeddings" / "2026-11-28")
    bucket = request.getfixturevalue("gcs_bucket").name
    return f"gs://{bucket}/embeddings/2026-11-28"
