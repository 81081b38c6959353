"""`airflow dags test` of the whole DAG as `make run` runs it: local, gs://, a Dataflow retry."""

from __future__ import annotations

import html
import subprocess
import sys
import threading

import pytest

from beam_jobs.image_embeddings.contract import LEASE_NAME, SUCCESS_MARKER, join
from image_embeddings_airflow import storage
from image_embeddings_airflow.dag.launch import console_url
from tests.e2e.conftest import DEFAULT_MODEL, REPO, SMALL_MODEL, airflow_local, write_day
from tests.e2e.fake_dataflow import FakeDataflow, fake_dataflow_environ, serving
from tests.e2e.outputs import check_day_outputs

pytestmark = pytest.mark.slow


def _roots(environ, input_root, output_root, **settings):
    return environ | {
        "IMAGE_EMBEDDINGS_INPUT_ROOT": input_root,
        "IMAGE_EMBEDDINGS_OUTPUT_ROOT": output_root,
        **{f"IMAGE_EMBEDDINGS_{key.upper()}": value for key, value in settings.items()},
    }


def _succeeded(done: subprocess.CompletedProcess) -> str:
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-6000:]
    assert "state=success" in log, log[-6000:]
    return log


def test_make_run_embeds_a_local_day_with_resnet50(airflow_environ, tmp_path):
    # A month before IMAGE_EMBEDDINGS_START_DATE (2026-11-01): the start bounds the schedule only.
    day = "2026-10-01"
    environ = _roots(
        airflow_environ, str(tmp_path / "images"), str(tmp_path / "out"), model=DEFAULT_MODEL[0]
    )
    good, bad = write_day(environ["IMAGE_EMBEDDINGS_INPUT_ROOT"], day, good=5, bad=1)

    done = subprocess.run(
        ["make", "--no-print-directory", "run", f"DATE={day}"],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )

    log = _succeeded(done)
    check_day_outputs(str(tmp_path / "out" / day), good, bad, *DEFAULT_MODEL)
    # DirectRunner: the pipeline ran with the worker's own interpreter.
    assert f"Running command: {sys.executable} -m beam_jobs.image_embeddings" in log
    assert f"Plot of day {day}: {tmp_path / 'out' / day / 'projection.png'}" in log
    assert f"Report of day {day}: {tmp_path / 'out' / day / 'report.html'}" in log
    assert f"Summary of day {day}: 6 images, 5 embedded, 1 failed" in log
    # After the run's log, `make run` says where the day's outputs are.
    summary = done.stdout.rsplit(f"The run of {day} succeeded", 1)[1]
    assert f"{day}: 6 images, 5 embedded, 1 failed" in summary
    assert f"report:  {tmp_path / 'out' / day / 'report.html'}" in summary
    assert "MISSING" not in summary


def test_a_day_without_images_ends_cleanly_with_downstream_skipped(airflow_environ, tmp_path):
    day = "2026-11-20"
    environ = _roots(airflow_environ, str(tmp_path / "images"), str(tmp_path / "out"))

    log = _succeeded(airflow_local(environ, "dags", "test", "image_embeddings", day))

    assert f"No images under {tmp_path / 'images' / day} for {day}: nothing to embed" in log
    assert "Running command:" not in log
    assert not (tmp_path / "out" / day / SUCCESS_MARKER).exists()


def test_dags_test_on_gcs(gcs_environ, gcs_bucket):
    day = "2026-11-27"
    bucket = gcs_bucket.name
    environ = _roots(gcs_environ, f"gs://{bucket}/images", f"gs://{bucket}/embeddings")
    good, bad = write_day(environ["IMAGE_EMBEDDINGS_INPUT_ROOT"], day, good=6, bad=1)

    log = _succeeded(airflow_local(environ, "dags", "test", "image_embeddings", day))

    check_day_outputs(f"gs://{bucket}/embeddings/{day}", good, bad, *SMALL_MODEL)
    assert f"Plot of day {day}: gs://{bucket}/embeddings/{day}/projection.png" in log
    assert f"Drift of day {day}: no comparable history" in log
    assert f"Duplicates of {day}: 0 exact" in log


