"""Comparable earlier days: those of a window whose run finished under day D's model fingerprint."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from beam_jobs.image_embeddings.contract import FINGERPRINT_KEY, SUCCESS_MARKER, join

NO_MARKER = f"no {SUCCESS_MARKER}"


@dataclass(frozen=True)
class History:
    """The comparable days (in the order asked) and why each other day is not."""

    days: tuple[str, ...]
    skipped: dict[str, str]


def window(day: str, length: int) -> list[str]:
    """The `length` calendar days before `day`, newest first."""
    first = date.fromisoformat(day)
    return [(first - timedelta(days=back)).isoformat() for back in range(1, length + 1)]


def why_not_comparable(marker: dict[str, Any] | None, fingerprint: str | None) -> str | None:
    """Why a run whose `_SUCCESS` holds `marker` (None: it has none) is not comparable with one
    under `fingerprint`; None when it is. Without a fingerprint, nothing is comparable."""
    if marker is None:
        return NO_MARKER
    found = marker.get(FINGERPRINT_KEY)
    if not found:
        return f"its {SUCCESS_MARKER} has no model fingerprint"
    if found != fingerprint:
        return f"model fingerprint {found}, not {fingerprint}"
    return None


def comparable_days(
    root: str,
    days: Sequence[str],
    fingerprint: str | None,
    needs: Sequence[str],
    exists: Callable[[str], bool],
    read_json: Callable[[str], Any],
) -> History:
    """The `days` under `root` embedded under `fingerprint` whose folders hold `needs`.

    Storage is the caller's (`exists`, `read_json`): each side of the project reads with its own.
    """
    comparable: list[str] = []
    skipped: dict[str, str] = {}
    for day in days:
        folder = join(root, day)
        marker = join(folder, SUCCESS_MARKER)
        reason = why_not_comparable(read_json(marker) if exists(marker) else None, fingerprint)
        if reason is None:
            absent = [name for name in needs if not exists(join(folder, name))]
            reason = f"no {', '.join(absent)}" if absent else None
        if reason is None:
            comparable.append(day)
        else:
            skipped[day] = reason
    return History(days=tuple(comparable), skipped=skipped)
