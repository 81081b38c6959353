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
from importlib import metadata
from typing import Any

import numpy as np

from beam_jobs.image_embeddings.contract import PREPARE_REFUSED_EXIT, join
from beam_jobs.image_embeddings.engine.accuracy import (
    AccuracyRefused,
    accuracy_figures,
    check_accuracy,
)
from beam_jobs.image_embeddings.engine.calibration import CalibrationSet, load_calibration_set
from beam_jobs.image_embeddings.engine.calibration_pin import (
    load_pinned_set,
    pin_uri,
    read_pin,
    write_pin,
)
from beam_jobs.image_embeddings.engine.fingerprint import fingerprint, fingerprint_parts
from beam_jobs.image_embeddings.engine.model_cache import (
    CacheEntryError,
    check_entry,
    default_model_cache,
    entry_uri,
    remove_entry,
    write_entry,
)
from beam_jobs.image_embeddings.engine.models import ModelSpec, resolve_model
from beam_jobs.image_embeddings.engine.openvino import (
    OpenVINOEmbedder,
    UnconvertibleModel,
    check_precision_supported,
    compile_model,
    convert,
    cpu_capabilities,
)
from beam_jobs.image_embeddings.options import (
    JobOptions,
    add_model_arguments,
    add_preparation_arguments,
    check_engine,
    location,
)
from beam_jobs.image_embeddings.outputs import utc_now
from beam_jobs.image_embeddings.storage import io as storage

ENGINE = "openvino"
GUARD_BATCH = 32
# The precisions checked against float32 on held-out images before they are cached.
GUARDED = ("int8", "bfloat16")
# int8 activation ranges span each activation's lowest and highest value over all calibration
# images. NNCF's default, the mean over images of each one's extremes, clips the images whose
# activations run past the average: over 1,664 varied images they strayed from float32 down to a
# centred cosine of 0.83, against 0.994 at worst with these ranges (docs/performance.md).
ACTIVATION_RANGES = "MINMAX"

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
        raise ValueError(
            f"--precision {job.precision} needs --calibration_manifest or the day's --manifest"
        )
    return manifest


def load_sample(job: JobOptions, spec: ModelSpec) -> CalibrationSet:
    """The seeded sample of the calibration manifest: images to calibrate on and held out."""
    return load_calibration_set(
        calibration_manifest(job),
        spec.input_size,
        job.calibration_size,
        job.held_out_size,
        job.calibration_seed,
        job.max_image_bytes,
    )


def model_version(spec: ModelSpec, job: JobOptions) -> str:
    """What an int8 calibration set is pinned to: every fingerprint part but the calibration,
    and how the sample is drawn."""
    parts = fingerprint_parts(spec, job.weights, job.precision, ENGINE)
    drawn = {
        "calibration_size": job.calibration_size,
        "held_out_size": job.held_out_size,
        "calibration_seed": job.calibration_seed,
    }
    return fingerprint(parts | drawn)


def embed_all(model: Any, images: np.ndarray, precision: str = "float32") -> np.ndarray:
    """Embeddings of `images` by an openvino.Model compiled to compute in `precision`."""
    embedder = OpenVINOEmbedder(compile_model(model, precision))
    return np.concatenate(
        [
            embedder(images[start : start + GUARD_BATCH])
            for start in range(0, len(images), GUARD_BATCH)
        ]
    )


def quantization() -> str:
    """How int8 models are quantized: a part of their fingerprint."""
    return f"nncf-{metadata.version('nncf')}, activation ranges {ACTIVATION_RANGES.lower()}"


def quantize(model: Any, images: np.ndarray, **settings: Any) -> Any:
    """NNCF post-training int8 quantization of `model`, calibrated on `images`, one at a time,
    with ACTIVATION_RANGES; `settings` are further `nncf.quantize` arguments, or replace these."""
    import nncf
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    dataset = nncf.Dataset([images[index : index + 1] for index in range(len(images))])
    ranges = getattr(RangeEstimatorParametersSet, ACTIVATION_RANGES)
    advanced = nncf.AdvancedQuantizationParameters(activations_range_estimator_params=ranges)
    chosen = {"advanced_parameters": advanced} | settings
    return nncf.quantize(model, dataset, subset_size=len(images), **chosen)


