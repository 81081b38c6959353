"""The analysis as a Beam job: the DirectRunner finds what the in-process steps find, on local
and gs:// days; the Dataflow job is built offline; a stale run's job writes nothing."""

from __future__ import annotations

import posixpath

import pytest
from apache_beam.portability.api import beam_runner_api_pb2

from beam_jobs.image_embeddings.analysis.duplicates import find_duplicates
from beam_jobs.image_embeddings.analysis.job import run
from beam_jobs.image_embeddings.contract import (
    ANALYSIS_MARKER,
    DRIFT_NAME,
    DUPLICATES_NAME,
    NEIGHBOURS_INDEX_NAME,
    PCA_NAME,
    PROJECTION_NAME,
    REPORT_HTML_NAME,
    VALIDATION_NAME,
)
from beam_jobs.image_embeddings.storage import files, lease
from tests.beam_jobs.analysis.test_duplicates import FINGERPRINT, lookback, planted, read_rows

DAY = "2026-11-28"
BUCKET = "gs://image-embeddings-dry-run"
CONTAINER = "europe-docker.pkg.dev/image-embeddings-test/beam/worker:1"


def analyse(folder: str, *extra: str):
    return run([f"--output={folder}", "--pca_components=8", "--pca_sample_size=1000", *extra])


@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "embeddings")
    return f"gs://{request.getfixturevalue('gcs_bucket').name}/embeddings"


def test_the_job_finds_every_planted_copy_and_marks_the_day_analysed(root, tmp_path):
    earlier, new = lookback(root)
    folder = f"{root}/{DAY}"
    files.delete(f"{folder}/{DUPLICATES_NAME}")
    files.write_json(f"{folder}/{VALIDATION_NAME}", {"ok": True})
    scratch = str(tmp_path / "scratch")

    analyse(folder, f"--scratch={scratch}", "--direct_num_workers=1")

    found = sorted(
        (r["uri"], r["duplicate_of"], r["kind"], r["day_of_other"])
        for r in read_rows(f"{folder}/{DUPLICATES_NAME}")
    )
    assert found == planted(earlier, new)
    for name in (PROJECTION_NAME, PCA_NAME, NEIGHBOURS_INDEX_NAME, DRIFT_NAME, REPORT_HTML_NAME):
        assert files.exists(f"{folder}/{name}"), name
    marker = files.read_json(f"{folder}/{ANALYSIS_MARKER}")
    assert marker["day"] == DAY and marker["rows"] == len(new)
    assert marker["report"] == f"{folder}/{REPORT_HTML_NAME}"
    assert marker["duplicates"]["exact"] == marker["duplicates"]["near"] == 3
    assert marker["duplicates"]["days_compared"] == ["2026-11-27", "2026-11-26", "2026-11-25"]
    assert marker["drift"]["verdict"] == files.read_json(f"{folder}/{DRIFT_NAME}")["verdict"]
    assert files.read_json(f"{folder}/{VALIDATION_NAME}")["duplicates"] == marker["duplicates"]
    # The intermediate candidates are gone, and the in-process steps agree with the job.
    assert not files.glob(f"{scratch}/*")
    in_process = find_duplicates(folder, DAY, FINGERPRINT, 0.95, 30)
    assert read_rows(in_process.uri) == read_rows(f"{folder}/{DUPLICATES_NAME}")


def test_a_day_without_a_finished_run_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="_SUCCESS is missing"):
        analyse(str(tmp_path / DAY))


def test_a_run_that_lost_the_day_writes_nothing(tmp_path):
    root = str(tmp_path / "embeddings")
    lookback(root)
    folder = f"{root}/{DAY}"
    stale = lease.acquire(folder, "dag:image_embeddings:stale", lease.DEFAULT_TTL)
    lease.release_held(folder, "dag:image_embeddings:stale", stale.token)
    lease.acquire(folder, "dag:image_embeddings:newer", lease.DEFAULT_TTL)
    before = sorted(files.glob(f"{folder}/*"))

    with pytest.raises(lease.LeaseLost):
        analyse(folder, "--lease_holder=dag:image_embeddings:stale", f"--lease_token={stale.token}")
    assert sorted(files.glob(f"{folder}/*")) == before


def transform_names(job) -> set[str]:
    return {t.unique_name for t in job.proto_pipeline.components.transforms.values()}


def test_the_dataflow_dry_run_builds_the_analysis_job():
    job = analyse(
        f"{BUCKET}/{DAY}",
        "--lookback_days=30",
        "--runner=DataflowRunner",
        "--project=image-embeddings-test",
        "--region=europe-west1",
        f"--temp_location={BUCKET}/tmp",
        "--job_name=image-embeddings-analysis-20261128",
        f"--sdk_container_image={CONTAINER}",
        "--sdk_location=container",
        "--dry_run=True",
        "--lease_holder=dag:image_embeddings:manual__2026-11-28",
        "--lease_token=7",
    ).job
    names = transform_names(job)
    for step in (
        "Reduce and index",
        "Project onto earlier axes",
        "Spread the days",
        "Search each earlier day",
        "Search within the day",
        "Confirm duplicates",
        "Drift",
        "Write the report and _ANALYSED",
    ):
        assert step in names, step
    assert job.proto.name == "image-embeddings-analysis-20261128"
    images = {
        beam_runner_api_pb2.DockerPayload.FromString(environment.payload).container_image
        for environment in job.proto_pipeline.components.environments.values()
    }
    assert images == {CONTAINER}


def test_the_scratch_folder_is_under_the_temp_location_unless_named():
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_jobs.image_embeddings.analysis.job import scratch_folder
    from beam_jobs.image_embeddings.analysis.options import AnalysisOptions

    cloud = PipelineOptions([f"--temp_location={BUCKET}/tmp"])
    scratch = scratch_folder(AnalysisOptions(output=f"{BUCKET}/{DAY}"), cloud, DAY)
    assert posixpath.dirname(scratch) == f"{BUCKET}/tmp"
    assert posixpath.basename(scratch).startswith(f"image-embeddings-analysis-{DAY}-")
    named = AnalysisOptions(output=f"{BUCKET}/{DAY}", scratch=f"{BUCKET}/scratch")
    assert scratch_folder(named, cloud, DAY) == f"{BUCKET}/scratch"
