"""The days under OUTPUT_ROOT and what each one's outputs say: counts, failures, drift, model
changes, status."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

from beam_jobs.image_embeddings.contract import (
    DRIFT_NAME,
    REPORT_HTML_NAME,
    SUCCESS_MARKER,
    drift_verdict,
    join,
)
from beam_jobs.image_embeddings.marker import fingerprint_change
from image_embeddings_airflow import storage
from image_embeddings_airflow.dag.validation import REPORT_NAME
from image_embeddings_airflow.settings import day_dir, validate_date

# What a day's folder holds, from least to most finished.
STATUS_INCOMPLETE = "incomplete"  # no `_SUCCESS`: running, failed, or cleared
STATUS_EMBEDDED = "embedded"  # the pipeline finished; not validated yet
STATUS_INVALID = "validation failed"
STATUS_VALIDATED = "validated"  # validated; no report yet
STATUS_REPORTED = "reported"


@dataclass(frozen=True)
class DaySummary:
    """One row of the days' list."""

    day: str
    status: str
    images: int | None = None
    embedded: int | None = None
    failed: int | None = None
    drift: str | None = None
    model_change: str | None = None

    @property
    def failure_rate(self) -> float | None:
        return self.failed / self.images if self.images else None

    @property
    def has_report(self) -> bool:
        return self.status == STATUS_REPORTED


def _json_if_listed(folder: str, name: str, listed: set[str]) -> Any:
    return storage.read_json(join(folder, name)) if name in listed else None


def _status(listed: set[str], validation: dict[str, Any] | None) -> str:
    if REPORT_HTML_NAME in listed:
        return STATUS_REPORTED
    if validation is None:
        return STATUS_EMBEDDED
    return STATUS_VALIDATED if validation.get("ok") else STATUS_INVALID


def summarize_day(output_root: str, day: str) -> DaySummary:
    """What the folder of `day` (YYYY-MM-DD) under `output_root` says about its run: one listing
    of the folder, then only the small files it holds (at most 4 storage requests)."""
    folder = day_dir(output_root, day)
    listed = {posixpath.basename(uri) for uri in storage.list_files(folder, recursive=False)}
    marker = _json_if_listed(folder, SUCCESS_MARKER, listed)
    if marker is None:
        return DaySummary(day, STATUS_INCOMPLETE)
    return DaySummary(
        day=day,
        status=_status(listed, _json_if_listed(folder, REPORT_NAME, listed)),
        images=marker.get("images"),
        embedded=marker.get("embedded"),
        failed=marker.get("failed"),
        drift=drift_verdict(_json_if_listed(folder, DRIFT_NAME, listed)),
        model_change=fingerprint_change(marker),
    )


def is_day(name: str) -> bool:
    try:
        validate_date(name)
    except ValueError:
        return False
    return True


def day_names(output_root: str) -> list[str]:
    """The day folders under `output_root`, newest first, from one listing of folder names only;
    other folders are left out."""
    return sorted((name for name in storage.subfolders(output_root) if is_day(name)), reverse=True)


def report_uri(output_root: str, day: str) -> str:
    """The report of `day`; raises ValueError unless `day` is a calendar day (YYYY-MM-DD)."""
    return join(day_dir(output_root, day), REPORT_HTML_NAME)
