"""The Dataflow job, built offline with `--dry_run=True`: its steps, options and worker package."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    SetupOptions,
    WorkerOptions,
)
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2

from beam_jobs.image_embeddings.launcher import SETUP_FILE, pipeline_options, run

BUCKET = "gs://image-embeddings-dry-run"
DATAFLOW_ARGS = [
    f"--manifest={BUCKET}/2026-11-28/manifest.txt",
    f"--output={BUCKET}/2026-11-28",
    "--weights=random",
    "--engine=tensorflow",
    "--runner=DataflowRunner",
    "--project=image-embeddings-test",
    "--region=europe-west1",
    f"--temp_location={BUCKET}/tmp",
    "--job_name=image-embeddings-2026-11-28",
    "--dry_run=True",
    # As the DAG launches it: under its run's lease, and the token claim_day took it under.
    "--lease_holder=dag:image_embeddings:manual__2026-11-28",
    "--lease_token=1796397164239059027",
]
CONTAINER = "europe-docker.pkg.dev/image-embeddings-test/beam/worker:1"
STEPS = (
    "ReadManifest",
    "ReadManifest/ReadLines",
    "EmbedImages",
    "EmbedImages/LoadImages",
    "EmbedImages/KeyImages",
    "EmbedImages/RunInference",
    "EmbedImages/ToEmbeddingRows",
    "EmbedImages/ToFailureRows",
    "WriteEmbeddings",
    "WriteFailures",
    "TrackProgress",
    "CommitOutput",
    "CommitOutput/Commit",
)


def staged_files(job) -> dict[str, str]:
    """Staged name -> local path of every artifact the workers' environment receives."""
    staged = {}
    for environment in job.proto_pipeline.components.environments.values():
        for dependency in environment.dependencies:
            path = beam_runner_api_pb2.ArtifactFilePayload.FromString(dependency.type_payload).path
            role = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(
                dependency.role_payload
            )
            staged[role.staged_name] = path
    return staged


def container_images(job) -> set[str]:
    return {
        beam_runner_api_pb2.DockerPayload.FromString(environment.payload).container_image
        for environment in job.proto_pipeline.components.environments.values()
    }


@pytest.fixture(scope="module")
def setup_file_job():
    job = run(DATAFLOW_ARGS).job
    staged = staged_files(job)
    yield job, staged
    # Beam builds the staged files in a fresh temporary folder and leaves it there.
    for folder in {Path(path).parent for path in staged.values()}:
        shutil.rmtree(folder, ignore_errors=True)


def test_dry_run_builds_every_step(setup_file_job):
    job, _ = setup_file_job
    names = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
    assert set(STEPS) <= names


def test_commit_runs_after_both_writes(setup_file_job):
    job, _ = setup_file_job
    components = job.proto_pipeline.components
    # A composite lists its parts' outputs as its own: name each output by its leaf producer.
    producers = {
        output: transform.unique_name
        for transform in components.transforms.values()
        if not transform.subtransforms
        for output in transform.outputs.values()
    }
    (commit,) = [
        t for t in components.transforms.values() if t.unique_name == "CommitOutput/Commit"
    ]
    inputs = {producers[pcollection] for pcollection in commit.inputs.values()}
    assert any(name.startswith("WriteEmbeddings/") for name in inputs)
    assert any(name.startswith("WriteFailures/") for name in inputs)


def test_the_commit_on_the_workers_checks_the_runs_lease(setup_file_job):
    from apache_beam.internal import pickler

    from beam_jobs.image_embeddings.storage.lease import Fence

    job, _ = setup_file_job
    (commit,) = [
        t
        for t in job.proto_pipeline.components.transforms.values()
        if t.unique_name == "CommitOutput/Commit"
    ]
    do_fn = pickler.loads(
        beam_runner_api_pb2.ParDoPayload.FromString(commit.spec.payload).do_fn.payload
    )[0]
    assert do_fn._fence == Fence(
        f"{BUCKET}/2026-11-28", "dag:image_embeddings:manual__2026-11-28", 1796397164239059027
    )