def build(
    spec: ModelSpec, job: JobOptions, sample: CalibrationSet | None
) -> tuple[Any, dict[str, Any] | None]:
    """(the openvino.Model to cache, int8 or bfloat16 accuracy figures against float32 on the
    sample's held-out images, or None for float32); AccuracyRefused below the thresholds."""
    model = convert(spec, job.weights)
    if sample is None:
        return model, None
    reference = embed_all(model, sample.held_out)
    if job.precision == "int8":
        model = quantize(model, sample.calibration)
        candidate = embed_all(model, sample.held_out)
    else:
        # bfloat16 is the float32 model computed in bfloat16: the same files, compiled otherwise.
        candidate = embed_all(model, sample.held_out, job.precision)
    figures = accuracy_figures(reference, candidate)
    log.info("%s against float32 on held-out images: %s", job.precision, figures)
    check_accuracy(figures, job.thresholds(), job.precision)
    return model, figures


def clear_broken_entry(entry: str, error: CacheEntryError) -> None:
    """Remove whatever a broken entry holds, saying why; nothing to do when it is empty."""
    if storage.matching(join(entry, "*")):
        log.warning("rebuilding the prepared model: %s", error)
        remove_entry(entry)


def prepare_model(job: JobOptions) -> PreparedModel:
    """The prepared model for the job's model, weights and precision: from the cache when an
    intact entry exists, else converted (for int8 quantized; int8 and bfloat16 checked against
    float32) and cached.

    Without a calibration manifest, an int8 model version calibrates once, on a seeded sample of
    the first day's images, and pins that sample in the cache: later days reuse it, so their
    fingerprint stays the same.
    """
    import openvino as ov

    started = time.monotonic()
    spec = resolve_model(job.model)
    check_precision_supported(job.precision, cpu_capabilities())
    cache = job.model_cache or default_model_cache()
    pin_at = None
    if job.precision == "int8" and not job.calibration_manifest:
        pin_at = pin_uri(cache, model_version(spec, job))
    pin = read_pin(pin_at) if pin_at else None
    sample = load_sample(job, spec) if job.precision == "int8" and pin is None else None
    if pin:
        log.info("int8 calibrates on the set pinned on %s (%s)", pin["pinned_at"], pin_at)
    digest = pin["digest"] if pin else sample.digest if sample else None
    method = quantization() if job.precision == "int8" else None
    parts = fingerprint_parts(spec, job.weights, job.precision, ENGINE, digest, method)
    model_fingerprint = fingerprint(parts)
    entry = entry_uri(cache, model_fingerprint)
    try:
        card = check_entry(entry, model_fingerprint)
    except CacheEntryError as error:
        clear_broken_entry(entry, error)
    else:
        log.info("prepared model %s found in the cache", entry)
        # The thresholds are not part of the fingerprint: a cached model meets today's.
        if card.get("accuracy"):
            check_accuracy(card["accuracy"], job.thresholds(), job.precision)
        return PreparedModel(entry, card, cache_hit=True)
    if sample is None and job.precision in GUARDED:
        sample = (
            load_pinned_set(pin, spec.input_size, job.max_image_bytes)
            if pin
            else load_sample(job, spec)
        )
    model, figures = build(spec, job, sample)
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
                "calibration": calibration_record(job, sample, pin_at),
                "dim": int(model.output(0).get_partial_shape()[1].get_length()),
                "input_size": list(spec.input_size),
                "prepared_at": utc_now(),
                "preparation_s": round(time.monotonic() - started, 1),
            },
        )
    if pin_at and pin is None:
        write_pin(pin_at, sample, job.calibration_seed)
    log.info("prepared model %s in %.1f s", entry, time.monotonic() - started)
    return PreparedModel(entry, card, cache_hit=False)


def calibration_record(
    job: JobOptions, sample: CalibrationSet | None, pin_at: str | None
) -> dict | None:
    """What an int8 model was calibrated on; None for float32 and bfloat16, whose values no
    sample changes."""
    if job.precision != "int8":
        return None
    return {
        "manifest": sample.manifest,
        "digest": sample.digest,
        "images": len(sample.calibration),
        "held_out": len(sample.held_out),
        "seed": job.calibration_seed,
        "pin": pin_at,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m beam_jobs.image_embeddings.engine.prepare",
        description="Prepare the OpenVINO model the pipeline runs, once per fingerprint: convert "
        "the Keras model, for int8 quantize it with NNCF, check int8 and bfloat16 against "
        "float32, and write it with its model card under the model cache. Prints the result as "
        "one JSON line.",
        allow_abbrev=False,
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--manifest",
        metavar="URI",
        type=location,
        default=None,
        help="int8 and bfloat16 without --calibration_manifest: the day's manifest, sampled "
        "with the seed (int8: only while the model cache holds no pinned sample for the model)",
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
