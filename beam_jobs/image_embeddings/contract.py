"""What the Airflow side and the Beam pipeline agree on: manifest, output names, schemas, marker."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

MANIFEST_NAME = "manifest.txt"
# What staging left out of the manifest (counts by reason and extension), beside it.
SKIPPED_NAME = "skipped.json"
# The day lease: which run is writing the day's folder, until when. Never deleted with outputs.
LEASE_NAME = "_LEASE"
EMBEDDINGS_PREFIX = "embeddings"
FAILURES_PREFIX = "failures"
SHARD_SUFFIX = ".parquet"
SUCCESS_MARKER = "_SUCCESS"
# A rerun of day D sets the earlier run's embeddings (and a copy of its marker) aside here before
# it clears D, reuses them, and deletes the folder once its own marker is written.
PREVIOUS_RUN_FOLDER = "_previous_run"
# What the reduce step writes beside the embeddings, and the search reads back.
PCA_NAME = "pca.npz"
NEIGHBOURS_INDEX_NAME = "neighbours.faiss"
NEIGHBOURS_IDS_NAME = "neighbours-ids.parquet"
# The day's products beside the embeddings: each image's PCA coordinates, their plot, a uniform
# sample of the embeddings (for later days' drift references), duplicates, drift and the report.
PROJECTION_NAME = "projection.parquet"
PLOT_NAME = "projection.png"
SAMPLE_NAME = "embedding-sample.npy"
DUPLICATES_NAME = "duplicates.parquet"
DRIFT_NAME = "drift.json"
# The verdicts `drift.json` states.
DRIFTED = "drift"
STABLE = "stable"
NO_HISTORY = "no comparable history"
TOO_FEW = "too few images"


def drift_verdict(drift: Mapping[str, Any] | None) -> str | None:
    """A `drift.json`'s verdict (`verdict`, or `status` in older files), when it states one."""
    if not drift:
        return None
    verdict = drift.get("verdict", drift.get("status"))
    return str(verdict) if verdict is not None else None


REPORT_HTML_NAME = "report.html"
# The validation's report, which the analysis adds its duplicate counts to.
VALIDATION_NAME = "validation.json"
# The analysis job writes this last: what it found (JSON), the day's products complete.
ANALYSIS_MARKER = "_ANALYSED"
# Beam's shard name template, and the pattern that reads (index, count) back from a file name.
SHARD_TEMPLATE = "-SSSSS-of-NNNNN"
SHARD_NUMBER = re.compile(r"-(\d+)-of-(\d+)" + re.escape(SHARD_SUFFIX) + "$")
# Beam metrics of the pipeline (counters, distributions) live under this namespace.
METRICS_NAMESPACE = "image_embeddings"

# Bounds of every gs:// request, on both sides: seconds to connect and to wait for the next bytes
# of an answer; then back-off from GCS_RETRY_INITIAL_S doubling to GCS_RETRY_MAXIMUM_S, for at most
# GCS_RETRY_DEADLINE_S per operation.
GCS_CONNECT_TIMEOUT_S = 10.0
GCS_READ_TIMEOUT_S = 60.0
GCS_RETRY_INITIAL_S = 0.5
GCS_RETRY_MAXIMUM_S = 16.0
GCS_RETRY_MULTIPLIER = 2.0
GCS_RETRY_DEADLINE_S = 300.0

# The image formats the pipeline decodes (Pillow format names; HEIF through pillow-heif) and the
# file extensions, any case, that the manifest takes for each. A file's content decides how it
# is decoded; its extension only whether it is listed. Multi-frame files give their first frame.
IMAGE_FORMATS = {
    "JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"),
    "PNG": (".png",),
    "GIF": (".gif",),
    "BMP": (".bmp",),
    "TIFF": (".tif", ".tiff"),
    "WEBP": (".webp",),
    "AVIF": (".avif",),
    "HEIF": (".heic", ".heif"),
}
IMAGE_EXTENSIONS = frozenset(ext for extensions in IMAGE_FORMATS.values() for ext in extensions)

# `--model` takes one of these `keras.applications` names (any case) or a `.keras` file URI.
MODEL_NAMES = (
    "resnet50",
    "resnet101",
    "resnet152",
    "resnet50v2",
    "efficientnetb0",
    "efficientnetb1",
    "efficientnetb2",
    "efficientnetb3",
    "efficientnetv2b0",
    "mobilenetv2",
    "mobilenetv3small",
    "mobilenetv3large",
    "densenet121",
    "inceptionv3",
    "xception",
    "convnexttiny",
    "vgg16",
)
KERAS_FILE_SUFFIX = ".keras"

