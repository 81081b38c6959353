"""Comparable earlier days, as reuse, the day's analysis and search all choose them."""

from __future__ import annotations

import json
import os
from pathlib import Path

from beam_jobs.image_embeddings.comparable import (
    NO_MARKER,
    comparable_days,
    why_not_comparable,
    window,
)

FINGERPRINT = "0123456789abcdef"


def read_json(path: str):
    return json.loads(Path(path).read_text())


def finished_day(root: Path, day: str, *names: str, **marker) -> None:
    folder = root / day
    folder.mkdir(parents=True)
    (folder / "_SUCCESS").write_text(json.dumps(marker))
    for name in names:
        (folder / name).write_bytes(b"")


def test_the_window_is_the_days_before_newest_first_across_a_month():
    assert window("2026-12-02", 3) == ["2026-12-01", "2026-11-30", "2026-11-29"]
    assert window("2026-12-02", 0) == []


def test_a_marker_is_comparable_only_with_the_same_fingerprint():
    assert why_not_comparable({"model_fingerprint": FINGERPRINT}, FINGERPRINT) is None
    assert why_not_comparable(None, FINGERPRINT) == NO_MARKER
    assert why_not_comparable({}, FINGERPRINT) == "its _SUCCESS has no model fingerprint"
    other = {"model_fingerprint": "ffff"}
    assert why_not_comparable(other, FINGERPRINT) == f"model fingerprint ffff, not {FINGERPRINT}"
    assert why_not_comparable(other, None) == "model fingerprint ffff, not None"


def test_each_day_is_comparable_or_skipped_with_its_reason(tmp_path):
    finished_day(tmp_path, "2026-11-27", "pca.npz", model_fingerprint=FINGERPRINT)
    finished_day(tmp_path, "2026-11-26", model_fingerprint=FINGERPRINT)
    finished_day(tmp_path, "2026-11-25", "pca.npz", model_fingerprint="ffff")
    finished_day(tmp_path, "2026-11-23", "pca.npz", model_fingerprint=FINGERPRINT)
    days = window("2026-11-28", 5)
    found = comparable_days(
        str(tmp_path), days, FINGERPRINT, ("pca.npz",), os.path.exists, read_json
    )
    assert found.days == ("2026-11-27", "2026-11-23")
    assert found.skipped == {
        "2026-11-26": "no pca.npz",
        "2026-11-25": f"model fingerprint ffff, not {FINGERPRINT}",
        "2026-11-24": NO_MARKER,
    }
