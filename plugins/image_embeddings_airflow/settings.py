"""Deployment settings from `IMAGE_EMBEDDINGS_*` environment variables, and their validators."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

from beam_jobs.image_embeddings.contract import (
    EMBEDDING_DTYPES,
    ENGINES,
    KERAS_FILE_SUFFIX,
    MODEL_NAMES,
    PRECISIONS,
    join,
)

PREFIX = "IMAGE_EMBEDDINGS_"
DATA_VARIABLE = f"{PREFIX}DATA"
REPO_DIR = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO_DIR / "data"
DEFAULT_GCP_CONN_ID = "google_cloud_default"
GCP_CONN_VARIABLE = f"{PREFIX}GCP_CONN_ID"

RUNNERS = ("DirectRunner", "DataflowRunner")
PUBLISH_TARGETS = ("bigquery", "pgvector")
PUBLISH_OFF = "none"
DEFAULT_PGVECTOR_CONN_ID = "postgres_default"
WEIGHTS = ("imagenet", "random")
_DATE_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}")
_PUBLISH_PATTERN = r"^ *(none|(bigquery|pgvector)( *, *(bigquery|pgvector))*) *$"
# project.dataset.table, or dataset.table in the Dataflow project (BigQuery's own naming rules).
_BIGQUERY_TABLE_PATTERN = re.compile(r"([a-z][a-z0-9.:-]{4,61}[a-z0-9]\.)?\w{1,1024}\.\w{1,1024}")
# A PostgreSQL table name, optionally schema-qualified; short enough that the per-day partition
# names built from it stay within PostgreSQL's 63-character identifiers.
_PG_TABLE_PATTERN = re.compile(r"([a-z_][a-z0-9_]{0,39}\.)?[a-z_][a-z0-9_]{0,39}")
_BUCKET_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
# A location as the trigger form checks it: an absolute local path, a file:// URI or
# gs://BUCKET/... (the form's message shows this pattern: keep it readable); `validate_uri`
# checks the rest, bucket names included.
LOCATION_PATTERN = r"^(/|file:///|gs://)"


@dataclass(frozen=True)
class Rule:
    """One validation rule: the check settings and params run, and the same rule in JSON schema.

    `check` returns the normalised value or raises ValueError saying what is expected; `schema`
    is what the trigger form checks before a run starts (a subset of `check`, never more).
    """

    check: Callable[[Any], Any]
    schema: Mapping[str, Any]


def _doc(description: str, default: str = "", section: str = "Pipeline", rule: Rule | None = None):
    """A dataclass field documented for the settings table (default as written in `.env`)."""
    metadata = {"description": description, "default": default, "section": section, "rule": rule}
    return field(metadata=metadata)


def validate_date(text: str) -> str:
    """Return `text` if it is a calendar day written YYYY-MM-DD; raise ValueError otherwise."""
    value = str(text).strip()
    try:
        if not _DATE_PATTERN.fullmatch(value):
            raise ValueError
        date.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"date must be a calendar day written YYYY-MM-DD (e.g. 2026-11-28), got {text!r}"
        ) from None
    return value


def validate_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    """Return `value` if it is one of `choices`; raise ValueError naming them otherwise."""
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(choices)}, got {value!r}")
    return value


def validate_runner(name: str) -> str:
    """Return the runner name if Beam runs it here; raise ValueError otherwise."""
    return validate_choice(name, RUNNERS, "runner")


def validate_model(name: str) -> str:
    """Return a model the pipeline knows: a built-in name (any case) or a `.keras` file URI."""
    value = str(name).strip()
    if value.lower().endswith(KERAS_FILE_SUFFIX):
        return validate_uri(value, "model file")
    if value.lower() not in MODEL_NAMES:
        raise ValueError(
            f"model must be one of {', '.join(MODEL_NAMES)} or the URI of a "
            f"{KERAS_FILE_SUFFIX} file, got {name!r}"
        )
    return value.lower()


def validate_uri(uri: str, what: str) -> str:
    """Normalise a local path, file:// or gs:// URI; raise ValueError for anything else.

    Local paths come back absolute and file:// loses its scheme, so that every consumer handles
    exactly two kinds of location: absolute local paths and `gs://bucket/...`.
    """
    value = str(uri).strip()
    expected = f"{what} must be a local path, a file:// URI or a gs://BUCKET/... URI"
    if not value:
        raise ValueError(f"{expected}, got an empty value")
    if value.startswith("gs://"):
        bucket = value[len("gs://") :].split("/", 1)[0]
        if not _BUCKET_PATTERN.fullmatch(bucket):
            raise ValueError(f"{expected}; {bucket!r} is not a valid bucket name in {value!r}")
        return value.rstrip("/") if value.count("/") > 2 else value
    if value.startswith("file://"):
        value = value[len("file://") :]
        if not value.startswith("/"):
            raise ValueError(f"{expected}; file:// URIs need an absolute path, got {uri!r}")
    elif re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", value):
        raise ValueError(f"{expected}, got {uri!r}")
    return os.path.abspath(value)


def validate_failure_rate(value: float | str) -> float:
    """Return the maximum failure rate as a float in [0, 1]; raise ValueError otherwise."""
    expected = "maximum failure rate must be a fraction between 0 and 1 (0.05 allows 5%)"
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{expected}, got {value!r}") from None
    if isinstance(value, bool) or math.isnan(rate) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"{expected}, got {value!r}")
    return rate


def validate_components(value: int | str) -> int:
    """Return the number of PCA components as a positive int; raise ValueError otherwise."""
    return _positive_int(value, "number of PCA components")


def validate_sample_size(value: int | str) -> int:
    """Return the PCA sample size as a positive int; raise ValueError otherwise."""
    return _positive_int(value, "PCA sample size")


def validate_weights(value: str) -> str:
    """Return `imagenet`, `random` or a normalised weights URI; raise ValueError otherwise."""
    if value in WEIGHTS:
        return value
    return validate_uri(value, f"weights (one of {', '.join(WEIGHTS)} or a file)")


def validate_publish(value: str) -> str:
    """Return the targets as a sorted comma list (empty: off); raise ValueError otherwise."""
    names = [part.strip().lower() for part in str(value).split(",") if part.strip()]
    if names == [PUBLISH_OFF]:
        return ""
    unknown = [name for name in names if name not in PUBLISH_TARGETS]
    if unknown or not names:
        raise ValueError(
            f"publish targets must be a comma list of {', '.join(PUBLISH_TARGETS)} (or "
            f"{PUBLISH_OFF}), got {value!r}"
        )
    return ",".join(sorted(set(names)))


def validate_bigquery_table(value: str) -> str:
    """Return a BigQuery table written project.dataset.table or dataset.table."""
    text = str(value).strip()
    if not _BIGQUERY_TABLE_PATTERN.fullmatch(text):
        raise ValueError(
            "BigQuery table must be written project.dataset.table or dataset.table "
            f"(letters, digits, underscores), got {value!r}"
        )
    return text


def validate_pg_table(value: str) -> str:
    """Return a PostgreSQL table name, [schema.]name in lower case, each at most 40 characters."""
    text = str(value).strip()
    if not _PG_TABLE_PATTERN.fullmatch(text):
        raise ValueError(
            "pgvector table must be [schema.]name in lower-case letters, digits and "
            f"underscores, each part at most 40 characters, got {value!r}"
        )
    return text


def _choice_any_case(value: str, choices: tuple[str, ...], what: str) -> str:
    """`validate_choice` of `value` trimmed and in lower case."""
    return validate_choice(str(value).strip().lower(), choices, what)


def _fraction_between(value: float | str, low: float, high: float, expected: str) -> float:
    """Return `value` as a float in [low, high]; raise ValueError saying `expected` otherwise."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{expected}, got {value!r}") from None
    if isinstance(value, bool) or math.isnan(number) or not low <= number <= high:
        raise ValueError(f"{expected}, got {value!r}")
    return number


