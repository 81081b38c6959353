"""A day on gs:// while one request in ten gets a 503 or a stalled connection: nothing is lost.

The DAG's steps run in order against the fault proxy: staging the manifest and validating (the
Airflow side's storage client) and the pipeline (Beam's GCS filesystem), each with its explicit,
bounded retries; timeouts are shortened so that a stalled request is retried within seconds.
"""

from __future__ import annotations

import posixpath
import subprocess
import sys

import pytest
from apache_beam.io.gcp import gcsio
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils.plugin import BeamPlugin

from beam_jobs.image_embeddings.contract import STAGE_DECODE, join
from beam_jobs.image_embeddings.storage import gcs
from image_embeddings_airflow import storage
from image_embeddings_airflow.dag.manifest import stage_manifest
from image_embeddings_airflow.dag.validation import validate_output
from tests.fault_proxy import SERVICE_UNAVAILABLE, STALL, FaultPlan
from tests.reliability.runs import (
    ATOL,
    DIM,
    GCS_BOUNDS,
    REPO,
    RTOL,
    account,
    read_outputs,
    run_pipeline,
)

pytestmark = pytest.mark.slow

GCS_ROOT = "reliability-faults"


def test_gcs_clients_of_the_pipeline_have_explicit_bounds():
    """What the launcher gets from Beam's GCS filesystem, with and without the options."""
    options = PipelineOptions(["--gcs_timeout_secs", "7", "--gcs_retry_deadline_secs", "42"])
    client = gcsio.GcsIO(pipeline_options=options)

    assert client.client._http.timeout_s == 7
    assert client._storage_client_retry.timeout == 42
    defaults = gcsio.GcsIO(pipeline_options=PipelineOptions([]))
    assert defaults.client._http.timeout_s == gcs.GCS_READ_TIMEOUT_S == 60
    assert defaults._storage_client_retry.timeout == gcs.GCS_RETRY_DEADLINE_S == 300


BOUNDED_FACTORY = (
    "from apache_beam.io.gcp import gcsio; print(gcsio.create_storage_client.__module__)"
)


@pytest.mark.parametrize(
    "first_import",
    # What a Dataflow worker imports at startup (the launcher lists it as a Beam plugin), and
    # what a worker running only the image-loading stage imports.
    [
        "beam_jobs.image_embeddings.storage.gcs.BoundedGcsRequests",
        "beam_jobs.image_embeddings.images",
    ],
)
def test_worker_processes_get_the_bounds(first_import):
    module = first_import.removesuffix(".BoundedGcsRequests")
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}; {BOUNDED_FACTORY}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert done.stdout.split() == ["beam_jobs.image_embeddings.storage.gcs"]
    if first_import.endswith("BoundedGcsRequests"):
        assert first_import in BeamPlugin.get_all_plugin_paths()


def test_a_day_on_gcs_survives_503s_and_stalled_connections(
    faulty_gcs, gcs_emulator, reference_day, monkeypatch, observe
):
    observe.area = "GCS faults"
    images = f"gs://{gcs_emulator}/{GCS_ROOT}/images/day"
    output = f"gs://{gcs_emulator}/{GCS_ROOT}/embeddings/day"
    for path in reference_day.files:
        storage.write_bytes(
            join(images, path.relative_to(reference_day.images).as_posix()), path.read_bytes()
        )
    # The Airflow side's bounds, shortened like the pipeline's (GCS_BOUNDS).
    monkeypatch.setattr(storage, "GCS_TIMEOUT_S", (3.0, 3.0))
    faulty_gcs.plan = FaultPlan(period=10, kinds=(SERVICE_UNAVAILABLE, STALL), stall_s=30)
    faulty_gcs.reset(enabled=True)
    try:
        staged = stage_manifest(images, output)
        run_pipeline(output, "--input_root", images, "--num_shards", "2", *GCS_BOUNDS)
        report = validate_output(output, max_failure_rate=0.5, expected_dim=DIM)
    finally:
        faults = faulty_gcs.faults()
        served = sum(faulty_gcs.counts().values())
        faulty_gcs.reset()
    observe.faults.update(faults)

    outputs = read_outputs(output)
    expected = [
        join(images, path.relative_to(reference_day.images).as_posix())
        for path in reference_day.files
    ]
    accounting = observe.add(account(expected, outputs))
    assert accounting.lost == accounting.duplicated == accounting.unexpected == 0
    assert staged.count == len(expected)
    assert report.ok
    # One request in ten, kinds taking turns: both kinds happened, several times.
    assert faults[SERVICE_UNAVAILABLE] >= 3 and faults[STALL] >= 3, (faults, served)
    assert faults[SERVICE_UNAVAILABLE] + faults[STALL] == served // 10
    # The same images as the fault-free reference run, the same embeddings.
    assert {posixpath.basename(uri): row["stage"] for uri, row in outputs.failures.items()} == {
        "notes.jpg": STAGE_DECODE
    }
    reference = {posixpath.basename(uri): v for uri, v in reference_day.outputs.vectors.items()}
    assert sorted(map(posixpath.basename, outputs.vectors)) == sorted(reference)
    for uri, vector in outputs.vectors.items():
        assert vector == pytest.approx(reference[posixpath.basename(uri)], rel=RTOL, abs=ATOL)
