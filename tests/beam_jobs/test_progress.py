"""Progress and summary lines: done/total, rate, ETA, read the way an operator reads them."""

from __future__ import annotations

import logging
import time

import pytest

from beam_jobs.image_embeddings.progress import (
    TALLY,
    ProgressReporter,
    format_duration,
    progress_line,
    summary_line,
    worker_line,
)


@pytest.mark.parametrize(
    ("seconds", "shown"), [(0, "0s"), (42.4, "42s"), (185, "3m05s"), (7620, "2h07m")]
)
def test_format_duration(seconds, shown):
    assert format_duration(seconds) == shown


def test_progress_line_gives_rate_and_eta():
    assert progress_line(120, 500, busy_s=10.0, elapsed_s=25.0) == (
        "progress: 120/500 images (24%), 12.0 images/s, ETA 32s"
    )


def test_progress_line_before_the_first_result_and_right_after_it():
    assert progress_line(0, 500, busy_s=0.0, elapsed_s=12.0) == (
        "progress: 0/500 images, waiting for the first results, 12s elapsed"
    )
    # The first batch lands all at once: no absurd rate from a few milliseconds.
    assert progress_line(32, 500, busy_s=0.01, elapsed_s=20.0) == (
        "progress: 32/500 images (6%), rate not measured yet, ETA unknown"
    )


def test_progress_line_without_a_total():
    assert progress_line(50, None, busy_s=5.0, elapsed_s=9.0) == (
        "progress: 50 images done, 10.0 images/s"
    )


def test_worker_line_says_it_is_one_process_share():
    assert worker_line(4242, 40, 500, busy_s=8.0) == (
        "progress in worker process 4242: 40 images done here (of 500 in the job), 5.0 images/s"
    )


def test_summary_line():
    marker = {"images": 103, "embedded": 100, "failed": 3, "duplicates": 2, "duration_s": 20.6}
    assert summary_line(marker, {"count": 4, "mean": 25.0}) == (
        "summary: 103 images, 100 embedded, 3 failed, 2 duplicate manifest lines; "
        "5.0 images/s over 21s; 4 batches of 25.0 images on average"
    )
    assert summary_line(marker | {"reused": 80}).endswith(
        "over 21s; 80 embeddings reused from earlier runs"
    )


def test_reporter_logs_the_tally_at_each_interval(caplog):
    caplog.set_level(logging.INFO, logger="beam_jobs.image_embeddings.progress")
    with ProgressReporter(total=10, interval_s=0.05):
        TALLY.add(4)
        time.sleep(0.3)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress: ")]
    assert len(lines) >= 2
    assert all(line.startswith("progress: 4/10 images (40%)") for line in lines)