def validate_threshold(value: float | str) -> float:
    """Return an int8 accuracy threshold as a float in [-1, 1] (a cosine or a share)."""
    expected = "an int8 accuracy threshold must be a number between -1 and 1"
    return _fraction_between(value, -1.0, 1.0, expected)


def validate_similarity(value: float | str) -> float:
    """Return a cosine threshold in (0, 1]; raise ValueError otherwise."""
    expected = "similarity threshold must be a number above 0 and at most 1 (e.g. 0.95)"
    number = _fraction_between(value, 0.0, 1.0, expected)
    if number == 0.0:
        raise ValueError(f"{expected}, got {value!r}")
    return number


def validate_drift_threshold(value: float | str) -> float:
    """Return a positive relative Fréchet distance; raise ValueError otherwise."""
    expected = "drift threshold must be a positive number (relative Fréchet distance, e.g. 0.2)"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{expected}, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
        raise ValueError(f"{expected}, got {value!r}")
    return number


def validate_flag(value: bool | str) -> bool:
    """Return true/false from a bool or its usual spellings; raise ValueError otherwise."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _at_least(value: int | str, minimum: int, expected: str) -> int:
    """Return `value` as an int >= `minimum`; raise ValueError saying `expected` otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{expected}, got {value!r}")
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError(f"{expected}, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{expected}, got {value!r}")
    return number


