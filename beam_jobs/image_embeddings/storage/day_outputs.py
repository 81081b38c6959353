"""Replacing what a day's output folder holds: one routine deletes and reports what it could not."""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import posixpath
from collections.abc import Callable, Collection, Iterable

from beam_jobs.image_embeddings.contract import (
    EMBEDDINGS_PREFIX,
    FAILURES_PREFIX,
    LEASE_NAME,
    PREVIOUS_RUN_FOLDER,
    SHARD_SUFFIX,
    SUCCESS_MARKER,
)

LOGGER = logging.getLogger(__name__)

# Beam's file sinks stage each write in `<output>/beam-temp-<prefix>-<uuid>/`.
TEMP_FOLDERS = "beam-temp-*"
# How many undeletable paths an error message names; the count is always complete.
NAMED_FAILURES = 10


class DeletionFailed(RuntimeError):
    """Some files of a day's folder could not be deleted: `failures` holds (path, reason)."""

    def __init__(self, output: str, failures: list[tuple[str, str]]) -> None:
        self.failures = failures
        named = "; ".join(f"{path}: {reason}" for path, reason in failures[:NAMED_FAILURES])
        more = (
            f" and {len(failures) - NAMED_FAILURES} more" if len(failures) > NAMED_FAILURES else ""
        )
        super().__init__(
            f"could not delete {len(failures)} files of an earlier run in {output}: {named}{more}; "
            "fix their permissions or remove them, then run the day again"
        )


def relative(output: str, path: str) -> str:
    """`path` relative to the folder `output` (both URIs or both local paths)."""
    return path[len(output.rstrip("/")) + 1 :]


def is_reusable_run(name: str) -> bool:
    """The earlier run's marker and shards, and what a rerun set aside: what reuse reads."""
    return name == SUCCESS_MARKER or is_shard(name) or name.startswith(PREVIOUS_RUN_FOLDER + "/")


def all_but_reusable_run(name: str) -> bool:
    """Staging: reports, plots and Beam's staging folders go; the earlier run stays until the
    launch has set it aside for reuse (and then replaces it)."""
    return not is_reusable_run(name)


def is_shard(name: str) -> bool:
    return any(
        fnmatch.fnmatchcase(name, f"{prefix}-*{SHARD_SUFFIX}")
        for prefix in (EMBEDDINGS_PREFIX, FAILURES_PREFIX)
    )


def is_beam_temp(name: str) -> bool:
    return fnmatch.fnmatchcase(name.split("/", 1)[0], TEMP_FOLDERS) and "/" in name


def earlier_run(name: str) -> bool:
    """Launch: what an earlier pipeline run wrote (marker, shards, Beam's staging folders).

    Beam's file sink keeps a final shard that already exists with its own checksum (for local
    files: size) and reports no path for it, so a rerun would keep the earlier run's shard.
    """
    return name == SUCCESS_MARKER or is_shard(name) or is_beam_temp(name)


def not_written_by(written: Collection[str]) -> Callable[[str], bool]:
    """Commit: shards and staging folders that are not this run's `written` shard names."""
    kept = frozenset(written)

    def stale(name: str) -> bool:
        return (is_shard(name) and name not in kept) or is_beam_temp(name)

    return stale


def remove(
    output: str,
    listing: Iterable[str],
    delete: Callable[[str], object],
    selected: Callable[[str], bool],
) -> list[str]:
    """Delete the files of `listing` (files under `output`) whose relative name is `selected`.

    `_SUCCESS` goes first, so no reader takes a half-replaced folder as complete; the lease
    (`_LEASE`) is never deleted. Every failure is collected, the rest still deleted, then
    DeletionFailed names them. Local folders left empty by the deletions are removed.
    Returns the deleted paths.
    """
    marker = posixpath.join(output.rstrip("/"), SUCCESS_MARKER)
    # A day's output folder holds a few dozen files (shards, reports): the list is small.
    chosen = sorted(
        (path for path in listing if _deletable(relative(output, path), selected)),
        key=lambda path: path != marker,
    )
    deleted, failures = [], []
    for path in chosen:
        try:
            delete(path)
        except Exception as error:
            failures.append((path, f"{type(error).__name__}: {error}"))
        else:
            deleted.append(path)
    if not output.startswith("gs://"):
        failures += _remove_empty_folders(output, selected)
    if deleted:
        LOGGER.info("removed %d files of an earlier run from %s", len(deleted), output)
    if failures:
        raise DeletionFailed(output, failures)
    return deleted


def _deletable(name: str, selected: Callable[[str], bool]) -> bool:
    # The lease, and the partial files a lease is written through, belong to whoever holds the day.
    return not name.startswith(LEASE_NAME) and selected(name)


def _remove_empty_folders(output: str, selected: Callable[[str], bool]) -> list[tuple[str, str]]:
    failures = []
    for folder, _, files in os.walk(output, topdown=False):
        name = relative(output, folder)
        if folder.rstrip("/") == output.rstrip("/") or files or not selected(name + "/"):
            continue
        try:
            os.rmdir(folder)
        except OSError as error:
            if error.errno != errno.ENOTEMPTY:  # a kept file below it
                failures.append((folder, f"{type(error).__name__}: {error}"))
    return failures