class DataflowStandIn:
    """Does the work of the day's Dataflow jobs when each is first polled: runs the same job
    locally, then reports it DONE (or FAILED). `commands`: each job's command by job name."""

    def __init__(self, output: str, commands: dict[str, list[str]]) -> None:
        self.output = output
        self.commands = commands
        self.lock = threading.Lock()
        self.runs: list[str] = []

    def __call__(self, job: dict) -> None:
        with self.lock:
            if job["currentState"] != "JOB_STATE_RUNNING":
                return
            self.runs.append(job["name"])
            # The job was launched by this DAG run's first attempt, under the run's day lease.
            holder = storage.read_json(join(self.output, LEASE_NAME))["holder"]
            command = [*self.commands[job["name"]], f"--lease_holder={holder}"]
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
            job["currentState"] = "JOB_STATE_DONE" if done.returncode == 0 else "JOB_STATE_FAILED"


def stand_in_commands(
    day: str, output: str, input_root: str, model_cache: str, embedding_job_url: str
) -> dict:
    """The day's embedding and analysis jobs, as the DAG's settings launch them, run locally."""
    embed = [
        sys.executable,
        "-m",
        "beam_jobs.image_embeddings",
        f"--manifest={join(output, 'manifest.txt')}",
        f"--output={output}",
        f"--input_root={input_root}",
        f"--model={SMALL_MODEL[0]}",
        "--weights=random",
        # The model the DAG's prepare_model task put in the cache: a hit, as on a worker.
        f"--model_cache={model_cache}",
    ]
    analyse = [
        sys.executable,
        "-m",
        "beam_jobs.image_embeddings.analysis",
        f"--output={output}",
        f"--embedding_job_url={embedding_job_url}",
    ]
    compact = day.replace("-", "")
    return {f"image-embeddings-{compact}": embed, f"image-embeddings-analysis-{compact}": analyse}


def test_a_retried_dataflow_launch_attaches_to_the_running_job(gcs_environ, gcs_bucket):
    """The first attempt's jobs are still running: the retry's `embed` and `analyse` reuse them,
    `wait` and `wait_analysis` poll them."""
    day = "2026-11-26"
    bucket = gcs_bucket.name
    environ = _roots(
        gcs_environ,
        f"gs://{bucket}/images",
        f"gs://{bucket}/embeddings",
        runner="DataflowRunner",
        gcp_project="photo-project",
        gcp_region="europe-west1",
        dataflow_temp_location=f"gs://{bucket}/tmp",
        model_cache=f"gs://{bucket}/model_cache",
    )
    good, bad = write_day(environ["IMAGE_EMBEDDINGS_INPUT_ROOT"], day, good=6, bad=1)
    output = f"gs://{bucket}/embeddings/{day}"
    fake = FakeDataflow("photo-project", "europe-west1")
    running = fake.add_job("image-embeddings-20261126", "JOB_STATE_RUNNING")
    analysing = fake.add_job("image-embeddings-analysis-20261126", "JOB_STATE_RUNNING")
    fake.add_job("image-embeddings-20261125", "JOB_STATE_RUNNING")
    commands = stand_in_commands(
        day,
        output,
        f"gs://{bucket}/images/{day}",
        environ["IMAGE_EMBEDDINGS_MODEL_CACHE"],
        console_url("photo-project", "europe-west1", running),
    )
    stand_in = fake.on_poll = DataflowStandIn(output, commands)

    with serving(fake):
        done = airflow_local(
            fake_dataflow_environ(fake.url, environ), "dags", "test", "image_embeddings", day
        )

    log = _succeeded(done)
    assert f"Dataflow job image-embeddings-20261126 ({running}) for this day is " in log
    assert "attaching to it instead of launching another" in log
    assert "Running command:" not in log  # no second launch
    assert fake.served("POST") == []
    assert "image-embeddings-analysis-20261126" in log
    assert stand_in.runs == list(commands)  # each job once, the analysis after the embedding
    assert fake.jobs[running]["currentState"] == "JOB_STATE_DONE"
    assert fake.jobs[analysing]["currentState"] == "JOB_STATE_DONE"
    polled = {request.path.rsplit("/", 1)[1] for request in fake.served("GET")}
    assert {running, analysing} <= polled
    check_day_outputs(output, good, bad, *SMALL_MODEL)
    assert storage.exists(join(output, "projection.png"))
    report = storage.read_bytes(join(output, "report.html")).decode()
    assert console_url("photo-project", "europe-west1", running) in html.unescape(report)
