"""Earlier runs a launch may reuse embeddings from: the day's own earlier run and the lookback."""

from __future__ import annotations

import logging
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from beam_jobs.image_embeddings.comparable import NO_MARKER, why_not_comparable, window
from beam_jobs.image_embeddings.contract import (
    EMBEDDINGS_PREFIX,
    PREVIOUS_RUN_FOLDER,
    REUSE_KEYS,
    SUCCESS_MARKER,
    join,
    shard_glob,
)
from beam_jobs.image_embeddings.marker import NoMarker, success_record
from beam_jobs.image_embeddings.storage import io

LOGGER = logging.getLogger(__name__)

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class ReuseSource:
    """A finished earlier run: its output folder, and the day its copied rows name."""

    day: str
    folder: str

    @property
    def embeddings(self) -> str:
        return shard_glob(self.folder, EMBEDDINGS_PREFIX)


def folder_name(folder: str) -> str:
    """The last part of a folder's path: under OUTPUT_ROOT, the day."""
    return posixpath.basename(folder.rstrip("/"))


def window_folders(output: str, days: int) -> list[str]:
    """The folders of the `days` days before the output's day, newest first, beside it.

    None when the output folder is not named after a day (YYYY-MM-DD).
    """
    name = folder_name(output)
    if not _DAY.fullmatch(name):
        return []
    try:
        day = date.fromisoformat(name)
    except ValueError:
        return []
    parent = posixpath.dirname(output.rstrip("/"))
    return [join(parent, other) for other in window(day.isoformat(), days)]


def why_not_reusable(folder: str, fingerprint: str) -> str | None:
    """Why the run in `folder` cannot lend its embeddings, or None when it can."""
    try:
        record = success_record(folder, io)
    except NoMarker:
        return NO_MARKER
    except ValueError:
        return f"{SUCCESS_MARKER} is not JSON"
    if not isinstance(record, dict) or any(key not in record for key in REUSE_KEYS):
        return "written before content digests"
    return why_not_comparable(record, fingerprint)


def set_aside_previous_run(output: str, fingerprint: str) -> bool:
    """Copy the day's finished earlier run (embeddings, then its marker) into PREVIOUS_RUN_FOLDER,
    before the launch clears the day; True when it did.

    The copied marker comes last, so a folder without one was cut short and is never read. When
    the day has no reusable run (a rerun died after clearing it), what that rerun set aside stays.
    """
    if why_not_reusable(output, fingerprint) is not None:
        return False
    aside = join(output, PREVIOUS_RUN_FOLDER)
    io.delete_folders(io.folders_matching(output, PREVIOUS_RUN_FOLDER))
    shards = io.matching(shard_glob(output, EMBEDDINGS_PREFIX))
    io.copy(shards, [join(aside, posixpath.basename(shard)) for shard in shards])
    io.copy([join(output, SUCCESS_MARKER)], [join(aside, SUCCESS_MARKER)])
    LOGGER.info("set the earlier run's %d embeddings shards aside in %s", len(shards), aside)
    return True


def candidate_sources(output: str, days: int, extra: Sequence[str]) -> list[ReuseSource]:
    """Every run a launch may reuse from, distinct: the day's own (set aside), the window, extra."""
    candidates = [ReuseSource(folder_name(output), join(output, PREVIOUS_RUN_FOLDER))]
    candidates += [ReuseSource(folder_name(f), f.rstrip("/")) for f in window_folders(output, days)]
    candidates += [ReuseSource(folder_name(f), f.rstrip("/")) for f in extra]
    return list(dict.fromkeys(candidates))


def reuse_sources(
    output: str, days: int, extra: Sequence[str], fingerprint: str
) -> list[ReuseSource]:
    """The finished runs under `fingerprint` among the candidates; logs which are not and why.

    No lookback (`days` 0) and no `extra` folders: no reuse at all.
    """
    if days == 0 and not extra:
        LOGGER.info("reuse is off: every image goes through the model")
        return []
    named = {folder.rstrip("/") for folder in extra}
    sources, refused = [], []
    for source in candidate_sources(output, days, extra):
        reason = why_not_reusable(source.folder, fingerprint)
        if reason is None:
            sources.append(source)
        elif reason != NO_MARKER or source.folder in named:
            refused.append(f"{source.folder} ({reason})")
    LOGGER.info(
        "reusing embeddings of %d earlier runs with fingerprint %s: %s",
        len(sources),
        fingerprint,
        ", ".join(source.folder for source in sources) or "none found",
    )
    if refused:
        LOGGER.info("not reusing: %s", "; ".join(refused))
    return sources
