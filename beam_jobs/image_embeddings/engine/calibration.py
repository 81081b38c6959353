"""The int8 calibration set: a seeded sample of real images, split into calibration and held-out."""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from beam_jobs.image_embeddings.contract import manifest_entries
from beam_jobs.image_embeddings.engine.accuracy import NEIGHBOURS
from beam_jobs.image_embeddings.images import (
    DEFAULT_MAX_IMAGE_BYTES,
    ImageLoadError,
    load_image,
    read_bounded,
)
from beam_jobs.image_embeddings.storage import io as storage

CALIBRATION_SIZE = 64
# An int8 model can stray from float32 on a thin tail of images that nothing marks out beforehand
# (with NNCF's default activation ranges: 27 of 1,664 varied images, grey ones and ordinary photos
# alike), so the guard samples widely: a model that strays on 1 image in 100 shows it among 512
# held-out images 99.4 times in 100 (1 - 0.99**512), among 32 only 28.
HELD_OUT_SIZE = 512
SEED = 1729
# Held-out images the guard needs at least: each must have NEIGHBOURS others.
MIN_HELD_OUT = NEIGHBOURS + 1
MIN_CALIBRATION = 4
LOAD_THREADS = 8

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationSet:
    """uint8 (n, height, width, 3) images to calibrate on and to check against, and a digest
    of the calibration images' bytes (what the int8 model's values depend on)."""

    calibration: np.ndarray
    held_out: np.ndarray
    digest: str
    manifest: str
    # The images' URIs, held-out ones first: what a pinned calibration set records.
    uris: tuple[str, ...] = ()


def seeded_order(manifest: str, seed: int) -> list[str]:
    """The manifest's distinct entries in an order fixed by `seed` (and not by line order)."""
    entries = sorted(set(manifest_entries(storage.read_text(manifest).splitlines())))
    random.Random(seed).shuffle(entries)
    return entries


def _load(uri: str, size: tuple[int, int], max_bytes: int) -> tuple[bytes, np.ndarray] | str:
    try:
        data = read_bounded(uri, max_bytes)
        return data, load_image(data, size).pixels
    except ImageLoadError as error:
        return f"{error.stage}: {error}"


def split_sizes(available: int, calibration_size: int, held_out_size: int) -> tuple[int, int]:
    """(calibration, held-out) counts from `available` images; when short, the images left
    after calibration are held out, and at least a third of them."""
    held_out = min(held_out_size, max(MIN_HELD_OUT, available // 3, available - calibration_size))
    calibration = min(calibration_size, available - held_out)
    if calibration < MIN_CALIBRATION:
        raise ValueError(
            f"int8 needs at least {MIN_CALIBRATION + MIN_HELD_OUT} readable images to calibrate "
            f"and check against float32, found {available}: configure a calibration manifest "
            "(--calibration_manifest) with more images"
        )
    return calibration, held_out


def load_calibration_set(
    manifest: str,
    size: tuple[int, int],
    calibration_size: int = CALIBRATION_SIZE,
    held_out_size: int = HELD_OUT_SIZE,
    seed: int = SEED,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> CalibrationSet:
    """Load the first readable images of the manifest's seeded order; unreadable ones are logged
    with their reason and replaced by the next ones."""
    if not storage.exists(manifest):
        raise FileNotFoundError(f"calibration manifest not found: {manifest}")
    wanted = calibration_size + held_out_size
    loaded: list[tuple[str, bytes, np.ndarray]] = []
    order = seeded_order(manifest, seed)
    position = 0
    with ThreadPoolExecutor(LOAD_THREADS, thread_name_prefix="calibration") as pool:
        while len(loaded) < wanted and position < len(order):
            chunk = order[position : position + wanted - len(loaded)]
            position += len(chunk)
            outcomes = pool.map(lambda uri: _load(uri, size, max_image_bytes), chunk)
            for uri, outcome in zip(chunk, outcomes, strict=True):
                if isinstance(outcome, str):
                    log.warning("calibration skips %s (%s)", uri, outcome)
                else:
                    loaded.append((uri, *outcome))
    calibration, held_out = split_sizes(len(loaded), calibration_size, held_out_size)
    log.info(
        "calibration set from %s: %d images to calibrate on, %d held out",
        manifest,
        calibration,
        held_out,
    )
    return calibration_set(loaded[: held_out + calibration], held_out, manifest)


def calibration_set(
    loaded: Sequence[tuple[str, bytes, np.ndarray]], held_out: int, manifest: str
) -> CalibrationSet:
    """The set of loaded (uri, bytes, pixels), the first `held_out` held out; its digest covers
    the calibration images' bytes, in order."""
    digest = hashlib.sha256()
    for _, data, _ in loaded[held_out:]:
        digest.update(hashlib.sha256(data).digest())
    pixels = np.stack([image for _, _, image in loaded])
    return CalibrationSet(
        calibration=pixels[held_out:],
        held_out=pixels[:held_out],
        digest=f"sha256:{digest.hexdigest()}",
        manifest=manifest,
        uris=tuple(uri for uri, _, _ in loaded),
    )


def load_exact_set(
    uris: Sequence[str], held_out: int, manifest: str, size: tuple[int, int], max_image_bytes: int
) -> CalibrationSet:
    """The set of exactly these images, the first `held_out` held out; ValueError naming every
    image that cannot be read (none is replaced: the set must stay what it was)."""
    with ThreadPoolExecutor(LOAD_THREADS, thread_name_prefix="calibration") as pool:
        outcomes = list(pool.map(lambda uri: _load(uri, size, max_image_bytes), uris))
    unreadable = [
        f"{uri} ({outcome})"
        for uri, outcome in zip(uris, outcomes, strict=True)
        if isinstance(outcome, str)
    ]
    if unreadable:
        raise ValueError(f"calibration images cannot be read: {'; '.join(unreadable)}")
    loaded = [(uri, *outcome) for uri, outcome in zip(uris, outcomes, strict=True)]
    return calibration_set(loaded, held_out, manifest)