def _positive_int(value: int | str, what: str) -> int:
    """Return `value` as an int > 0; raise ValueError naming `what` otherwise."""
    return _at_least(value, 1, f"{what} must be a positive whole number")


def _location_rule(what: str) -> Rule:
    return Rule(partial(validate_uri, what=what), {"type": "string", "pattern": LOCATION_PATTERN})


def _shard_count(value: int | str) -> int:
    """Return the number of embeddings files as an int >= 0; raise ValueError otherwise."""
    return _at_least(value, 0, "number of embeddings files must be a whole number, 0 or more")


def _lookback_days(value: int | str) -> int:
    """Return the lookback window in days as an int >= 0; raise ValueError otherwise."""
    return _at_least(value, 0, "lookback must be a whole number of days, 0 or more")


def _positive_rule(what: str) -> Rule:
    return Rule(partial(_positive_int, what=what), {"type": "integer", "minimum": 1})


def _choice_rule(choices: tuple[str, ...], what: str) -> Rule:
    check = partial(validate_choice, choices=choices, what=what)
    return Rule(check, {"type": "string", "enum": list(choices)})


def _any_case_choice_rule(choices: tuple[str, ...], what: str) -> Rule:
    check = partial(_choice_any_case, choices=choices, what=what)
    return Rule(check, {"type": "string", "enum": list(choices)})


DATE_RULE = Rule(validate_date, {"type": "string", "format": "date"})
THRESHOLD_RULE = Rule(validate_threshold, {"type": "number", "minimum": -1, "maximum": 1})


