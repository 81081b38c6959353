"""The DAG's trigger-form params, and how params, settings and logical date make a run's plan."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from airflow.sdk import Param

from image_embeddings_airflow.settings import (
    DATE_RULE,
    Rule,
    Settings,
    day_dir,
    setting_rule,
    setting_variable,
    validate_dataflow,
    validate_date,
    validate_engine_precision,
    validate_publishing,
)

UNSET = "Empty: the deployment setting {variable} applies."
# What a choice list shows for its empty entry (the UI would show `null`).
DEPLOYMENT_SETTING = "deployment setting"


@dataclass(frozen=True)
class FormField:
    """How the trigger form shows one param: title, help text, and checks the form adds."""

    title: str
    description: str
    # Beyond the setting's own rule; only ever stricter.
    schema: Mapping[str, Any] = dataclasses.field(default_factory=dict)


# The trigger form: one optional override per setting a user may change for one run. Each param
# named like a setting is validated by that setting's rule (`settings.Settings`), in the form and
# again when the run resolves; adding one is a Settings field, a line here and a RunPlan field.
FORM = {
    "input_root": FormField(
        "Input root",
        "Root of the dated image folders: an absolute path, file:///... or gs://BUCKET/... ",
    ),
    "output_root": FormField(
        "Output root",
        "Where day D's manifest, embeddings, reports and plot go (OUTPUT_ROOT/D/): an absolute "
        "path, file:///... or gs://BUCKET/... ",
    ),
    "runner": FormField(
        "Beam runner",
        "DirectRunner (on the Airflow worker) or DataflowRunner (Google Cloud Dataflow). ",
    ),
    "model": FormField("Model", "Embedding model, e.g. resnet50. "),
    "weights": FormField(
        "Weights",
        "imagenet, random (offline smoke runs only: the embeddings mean nothing) or the URI "
        "of a Keras weights file. ",
    ),
    "batch_size": FormField("Batch size", "Images per model call. "),
    "engine": FormField(
        "Engine",
        "openvino (a model prepared once per fingerprint by prepare_model; faster, int8 too) "
        "or tensorflow (the Keras model as is). ",
    ),
    "precision": FormField(
        "Precision",
        "float32, int8 (openvino only; refused before embedding when it strays from float32) "
        "or bfloat16 (CPUs with bfloat16 instructions only). ",
    ),
    "calibration_manifest": FormField(
        "int8 calibration manifest",
        "Manifest of the images int8 is calibrated on and checked with (unset everywhere: a "
        "seeded sample of the day's images): an absolute path, file:///... or gs://BUCKET/... ",
    ),
    "lookback_days": FormField(
        "Lookback (days)",
        "Images whose bytes a finished run of the last N days (or this day's earlier run) "
        "embedded with the same model are copied, not embedded again, and those days are "
        "searched for duplicates; 0: no reuse, duplicates within this day only. ",
    ),
    "embedding_dtype": FormField(
        "Embedding dtype",
        "Float type of the stored embeddings (float16 halves the bytes). ",
    ),
    "num_shards": FormField(
        "Embeddings files", "Number of embeddings files; 0 lets the runner decide. "
    ),
    "max_failure_rate": FormField(
        "Maximum failure rate",
        "Largest fraction (0 to 1) of the day's images that may fail before validation fails "
        "the run. ",
    ),
    "pca_components": FormField(
        "PCA components",
        "Principal components kept by the dimensionality reduction (at least 2, for the plot). ",
        {"minimum": 2},
    ),
    "publish": FormField(
        "Publish to",
        "After validation, replace the day in these serving stores: bigquery, pgvector or "
        "bigquery,pgvector; none: do not publish this run. ",
    ),
}
DATE_FIELD = FormField(
    "Day",
    "Day D whose images (INPUT_ROOT/D/) are embedded. Empty: the run's logical date. "
    "A manual run without a logical date needs it.",
)


def _optional(rule: Rule, form: FormField, description: str) -> Param:
    """A param that may stay empty (null): the run then uses the deployment setting."""
    schema = {**rule.schema, **form.schema}
    kind = schema.pop("type")
    if "enum" in schema:
        schema["enum"] = [None, *schema["enum"]]
        schema["values_display"] = {"null": DEPLOYMENT_SETTING}
    return Param(None, type=["null", kind], title=form.title, description=description, **schema)


def dag_params() -> dict[str, Param]:
    """The trigger form: the day, then one optional override per setting in `FORM`."""
    return {
        "date": _optional(DATE_RULE, DATE_FIELD, DATE_FIELD.description),
        **{
            name: _optional(
                setting_rule(name),
                form,
                form.description + UNSET.format(variable=setting_variable(name)),
            )
            for name, form in FORM.items()
        },
    }


@dataclass(frozen=True)
class RunPlan:
    """Everything the tasks of one run need, resolved and validated once, JSON-ready for XCom."""

    day: str
    input_dir: str
    output_dir: str
    runner: str
    model: str
    weights: str
    batch_size: int
    engine: str
    precision: str
    embedding_dtype: str
    num_shards: int
    model_cache: str
    calibration_manifest: str | None
    int8_min_centred_cosine_mean: float
    int8_min_centred_cosine: float
    int8_min_top5_overlap: float
    max_failure_rate: float
    pca_components: int
    pca_sample_size: int
    duplicate_threshold: float
    lookback_days: int
    drift_reference_days: int
    drift_threshold: float
    drift_fails: bool
    publish: str | None
    bigquery_table: str | None
    bigquery_location: str | None
    pgvector_conn_id: str
    pgvector_table: str
    gcp_conn_id: str
    gcp_project: str | None
    gcp_region: str | None
    dataflow_temp_location: str | None
    dataflow_staging_location: str | None
    dataflow_machine_type: str | None
    dataflow_max_workers: int | None
    dataflow_sdk_container_image: str | None
    dataflow_setup_file: str | None
    dataflow_service_account: str | None
    dataflow_network: str | None
    dataflow_subnetwork: str | None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_day(date_param: str | None, logical_date: datetime | None) -> str:
    """The day D a run embeds: the `date` param when given, else the logical date's day."""
    if date_param:
        return validate_date(date_param)
    if logical_date is None:
        raise ValueError(
            "this run has no logical date: set the 'date' param (YYYY-MM-DD) to choose the day"
        )
    return logical_date.date().isoformat()


