"""Reading a run's `_SUCCESS` record, through whichever storage layer the reader uses."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

from beam_jobs.image_embeddings.contract import PREVIOUS_FINGERPRINT_KEY, SUCCESS_MARKER, join


class Files(Protocol):
    """What reading the marker needs of a storage layer (the Beam side's io, the Airflow side's)."""

    def exists(self, uri: str) -> bool: ...

    def read_bytes(self, uri: str) -> bytes: ...


class NoMarker(FileNotFoundError):
    """The folder has no `_SUCCESS`: its run is in progress, failed or never ran."""


def marker_uri(folder: str) -> str:
    return join(folder, SUCCESS_MARKER)


def success_record(folder: str, files: Files) -> dict[str, Any]:
    """The `_SUCCESS` record of the finished run in `folder`; NoMarker when there is none."""
    uri = marker_uri(folder)
    if not files.exists(uri):
        raise NoMarker(f"{uri} is missing")
    return json.loads(files.read_bytes(uri))


def fingerprint_change(marker: Mapping[str, Any]) -> str | None:
    """What changed, when the day's model fingerprint is not the previous finished day's: its
    embeddings are then not comparable with earlier ones (reuse, duplicates, drift, search)."""
    previous = marker.get(PREVIOUS_FINGERPRINT_KEY) or {}
    if not previous.get("changed"):
        return None
    return f"changed since {previous['day']} (was {previous['fingerprint']})"
