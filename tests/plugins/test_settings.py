"""Settings from the environment, the settings table, and every validator's message."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from image_embeddings_airflow.settings import (
    SETTINGS,
    Settings,
    day_dir,
    load_settings,
    validate_components,
    validate_dataflow,
    validate_date,
    validate_failure_rate,
    validate_model,
    validate_publish,
    validate_publishing,
    validate_runner,
    validate_sample_size,
    validate_uri,
    validate_weights,
)

REPO = Path(__file__).resolve().parents[2]


def test_defaults_live_in_the_repository_data_folder():
    settings = load_settings({})

    assert settings.input_root == str(REPO / "data" / "images")
    assert settings.output_root == str(REPO / "data" / "embeddings")
    assert (settings.runner, settings.model, settings.weights) == (
        "DirectRunner",
        "resnet50",
        "imagenet",
    )
    assert (settings.max_failure_rate, settings.pca_components, settings.pca_sample_size) == (
        0.05,
        50,
        20000,
    )
    assert (settings.batch_size, settings.precision, settings.embedding_dtype) == (
        32,
        "float32",
        "float32",
    )
    assert settings.num_shards == 0
    assert settings.start_date == "2026-11-01"
    assert (settings.duplicate_threshold, settings.lookback_days) == (0.95, 30)
    assert (settings.drift_reference_days, settings.drift_threshold) == (7, 0.2)
    assert settings.drift_fails is False
    assert settings.gcp_conn_id == "google_cloud_default"
    assert settings.gcp_project is None and settings.dataflow_max_workers is None


def test_data_folder_moves_both_roots(tmp_path):
    settings = load_settings({"IMAGE_EMBEDDINGS_DATA": str(tmp_path)})

    assert settings.input_root == str(tmp_path / "images")
    assert settings.output_root == str(tmp_path / "embeddings")


def test_every_variable_is_read_and_typed():
    environ = {
        "IMAGE_EMBEDDINGS_INPUT_ROOT": "gs://photos-bucket/images/",
        "IMAGE_EMBEDDINGS_OUTPUT_ROOT": "file:///srv/embeddings",
        "IMAGE_EMBEDDINGS_RUNNER": "DataflowRunner",
        "IMAGE_EMBEDDINGS_MODEL": "resnet50",
        "IMAGE_EMBEDDINGS_WEIGHTS": "random",
        "IMAGE_EMBEDDINGS_BATCH_SIZE": "64",
        "IMAGE_EMBEDDINGS_ENGINE": "OpenVINO",
        "IMAGE_EMBEDDINGS_PRECISION": "int8",
        "IMAGE_EMBEDDINGS_MODEL_CACHE": "gs://photos-bucket/model_cache/",
        "IMAGE_EMBEDDINGS_CALIBRATION_MANIFEST": "gs://photos-bucket/calibration.txt",
        "IMAGE_EMBEDDINGS_INT8_MIN_CENTRED_COSINE_MEAN": "0.98",
        "IMAGE_EMBEDDINGS_INT8_MIN_CENTRED_COSINE": "0.95",
        "IMAGE_EMBEDDINGS_INT8_MIN_TOP5_OVERLAP": "0.85",
        "IMAGE_EMBEDDINGS_EMBEDDING_DTYPE": "float16",
        "IMAGE_EMBEDDINGS_NUM_SHARDS": "4",
        "IMAGE_EMBEDDINGS_MAX_FAILURE_RATE": "0.2",
        "IMAGE_EMBEDDINGS_PCA_COMPONENTS": "8",
        "IMAGE_EMBEDDINGS_PCA_SAMPLE_SIZE": "1000",
        "IMAGE_EMBEDDINGS_START_DATE": "2025-01-31",
        "IMAGE_EMBEDDINGS_DUPLICATE_THRESHOLD": "0.9",
        "IMAGE_EMBEDDINGS_LOOKBACK_DAYS": "14",
        "IMAGE_EMBEDDINGS_DRIFT_REFERENCE_DAYS": "3",
        "IMAGE_EMBEDDINGS_DRIFT_THRESHOLD": "0.3",
        "IMAGE_EMBEDDINGS_DRIFT_FAILS": "true",
        "IMAGE_EMBEDDINGS_GCP_CONN_ID": "gcp_prod",
        "IMAGE_EMBEDDINGS_GCP_PROJECT": "my-project",
        "IMAGE_EMBEDDINGS_GCP_REGION": "europe-west1",
        "IMAGE_EMBEDDINGS_DATAFLOW_TEMP_LOCATION": "gs://tmp-bucket/temp",
        "IMAGE_EMBEDDINGS_DATAFLOW_STAGING_LOCATION": "gs://tmp-bucket/staging",
        "IMAGE_EMBEDDINGS_DATAFLOW_MACHINE_TYPE": "n2-standard-4",
        "IMAGE_EMBEDDINGS_DATAFLOW_MAX_WORKERS": "10",
        "IMAGE_EMBEDDINGS_DATAFLOW_SDK_CONTAINER_IMAGE": "europe-docker.pkg.dev/p/r/worker:1",
        "IMAGE_EMBEDDINGS_DATAFLOW_SETUP_FILE": "/opt/beam_jobs/setup.py",
        "IMAGE_EMBEDDINGS_DATAFLOW_SERVICE_ACCOUNT": "worker@my-project.iam.gserviceaccount.com",
        "IMAGE_EMBEDDINGS_DATAFLOW_NETWORK": "vpc",
        "IMAGE_EMBEDDINGS_DATAFLOW_SUBNETWORK": "regions/europe-west1/subnetworks/s",
        "IMAGE_EMBEDDINGS_PUBLISH": "pgvector, BigQuery",
        "IMAGE_EMBEDDINGS_BIGQUERY_TABLE": "my-project.serving.image_embeddings",
        "IMAGE_EMBEDDINGS_BIGQUERY_LOCATION": "EU",
        "IMAGE_EMBEDDINGS_PGVECTOR_CONN_ID": "serving_db",
        "IMAGE_EMBEDDINGS_PGVECTOR_TABLE": "serving.image_embeddings",
    }

    settings = load_settings(environ)

    assert settings == Settings(
        input_root="gs://photos-bucket/images",
        output_root="/srv/embeddings",
        runner="DataflowRunner",
        model="resnet50",
        weights="random",
        batch_size=64,
        engine="openvino",
        precision="int8",
        model_cache="gs://photos-bucket/model_cache",
        calibration_manifest="gs://photos-bucket/calibration.txt",
        int8_min_centred_cosine_mean=0.98,
        int8_min_centred_cosine=0.95,
        int8_min_top5_overlap=0.85,
        embedding_dtype="float16",
        num_shards=4,
        max_failure_rate=0.2,
        pca_components=8,
        pca_sample_size=1000,
        duplicate_threshold=0.9,
        lookback_days=14,
        drift_reference_days=3,
        drift_threshold=0.3,
        drift_fails=True,
        start_date="2025-01-31",
        gcp_conn_id="gcp_prod",
        gcp_project="my-project",
        gcp_region="europe-west1",
        dataflow_temp_location="gs://tmp-bucket/temp",
        dataflow_staging_location="gs://tmp-bucket/staging",
        dataflow_machine_type="n2-standard-4",
        dataflow_max_workers=10,
        dataflow_sdk_container_image="europe-docker.pkg.dev/p/r/worker:1",
        dataflow_setup_file="/opt/beam_jobs/setup.py",
        dataflow_service_account="worker@my-project.iam.gserviceaccount.com",
        dataflow_network="vpc",
        dataflow_subnetwork="regions/europe-west1/subnetworks/s",
        publish="bigquery,pgvector",
        bigquery_table="my-project.serving.image_embeddings",
        bigquery_location="EU",
        pgvector_conn_id="serving_db",
        pgvector_table="serving.image_embeddings",
    )
    on_gcs = dataclasses.replace(settings, output_root="gs://photos-bucket/embeddings")
    assert validate_dataflow(on_gcs) is on_gcs
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.runner = "DirectRunner"


def test_settings_table_documents_every_field():
    variables = [row.variable for row in SETTINGS]

    assert variables[0] == "IMAGE_EMBEDDINGS_DATA"
    assert variables[1:] == [
        "IMAGE_EMBEDDINGS_" + field.name.upper() for field in dataclasses.fields(Settings)
    ]
    assert all(row.description.endswith(".") and row.section for row in SETTINGS)
    assert {row.section for row in SETTINGS} == {
        "Data",
        "Pipeline",
        "Quality",
        "Analysis",
        "DAG",
        "Dataflow",
        "Publish",
    }


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("RUNNER", "SparkRunner", "IMAGE_EMBEDDINGS_RUNNER: runner must be one of DirectRunner"),
        ("START_DATE", "11/28/2026", "IMAGE_EMBEDDINGS_START_DATE: date must be a calendar day"),
        ("INPUT_ROOT", "s3://bucket/x", "IMAGE_EMBEDDINGS_INPUT_ROOT: input root must be a local"),
        ("MAX_FAILURE_RATE", "5%", "IMAGE_EMBEDDINGS_MAX_FAILURE_RATE: maximum failure rate"),
        ("PCA_COMPONENTS", "0", "IMAGE_EMBEDDINGS_PCA_COMPONENTS: number of PCA components"),
        ("BATCH_SIZE", "-1", "IMAGE_EMBEDDINGS_BATCH_SIZE: batch size must be a positive"),
        ("LOOKBACK_DAYS", "a week", "IMAGE_EMBEDDINGS_LOOKBACK_DAYS: lookback must be a whole"),
        ("PRECISION", "fp16", "IMAGE_EMBEDDINGS_PRECISION: precision must be one of float32"),
        ("EMBEDDING_DTYPE", "half", "IMAGE_EMBEDDINGS_EMBEDDING_DTYPE: embedding dtype must be"),
        ("NUM_SHARDS", "-2", "IMAGE_EMBEDDINGS_NUM_SHARDS: number of embeddings files must be"),
        ("MODEL", "resnet5", "IMAGE_EMBEDDINGS_MODEL: model must be one of resnet50"),
        ("MODEL", "s3://m/x.keras", "IMAGE_EMBEDDINGS_MODEL: model file must be a local path"),
        ("WEIGHTS", "http://x/w.h5", "IMAGE_EMBEDDINGS_WEIGHTS: weights (one of imagenet, random"),
        ("DATAFLOW_MAX_WORKERS", "many", "IMAGE_EMBEDDINGS_DATAFLOW_MAX_WORKERS: Dataflow max"),
        ("ENGINE", "onnx", "IMAGE_EMBEDDINGS_ENGINE: engine must be one of openvino, tensorflow"),
        ("PRECISION", "fp8", "IMAGE_EMBEDDINGS_PRECISION: precision must be one of float32"),
        ("MODEL_CACHE", "s3://b/m", "IMAGE_EMBEDDINGS_MODEL_CACHE: model cache must be a local"),
        (
            "INT8_MIN_TOP5_OVERLAP",
            "90%",
            "IMAGE_EMBEDDINGS_INT8_MIN_TOP5_OVERLAP: an int8 accuracy",
        ),
        ("PUBLISH", "bigquery,s3", "IMAGE_EMBEDDINGS_PUBLISH: publish targets must be a comma"),
        ("BIGQUERY_TABLE", "just_a_table", "IMAGE_EMBEDDINGS_BIGQUERY_TABLE: BigQuery table must"),
        ("PGVECTOR_TABLE", "Drop Table;", "IMAGE_EMBEDDINGS_PGVECTOR_TABLE: pgvector table must"),
        ("DUPLICATE_THRESHOLD", "0", "IMAGE_EMBEDDINGS_DUPLICATE_THRESHOLD: similarity threshold"),
        ("DUPLICATE_THRESHOLD", "1.5", "IMAGE_EMBEDDINGS_DUPLICATE_THRESHOLD: similarity"),
        ("LOOKBACK_DAYS", "-3", "IMAGE_EMBEDDINGS_LOOKBACK_DAYS: lookback must be a whole"),
        (
            "DRIFT_REFERENCE_DAYS",
            "a week",
            "IMAGE_EMBEDDINGS_DRIFT_REFERENCE_DAYS: drift reference",
        ),
        ("DRIFT_THRESHOLD", "nan", "IMAGE_EMBEDDINGS_DRIFT_THRESHOLD: drift threshold must be"),
        ("DRIFT_FAILS", "maybe", "IMAGE_EMBEDDINGS_DRIFT_FAILS: expected true or false"),
    ],
)
def test_bad_variable_is_refused_by_name(variable, value, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
        load_settings({f"IMAGE_EMBEDDINGS_{variable}": value})


@pytest.mark.parametrize("text", ["2026-11-28", " 2026-02-28 ", "2024-02-29"])
def test_validate_date_accepts_calendar_days(text):
    assert validate_date(text) == text.strip()


@pytest.mark.parametrize("text", ["2026-02-30", "20261128", "2026-11-28T00:00", "", "yesterday"])
def test_validate_date_says_what_is_expected(text):
    with pytest.raises(ValueError) as error:
        validate_date(text)
    assert str(error.value) == (
        f"date must be a calendar day written YYYY-MM-DD (e.g. 2026-11-28), got {text!r}"
    )


def test_validate_runner():
    assert validate_runner("DataflowRunner") == "DataflowRunner"
    with pytest.raises(ValueError) as error:
        validate_runner("directrunner")
    assert str(error.value) == (
        "runner must be one of DirectRunner, DataflowRunner, got 'directrunner'"
    )


@pytest.mark.parametrize(
    ("uri", "normalised"),
    [
        ("gs://bucket-1/images/", "gs://bucket-1/images"),
        ("gs://bucket-1", "gs://bucket-1"),
        ("file:///data/images", "/data/images"),
        ("/data/images/", "/data/images"),
    ],
)
def test_validate_uri_normalises(uri, normalised):
    assert validate_uri(uri, "input root") == normalised


def test_validate_uri_makes_local_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert validate_uri("data/images", "input root") == str(tmp_path / "data" / "images")


@pytest.mark.parametrize(
    ("uri", "detail"),
    [
        ("s3://bucket/images", "got 's3://bucket/images'"),
        ("https://example.com/images", "got 'https://example.com/images'"),
        ("", "got an empty value"),
        ("gs://Bad_Bucket!/x", "'Bad_Bucket!' is not a valid bucket name"),
        ("gs:///images", "'' is not a valid bucket name"),
        ("file://relative/path", "file:// URIs need an absolute path"),
    ],
)
def test_validate_uri_says_what_is_expected(uri, detail):
    with pytest.raises(ValueError) as error:
        validate_uri(uri, "output root")
    message = str(error.value)
    assert message.startswith(
        "output root must be a local path, a file:// URI or a gs://BUCKET/... URI"
    )
    assert detail in message


@pytest.mark.parametrize(("value", "rate"), [(0, 0.0), (1, 1.0), ("0.05", 0.05), (0.5, 0.5)])
def test_validate_failure_rate_accepts_fractions(value, rate):
    assert validate_failure_rate(value) == rate


@pytest.mark.parametrize("value", [-0.01, 1.5, "nan", "five", None, True])
def test_validate_failure_rate_says_what_is_expected(value):
    with pytest.raises(ValueError) as error:
        validate_failure_rate(value)
    assert str(error.value) == (
        f"maximum failure rate must be a fraction between 0 and 1 (0.05 allows 5%), got {value!r}"
    )


def test_validate_components_and_sample_size():
    assert validate_components("12") == 12
    assert validate_sample_size(500) == 500
    for bad in (0, -3, "2.5", "ten", False):
        with pytest.raises(ValueError) as error:
            validate_components(bad)
        assert str(error.value) == (
            f"number of PCA components must be a positive whole number, got {bad!r}"
        )
    with pytest.raises(ValueError, match="PCA sample size must be a positive whole number"):
        validate_sample_size(0)


def test_validate_weights():
    assert validate_weights("imagenet") == "imagenet"
    assert validate_weights("gs://models/resnet50.weights.h5") == "gs://models/resnet50.weights.h5"
    with pytest.raises(ValueError, match="weights \\(one of imagenet, random or a file\\)"):
        validate_weights("s3://models/w.h5")


def test_validate_dataflow_lists_every_problem():
    settings = load_settings({"IMAGE_EMBEDDINGS_RUNNER": "DataflowRunner"})

    with pytest.raises(ValueError) as error:
        validate_dataflow(settings)

    message = str(error.value)
    assert message.startswith("the DataflowRunner needs: IMAGE_EMBEDDINGS_GCP_PROJECT is required")
    assert "IMAGE_EMBEDDINGS_GCP_REGION is required" in message
    assert "IMAGE_EMBEDDINGS_DATAFLOW_TEMP_LOCATION is required" in message
    assert "IMAGE_EMBEDDINGS_INPUT_ROOT must be a gs:// URI on Dataflow" in message


@pytest.mark.parametrize(
    ("text", "targets"),
    [
        ("pgvector", "pgvector"),
        (" PGVECTOR , bigquery,pgvector", "bigquery,pgvector"),
        ("none", ""),
    ],
)
def test_validate_publish_normalises_targets(text, targets):
    assert validate_publish(text) == targets


def test_publishing_is_off_by_default():
    assert load_settings({}).publish is None
    assert validate_publishing(load_settings({})).publish is None


def test_validate_publishing_lists_what_bigquery_lacks():
    settings = load_settings({"IMAGE_EMBEDDINGS_PUBLISH": "bigquery"})

    with pytest.raises(ValueError) as error:
        validate_publishing(settings)

    message = str(error.value)
    assert message.startswith("publishing to bigquery needs: IMAGE_EMBEDDINGS_BIGQUERY_TABLE is")
    assert "IMAGE_EMBEDDINGS_OUTPUT_ROOT must be a gs:// URI: BigQuery loads" in message
    no_project = load_settings(
        {
            "IMAGE_EMBEDDINGS_PUBLISH": "bigquery",
            "IMAGE_EMBEDDINGS_BIGQUERY_TABLE": "serving.embeddings",
            "IMAGE_EMBEDDINGS_OUTPUT_ROOT": "gs://bucket/out",
        }
    )
    with pytest.raises(ValueError, match="names no project: write project.dataset.table"):
        validate_publishing(no_project)
    ready = dataclasses.replace(no_project, gcp_project="my-project")
    assert validate_publishing(ready) is ready


def test_day_dir():
    assert day_dir("gs://bucket/embeddings/", "2026-11-28") == "gs://bucket/embeddings/2026-11-28"
    assert day_dir("/data/images", "2026-11-28") == "/data/images/2026-11-28"
    with pytest.raises(ValueError, match="date must be a calendar day"):
        day_dir("/data/images", "../etc")


def test_airflow_side_imports_neither_tensorflow_nor_beam():
    code = (
        "import sys\n"
        "import image_embeddings_airflow.settings, image_embeddings_airflow.storage\n"
        "import image_embeddings_airflow.dag.manifest, image_embeddings_airflow.dag.validation\n"
        "import image_embeddings_airflow.dag.tasks, image_embeddings_airflow.ui.days\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'apache_beam') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={"PYTHONPATH": f"{REPO}:{REPO / 'plugins'}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == ""


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ResNet50", "resnet50"),
        ("mobilenetv3small", "mobilenetv3small"),
        ("gs://models/custom.keras", "gs://models/custom.keras"),
    ],
)
def test_models_the_pipeline_knows_are_accepted(name, expected):
    assert validate_model(name) == expected
