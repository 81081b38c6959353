"""The calibration set pinned per int8 model version in the model cache: the first preparation's
sample, which every later preparation reuses, so the model's fingerprint stays the same."""

from __future__ import annotations

import json
import logging
from typing import Any

from beam_jobs.image_embeddings.contract import join
from beam_jobs.image_embeddings.engine.calibration import CalibrationSet, load_exact_set
from beam_jobs.image_embeddings.outputs import utc_now
from beam_jobs.image_embeddings.storage import io as storage

PINS_FOLDER = "calibration_pins"
PIN_KEYS = frozenset({"digest", "manifest", "uris", "held_out", "pinned_at"})

log = logging.getLogger(__name__)


def pin_uri(cache: str, version: str) -> str:
    """Where the pin of a model version (a fingerprint of everything but its calibration) lives."""
    return join(cache, PINS_FOLDER, f"{version}.json")


def read_pin(uri: str) -> dict[str, Any] | None:
    """The pinned calibration record, or None when none was pinned yet."""
    if not storage.exists(uri):
        return None
    try:
        pin = json.loads(storage.read_text(uri))
        missing = PIN_KEYS - set(pin)
    except (ValueError, TypeError) as error:
        missing = error
    if missing:
        raise ValueError(
            f"{uri} is not a readable calibration pin (lacking {missing}): delete it to calibrate "
            "anew (the int8 model's fingerprint then changes)"
        )
    return pin


def write_pin(uri: str, calibration: CalibrationSet, seed: int) -> dict[str, Any]:
    """Record `calibration` as the model version's calibration set."""
    pin = {
        "digest": calibration.digest,
        "manifest": calibration.manifest,
        "uris": list(calibration.uris),
        "held_out": len(calibration.held_out),
        "seed": seed,
        "pinned_at": utc_now(),
    }
    storage.write_text(uri, json.dumps(pin, indent=2), "application/json")
    log.info("pinned the calibration set of %s in %s", calibration.manifest, uri)
    return pin


def load_pinned_set(
    pin: dict[str, Any], size: tuple[int, int], max_image_bytes: int
) -> CalibrationSet:
    """The pinned images again, checked against the pin's digest."""
    loaded = load_exact_set(pin["uris"], pin["held_out"], pin["manifest"], size, max_image_bytes)
    if loaded.digest != pin["digest"]:
        raise ValueError(
            f"the calibration images pinned on {pin['pinned_at']} from {pin['manifest']} have "
            f"changed (digest {loaded.digest}, pinned {pin['digest']}): restore them, or delete "
            "the pin to calibrate anew (the int8 model's fingerprint then changes)"
        )
    return loaded
