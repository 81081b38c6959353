"""A run's plan: the day from params or logical date, params over settings, early refusals."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from airflow.sdk.exceptions import AirflowSkipException

from image_embeddings_airflow.dag.params import before_schedule_start, resolve_plan, run_day
from image_embeddings_airflow.dag.tasks import resolve_run, run_summary
from image_embeddings_airflow.settings import load_settings

LOCAL = {
    "IMAGE_EMBEDDINGS_INPUT_ROOT": "/data/images",
    "IMAGE_EMBEDDINGS_OUTPUT_ROOT": "/data/embeddings",
}
DATAFLOW = {
    "IMAGE_EMBEDDINGS_INPUT_ROOT": "gs://photos/images",
    "IMAGE_EMBEDDINGS_OUTPUT_ROOT": "gs://photos/embeddings",
    "IMAGE_EMBEDDINGS_RUNNER": "DataflowRunner",
    "IMAGE_EMBEDDINGS_GCP_PROJECT": "photo-project",
    "IMAGE_EMBEDDINGS_GCP_REGION": "europe-west1",
    "IMAGE_EMBEDDINGS_DATAFLOW_TEMP_LOCATION": "gs://photos/tmp",
    "IMAGE_EMBEDDINGS_MODEL_CACHE": "gs://photos/model_cache",
}
NOV_28 = datetime(2026, 11, 28, tzinfo=UTC)


def test_the_day_is_the_logical_date_unless_the_date_param_is_set():
    assert run_day(None, NOV_28) == "2026-11-28"
    assert run_day("", datetime(2026, 11, 28, 23, 59, tzinfo=UTC)) == "2026-11-28"
    assert run_day("2026-10-01", NOV_28) == "2026-10-01"
    assert run_day("2026-10-01", None) == "2026-10-01"


def test_a_run_without_logical_date_needs_the_date_param():
    with pytest.raises(ValueError, match="set the 'date' param"):
        run_day(None, None)


def test_params_override_settings_and_fix_the_day_folders():
    plan = resolve_plan(
        load_settings(LOCAL),
        {"date": "2026-11-27", "output_root": "gs://other-bucket/out", "pca_components": 8},
        NOV_28,
    )
    assert plan.day == "2026-11-27"
    assert plan.input_dir == "/data/images/2026-11-27"
    assert plan.output_dir == "gs://other-bucket/out/2026-11-27"
    assert plan.pca_components == 8
    assert plan.lookback_days == 30
    assert resolve_plan(load_settings(LOCAL), {"lookback_days": 0}, NOV_28).lookback_days == 0
    assert plan.runner == "DirectRunner"
    assert plan.as_dict()["max_failure_rate"] == 0.05


def test_pipeline_params_override_their_settings():
    settings = load_settings(LOCAL | {"IMAGE_EMBEDDINGS_BATCH_SIZE": "16"})
    params = {"precision": "bfloat16", "embedding_dtype": "float16", "num_shards": 4}

    plan = resolve_plan(settings, params, NOV_28)
    unchanged = resolve_plan(settings, {}, NOV_28)

    assert (plan.precision, plan.embedding_dtype, plan.num_shards) == ("bfloat16", "float16", 4)
    assert (unchanged.precision, unchanged.embedding_dtype, unchanged.num_shards) == (
        "float32",
        "float32",
        0,
    )
    assert plan.batch_size == unchanged.batch_size == 16
    assert resolve_plan(settings, {"batch_size": 64}, NOV_28).batch_size == 64


def test_empty_params_keep_the_settings():
    settings = load_settings(LOCAL | {"IMAGE_EMBEDDINGS_WEIGHTS": "random"})
    plan = resolve_plan(settings, {"runner": None, "weights": None, "model": ""}, NOV_28)
    assert (plan.runner, plan.weights, plan.model) == ("DirectRunner", "random", "resnet50")


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"date": "2026-13-01"}, "YYYY-MM-DD"),
        ({"runner": "SparkRunner"}, "runner must be one of DirectRunner, DataflowRunner"),
        ({"input_root": "s3://bucket/images"}, "param 'input_root'.*gs://BUCKET"),
        ({"output_root": "gs://Bad_Bucket/x"}, "not a valid bucket name"),
        ({"max_failure_rate": -0.5}, "between 0 and 1"),
        ({"max_failure_rate": 2}, "between 0 and 1"),
        ({"pca_components": 0}, "positive whole number"),
        ({"lookback_days": -3}, "param 'lookback_days': lookback must be a whole number of days"),
        ({"batch_size": 0}, "param 'batch_size': batch size must be a positive whole number"),
        ({"precision": "float16"}, "param 'precision': precision must be one of float32, int8"),
        ({"embedding_dtype": "int8"}, "embedding dtype must be one of float32, float16"),
        ({"num_shards": -1}, "param 'num_shards': number of embeddings files must be a whole"),
        ({"runner": "DataflowRunner"}, "IMAGE_EMBEDDINGS_GCP_PROJECT is required"),
        ({"runner": "DataflowRunner"}, "MODEL_CACHE must be a gs:// URI on Dataflow"),
        ({"engine": "tensorflow", "precision": "int8"}, "int8 needs engine openvino"),
        ({"precision": "float16"}, "precision must be one of float32, int8, bfloat16"),
    ],
)
def test_bad_values_are_refused_with_what_is_expected(params, expected):
    with pytest.raises(ValueError, match=expected):
        resolve_plan(load_settings(LOCAL), params, NOV_28)


def test_dataflow_needs_cloud_roots():
    settings = load_settings(DATAFLOW | {"IMAGE_EMBEDDINGS_OUTPUT_ROOT": "/local/out"})
    with pytest.raises(ValueError, match="OUTPUT_ROOT must be a gs:// URI on Dataflow"):
        resolve_plan(settings, {}, NOV_28)


def test_resolve_run_fails_the_task_without_retries_and_says_why():
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match="refused before anything ran: .*runner"):
        resolve_run({"runner": "Flink"}, NOV_28, LOCAL)
    with pytest.raises(AirflowFailException, match="IMAGE_EMBEDDINGS_MAX_FAILURE_RATE"):
        resolve_run({}, NOV_28, LOCAL | {"IMAGE_EMBEDDINGS_MAX_FAILURE_RATE": "7"})


def test_resolve_run_returns_a_plan_for_xcom():
    plan = resolve_run({"date": None}, NOV_28, DATAFLOW)
    assert plan["day"] == "2026-11-28"
    assert plan["runner"] == "DataflowRunner"
    assert plan["input_dir"] == "gs://photos/images/2026-11-28"
    assert plan["gcp_project"] == "photo-project"


def test_only_a_scheduled_run_of_a_day_before_the_start_is_left_out():
    assert before_schedule_start("scheduled", "2026-10-31", "2026-11-01")
    assert not before_schedule_start("scheduled", "2026-11-01", "2026-11-01")
    for run_type in ("manual", "backfill", "asset_triggered", None):
        assert not before_schedule_start(run_type, "2026-10-01", "2026-11-01")


def test_a_scheduled_run_before_the_start_is_skipped_naming_the_setting():
    with pytest.raises(AirflowSkipException, match="IMAGE_EMBEDDINGS_START_DATE \\(2026-11-01\\)"):
        resolve_run({}, datetime(2026, 10, 1, tzinfo=UTC), LOCAL, run_type="scheduled")
    assert resolve_run({}, datetime(2026, 10, 1, tzinfo=UTC), LOCAL, run_type="manual")["day"] == (
        "2026-10-01"
    )


def test_the_run_summary_says_how_many_embeddings_were_reused():
    marker = {"images": 10, "embedded": 9, "failed": 1, "reused": 8, "duration_s": 3.0}
    assert run_summary(marker) == {
        "images": 10,
        "embedded": 9,
        "reused": 8,
        "failed": 1,
        "images_per_s": 3.0,
        "duration_s": 3.0,
    }
    older = {key: value for key, value in marker.items() if key != "reused"}
    assert run_summary(older)["reused"] is None
