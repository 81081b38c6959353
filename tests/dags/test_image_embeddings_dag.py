"""The DAG as Airflow loads it: imports, schedule, retries, graph, params, parse-time imports."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from benchmarks.measure import parse_result

REPO = Path(__file__).resolve().parents[2]
DAG_FILE = REPO / "dags" / "image_embeddings.py"
TASKS = [
    "resolve_run",
    "claim_day",
    "stage_manifest",
    "prepare_model",
    "embed",
    "wait",
    "validate",
    "analyse",
    "wait_analysis",
    "summarise",
    "release_day",
]
PUBLISH_TASKS = ["publish.pgvector", "publish.bigquery"]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAG_FILE))


@pytest.fixture(scope="module")
def dag(dagbag):
    return dagbag.dags["image_embeddings"]


@pytest.fixture(scope="module")
def serialized(dag):
    """The DAG as the scheduler and the API server see it: they validate a run's conf."""
    from airflow.serialization.serialized_objects import DagSerialization

    return DagSerialization.from_dict(DagSerialization.to_dict(dag))


def test_dagbag_loads_the_dag_without_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert list(dagbag.dags) == ["image_embeddings"]


def test_schedule_is_daily_over_completed_days_without_catchup(dag, serialized):
    from airflow.sdk import CronDataIntervalTimetable
    from airflow.timetables.base import TimeRestriction

    assert isinstance(dag.timetable, CronDataIntervalTimetable)
    assert dag.timetable.expression == "0 0 * * *"
    assert dag.catchup is False
    assert dag.max_active_runs == 2
    # The run of day D covers D 00:00 to D+1 00:00 and starts once D is over.
    first = serialized.timetable.next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(
            earliest=datetime(2026, 11, 1, tzinfo=UTC), latest=None, catchup=True
        ),
    )
    assert first.logical_date == datetime(2026, 11, 1, tzinfo=UTC)
    assert first.run_after == datetime(2026, 11, 2, tzinfo=UTC)


def test_no_start_date_keeps_a_task_out_of_a_run_of_an_earlier_day(dag, serialized):
    # Airflow creates no task instance of a non-backfill run whose logical date is before the
    # task's start_date: such a run would succeed doing nothing.
    assert dag.start_date is None
    assert [task.task_id for task in serialized.tasks if task.start_date] == []
    # Unpaused, the schedule still runs the last complete day.
    scheduled = serialized.next_dagrun_info(last_automated_run_info=None)
    assert scheduled.run_after - scheduled.logical_date == timedelta(days=1)


def test_tags_and_doc(dag):
    assert {"embeddings", "beam", "dataflow"} <= set(dag.tags)
    for task_id in TASKS:
        assert f"`{task_id}`" in dag.doc_md


def test_every_task_retries_with_exponential_backoff(dag):
    for task in dag.tasks:
        assert task.retries >= 2, task.task_id
        assert task.retry_exponential_backoff, task.task_id
        assert task.retry_delay == timedelta(minutes=1), task.task_id
        assert task.max_retry_delay == timedelta(minutes=30), task.task_id


def test_tasks_run_in_order(dag):
    assert sorted(dag.task_ids) == sorted(TASKS + PUBLISH_TASKS)
    for upstream, downstream in zip(TASKS, TASKS[1:], strict=False):
        assert upstream in dag.get_task(downstream).upstream_task_ids, (upstream, downstream)
    assert dag.get_task("resolve_run").upstream_task_ids == set()


def test_publishing_follows_validation_and_the_day_is_released_after_it(dag):
    assert "`publish`" in dag.doc_md
    for task_id in PUBLISH_TASKS:
        assert dag.get_task(task_id).upstream_task_ids == {"resolve_run", "claim_day", "validate"}
    release = dag.get_task("release_day").upstream_task_ids
    assert {*PUBLISH_TASKS, "summarise"} <= release


def test_a_run_claims_its_day_first_and_always_gives_it_back(dag):
    claim, release = dag.get_task("claim_day"), dag.get_task("release_day")
    assert claim.mode == "reschedule"
    assert release.is_teardown
    assert claim.is_setup
    assert "claim_day" in release.upstream_task_ids


def test_waits_are_deferrable_and_the_last_task_publishes_the_asset(dag):
    for task_id in ("wait", "wait_analysis"):
        wait = dag.get_task(task_id)
        assert wait.deferrable is True
        assert wait.expected_statuses == {"JOB_STATE_DONE"}
    outlets = dag.get_task("summarise").outlets
    assert [asset.name for asset in outlets] == ["image_embeddings_validated"]


