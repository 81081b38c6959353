"""Whole-system fixtures: an Airflow home of the test session, images for given days, runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from beam_jobs.image_embeddings.contract import join
from image_embeddings_airflow import storage
from tests.e2e.fake_dataflow import FakeDataflow, fake_dataflow_environ, serving
from tests.gcs_emulator import free_port
from tests.image_factory import write_images

REPO = Path(__file__).resolve().parents[2]
AIRFLOW_LOCAL = REPO / "scripts" / "airflow_local.sh"
DEFAULT_MODEL = ("resnet50", 2048)
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
# The project and region of the session's fake Dataflow, the Airflow's Dataflow settings.
DATAFLOW_PROJECT, DATAFLOW_REGION = "photo-project", "europe-west1"


def _small_model() -> tuple[str, int]:
    """The fastest model the settings accept, for runs where the model does not matter."""
    from image_embeddings_airflow.settings import validate_model

    try:
        return validate_model("mobilenetv3small"), 576
    except ValueError:
        return DEFAULT_MODEL


SMALL_MODEL = _small_model()
ANONYMOUS_GOOGLE = json.dumps(
    {"conn_type": "google_cloud_platform", "extra": {"is_anonymous": True, "project": "e2e"}}
)


@pytest.fixture(scope="session")
def airflow_environ(tmp_path_factory, model_cache) -> dict[str, str]:
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
        # One model cache for the session: each model is prepared once, by the first DAG run.
        IMAGE_EMBEDDINGS_MODEL_CACHE=model_cache,
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


class AirflowApi:
    """The REST API of the running Airflow, as the admin user (JWT from /auth/token)."""

    def __init__(self, url: str, password: str) -> None:
        self.url = url
        self.token = self.request(
            "POST", "/auth/token", {"username": "admin", "password": password}
        )["access_token"]

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if getattr(self, "token", None):
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode() if body is not None else None,
            headers=headers,
            method=method,
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")


def wait_for(what: str, check, timeout_s: float, logs: Path):
    """check()'s first truthy result, polled every 2 s; on timeout, fail with the logs' tails."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            result = check()
        except (OSError, KeyError, ValueError):
            result = None
        if result:
            return result
        time.sleep(2)
    tails = "\n".join(
        f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
        for log in sorted(logs.glob("*.log"))
    )
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


@pytest.fixture(scope="session")
def fake_dataflow():
    """A fake Dataflow REST API, on loopback for the session: the session's Airflow talks to it."""
    with serving(FakeDataflow(DATAFLOW_PROJECT, DATAFLOW_REGION)) as fake:
        yield fake


@pytest.fixture(scope="session")
def airflow(airflow_environ, tmp_path_factory, gcs_emulator, fake_dataflow):
    """Airflow's four long-running components, shared by the session: (API, environ, data, home).

    Its runs embed local days; a run whose params name the DataflowRunner and gs:// roots (on the
    session's GCS emulator) gets its Dataflow jobs from the session's fake Dataflow.
    """
    home = tmp_path_factory.mktemp("scheduler-home")
    data = tmp_path_factory.mktemp("scheduler-data")
    port = free_port()
    environ = fake_dataflow_environ(fake_dataflow.url, airflow_environ) | {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://localhost:{port}",
        # Other Airflows on this machine may hold the default log server ports.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "IMAGE_EMBEDDINGS_INPUT_ROOT": str(data / "images"),
        "IMAGE_EMBEDDINGS_OUTPUT_ROOT": str(data / "embeddings"),
        "STORAGE_EMULATOR_HOST": os.environ["STORAGE_EMULATOR_HOST"],
        "GOOGLE_CLOUD_PROJECT": os.environ["GOOGLE_CLOUD_PROJECT"],
        "IMAGE_EMBEDDINGS_GCP_PROJECT": DATAFLOW_PROJECT,
        "IMAGE_EMBEDDINGS_GCP_REGION": DATAFLOW_REGION,
        "IMAGE_EMBEDDINGS_DATAFLOW_TEMP_LOCATION": f"gs://{gcs_emulator}/dataflow-tmp",
        # A killed wait waits two thirds of this for its job to stop. The kill test stops the
        # job once the run's `release_day` has run, which on a busy machine may take over 20 s.
        "AIRFLOW__TRIGGERER__ON_KILL_TIMEOUT": "90",
    }
    migrated = airflow_local(environ, "version")
    assert migrated.returncode == 0, migrated.stderr
    processes = []
    for component in COMPONENTS:
        log = open(home / f"{component}.log", "w")  # noqa: SIM115 - closed at teardown
        processes.append(
            (
                subprocess.Popen(
                    [str(AIRFLOW_LOCAL), component],
                    env=environ,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                ),
                log,
            )
        )
    try:
        url = f"http://localhost:{port}"
        passwords = home / "simple_auth_manager_passwords.json.generated"
        wait_for(
            "the API server",
            lambda: (
                urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=5).status == 200
                and passwords.exists()
            ),
            180,
            home,
        )
        api = AirflowApi(url, json.loads(passwords.read_text())["admin"])
        wait_for(
            "the DAG to be parsed",
            lambda: api.request("GET", "/api/v2/dags/image_embeddings")["dag_id"],
            180,
            home,
        )
        yield api, environ, data, home
    finally:
        for process, _ in processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process, log in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            log.close()