def with_overrides(settings: Settings, params: Mapping[str, Any]) -> Settings:
    """The settings with every non-empty param applied over them, each validated."""
    overrides = {}
    for name in FORM:
        value = params.get(name)
        if value is None or value == "":
            continue
        try:
            overrides[name] = setting_rule(name).check(value)
        except ValueError as error:
            raise ValueError(f"param {name!r}: {error}") from None
    return dataclasses.replace(settings, **overrides)


def resolve_plan(
    settings: Settings, params: Mapping[str, Any], logical_date: datetime | None
) -> RunPlan:
    """Merge params over settings for one run; raise ValueError saying what is wrong and why."""
    day = run_day(params.get("date"), logical_date)
    chosen = validate_publishing(validate_engine_precision(with_overrides(settings, params)))
    if chosen.runner == "DataflowRunner":
        validate_dataflow(chosen)
    return RunPlan(
        day=day,
        input_dir=day_dir(chosen.input_root, day),
        output_dir=day_dir(chosen.output_root, day),
        **{
            field.name: getattr(chosen, field.name)
            for field in dataclasses.fields(RunPlan)
            if field.name not in ("day", "input_dir", "output_dir")
        },
    )


def before_schedule_start(run_type: str | None, day: str, start_date: str) -> bool:
    """True for a scheduled run of a day before the schedule's start: the only run not to embed."""
    return run_type == "scheduled" and day < start_date
