"""Whether a day's model fingerprint is the one the previous finished day had: never silent."""

from __future__ import annotations

import logging
from typing import Any

from beam_jobs.image_embeddings.contract import FINGERPRINT_KEY
from beam_jobs.image_embeddings.marker import NoMarker, success_record
from beam_jobs.image_embeddings.reuse.earlier_runs import folder_name, window_folders
from beam_jobs.image_embeddings.storage import io

log = logging.getLogger(__name__)


def previous_fingerprint(output: str, days: int, current: str) -> dict[str, Any] | None:
    """The newest finished day of the `days` before the output's: its day, its fingerprint and
    whether `current` differs from it (logged as a warning when it does); None when there is
    none."""
    for folder in window_folders(output, days):
        try:
            earlier = success_record(folder, io).get(FINGERPRINT_KEY)
        except (NoMarker, ValueError, AttributeError):
            continue
        if earlier is None:
            continue
        record = {"day": folder_name(folder), "fingerprint": earlier, "changed": earlier != current}
        if record["changed"]:
            log.warning(
                "model fingerprint %s differs from %s of %s: this day's embeddings are not "
                "comparable with earlier ones (no reuse, cross-day duplicates, drift or search)",
                current,
                earlier,
                record["day"],
            )
        return record
    return None