@dataclass(frozen=True)
class Settings:
    """Every deployment setting; field `x` comes from the variable `IMAGE_EMBEDDINGS_X`."""

    input_root: str = _doc(
        "Root of the dated image prefixes: the images of day D are under INPUT_ROOT/D/ "
        "(local path, file:// or gs://).",
        f"${DATA_VARIABLE}/images",
        "Data",
        _location_rule("input root"),
    )
    output_root: str = _doc(
        "Where day D's manifest, embeddings, failures, reports and plot go: OUTPUT_ROOT/D/ "
        "(local path, file:// or gs://).",
        f"${DATA_VARIABLE}/embeddings",
        "Data",
        _location_rule("output root"),
    )
    runner: str = _doc(
        "Beam runner: DirectRunner or DataflowRunner.",
        "DirectRunner",
        rule=_choice_rule(RUNNERS, "runner"),
    )
    model: str = _doc(
        "Embedding model (resnet50: 2048-d, average pooling).",
        "resnet50",
        rule=Rule(validate_model, {"type": "string", "minLength": 1}),
    )
    weights: str = _doc(
        "Model weights: imagenet, random (offline smoke runs only: meaningless embeddings) "
        "or the URI of a Keras weights file.",
        "imagenet",
        rule=Rule(validate_weights, {"type": "string", "minLength": 1}),
    )
    batch_size: int = _doc("Images per model call.", "32", rule=_positive_rule("batch size"))
    engine: str = _doc(
        "Inference engine: openvino (a model prepared once per fingerprint; faster, int8 too) "
        "or tensorflow (the Keras model as is).",
        "openvino",
        rule=_any_case_choice_rule(ENGINES, "engine"),
    )
    precision: str = _doc(
        "Model arithmetic: float32, int8 (OpenVINO, checked against float32) or bfloat16 "
        "(CPUs with bfloat16 instructions only).",
        "float32",
        rule=_any_case_choice_rule(PRECISIONS, "precision"),
    )
    model_cache: str = _doc(
        "Where prepared OpenVINO models are kept, one folder per model fingerprint "
        "(local path, file:// or gs://; on Dataflow a gs:// URI).",
        f"${DATA_VARIABLE}/model_cache",
        rule=_location_rule("model cache"),
    )
    calibration_manifest: str | None = _doc(
        "int8: manifest of the images to calibrate on and check against float32. "
        "Empty: a seeded sample of the day's own images.",
        rule=_location_rule("calibration manifest"),
    )
    lookback_days: int = _doc(
        "Days before day D whose finished runs under the same model fingerprint lend their "
        "embeddings to images with the same bytes (sha256), instead of the model, and are "
        "searched for copies of D's images; 0: every image goes through the model and "
        "duplicates are searched within day D only.",
        "30",
        rule=Rule(_lookback_days, {"type": "integer", "minimum": 0}),
    )
    embedding_dtype: str = _doc(
        f"Float type of the stored embeddings: {', '.join(EMBEDDING_DTYPES)} (float16 halves "
        "the bytes).",
        "float32",
        rule=_choice_rule(EMBEDDING_DTYPES, "embedding dtype"),
    )
    num_shards: int = _doc(
        "Number of embeddings files; 0 lets the runner decide.",
        "0",
        rule=Rule(_shard_count, {"type": "integer", "minimum": 0}),
    )
    max_failure_rate: float = _doc(
        "Largest fraction of a day's images that may fail before validation fails the run.",
        "0.05",
        "Quality",
        Rule(validate_failure_rate, {"type": "number", "minimum": 0, "maximum": 1}),
    )
    int8_min_centred_cosine_mean: float = _doc(
        "int8 is refused when its embeddings' mean centred cosine to float32 is lower.",
        "0.99",
        "Quality",
        THRESHOLD_RULE,
    )
    int8_min_centred_cosine: float = _doc(
        "int8 is refused when any held-out image's centred cosine to float32 is lower.",
        "0.97",
        "Quality",
        THRESHOLD_RULE,
    )
    int8_min_top5_overlap: float = _doc(
        "int8 is refused when it keeps a smaller share of each image's 5 nearest neighbours.",
        "0.9",
        "Quality",
        THRESHOLD_RULE,
    )
    pca_components: int = _doc(
        "Principal components kept by the dimensionality reduction.",
        "50",
        "Quality",
        Rule(validate_components, {"type": "integer", "minimum": 1}),
    )
    pca_sample_size: int = _doc(
        "Embeddings sampled (uniformly) to fit the PCA; bounds its memory.",
        "20000",
        "Quality",
        Rule(validate_sample_size, {"type": "integer", "minimum": 1}),
    )
    # Duplicates, drift and similarity search (docs/data-products.md).
    duplicate_threshold: float = _doc(
        "Centred cosine at or above which two images are near duplicates (0 to 1].",
        "0.95",
        "Analysis",
        Rule(validate_similarity, {"type": "number", "exclusiveMinimum": 0, "maximum": 1}),
    )
    drift_reference_days: int = _doc(
        "Previous days (same model fingerprint) that form a day's drift reference.",
        "7",
        "Analysis",
        _positive_rule("drift reference days"),
    )
    drift_threshold: float = _doc(
        "Relative Fréchet distance (over the reference's total variance) above which a day "
        "has drifted, if also above what sampling noise gives at the day's size: the run logs "
        "a warning.",
        "0.2",
        "Analysis",
        Rule(validate_drift_threshold, {"type": "number", "exclusiveMinimum": 0}),
    )
    drift_fails: bool = _doc(
        "true: a drifted day fails the run (after writing drift.json); false: a warning only.",
        "false",
        "Analysis",
        Rule(validate_flag, {"type": "boolean"}),
    )
    # Publishing (docs/publish.md).
    publish: str | None = _doc(
        "Where the publish task puts each validated day: a comma list of bigquery, pgvector; "
        "empty or none: publishing is off.",
        "",
        "Publish",
        Rule(validate_publish, {"type": "string", "pattern": _PUBLISH_PATTERN}),
    )
    bigquery_table: str | None = _doc(
        "BigQuery table the days are loaded into, partitioned by day: project.dataset.table, "
        "or dataset.table in IMAGE_EMBEDDINGS_GCP_PROJECT.",
        "",
        "Publish",
        Rule(validate_bigquery_table, {"type": "string", "minLength": 3}),
    )
    bigquery_location: str | None = _doc(
        "Location of the BigQuery dataset, e.g. EU or europe-west1 (empty: BigQuery's default).",
        "",
        "Publish",
    )
    pgvector_conn_id: str = _doc(
        "Airflow connection of the PostgreSQL database (with pgvector) the days are copied into.",
        DEFAULT_PGVECTOR_CONN_ID,
        "Publish",
    )
    pgvector_table: str = _doc(
        "PostgreSQL table the days are copied into, one partition a day: [schema.]name.",
        "image_embeddings",
        "Publish",
        Rule(validate_pg_table, {"type": "string", "pattern": r"^[a-z_][a-z0-9_.]*$"}),
    )
    start_date: str = _doc(
        "First day the daily schedule covers (YYYY-MM-DD); manual runs, `make run` and backfills "
        "may embed any day.",
        "2026-11-01",
        "DAG",
        DATE_RULE,
    )
    gcp_conn_id: str = _doc(
        "Airflow connection used for gs:// and Dataflow.", DEFAULT_GCP_CONN_ID, "DAG"
    )
    gcp_project: str | None = _doc("Google Cloud project of the Dataflow jobs.", "", "Dataflow")
    gcp_region: str | None = _doc("Dataflow region, e.g. europe-west1.", "", "Dataflow")
    dataflow_temp_location: str | None = _doc(
        "gs:// prefix for Dataflow temporary files.",
        "",
        "Dataflow",
        _location_rule("Dataflow temp location"),
    )
    dataflow_staging_location: str | None = _doc(
        "gs:// prefix where Dataflow stages the job's package.",
        "",
        "Dataflow",
        _location_rule("Dataflow staging location"),
    )
    dataflow_machine_type: str | None = _doc(
        "Worker machine type, e.g. n2-standard-4.", "", "Dataflow"
    )
    dataflow_max_workers: int | None = _doc(
        "Upper bound of the autoscaled worker count.",
        "",
        "Dataflow",
        _positive_rule("Dataflow max workers"),
    )
    dataflow_sdk_container_image: str | None = _doc(
        "Custom worker container image with the pipeline's dependencies.", "", "Dataflow"
    )
    dataflow_setup_file: str | None = _doc(
        "setup.py that workers install when no container image is given.", "", "Dataflow"
    )
    dataflow_service_account: str | None = _doc(
        "Service account e-mail the workers run as.", "", "Dataflow"
    )
    dataflow_network: str | None = _doc("VPC network of the workers (optional).", "", "Dataflow")
    dataflow_subnetwork: str | None = _doc(
        "Subnetwork of the workers, e.g. regions/REGION/subnetworks/NAME (optional).",
        "",
        "Dataflow",
    )


