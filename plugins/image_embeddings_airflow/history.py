"""Earlier days under the output root whose embeddings share day D's model fingerprint."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, timedelta

from beam_jobs.image_embeddings.contract import FINGERPRINT_KEY, SUCCESS_MARKER, join
from beam_jobs.image_embeddings.marker import NoMarker, success_record
from image_embeddings_airflow import storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class History:
    """The comparable earlier days (newest first) and why each other day in the window is not."""

    days: tuple[str, ...]
    skipped: dict[str, str]


def window(day: str, length: int) -> list[str]:
    """The `length` calendar days before `day`, newest first."""
    first = date.fromisoformat(day)
    return [(first - timedelta(days=back)).isoformat() for back in range(1, length + 1)]


def day_fingerprint(output_dir: str) -> str | None:
    """The model fingerprint in a day's `_SUCCESS`, or None when the day has none."""
    try:
        return success_record(output_dir, storage).get(FINGERPRINT_KEY)
    except NoMarker:
        return None


def comparable_days(
    output_root: str, day: str, fingerprint: str | None, length: int, needs: tuple[str, ...]
) -> History:
    """The days of the `length` before `day` embedded under `fingerprint` that hold `needs`.

    A day without `_SUCCESS`, with another fingerprint or lacking one of the `needs` files is
    skipped, with the reason. Without a fingerprint of its own, D has no comparable day.
    """
    days: list[str] = []
    skipped: dict[str, str] = {}
    for other in window(day, length):
        folder = join(output_root, other)
        found = day_fingerprint(folder)
        if found is None:
            if storage.exists(join(folder, SUCCESS_MARKER)):
                skipped[other] = "its _SUCCESS has no model fingerprint"
            continue
        if fingerprint is None or found != fingerprint:
            skipped[other] = f"model fingerprint {found}, not {fingerprint}"
            continue
        absent = [name for name in needs if not storage.exists(join(folder, name))]
        if absent:
            skipped[other] = f"no {', '.join(absent)}"
            continue
        days.append(other)
    if skipped:
        log.info("Days not compared with %s: %s", day, skipped)
    return History(days=tuple(days), skipped=skipped)
