"""The runner decides the launch: pipeline options, Dataflow configuration, what `wait` does."""

from __future__ import annotations

import pytest

from image_embeddings_airflow.dag.launch import (
    WaitMode,
    analysis_options,
    command_line,
    console_url,
    dataflow_job_name,
    launch,
    pipeline_options,
    preparation_options,
    wait_mode,
)
from image_embeddings_airflow.dag.tasks import resolve_run
from tests.dags.test_run_plan import DATAFLOW, LOCAL, NOV_28

MANIFEST = "gs://photos/embeddings/2026-11-28/manifest.txt"
DATAFLOW_FULL = DATAFLOW | {
    "IMAGE_EMBEDDINGS_DATAFLOW_STAGING_LOCATION": "gs://photos/staging",
    "IMAGE_EMBEDDINGS_DATAFLOW_MACHINE_TYPE": "n2-standard-4",
    "IMAGE_EMBEDDINGS_DATAFLOW_MAX_WORKERS": "8",
    "IMAGE_EMBEDDINGS_DATAFLOW_SERVICE_ACCOUNT": "embedder@photo-project.iam.gserviceaccount.com",
    "IMAGE_EMBEDDINGS_DATAFLOW_SETUP_FILE": "/opt/app/beam_jobs/setup.py",
    "IMAGE_EMBEDDINGS_BATCH_SIZE": "16",
}


@pytest.mark.parametrize(
    ("runner", "mode"),
    [
        ("DataflowRunner", WaitMode.DATAFLOW_JOB),
        ("DirectRunner", WaitMode.SUCCESS_MARKER),
        ("PrismRunner", WaitMode.SUCCESS_MARKER),
    ],
)
def test_only_dataflow_jobs_are_waited_for(runner, mode):
    assert wait_mode(runner) is mode


def test_the_job_name_is_one_per_dag_and_day():
    assert dataflow_job_name("image_embeddings", "2026-11-28") == "image-embeddings-20261128"
    assert dataflow_job_name("Image_Embeddings", "2027-01-02") == "image-embeddings-20270102"
    assert (
        dataflow_job_name("image_embeddings", "2026-11-28", "analysis")
        == "image-embeddings-analysis-20261128"
    )


def test_console_url():
    assert console_url("p", "europe-west1", "2026-11-28_01_02_03-123") == (
        "https://console.cloud.google.com/dataflow/jobs/europe-west1/2026-11-28_01_02_03-123"
        "?project=p"
    )


def test_local_options_are_the_job_options_only():
    plan = resolve_run({"weights": "random"}, NOV_28, LOCAL)
    assert pipeline_options(plan, "/data/embeddings/2026-11-28/manifest.txt") == {
        "manifest": "/data/embeddings/2026-11-28/manifest.txt",
        "output": "/data/embeddings/2026-11-28",
        "input_root": "/data/images/2026-11-28",
        "model": "resnet50",
        "weights": "random",
        "batch_size": 32,
        "engine": "openvino",
        "precision": "float32",
        "lookback_days": 30,
        "embedding_dtype": "float32",
        "num_shards": 0,
    }
    assert launch(plan, MANIFEST, "image_embeddings").dataflow_config is None


def test_dataflow_options_carry_the_worker_settings():
    plan = resolve_run({}, NOV_28, DATAFLOW_FULL)
    options = pipeline_options(plan, MANIFEST)
    assert options == {
        "manifest": MANIFEST,
        "output": "gs://photos/embeddings/2026-11-28",
        "input_root": "gs://photos/images/2026-11-28",
        "model": "resnet50",
        "weights": "imagenet",
        "batch_size": 16,
        "engine": "openvino",
        "precision": "float32",
        "lookback_days": 30,
        "embedding_dtype": "float32",
        "num_shards": 0,
        "temp_location": "gs://photos/tmp",
        "staging_location": "gs://photos/staging",
        "machine_type": "n2-standard-4",
        "max_num_workers": 8,
        "setup_file": "/opt/app/beam_jobs/setup.py",
    }