def test_dry_run_keeps_the_cloud_options(setup_file_job):
    job, _ = setup_file_job
    cloud = job.options.view_as(GoogleCloudOptions)
    assert (cloud.project, cloud.region) == ("image-embeddings-test", "europe-west1")
    # The runner gives each job its own folder under --temp_location.
    assert cloud.temp_location.startswith(f"{BUCKET}/tmp/")
    assert cloud.job_name == job.proto.name == "image-embeddings-2026-11-28"


def test_workers_get_the_package_through_setup_py(setup_file_job):
    job, staged = setup_file_job
    assert job.options.view_as(SetupOptions).setup_file == str(SETUP_FILE)
    assert str(SETUP_FILE).endswith("/beam_jobs/setup.py")
    with tarfile.open(staged["workflow.tar.gz"]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
        requires = next(
            sdist.extractfile(member).read().decode()
            for member in sdist.getmembers()
            if member.name.endswith(".egg-info/requires.txt")
        )
    package = SETUP_FILE.parent / "image_embeddings"
    modules = {str(path.relative_to(SETUP_FILE.parent)) for path in package.rglob("*.py")}
    assert {"image_embeddings/__init__.py", "image_embeddings/pipeline.py"} <= modules
    assert modules <= names
    for requirement in ("tensorflow-cpu==", "keras==", "pillow==", "pyarrow==", "numpy=="):
        assert requirement in requires


def test_a_custom_container_replaces_the_setup_file():
    job = run([*DATAFLOW_ARGS, f"--sdk_container_image={CONTAINER}"]).job
    assert job.options.view_as(SetupOptions).setup_file is None
    assert job.options.view_as(WorkerOptions).sdk_container_image == CONTAINER
    assert container_images(job) == {CONTAINER}
    assert "workflow.tar.gz" not in staged_files(job)


def transform_names(job) -> set[str]:
    return {t.unique_name for t in job.proto_pipeline.components.transforms.values()}


def side_input_steps(job) -> set[str]:
    return {
        transform.unique_name
        for transform in job.proto_pipeline.components.transforms.values()
        if transform.spec.urn == common_urns.primitives.PAR_DO.urn
        and beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload).side_inputs
    }


def test_reuse_adds_the_join_with_earlier_runs_to_the_job(setup_file_job):
    earlier = f"{BUCKET}/2026-11-27"
    job = run([*DATAFLOW_ARGS, f"--sdk_container_image={CONTAINER}", f"--reuse_from={earlier}"]).job
    reuse = "EmbedImages/ReuseEarlierEmbeddings"
    assert {
        f"{reuse}/HashImages",
        f"{reuse}/NewestEarlierRows/ReadDigests",
        f"{reuse}/NewestEarlierRows/NewestPerDigest",
        f"{reuse}/JoinByDigest",
        f"{reuse}/CopyEmbeddings",
    } <= transform_names(job)
    # No worker is sent the window: the join is a shuffle, no step embedding has a side input.
    assert {name for name in side_input_steps(job) if name.startswith("EmbedImages/")} == set()
    # Offline, a dry run lists no earlier days: without --reuse_from the job has no reuse steps.
    assert reuse not in transform_names(setup_file_job[0])


def test_setup_file_is_added_only_where_needed():
    dataflow = ["--runner=DataflowRunner", "--project=p-123456"]
    assert pipeline_options(dataflow).view_as(SetupOptions).setup_file == str(SETUP_FILE)
    given = pipeline_options([*dataflow, "--setup_file=/elsewhere/setup.py"])
    assert given.view_as(SetupOptions).setup_file == "/elsewhere/setup.py"
    assert pipeline_options(["--runner=DirectRunner"]).view_as(SetupOptions).setup_file is None


def test_command_line_logs_beams_info_lines():
    """Airflow's Beam provider reads the job id from Beam's INFO line "Created job with id"."""
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "beam_jobs.image_embeddings",
            *DATAFLOW_ARGS,
            f"--sdk_container_image={CONTAINER}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert " INFO apache_beam." in finished.stderr
    assert "dry run: the job was built and not submitted" in finished.stderr
