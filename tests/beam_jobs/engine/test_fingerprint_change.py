"""A day's fingerprint against the newest earlier finished day's: recorded, logged if changed."""

from __future__ import annotations

import json
import logging

from beam_jobs.image_embeddings.engine.fingerprint_change import previous_fingerprint


def finish(folder, fingerprint: str | None) -> None:
    folder.mkdir(parents=True)
    marker = {"embedded": 1} | ({"model_fingerprint": fingerprint} if fingerprint else {})
    (folder / "_SUCCESS").write_text(json.dumps(marker))


def test_the_newest_finished_day_is_compared(tmp_path, caplog):
    finish(tmp_path / "2026-12-01", "aaaa")
    finish(tmp_path / "2026-12-02", "bbbb")
    (tmp_path / "2026-12-03").mkdir()  # started, never finished
    today = str(tmp_path / "2026-12-04")
    assert previous_fingerprint(today, 30, "bbbb") == {
        "day": "2026-12-02",
        "fingerprint": "bbbb",
        "changed": False,
    }
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        changed = previous_fingerprint(today, 30, "cccc")
    assert changed == {"day": "2026-12-02", "fingerprint": "bbbb", "changed": True}
    assert "cccc differs from bbbb of 2026-12-02" in caplog.text


def test_no_earlier_day_in_the_window_gives_none(tmp_path):
    finish(tmp_path / "2026-11-01", "aaaa")
    finish(tmp_path / "2026-12-03", None)  # written before fingerprints
    assert previous_fingerprint(str(tmp_path / "2026-12-04"), 30, "aaaa") is None
    assert previous_fingerprint(str(tmp_path / "not-a-day"), 30, "aaaa") is None
