"""Observability: Beam metrics, periodic progress lines with rate and ETA, the final summary."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.runners.runner import PipelineResult

from beam_jobs.image_embeddings.contract import METRICS_NAMESPACE

LOGGER = logging.getLogger(__name__)

# LoadImageFn counts `loaded` and `failed_<stage>` of its own; RunInference reports its batch
# sizes and latencies under the same namespace.
BATCH_SIZE_METRIC = "inference_request_batch_size"
EMBEDDED = Metrics.counter(METRICS_NAMESPACE, "embedded")


def failed_counter(stage: str):
    """Counter of entries that failed at `stage` (one of contract.STAGES)."""
    return Metrics.counter(METRICS_NAMESPACE, f"failed_{stage}")


def format_duration(seconds: float) -> str:
    """`42s`, `3m05s`, `2h07m`: short and readable in a log line."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


# A rate measured over less time than this is mostly noise: the first batch lands all at once.
MIN_RATE_WINDOW_S = 1.0


def rate_text(done: int, busy_s: float) -> tuple[float | None, str]:
    """Images per second over `busy_s` (None while too short to tell), and how to print it."""
    if busy_s < MIN_RATE_WINDOW_S:
        return None, "rate not measured yet"
    rate = done / busy_s
    return rate, f"{rate:.1f} images/s"


def progress_line(done: int, total: int | None, busy_s: float, elapsed_s: float) -> str:
    """One progress line: done/total, images per second over `busy_s`, ETA at that rate.

    `busy_s` is the time since the first image finished, so start-up (imports, model load) does
    not drag the rate down; `elapsed_s` is the time since launch.
    """
    if done == 0:
        waited = format_duration(elapsed_s)
        return f"progress: 0/{total or '?'} images, waiting for the first results, {waited} elapsed"
    rate, rate_shown = rate_text(done, busy_s)
    if not total:
        return f"progress: {done} images done, {rate_shown}"
    percent = 100.0 * done / total
    eta = format_duration((total - done) / rate) if rate else "unknown"
    return f"progress: {done}/{total} images ({percent:.0f}%), {rate_shown}, ETA {eta}"


def worker_line(pid: int, done: int, total: int | None, busy_s: float) -> str:
    """A worker process's own progress, for runners where the launcher cannot see it."""
    of_total = f" (of {total} in the job)" if total else ""
    return (
        f"progress in worker process {pid}: {done} images done here{of_total}, "
        + (rate_text(done, busy_s)[1])
    )


def summary_line(marker: Mapping[str, Any], batches: Mapping[str, float] | None = None) -> str:
    """The end-of-run line: counts, throughput and duration from the `_SUCCESS` record."""
    duration = float(marker["duration_s"])
    rate = marker["images"] / duration if duration > 0 else 0.0
    line = (
        f"summary: {marker['images']} images, {marker['embedded']} embedded, "
        f"{marker['failed']} failed, {marker['duplicates']} duplicate manifest lines; "
        f"{rate:.1f} images/s over {format_duration(duration)}"
    )
    if marker.get("reused"):
        line += f"; {marker['reused']} embeddings reused from earlier runs"
    if batches and batches.get("count"):
        line += f"; {batches['count']} batches of {batches['mean']:.1f} images on average"
    return line


class _Tally:
    """Entries finished in this process since the last reset, and when the first one finished."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.done = 0
            self.first_at: float | None = None
            self.logged_at = time.monotonic()

    def add(self, count: int = 1) -> None:
        with self._lock:
            if self.first_at is None:
                self.first_at = time.monotonic()
            self.done += count

    def snapshot(self) -> tuple[int, float | None]:
        with self._lock:
            return self.done, self.first_at

    def due(self, interval_s: float) -> bool:
        """True at most once per `interval_s`: whether a worker-side line should be logged now."""
        with self._lock:
            now = time.monotonic()
            if now - self.logged_at < interval_s:
                return False
            self.logged_at = now
            return True


TALLY = _Tally()


class TrackProgress(beam.DoFn):
    """Counts each finished entry (embedded or failed) in this process's tally.

    In the launcher's own process (the DirectRunner's in-memory and multi-threading modes) the
    launcher's `ProgressReporter` turns the tally into job-wide lines. Elsewhere (multi-process
    DirectRunner, Dataflow workers) the launcher cannot see it, so each worker process logs its
    own share instead.
    """

    def __init__(self, total: int | None, interval_s: float, launcher_pid: int) -> None:
        self._total = total
        self._interval_s = interval_s
        self._launcher_pid = launcher_pid

    def process(self, element: Any) -> None:
        TALLY.add()
        if os.getpid() != self._launcher_pid and TALLY.due(self._interval_s):
            done, first_at = TALLY.snapshot()
            busy = time.monotonic() - first_at if first_at is not None else 0.0
            LOGGER.info(worker_line(os.getpid(), done, self._total, busy))


class ProgressReporter:
    """Logs a progress line every `interval_s` from a background thread while the job runs."""

    def __init__(self, total: int | None, interval_s: float) -> None:
        self._total = total
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._started_at = 0.0

    def __enter__(self) -> ProgressReporter:
        TALLY.reset()
        self._started_at = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def line(self) -> str:
        done, first_at = TALLY.snapshot()
        now = time.monotonic()
        busy = now - first_at if first_at is not None else 0.0
        return progress_line(done, self._total, busy, now - self._started_at)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            LOGGER.info(self.line())


def batch_size_stats(result: PipelineResult) -> dict[str, float] | None:
    """Count and mean of RunInference's batch sizes from the job's metrics, when reported."""
    query = result.metrics().query(
        MetricsFilter().with_namespace(METRICS_NAMESPACE).with_name(BATCH_SIZE_METRIC)
    )
    distributions = query.get("distributions", [])
    count = sum(d.committed.count for d in distributions if d.committed)
    total = sum(d.committed.sum for d in distributions if d.committed)
    if not count:
        return None
    return {"count": count, "mean": total / count}
