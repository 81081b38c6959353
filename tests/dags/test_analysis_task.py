"""The reduce task's analysis: index, duplicates, drift; a drifted day warns, or fails if asked."""

from __future__ import annotations

import logging

import pytest
from airflow.sdk.exceptions import AirflowFailException

from beam_jobs.image_embeddings.analysis.day_index import write_day_index
from image_embeddings_airflow import storage
from image_embeddings_airflow.dag.tasks import analyse
from image_embeddings_airflow.dag.validation import REPORT_NAME
from tests.beam_jobs.analysis.test_drift import (
    different_imagery,
    imagery,
    prepared_day,
    write_history,
)
from tests.beam_jobs.analysis.test_duplicates import FINGERPRINT


def plan_for(folder: str, day: str, drift_fails: bool) -> dict:
    return {
        "output_dir": folder,
        "day": day,
        "duplicate_threshold": 0.95,
        "lookback_days": 30,
        "drift_reference_days": 7,
        "drift_threshold": 0.2,
        "drift_fails": drift_fails,
    }


@pytest.fixture
def root(tmp_path) -> str:
    root = write_history(str(tmp_path / "embeddings"))
    for day in ("2026-11-25", "2026-11-26", "2026-11-27"):
        write_day_index(f"{root}/{day}")
    return root


def test_a_stable_day_gets_its_index_duplicates_and_drift(root):
    folder = prepared_day(root, "2026-11-28", imagery(300, seed=11))
    storage.write_json(f"{folder}/{REPORT_NAME}", {"ok": True})

    extra = analyse(plan_for(folder, "2026-11-28", True), {"model_fingerprint": FINGERPRINT})

    assert extra["index"] == f"{folder}/neighbours.faiss"
    earlier = ["2026-11-27", "2026-11-26", "2026-11-25"]
    assert extra["drift"]["verdict"] == "stable" and extra["drift"]["reference_days"] == earlier
    report = storage.read_json(f"{folder}/{REPORT_NAME}")
    assert report["ok"] is True and report["duplicates"]["days_compared"] == earlier
    counts = report["duplicates"]
    assert extra["duplicates"] == {key: counts[key] for key in ("exact", "near", "images")}
    # Distinct digests: no exact copies (near ones depend on how alike the synthetic images are).
    assert counts["exact"] == 0


def test_a_drifted_day_warns(root, caplog):
    folder = prepared_day(root, "2026-11-28", different_imagery(300, seed=12))

    with caplog.at_level(logging.WARNING):
        extra = analyse(plan_for(folder, "2026-11-28", False), {"model_fingerprint": FINGERPRINT})

    assert extra["drift"]["verdict"] == "drift" and extra["drift"]["relative_frechet"] > 0.2
    assert "Day 2026-11-28 drifted from 2026-11-27, 2026-11-26, 2026-11-25" in caplog.text


def test_a_drifted_day_fails_when_asked(root):
    folder = prepared_day(root, "2026-11-28", different_imagery(300, seed=12))

    with pytest.raises(AirflowFailException, match="IMAGE_EMBEDDINGS_DRIFT_FAILS is true"):
        analyse(plan_for(folder, "2026-11-28", True), {"model_fingerprint": FINGERPRINT})

    assert storage.read_json(f"{folder}/drift.json")["verdict"] == "drift"
