"""Earlier days under the output root whose embeddings share day D's model fingerprint."""

from __future__ import annotations

import logging

from beam_jobs.image_embeddings import comparable
from beam_jobs.image_embeddings.comparable import NO_MARKER, History, window
from beam_jobs.image_embeddings.storage import files as storage

log = logging.getLogger(__name__)


def comparable_days(
    output_root: str, day: str, fingerprint: str | None, length: int, needs: tuple[str, ...]
) -> History:
    """The days of the `length` before `day` embedded under `fingerprint` that hold `needs`.

    A day without `_SUCCESS`, with another fingerprint or lacking one of the `needs` files is
    skipped, with the reason. Without a fingerprint of its own, D has no comparable day.
    """
    found = comparable.comparable_days(
        output_root, window(day, length), fingerprint, needs, storage.exists, storage.read_json
    )
    skipped = {other: why for other, why in found.skipped.items() if why != NO_MARKER}
    if skipped:
        log.info("Days not compared with %s: %s", day, skipped)
    return History(days=found.days, skipped=skipped)
