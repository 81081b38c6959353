"""Whole-system fixtures: an Airflow home of the test session, images for given days, runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from beam_jobs.image_embeddings.contract import join
from image_embeddings import storage
from tests.image_factory import write_images

REPO = Path(__file__).resolve().parents[2]
AIRFLOW_LOCAL = REPO / "scripts" / "airflow_local.sh"
DEFAULT_MODEL = ("resnet50", 2048)


def _small_model() -> tuple[str, int]:
    """The fastest model the settings accept, for runs where the model does not matter."""
    from image_embeddings.settings import validate_model

    try:
        return validate_model("mobilenetv3small"), 576
    except ValueError:
        return DEFAULT_MODEL


SMALL_MODEL = _small_model()
ANONYMOUS_GOOGLE = json.dumps(
    {"conn_type": "google_cloud_platform", "extra": {"is_anonymous": True, "project": "e2e"}}
)


@pytest.fixture(scope="session")
def airflow_environ(tmp_path_factory) -> dict[str, str]:
    """The environment of `make run` for a fresh Airflow home, random weights, the small model."""
    home = tmp_path_factory.mktemp("airflow-home")
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AIRFLOW", "IMAGE_EMBEDDINGS_"))
    }
    environ.update(
        AIRFLOW_HOME=str(home),
        PATH=f"{Path(sys.executable).parent}:{environ.get('PATH', '')}",
        IMAGE_EMBEDDINGS_WEIGHTS="random",
        IMAGE_EMBEDDINGS_MODEL=SMALL_MODEL[0],
        IMAGE_EMBEDDINGS_PCA_COMPONENTS="4",
        # Each test day holds one file that is no image among a handful of images.
        IMAGE_EMBEDDINGS_MAX_FAILURE_RATE="0.25",
        AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT=ANONYMOUS_GOOGLE,
    )
    return environ


@pytest.fixture
def gcs_environ(airflow_environ, gcs_emulator) -> dict[str, str]:
    """The Airflow environment with every Google client pointed at the session's GCS emulator."""
    return airflow_environ | {
        "STORAGE_EMULATOR_HOST": os.environ["STORAGE_EMULATOR_HOST"],
        "GOOGLE_CLOUD_PROJECT": os.environ["GOOGLE_CLOUD_PROJECT"],
    }


def write_day(root: str, day: str, good: int, bad: int = 0) -> tuple[list[str], list[str]]:
    """`good` generated images and `bad` files that are no images under root/day/ (local or
    gs://); return the URIs of each kind."""
    folder = join(root, day)
    with tempfile.TemporaryDirectory() as local:
        good_uris = []
        for path in write_images(local, good, size=(160, 120), seed=int(day[-2:]) * 100):
            uri = join(folder, path.name)
            storage.write_bytes(uri, path.read_bytes())
            good_uris.append(uri)
    bad_uris = [join(folder, f"not-an-image-{index}.jpg") for index in range(bad)]
    for uri in bad_uris:
        storage.write_bytes(uri, b"this is text, not a JPEG\n")
    return good_uris, bad_uris


def airflow_local(
    environ: dict[str, str], *args: str, timeout: float = 900
) -> subprocess.CompletedProcess:
    """`scripts/airflow_local.sh ARGS`: what `make run` and `make airflow` run."""
    return subprocess.run(
        [str(AIRFLOW_LOCAL), *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
