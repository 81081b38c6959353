"""Which earlier runs a launch reuses from; the day's own earlier run set aside before a rerun."""

from __future__ import annotations

import json
from pathlib import Path

from beam_jobs.image_embeddings.reuse.earlier_runs import (
    ReuseSource,
    candidate_sources,
    reuse_sources,
    set_aside_previous_run,
    why_not_reusable,
    window_folders,
)

FINGERPRINT = "0123456789abcdef"


def finished_run(folder: Path, fingerprint: str = FINGERPRINT, **marker) -> Path:
    """A folder holding what a finished run leaves: two embeddings shards and `_SUCCESS`."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(2):
        (folder / f"embeddings-0000{index}-of-00002.parquet").write_bytes(b"shard %d" % index)
    record = {"images": 2, "model_fingerprint": fingerprint, "reused": 0} | marker
    (folder / "_SUCCESS").write_text(json.dumps(record))
    return folder


def test_the_window_is_the_days_before_the_output_day_beside_it():
    assert window_folders("gs://b/embeddings/2026-03-02/", 3) == [
        "gs://b/embeddings/2026-03-01",
        "gs://b/embeddings/2026-02-28",
        "gs://b/embeddings/2026-02-27",
    ]
    assert window_folders("/out/2026-03-02", 0) == []
    assert window_folders("/out/adhoc", 30) == []
    assert window_folders("/out/2026-02-30", 30) == []


def test_candidates_start_with_the_days_own_earlier_run_and_are_distinct():
    assert candidate_sources("/o/2026-03-02", 1, ["/o/2026-03-01/", "/x/run"]) == [
        ReuseSource("2026-03-02", "/o/2026-03-02/_previous_run"),
        ReuseSource("2026-03-01", "/o/2026-03-01"),
        ReuseSource("run", "/x/run"),
    ]


def test_only_finished_runs_with_digests_and_the_same_fingerprint_are_reusable(tmp_path):
    assert why_not_reusable(str(tmp_path / "none"), FINGERPRINT) == "no _SUCCESS"
    other = finished_run(tmp_path / "other", "fedcba9876543210")
    assert why_not_reusable(str(other), FINGERPRINT) == (
        f"model fingerprint fedcba9876543210, not {FINGERPRINT}"
    )
    older = finished_run(tmp_path / "older")
    (older / "_SUCCESS").write_text(json.dumps({"images": 2, "model_fingerprint": FINGERPRINT}))
    assert why_not_reusable(str(older), FINGERPRINT) == "written before content digests"
    (older / "_SUCCESS").write_text("{not json")
    assert why_not_reusable(str(older), FINGERPRINT) == "_SUCCESS is not JSON"
    assert why_not_reusable(str(finished_run(tmp_path / "good")), FINGERPRINT) is None


def test_reuse_sources_keep_the_matching_runs_of_the_window(tmp_path, caplog):
    caplog.set_level("INFO", logger="beam_jobs.image_embeddings.reuse.earlier_runs")
    root = tmp_path / "embeddings"
    finished_run(root / "2026-03-01")
    finished_run(root / "2026-02-27", "fedcba9876543210")
    finished_run(root / "2026-02-20")  # outside a 3-day window
    extra = finished_run(tmp_path / "backfill")
    output = str(root / "2026-03-02")

    sources = reuse_sources(output, 3, [str(extra), str(tmp_path / "gone")], FINGERPRINT)

    assert sources == [
        ReuseSource("2026-03-01", str(root / "2026-03-01")),
        ReuseSource("backfill", str(extra)),
    ]
    assert "2026-02-27 (model fingerprint fedcba9876543210" in caplog.text
    assert f"{tmp_path / 'gone'} (no _SUCCESS)" in caplog.text
    assert reuse_sources(output, 0, [], FINGERPRINT) == []


def test_the_days_finished_run_is_set_aside_marker_last_and_survives_a_dead_rerun(tmp_path):
    day = finished_run(tmp_path / "2026-03-02")
    aside = day / "_previous_run"

    assert set_aside_previous_run(str(day), FINGERPRINT) is True
    assert sorted(path.name for path in aside.iterdir()) == [
        "_SUCCESS",
        "embeddings-00000-of-00002.parquet",
        "embeddings-00001-of-00002.parquet",
    ]
    assert (aside / "embeddings-00001-of-00002.parquet").read_bytes() == b"shard 1"
    assert (aside / "_SUCCESS").read_text() == (day / "_SUCCESS").read_text()

    # The rerun cleared the day, then died: the next launch keeps what was set aside.
    (day / "_SUCCESS").unlink()
    assert set_aside_previous_run(str(day), FINGERPRINT) is False
    assert (aside / "_SUCCESS").exists()
    assert why_not_reusable(str(aside), FINGERPRINT) is None
    # A run under another model is not set aside.
    other = finished_run(tmp_path / "2026-03-03", "fedcba9876543210")
    assert set_aside_previous_run(str(other), FINGERPRINT) is False
    assert not (other / "_previous_run").exists()