def test_params_reach_the_pipelines_command_line():
    """Trigger-form params -> run plan -> the provider's arguments -> the pipeline's parser."""
    from airflow.providers.apache.beam.hooks.beam import beam_options_to_args

    from beam_jobs.image_embeddings.options import parse_known_args

    params = {"precision": "bfloat16", "embedding_dtype": "float16", "batch_size": 8}
    plan = resolve_run(params | {"num_shards": 3, "weights": "random"}, NOV_28, LOCAL)
    arguments = beam_options_to_args(pipeline_options(plan, MANIFEST))

    job, beam_args = parse_known_args(arguments)

    assert "--embedding_dtype=float16" in arguments and "--num_shards=3" in arguments
    assert (job.precision, job.embedding_dtype, job.batch_size, job.num_shards) == (
        "bfloat16",
        "float16",
        8,
        3,
    )
    assert (job.manifest, job.output, job.weights) == (
        MANIFEST,
        "/data/embeddings/2026-11-28",
        "random",
    )
    assert beam_args == []


def test_settings_reach_the_pipelines_command_line():
    from airflow.providers.apache.beam.hooks.beam import beam_options_to_args

    from beam_jobs.image_embeddings.options import parse_known_args

    environ = LOCAL | {
        "IMAGE_EMBEDDINGS_PRECISION": "bfloat16",
        "IMAGE_EMBEDDINGS_EMBEDDING_DTYPE": "float16",
        "IMAGE_EMBEDDINGS_NUM_SHARDS": "2",
    }
    plan = resolve_run({"weights": "random"}, NOV_28, environ)

    job, _ = parse_known_args(beam_options_to_args(pipeline_options(plan, MANIFEST)))

    assert (job.precision, job.embedding_dtype, job.num_shards) == ("bfloat16", "float16", 2)


def test_a_container_image_replaces_the_setup_file_and_sdk_staging():
    image = "europe-docker.pkg.dev/photo-project/beam/embeddings:1"
    plan = resolve_run(
        {}, NOV_28, DATAFLOW_FULL | {"IMAGE_EMBEDDINGS_DATAFLOW_SDK_CONTAINER_IMAGE": image}
    )
    options = pipeline_options(plan, MANIFEST)
    assert options["sdk_container_image"] == image
    assert options["sdk_location"] == "container"
    assert "setup_file" not in options


def _rendered(environ, params=None):
    from airflow.sdk import DAG

    from image_embeddings_airflow.dag.operators import EmbedImagesOperator

    plan = resolve_run(params or {}, NOV_28, environ)
    with DAG("image_embeddings", schedule=None):
        embed = EmbedImagesOperator(
            task_id="embed", plan=plan, manifest=MANIFEST, lease_token=1796397164239059027
        )
    embed.render_template_fields(context={"run_id": "manual__2026-11-28"})
    return embed


def test_a_dataflow_run_renders_the_provider_operator_for_dataflow():
    from airflow.providers.google.cloud.operators.dataflow import DataflowConfiguration

    embed = _rendered(DATAFLOW_FULL)
    assert embed.runner == "DataflowRunner"
    assert embed.py_file == "beam_jobs.image_embeddings"
    assert embed.py_options == ["-m"]
    assert embed.pipeline_options["output"] == "gs://photos/embeddings/2026-11-28"
    assert embed.pipeline_options["max_num_workers"] == 8
    config = embed.dataflow_config
    assert isinstance(config, DataflowConfiguration)
    assert config.job_name == "image-embeddings-20261128"
    assert config.append_job_name is False
    assert config.wait_until_finished is False
    assert config.project_id == "photo-project"
    assert config.location == "europe-west1"
    assert config.gcp_conn_id == "google_cloud_default"
    assert config.service_account == "embedder@photo-project.iam.gserviceaccount.com"
    assert config.cancel_timeout == 300


def test_the_provider_adds_project_region_job_name_and_service_account(google_connection):
    """The command line the provider builds from the rendered operator (no launch)."""
    from airflow.providers.google.cloud.hooks.dataflow import DataflowHook

    embed = _rendered(DATAFLOW_FULL)
    embed._cast_dataflow_config()
    embed.dataflow_hook = DataflowHook(gcp_conn_id="google_cloud_default")
    _, job_name, options, _, _ = embed._init_pipeline_options(
        format_pipeline_options=True, job_name_variable_key="job_name"
    )
    assert job_name == "image-embeddings-20261128"
    assert options["job_name"] == "image-embeddings-20261128"
    assert options["project"] == "photo-project"
    assert options["region"] == "europe-west1"
    assert options["service_account_email"] == "embedder@photo-project.iam.gserviceaccount.com"