# `--engine`: OpenVINO runs a model prepared once per fingerprint; TensorFlow runs the Keras model.
ENGINES = ("openvino", "tensorflow")
# Exit status of `python -m beam_jobs.image_embeddings.engine.prepare` refusing an int8 model below
# the accuracy thresholds: preparing again gives the same verdict.
PREPARE_REFUSED_EXIT = 3
# `--precision` (the model call's arithmetic: int8 needs the OpenVINO engine, bfloat16 a CPU with
# bfloat16 instructions) and `--embedding_dtype` (the stored vectors' float type): the pipeline's
# options and the DAG's settings and params offer these.
PRECISIONS = ("float32", "int8", "bfloat16")
EMBEDDING_DTYPES = ("float32", "float16")

# Where a manifest entry failed, as recorded in the `stage` column of the failures output.
STAGE_INPUT = "input"  # refused before any read: not a valid URI, outside the input root
STAGE_READ = "read"  # missing, a directory, unreadable, larger than the byte cap
STAGE_DECODE = "decode"  # not an image, corrupt, truncated, decompression bomb
STAGE_INFERENCE = "inference"  # the model failed on the image's batch
STAGES = (STAGE_INPUT, STAGE_READ, STAGE_DECODE, STAGE_INFERENCE)

# Keys of the JSON success marker that every consumer may rely on.
SUCCESS_KEYS = ("images", "embedded", "failed", "model", "dim")
# The model fingerprint (fingerprint.py): a key of `_SUCCESS` and of every embeddings shard's
# Parquet metadata, so two days are compared only when the same model made them.
FINGERPRINT_KEY = "model_fingerprint"
# A marker with these keys describes rows that carry `sha256`: their embeddings may be reused by a
# later run with the same fingerprint. `reused` counts the rows copied from earlier runs.
REUSE_KEYS = (FINGERPRINT_KEY, "reused")
# `_SUCCESS`: the newest earlier finished day's fingerprint, {"day", "fingerprint", "changed"},
# or null when the lookback holds none; `changed` true means this day is not comparable with it.
PREVIOUS_FINGERPRINT_KEY = "previous_fingerprint"


def manifest_entries(lines: Iterable[str]) -> Iterator[str]:
    """Yield the image URIs of manifest lines: stripped, skipping blanks and `#` comments."""
    for line in lines:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            yield entry


def extension(name: str) -> str:
    """A file name's extension in lower case (`.jpg`), or "" when it has none."""
    return posixpath.splitext(posixpath.basename(name))[1].lower()


def is_image_name(name: str) -> bool:
    """True when a file name has an image extension (case-insensitive)."""
    return extension(name) in IMAGE_EXTENSIONS


def join(root: str, *parts: str) -> str:
    """Join URI parts with `/`, for local paths and `gs://` alike."""
    return posixpath.join(root.rstrip("/"), *parts)


def shard_glob(output: str, prefix: str) -> str:
    """Glob matching every shard of one output kind (`embeddings` or `failures`)."""
    return join(output, f"{prefix}-*{SHARD_SUFFIX}")


def embeddings_schema(
    dim: int | None = None, float_type: str = "float32", model_fingerprint: str | None = None
):
    """Arrow schema of `embeddings-*.parquet`: one row per embedded image.

    `thumbnail` is a small JPEG of the image (about 96 px a side) for reports. With
    `model_fingerprint`, every file written with the schema carries it in its metadata.
    """
    import pyarrow as pa

    value = pa.float16() if float_type == "float16" else pa.float32()
    embedding = pa.list_(value, dim) if dim else pa.list_(value)
    return pa.schema(
        [
            ("uri", pa.string()),
            ("embedding", embedding),
            ("model", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            # Hex sha256 of the image's bytes, their count, and the day (output folder name)
            # the embedding was copied from; null when the model computed it in this run.
            ("sha256", pa.string()),
            ("size_bytes", pa.int64()),
            ("reused_from", pa.string()),
            # A ~96 px JPEG of the image, for the day's report.
            ("thumbnail", pa.binary()),
        ],
        metadata={FINGERPRINT_KEY: model_fingerprint} if model_fingerprint else None,
    )


def failures_schema():
    """Arrow schema of `failures-*.parquet`: one row per entry that could not be embedded."""
    import pyarrow as pa

    return pa.schema(
        [
            ("uri", pa.string()),
            ("stage", pa.string()),
            ("error", pa.string()),
            ("model", pa.string()),
            # Null when the bytes were never read (refused input, missing, over the byte cap).
            ("sha256", pa.string()),
        ]
    )
