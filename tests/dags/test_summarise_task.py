"""`wait_analysis` and `summarise` on a day the analysis job finished: `_ANALYSED` read, the
summary and the report's place logged, a drifted day warns, or fails (its report written) when
asked."""

from __future__ import annotations

import logging

import pytest
from airflow.sdk.exceptions import AirflowFailException

from beam_jobs.image_embeddings.analysis.day_index import write_day_index
from beam_jobs.image_embeddings.analysis.job import run
from beam_jobs.image_embeddings.contract import ANALYSIS_MARKER, REPORT_HTML_NAME
from beam_jobs.image_embeddings.storage import lease
from image_embeddings_airflow import storage
from image_embeddings_airflow.dag.tasks import read_analysis_marker, summarise
from image_embeddings_airflow.dag.validation import REPORT_NAME
from tests.beam_jobs.analysis.test_drift import different_imagery, imagery, write_history
from tests.beam_jobs.analysis.test_duplicates import digests_of, write_day

DAY = "2026-11-28"
HOLDER = "dag:image_embeddings:manual__2026-11-28"
EARLIER = ["2026-11-27", "2026-11-26", "2026-11-25"]


def plan_for(folder: str, drift_fails: bool) -> dict:
    return {"output_dir": folder, "day": DAY, "drift_fails": drift_fails}


def analysed_day(root: str, vectors) -> str:
    """Day D embedded, validated and analysed by the job under the run's lease."""
    folder = f"{root}/{DAY}"
    write_day(root, DAY, vectors, digests_of(DAY, len(vectors)))
    storage.write_json(f"{folder}/{REPORT_NAME}", {"ok": True})
    token = lease.acquire(folder, HOLDER, lease.DEFAULT_TTL).token
    run(
        [
            f"--output={folder}",
            "--pca_components=8",
            "--pca_sample_size=1000",
            f"--lease_holder={HOLDER}",
            f"--lease_token={token}",
            "--direct_num_workers=1",
        ]
    )
    return folder


@pytest.fixture
def root(tmp_path) -> str:
    root = write_history(str(tmp_path / "embeddings"))
    for day in EARLIER:
        write_day_index(f"{root}/{day}")
    return root


def marker_of(folder: str) -> dict:
    return storage.read_json(f"{folder}/_SUCCESS")


def test_a_stable_day_is_summarised_from_its_analysis(root, caplog):
    folder = analysed_day(root, imagery(300, seed=11))

    analysed = read_analysis_marker(folder)
    with caplog.at_level(logging.INFO):
        summary = summarise(plan_for(folder, True), marker_of(folder), analysed)

    assert summary["report"] == f"{folder}/{REPORT_HTML_NAME}"
    assert "<html" in storage.read_bytes(summary["report"]).decode()
    assert summary["index"] == f"{folder}/neighbours.faiss"
    assert summary["drift"]["verdict"] == "stable"
    assert summary["drift"]["reference_days"] == EARLIER
    counts = storage.read_json(f"{folder}/{REPORT_NAME}")["duplicates"]
    assert counts["days_compared"] == EARLIER
    assert summary["duplicates"] == {key: counts[key] for key in ("exact", "near", "images")}
    # Distinct digests: no exact copies (near ones depend on how alike the synthetic images are).
    assert counts["exact"] == 0
    assert summary["images"] == 300 and summary["model"] == "resnet50"
    assert f"Report of day {DAY}: {folder}/{REPORT_HTML_NAME}" in caplog.text


def test_a_drifted_day_warns(root, caplog):
    folder = analysed_day(root, different_imagery(300, seed=12))

    with caplog.at_level(logging.WARNING):
        summary = summarise(
            plan_for(folder, False), marker_of(folder), read_analysis_marker(folder)
        )

    assert summary["drift"]["verdict"] == "drift" and summary["drift"]["relative_frechet"] > 0.2
    assert f"Day {DAY} drifted from {', '.join(EARLIER)}" in caplog.text


def test_a_drifted_day_fails_when_asked_with_its_report_written(root):
    folder = analysed_day(root, different_imagery(300, seed=12))

    with pytest.raises(AirflowFailException, match="IMAGE_EMBEDDINGS_DRIFT_FAILS is true"):
        summarise(plan_for(folder, True), marker_of(folder), read_analysis_marker(folder))

    assert storage.exists(f"{folder}/{REPORT_HTML_NAME}")
    assert storage.read_json(f"{folder}/drift.json")["verdict"] == "drift"


def test_a_day_the_analysis_did_not_finish_fails_clearly(root):
    folder = f"{root}/{EARLIER[0]}"

    with pytest.raises(AirflowFailException, match=f"{ANALYSIS_MARKER} is missing"):
        read_analysis_marker(folder)
