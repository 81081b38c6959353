"""Preparing an OpenVINO model once per fingerprint: convert, quantize, guard, cache; its CLI."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from beam_jobs.image_embeddings import io as storage
from beam_jobs.image_embeddings.accuracy import AccuracyRefused, accuracy_figures, check_accuracy
from beam_jobs.image_embeddings.calibration import CalibrationSet, load_calibration_set
from beam_jobs.image_embeddings.contract import PRECISIONS, PREPARE_REFUSED_EXIT, join
from beam_jobs.image_embeddings.fingerprint import fingerprint, fingerprint_parts
from beam_jobs.image_embeddings.model_cache import (
    CacheEntryError,
    check_entry,
    default_model_cache,
    entry_uri,
    remove_entry,
    write_entry,
)
from beam_jobs.image_embeddings.models import ModelSpec, resolve_model
from beam_jobs.image_embeddings.openvino_engine import (
    OpenVINOEmbedder,
    UnconvertibleModel,
    check_precision_supported,
    compile_model,
    convert,
    cpu_capabilities,
)
from beam_jobs.image_embeddings.options import (
    JobOptions,
    add_preparation_arguments,
    check_engine,
    location,
)
from beam_jobs.image_embeddings.outputs import utc_now

ENGINE = "openvino"
GUARD_BATCH = 32

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedModel:
    """Where a prepared model is, its card, and whether the cache already held it."""

    uri: str
    card: dict[str, Any]
    cache_hit: bool

    def summary(self) -> dict[str, Any]:
        return {
            "prepared_model": self.uri,
            "fingerprint": self.card["fingerprint"],
            "cache_hit": self.cache_hit,
            "accuracy": self.card.get("accuracy"),
        }


def calibration_manifest(job: JobOptions) -> str:
    """The configured calibration manifest, else the day's own manifest."""
    manifest = job.calibration_manifest or job.manifest
    if not manifest:
        raise ValueError("--precision int8 needs --calibration_manifest or the day's --manifest")
    return manifest


def embed_all(model: Any, images: np.ndarray) -> np.ndarray:
    """float32 embeddings of `images` by an openvino.Model compiled in float32."""
    embedder = OpenVINOEmbedder(compile_model(model, "float32"))
    return np.concatenate(
        [
            embedder(images[start : start + GUARD_BATCH])
            for start in range(0, len(images), GUARD_BATCH)
        ]
    )


def quantize(model: Any, images: np.ndarray) -> Any:
    """NNCF post-training int8 quantization of `model`, calibrated on `images`, one at a time."""
    import nncf

    dataset = nncf.Dataset([images[index : index + 1] for index in range(len(images))])
    return nncf.quantize(model, dataset, subset_size=len(images))


def build(
    spec: ModelSpec, job: JobOptions, calibration: CalibrationSet | None
) -> tuple[Any, dict[str, Any] | None]:
    """(the openvino.Model to cache, int8 accuracy figures or None); AccuracyRefused below the
    thresholds."""
    model = convert(spec, job.weights)
    if calibration is None:
        return model, None
    quantized = quantize(model, calibration.calibration)
    figures = accuracy_figures(
        embed_all(model, calibration.held_out), embed_all(quantized, calibration.held_out)
    )
    log.info("int8 against float32 on held-out images: %s", figures)
    check_accuracy(figures, job.thresholds())
    return quantized, figures


def clear_broken_entry(entry: str, error: CacheEntryError) -> None:
    """Remove whatever a broken entry holds, saying why; nothing to do when it is empty."""
    if storage.matching(join(entry, "*")):
        log.warning("rebuilding the prepared model: %s", error)
        remove_entry(entry)


def prepare_model(job: JobOptions) -> PreparedModel:
    """The prepared model for the job's model, weights and precision: from the cache when an
    intact entry exists, else converted (and for int8 quantized and checked) and cached."""
    import openvino as ov

    started = time.monotonic()
    spec = resolve_model(job.model)
    check_precision_supported(job.precision, cpu_capabilities())
    calibration = None
    if job.precision == "int8":
        calibration = load_calibration_set(
            calibration_manifest(job),
            spec.input_size,
            job.calibration_size,
            job.held_out_size,
            job.calibration_seed,
            job.max_image_bytes,
        )
    parts = fingerprint_parts(
        spec, job.weights, job.precision, ENGINE, calibration.digest if calibration else None
    )
    model_fingerprint = fingerprint(parts)
    entry = entry_uri(job.model_cache or default_model_cache(), model_fingerprint)
    try:
        card = check_entry(entry, model_fingerprint)
    except CacheEntryError as error:
        clear_broken_entry(entry, error)
    else:
        log.info("prepared model %s found in the cache", entry)
        # The thresholds are not part of the fingerprint: a cached int8 model meets today's.
        if card.get("accuracy"):
            check_accuracy(card["accuracy"], job.thresholds())
        return PreparedModel(entry, card, cache_hit=True)
    model, figures = build(spec, job, calibration)
    with tempfile.TemporaryDirectory(prefix="prepare-") as directory:
        ov.save_model(model, f"{directory}/model.xml", compress_to_fp16=False)
        card = write_entry(
            entry,
            directory,
            {
                "fingerprint": model_fingerprint,
                "fingerprint_parts": parts,
                "accuracy": figures,
                "thresholds": vars(job.thresholds()) if figures else None,
                "calibration": calibration_record(job, calibration),
                "dim": int(model.output(0).get_partial_shape()[1].get_length()),
                "input_size": list(spec.input_size),
                "prepared_at": utc_now(),
                "preparation_s": round(time.monotonic() - started, 1),
            },
        )
    log.info("prepared model %s in %.1f s", entry, time.monotonic() - started)
    return PreparedModel(entry, card, cache_hit=False)


def calibration_record(job: JobOptions, calibration: CalibrationSet | None) -> dict | None:
    if calibration is None:
        return None
    return {
        "manifest": calibration.manifest,
        "digest": calibration.digest,
        "images": len(calibration.calibration),
        "held_out": len(calibration.held_out),
        "seed": job.calibration_seed,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m beam_jobs.image_embeddings.prepare",
        description="Prepare the OpenVINO model the pipeline runs, once per fingerprint: convert "
        "the Keras model, for int8 quantize it with NNCF and check it against float32, and write "
        "it with its model card under the model cache. Prints the result as one JSON line.",
        allow_abbrev=False,
    )
    parser.add_argument("--model", default=JobOptions.model, help="as the pipeline's --model")
    parser.add_argument("--weights", default=JobOptions.weights, help="as the pipeline's --weights")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=JobOptions.precision,
        help="as the pipeline's --precision (default: %(default)s)",
    )
    parser.add_argument(
        "--manifest",
        metavar="URI",
        type=location,
        default=None,
        help="int8 without --calibration_manifest: the day's manifest, sampled with the seed",
    )
    add_preparation_arguments(parser)
    return parser


def parse_args(argv: Sequence[str] | None) -> JobOptions:
    parser = build_parser()
    known = vars(parser.parse_args(argv))
    job = JobOptions(output="", **known)
    try:
        resolve_model(job.model)
        check_engine(job)
    except ValueError as error:
        parser.error(str(error))
    return job


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    job = parse_args(argv)
    try:
        prepared = prepare_model(job)
    except AccuracyRefused as error:
        print(f"error: {error}", file=sys.stderr)
        return PREPARE_REFUSED_EXIT
    except (UnconvertibleModel, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(prepared.summary(), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
