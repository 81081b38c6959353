"""The model fingerprint: what makes two days' embeddings comparable, as one stable digest."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from importlib import metadata
from typing import Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_jobs.image_embeddings.engine.models import ModelSpec
from beam_jobs.image_embeddings.engine.weights import is_weights_uri

CHUNK_BYTES = 8 * 1024 * 1024
# The distribution whose version names each engine's version.
ENGINE_DISTRIBUTIONS = {"openvino": "openvino", "tensorflow": "tensorflow-cpu"}


def file_digest(uri: str) -> str:
    """sha256 of a file's bytes (local or any Beam filesystem), read in chunks."""
    digest = hashlib.sha256()
    with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def weights_identity(spec: ModelSpec, weights: str) -> str:
    """What the weights are: a named set with the Keras version that provides it, or a digest."""
    if is_weights_uri(weights):
        return f"sha256:{file_digest(weights)}"
    if spec.is_custom:
        return f"sha256:{file_digest(spec.name)}"
    return f"{weights}@keras-{metadata.version('keras')}"


def fingerprint_parts(
    spec: ModelSpec,
    weights: str,
    precision: str,
    engine: str = "tensorflow",
    calibration: str | None = None,
    quantization: str | None = None,
) -> dict[str, Any]:
    """Every input that changes an embedding's values, named; `calibration` is the digest of an
    int8 model's calibration images, `quantization` how it was quantized (a part only when
    given, so that the fingerprints of other models stay as they were)."""
    parts = {
        "model": spec.name,
        "weights": weights_identity(spec, weights),
        "input_size": list(spec.input_size),
        "preprocessing": spec.preprocess or "inside the model",
        "engine": f"{engine}-{metadata.version(ENGINE_DISTRIBUTIONS[engine])}",
        "precision": precision,
        "calibration": calibration,
    }
    if quantization is not None:
        parts["quantization"] = quantization
    return parts


def fingerprint(parts: Mapping[str, Any]) -> str:
    """A short, stable digest of the parts: equal parts give equal fingerprints."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
