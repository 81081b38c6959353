"""The DAG's trigger-form params, and how params, settings and logical date make a run's plan."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import Param

from beam_jobs.image_embeddings.contract import ENGINES, PRECISIONS
from image_embeddings_airflow.settings import (
    RUNNERS,
    Settings,
    day_dir,
    validate_components,
    validate_dataflow,
    validate_date,
    validate_engine,
    validate_engine_precision,
    validate_failure_rate,
    validate_model,
    validate_precision,
    validate_reuse_days,
    validate_runner,
    validate_uri,
    validate_weights,
)

# A root: an absolute local path, a file:// URI or gs://BUCKET/... (the form's message shows this
# pattern: keep it readable); resolve_run checks the rest, bucket names included.
ROOT_PATTERN = r"^(/|file:///|gs://)"
UNSET = "Empty: the deployment setting {variable} applies."


def _optional(kind: str, title: str, description: str, **schema: Any) -> Param:
    """A param that may stay empty (null): the run then uses the deployment setting."""
    return Param(None, type=["null", kind], title=title, description=description, **schema)


def dag_params() -> dict[str, Param]:
    """The trigger form: one optional override per setting a user may change for one run."""
    return {
        "date": _optional(
            "string",
            "Day",
            "Day D whose images (INPUT_ROOT/D/) are embedded. Empty: the run's logical date. "
            "A manual run without a logical date needs it.",
            format="date",
        ),
        "input_root": _optional(
            "string",
            "Input root",
            "Root of the dated image folders: an absolute path, file:///... or gs://BUCKET/... "
            + UNSET.format(variable="IMAGE_EMBEDDINGS_INPUT_ROOT"),
            pattern=ROOT_PATTERN,
        ),
        "output_root": _optional(
            "string",
            "Output root",
            "Where day D's manifest, embeddings, reports and plot go (OUTPUT_ROOT/D/): an absolute "
            "path, file:///... or gs://BUCKET/... "
            + UNSET.format(variable="IMAGE_EMBEDDINGS_OUTPUT_ROOT"),
            pattern=ROOT_PATTERN,
        ),
        "runner": _optional(
            "string",
            "Beam runner",
            "DirectRunner (on the Airflow worker) or DataflowRunner (Google Cloud Dataflow). "
            + UNSET.format(variable="IMAGE_EMBEDDINGS_RUNNER"),
            enum=[None, *RUNNERS],
        ),
        "model": _optional(
            "string",
            "Model",
            "Embedding model, e.g. resnet50. " + UNSET.format(variable="IMAGE_EMBEDDINGS_MODEL"),
            minLength=1,
        ),
        "weights": _optional(
            "string",
            "Weights",
            "imagenet, random (offline smoke runs only: the embeddings mean nothing) or the URI "
            "of a Keras weights file. " + UNSET.format(variable="IMAGE_EMBEDDINGS_WEIGHTS"),
            minLength=1,
        ),
        "engine": _optional(
            "string",
            "Engine",
            "openvino (a model prepared once per fingerprint by prepare_model; faster, int8 too) "
            "or tensorflow (the Keras model as is). "
            + UNSET.format(variable="IMAGE_EMBEDDINGS_ENGINE"),
            enum=[None, *ENGINES],
        ),
        "precision": _optional(
            "string",
            "Precision",
            "float32, int8 (openvino only; refused before embedding when it strays from float32) "
            "or bfloat16 (CPUs with bfloat16 instructions only). "
            + UNSET.format(variable="IMAGE_EMBEDDINGS_PRECISION"),
            enum=[None, *PRECISIONS],
        ),
        "calibration_manifest": _optional(
            "string",
            "int8 calibration manifest",
            "Manifest of the images int8 is calibrated on and checked with: an absolute path, "
            "file:///... or gs://BUCKET/... Empty: the deployment setting "
            "IMAGE_EMBEDDINGS_CALIBRATION_MANIFEST, else a seeded sample of the day's images.",
            pattern=ROOT_PATTERN,
        ),
        "reuse_days": _optional(
            "integer",
            "Reuse lookback (days)",
            "Images whose bytes a finished run of the last N days (or this day's earlier run) "
            "embedded with the same model are copied, not embedded again; 0 embeds every image. "
            + UNSET.format(variable="IMAGE_EMBEDDINGS_REUSE_DAYS"),
            minimum=0,
        ),
        "max_failure_rate": _optional(
            "number",
            "Maximum failure rate",
            "Largest fraction (0 to 1) of the day's images that may fail before validation fails "
            "the run. " + UNSET.format(variable="IMAGE_EMBEDDINGS_MAX_FAILURE_RATE"),
            minimum=0,
            maximum=1,
        ),
        "pca_components": _optional(
            "integer",
            "PCA components",
            "Principal components kept by the dimensionality reduction (at least 2, for the plot). "
            + UNSET.format(variable="IMAGE_EMBEDDINGS_PCA_COMPONENTS"),
            minimum=2,
        ),
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
    model_cache: str
    calibration_manifest: str | None
    int8_min_centred_cosine_mean: float
    int8_min_centred_cosine: float
    int8_min_top5_overlap: float
    reuse_days: int
    max_failure_rate: float
    pca_components: int
    pca_sample_size: int
    duplicate_threshold: float
    lookback_days: int
    drift_reference_days: int
    drift_threshold: float
    drift_fails: bool
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


_VALIDATORS = {
    "input_root": lambda value: validate_uri(value, "input root"),
    "output_root": lambda value: validate_uri(value, "output root"),
    "runner": validate_runner,
    "model": validate_model,
    "weights": validate_weights,
    "engine": validate_engine,
    "precision": validate_precision,
    "calibration_manifest": lambda value: validate_uri(value, "calibration manifest"),
    "reuse_days": validate_reuse_days,
    "max_failure_rate": validate_failure_rate,
    "pca_components": validate_components,
}


def with_overrides(settings: Settings, params: Mapping[str, Any]) -> Settings:
    """The settings with every non-empty param applied over them, each validated."""
    overrides = {}
    for name, check in _VALIDATORS.items():
        value = params.get(name)
        if value is None or value == "":
            continue
        try:
            overrides[name] = check(value)
        except ValueError as error:
            raise ValueError(f"param {name!r}: {error}") from None
    return dataclasses.replace(settings, **overrides)


def resolve_plan(
    settings: Settings, params: Mapping[str, Any], logical_date: datetime | None
) -> RunPlan:
    """Merge params over settings for one run; raise ValueError saying what is wrong and why."""
    day = run_day(params.get("date"), logical_date)
    chosen = validate_engine_precision(with_overrides(settings, params))
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


def schedule_start(environ: Mapping[str, str]) -> datetime:
    """The schedule's first day, midnight UTC, from `IMAGE_EMBEDDINGS_START_DATE`."""
    variable = "IMAGE_EMBEDDINGS_START_DATE"
    default = next(f for f in dataclasses.fields(Settings) if f.name == "start_date").metadata
    try:
        day = validate_date(environ.get(variable, "").strip() or default["default"])
    except ValueError as error:
        raise ValueError(f"{variable}: {error}") from None
    return datetime.fromisoformat(day).replace(tzinfo=UTC)