@dataclass(frozen=True)
class Setting:
    """One documented environment variable: a row of the settings table."""

    variable: str
    default: str
    description: str
    section: str


def setting_variable(name: str) -> str:
    """The environment variable of a Settings field."""
    return PREFIX + name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting(
        DATA_VARIABLE,
        "<repo>/data",
        "Local data folder; moves the default INPUT_ROOT and OUTPUT_ROOT together.",
        "Data",
    ),
    *(
        Setting(
            setting_variable(f.name),
            f.metadata["default"],
            f.metadata["description"],
            f.metadata["section"],
        )
        for f in fields(Settings)
    ),
)


def validate_dataflow(settings: Settings) -> Settings:
    """Raise ValueError naming every setting a DataflowRunner launch lacks or gets wrong."""
    problems = [
        f"{setting_variable(name)} is required"
        for name in ("gcp_project", "gcp_region", "dataflow_temp_location")
        if not getattr(settings, name)
    ]
    # Workers read the prepared OpenVINO model from the cache.
    cache = ("model_cache",) if settings.engine == "openvino" else ()
    for name in (
        "input_root",
        "output_root",
        *cache,
        "dataflow_temp_location",
        "dataflow_staging_location",
    ):
        value = getattr(settings, name)
        if value and not value.startswith("gs://"):
            problems.append(
                f"{setting_variable(name)} must be a gs:// URI on Dataflow, got {value!r}"
            )
    if problems:
        raise ValueError("the DataflowRunner needs: " + "; ".join(problems))
    return settings