def test_a_local_run_renders_a_direct_launch():
    embed = _rendered(LOCAL, {"weights": "random"})
    assert embed.runner == "DirectRunner"
    assert embed.pipeline_options["manifest"] == MANIFEST
    assert embed.pipeline_options["weights"] == "random"
    # The pipeline writes under the lease that this run's claim_day took.
    assert embed.pipeline_options["lease_holder"] == "dag:image_embeddings:manual__2026-11-28"
    assert embed.pipeline_options["lease_token"] == 1796397164239059027
    assert embed.dataflow_config == {}


def test_preparation_gets_the_model_the_cache_and_the_guard():
    plan = resolve_run(
        {"weights": "random", "precision": "int8"},
        NOV_28,
        LOCAL | {"IMAGE_EMBEDDINGS_INT8_MIN_TOP5_OVERLAP": "0.8"},
    )
    options = preparation_options(plan, "/data/embeddings/2026-11-28/manifest.txt")
    assert options == {
        "model": "resnet50",
        "weights": "random",
        "precision": "int8",
        "model_cache": plan["model_cache"],
        "manifest": "/data/embeddings/2026-11-28/manifest.txt",
        "min_centred_cosine_mean": 0.99,
        "min_centred_cosine": 0.97,
        "min_top5_overlap": 0.8,
    }
    assert plan["model_cache"].endswith("/model_cache")
    assert command_line({"model": "resnet50", "precision": "int8"}) == [
        "--model=resnet50",
        "--precision=int8",
    ]


def test_the_prepared_model_goes_to_the_pipeline():
    plan = resolve_run({}, NOV_28, LOCAL)
    arguments = launch(plan, MANIFEST, "image_embeddings", "/cache/0123456789abcdef")
    assert arguments.pipeline_options["prepared_model"] == "/cache/0123456789abcdef"
    assert "prepared_model" not in pipeline_options(plan, MANIFEST)


def _rendered_analysis(environ, params=None, marker=None):
    from airflow.sdk import DAG

    from image_embeddings_airflow.dag.operators import AnalyseDayOperator

    plan = resolve_run(params or {}, NOV_28, environ)
    with DAG("image_embeddings", schedule=None):
        analyse = AnalyseDayOperator(task_id="analyse", plan=plan, marker=marker, lease_token=17)
    analyse.render_template_fields(context={"run_id": "manual__2026-11-28"})
    return analyse


def test_the_analysis_job_gets_the_days_analysis_settings_and_the_runs_lease():
    """Run plan -> the provider's arguments -> the analysis job's own parser."""
    from airflow.providers.apache.beam.hooks.beam import beam_options_to_args

    from beam_jobs.image_embeddings.analysis.options import parse_known_args

    environ = LOCAL | {"IMAGE_EMBEDDINGS_DUPLICATE_THRESHOLD": "0.9"}
    analyse = _rendered_analysis(environ, {"lookback_days": 7, "pca_components": 20})
    arguments = beam_options_to_args(analyse.pipeline_options)

    job, beam_args = parse_known_args(arguments)

    assert analyse.runner == "DirectRunner" and analyse.dataflow_config == {}
    assert job.embedding_job_url is None
    assert (job.output, job.duplicate_threshold, job.lookback_days) == (
        "/data/embeddings/2026-11-28",
        0.9,
        7,
    )
    assert (job.pca_components, job.drift_reference_days, job.drift_threshold) == (20, 7, 0.2)
    assert (job.lease_holder, job.lease_token) == ("dag:image_embeddings:manual__2026-11-28", 17)
    assert beam_args == []


def test_the_analysis_runs_on_dataflow_as_its_own_job_on_the_same_workers():
    page = console_url("photo-project", "europe-west1", "2026-11-29_00_01_02-1")
    analyse = _rendered_analysis(DATAFLOW_FULL, marker={"dataflow_job_url": page})
    options = analysis_options(resolve_run({}, NOV_28, DATAFLOW_FULL))

    assert analyse.runner == "DataflowRunner"
    assert analyse.py_file == "beam_jobs.image_embeddings.analysis"
    assert analyse.dataflow_config.job_name == "image-embeddings-analysis-20261128"
    assert analyse.dataflow_config.wait_until_finished is False
    # The report links the day's embedding job.
    assert analyse.pipeline_options["embedding_job_url"] == page
    assert {key: options[key] for key in ("temp_location", "machine_type", "setup_file")} == {
        "temp_location": "gs://photos/tmp",
        "machine_type": "n2-standard-4",
        "setup_file": "/opt/app/beam_jobs/setup.py",
    }
