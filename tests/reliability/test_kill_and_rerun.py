"""SIGKILL the pipeline mid-run, run the day again: the outputs equal an uninterrupted run's.

Locally the kill comes once the run has started (its first progress line), over a day that an
earlier run had completed. On gs:// the fault proxy holds one request, so the kill lands at an
exact point: while the second embeddings shard is uploading, and while `_SUCCESS` is uploading.
"""

from __future__ import annotations

import posixpath
import shutil
import signal

import pytest

from beam_jobs.image_embeddings.contract import (
    LEASE_NAME,
    MANIFEST_NAME,
    SUCCESS_MARKER,
    join,
    manifest_entries,
)
from image_embeddings_airflow import storage
from image_embeddings_airflow.dag.validation import REPORT_NAME, ValidationError, validate_output
from tests.fault_proxy import Hold
from tests.reliability.runs import (
    DIM,
    LaunchedPipeline,
    account,
    assert_same_results,
    listing,
    pipeline_argv,
    read_outputs,
    run_pipeline,
)

pytestmark = pytest.mark.slow

# Bounds on waiting for a child process: a hang fails the test instead of blocking the suite.
START_TIMEOUT_S = 600


def killed(pipeline: LaunchedPipeline) -> None:
    assert pipeline.kill() == -signal.SIGKILL, "".join(pipeline.log[-40:])


def check_rerun(observe, output: str, reference, key=posixpath.basename, others=()) -> None:
    """The day after a rerun: complete, equal to the reference, valid, only contract files
    (and `others`, files the DAG's own tasks write there), its lease given back."""
    outputs = read_outputs(output)
    accounting = observe.add(account(manifest_of(output), outputs))
    assert accounting.lost == accounting.duplicated == accounting.unexpected == 0
    assert_same_results(outputs, reference.outputs, key)
    marker = outputs.marker
    assert set(outputs.names) == {
        LEASE_NAME,
        MANIFEST_NAME,
        SUCCESS_MARKER,
        *marker["embeddings_files"],
        *marker["failures_files"],
        *others,
    }
    assert validate_output(output, max_failure_rate=0.5, expected_dim=DIM).ok
    assert storage.read_json(join(output, LEASE_NAME))["released_at"]


def manifest_of(output: str) -> list[str]:
    """The entries of the manifest the run read (local paths or gs:// URIs)."""
    return list(
        manifest_entries(storage.read_bytes(join(output, MANIFEST_NAME)).decode().splitlines())
    )


def test_local_run_killed_after_it_started_then_rerun(reference_day, tmp_path, observe):
    observe.area = "kill and rerun"
    output = str(tmp_path / "embeddings" / "day")
    # The day was complete once; a rerun of it is killed.
    shutil.copytree(reference_day.output, output)
    argv = pipeline_argv(output, *reference_day.run_args, "--progress_interval_secs", "0.5")

    with LaunchedPipeline(argv) as pipeline:
        pipeline.wait_for_line(lambda line: "progress: " in line, START_TIMEOUT_S)
        killed(pipeline)
        observe.faults["SIGKILL"] += 1

    # Never the earlier run's marker over a run that did not finish: validation says so.
    assert not storage.exists(join(output, SUCCESS_MARKER))
    with pytest.raises(ValidationError, match="_SUCCESS missing"):
        validate_output(output, max_failure_rate=0.5)

    run_pipeline(output, *reference_day.run_args)

    # The validation report above stays until the DAG's `validate` replaces it.
    check_rerun(observe, output, reference_day, key=lambda uri: uri, others=[REPORT_NAME])


GCS_ROOT = "reliability-kill"


@pytest.fixture(scope="module")
def gcs_images(faulty_gcs, reference_day, gcs_emulator) -> str:
    """The reference day's files copied to gs:// (through the proxy); their folder."""
    images = f"gs://{gcs_emulator}/{GCS_ROOT}/images/day"
    for path in reference_day.files:
        storage.write_bytes(
            join(images, path.relative_to(reference_day.images).as_posix()), path.read_bytes()
        )
    return images


def gcs_output(gcs_images: str, case: str, reference_day) -> str:
    """A fresh output folder holding the reference day's manifest, with gs:// URIs."""
    output = gcs_images.replace("/images/day", f"/embeddings/{case}")
    local_root = str(reference_day.images)
    entries = [gcs_images + uri[len(local_root) :] for uri in sorted(reference_day.expected)]
    storage.write_bytes(join(output, MANIFEST_NAME), "".join(f"{e}\n" for e in entries).encode())
    return output


@pytest.mark.parametrize(
    ("case", "hold"),
    [
        # The first shard is written; the second one's upload never finishes.
        ("while-writing-shards", Hold("PUT", "beam-temp-embeddings", occurrence=2)),
        # Every shard is in place, only the marker is missing.
        ("while-writing-the-marker", Hold("PUT", SUCCESS_MARKER)),
    ],
    ids=["while-writing-shards", "while-writing-the-marker"],
)
def test_gcs_run_killed_at_a_known_point_then_rerun(
    case, hold, faulty_gcs, gcs_images, reference_day, observe
):
    observe.area = "kill and rerun"
    output = gcs_output(gcs_images, case, reference_day)
    run_args = ("--input_root", gcs_images, "--num_shards", "2")
    argv = pipeline_argv(output, *run_args)
    faulty_gcs.reset(hold=hold)
    try:
        with LaunchedPipeline(argv) as pipeline:
            pipeline.wait_for(faulty_gcs.held, START_TIMEOUT_S)
            killed(pipeline)
            observe.faults["SIGKILL"] += 1
    finally:
        faulty_gcs.reset()

    left = listing(output)
    assert SUCCESS_MARKER not in left
    if case == "while-writing-shards":
        assert any(name.startswith("beam-temp-embeddings-") for name in left), left
        assert not any(name.startswith("embeddings-") for name in left), left
    else:
        assert {"embeddings-00000-of-00002.parquet", "embeddings-00001-of-00002.parquet"} <= set(
            left
        ), left

    run_pipeline(output, *run_args)

    check_rerun(observe, output, reference_day)