def validate_publishing(settings: Settings) -> Settings:
    """Raise ValueError naming what the chosen publish targets lack."""
    targets = settings.publish.split(",") if settings.publish else []
    problems = []
    if "bigquery" in targets:
        if not settings.bigquery_table:
            problems.append(f"{setting_variable('bigquery_table')} is required")
        elif settings.bigquery_table.count(".") < 2 and not settings.gcp_project:
            problems.append(
                f"{setting_variable('bigquery_table')} names no project: write "
                f"project.dataset.table or set {setting_variable('gcp_project')}"
            )
        if not settings.output_root.startswith("gs://"):
            problems.append(
                f"{setting_variable('output_root')} must be a gs:// URI: BigQuery loads the day "
                f"from Cloud Storage, got {settings.output_root!r}"
            )
    if problems:
        raise ValueError("publishing to bigquery needs: " + "; ".join(problems))
    return settings


def validate_engine_precision(settings: Settings) -> Settings:
    """Raise ValueError when the precision cannot run on the engine."""
    if settings.engine == "tensorflow" and settings.precision == "int8":
        raise ValueError(
            f"precision int8 needs engine openvino ({setting_variable('engine')}), not tensorflow"
        )
    return settings


def day_dir(root: str, day: str) -> str:
    """The folder of one day under a root: `root/D`."""
    return join(root, validate_date(day))


def _text(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(setting_variable(name), "").strip()
    return value or None


def setting_rule(name: str) -> Rule | None:
    """The validation rule of the Settings field `name` (None: any text)."""
    return next(f.metadata["rule"] for f in fields(Settings) if f.name == name)


def _checked(name: str, value: str | None):
    """Validate one raw value, naming its environment variable in the error."""
    check = setting_rule(name)
    if value is None or check is None:
        return value
    try:
        return check.check(value)
    except ValueError as error:
        raise ValueError(f"{setting_variable(name)}: {error}") from None


def load_settings(environ: Mapping[str, str] = os.environ) -> Settings:
    """Read and validate every setting from the environment (call at run time, not parse time)."""
    data_dir = environ.get(DATA_VARIABLE, "").strip() or str(DEFAULT_DATA_DIR)
    defaults = {f.name: f.metadata["default"] or None for f in fields(Settings)}
    defaults["input_root"] = join(data_dir, "images")
    defaults["output_root"] = join(data_dir, "embeddings")
    defaults["model_cache"] = join(data_dir, "model_cache")
    return Settings(
        **{
            f.name: _checked(f.name, _text(environ, f.name) or defaults[f.name])
            for f in fields(Settings)
        }
    )