def test_embed_runs_the_pipeline_module_with_this_interpreter(dag):
    embed = dag.get_task("embed")
    assert embed.py_file == "beam_jobs.image_embeddings"
    assert embed.py_options == ["-m"]


def test_analyse_runs_the_analysis_job_after_validation(dag):
    analyse = dag.get_task("analyse")
    assert analyse.py_file == "beam_jobs.image_embeddings.analysis"
    assert analyse.py_options == ["-m"]
    assert "validate" in analyse.upstream_task_ids


def test_every_param_is_described_and_optional(dag):
    params = dag.params
    assert set(params) == {
        "date",
        "input_root",
        "output_root",
        "runner",
        "model",
        "weights",
        "batch_size",
        "engine",
        "precision",
        "calibration_manifest",
        "lookback_days",
        "embedding_dtype",
        "num_shards",
        "max_failure_rate",
        "pca_components",
        "publish",
    }
    for name in params:
        param = params.get_param(name)
        assert param.value is None, name
        assert len(param.description) > 20, name
        assert "null" in param.schema["type"], name
    assert params.get_param("date").schema["format"] == "date"
    assert params.get_param("runner").schema["enum"] == [None, "DirectRunner", "DataflowRunner"]
    assert params.get_param("precision").schema["enum"] == [None, "float32", "int8", "bfloat16"]
    assert params.get_param("embedding_dtype").schema["enum"] == [None, "float32", "float16"]


def test_choice_lists_show_the_deployment_setting_instead_of_null(serialized):
    # The trigger form labels choices by `values_display`, looking the empty one up as "null".
    params = serialized.params
    choices = {name for name in params if "enum" in params.get_param(name).schema}
    assert {"runner", "engine", "precision", "embedding_dtype"} <= choices
    for name in choices:
        assert params.get_param(name).schema["values_display"] == {"null": "deployment setting"}


GOOD_CONFS = [
    {},
    {"date": "2026-11-28"},
    {"date": None, "runner": "DataflowRunner"},
    {"input_root": "gs://bucket-1/images", "output_root": "/srv/embeddings"},
    {"output_root": "file:///srv/embeddings"},
    {"max_failure_rate": 0, "pca_components": 2, "lookback_days": 0},
    {"max_failure_rate": 1, "pca_components": 128, "model": "resnet50", "weights": "random"},
    {"engine": "openvino", "precision": "int8", "calibration_manifest": "gs://bucket-1/c.txt"},
    {"engine": "tensorflow", "precision": "bfloat16"},
    {"publish": "pgvector"},
    {"publish": "bigquery, pgvector"},
    {"publish": "none"},
    {"batch_size": 1, "precision": "bfloat16", "embedding_dtype": "float16", "num_shards": 0},
]

BAD_CONFS = [
    {"date": "2026-02-30"},
    {"date": "28/11/2026"},
    {"date": 20261128},
    {"runner": "SparkRunner"},
    {"input_root": "s3://bucket/images"},
    {"output_root": "relative/folder"},
    {"max_failure_rate": -0.01},
    {"max_failure_rate": 1.5},
    {"max_failure_rate": "5%"},
    {"pca_components": 1},
    {"pca_components": 2.5},
    {"lookback_days": -1},
    {"model": ""},
    {"engine": "onnx"},
    {"precision": "float16"},
    {"calibration_manifest": "s3://bucket/c.txt"},
    {"batch_size": 0},
    {"embedding_dtype": "bfloat16"},
    {"num_shards": -1},
    {"num_shards": 1.5},
    {"publish": "postgres"},
    {"publish": "pgvector,"},
]


@pytest.mark.parametrize("conf", GOOD_CONFS)
def test_the_trigger_form_accepts(serialized, conf):
    assert serialized.params.deep_merge(conf).validate()


@pytest.mark.parametrize("conf", BAD_CONFS)
def test_the_trigger_form_refuses(serialized, conf):
    from airflow.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError) as refused:
        serialized.params.deep_merge(conf).validate()
    assert next(iter(conf)) in str(refused.value)


def test_dag_file_parses_without_heavy_imports():
    """Beyond Airflow and the two providers, the DAG file imports no ML or data library."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.dag_parse"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=REPO,
    )
    assert parse_result(done.stdout)["heavy_modules"] == []
