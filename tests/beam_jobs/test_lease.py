"""The day lease on a local disk and on gs:// (emulator): one holder, refusals, expiry, release."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from datetime import timedelta

import pytest

from beam_jobs.image_embeddings import lease
from beam_jobs.image_embeddings.contract import LEASE_NAME

HOUR = timedelta(hours=1)
# A process that takes a day for itself and exits without giving it back, as a killed run.
LEASE_IN_CHILD = """
import sys
from beam_jobs.image_embeddings import lease
taken = lease.acquire(sys.argv[1], "cli:child", process_bound=True)
print(taken.record.to_bytes().decode())
"""


@pytest.fixture(params=["local", "gcs"])
def day(request, tmp_path):
    """(day folder, storage client or None) on a local disk or in the emulator's bucket."""
    if request.param == "local":
        return str(tmp_path / "embeddings" / "2026-11-28"), None
    bucket = request.getfixturevalue("gcs_bucket")
    return f"gs://{bucket.name}/embeddings/2026-11-28", bucket.client


def _read(output: str, client) -> dict:
    if client is None:
        with open(f"{output}/{LEASE_NAME}") as handle:
            return json.load(handle)
    bucket, _, folder = output.removeprefix("gs://").partition("/")
    return json.loads(client.bucket(bucket).blob(f"{folder}/{LEASE_NAME}").download_as_bytes())


def test_a_second_holder_is_refused_with_the_holders_name(day):
    output, client = day
    first = lease.acquire(output, "dag:image_embeddings:scheduled__2026-11-28", HOUR, client)

    with pytest.raises(lease.LeaseHeld, match="scheduled__2026-11-28") as refused:
        lease.acquire(output, "dag:image_embeddings:manual__1", HOUR, client)

    assert first.created
    assert str(refused.value).startswith(f"day folder {output} is being written by dag:")
    assert _read(output, client)["holder"] == "dag:image_embeddings:scheduled__2026-11-28"


def test_the_holder_renews_its_own_lease_without_taking_it_over(day):
    output, client = day
    lease.acquire(output, "run-a", HOUR, client)

    renewed = lease.acquire(output, "run-a", 2 * HOUR, client)

    assert not renewed.created
    assert _read(output, client)["expires_at"] == renewed.record.expires_at
    lease.check_held(output, "run-a", client)
    with pytest.raises(lease.LeaseHeld):
        lease.check_held(output, "run-b", client)


def test_an_expired_lease_is_taken_over(day, caplog, monkeypatch):
    output, client = day
    # Airflow's logging configuration, loaded by earlier tests of this process, may disable or
    # detach loggers created before it; this test reads the lease's own warning.
    monkeypatch.setattr(lease.LOGGER, "disabled", False)
    monkeypatch.setattr(lease.LOGGER, "propagate", True)
    caplog.set_level(logging.WARNING, logger=lease.LOGGER.name)
    lease.acquire(output, "killed-run", timedelta(seconds=-1), client)

    taken = lease.acquire(output, "next-run", HOUR, client)

    assert taken.created
    assert _read(output, client)["holder"] == "next-run"
    assert "the lease of killed-run (pid" in caplog.text


def test_the_lease_of_a_dead_command_is_taken_over_at_once(tmp_path):
    output = str(tmp_path / "day")
    finished = subprocess.run(
        [sys.executable, "-c", LEASE_IN_CHILD, output], capture_output=True, text=True, check=True
    )
    dead = json.loads(finished.stdout)

    taken = lease.acquire(output, "next-run", HOUR)

    assert dead["process_bound"] and dead["holder"] == "cli:child"
    assert taken.created
    assert _read(output, None)["holder"] == "next-run"


def test_the_lease_of_a_live_command_holds(tmp_path):
    output = str(tmp_path / "day")
    lease.acquire(output, "cli:this-process", HOUR, process_bound=True)

    with pytest.raises(lease.LeaseHeld, match="cli:this-process"):
        lease.acquire(output, "next-run", HOUR)


def test_release_gives_the_day_back_only_to_its_holder(day):
    output, client = day
    taken = lease.acquire(output, "run-a", HOUR, client)

    assert lease.release_held(output, "run-b", client) is False
    assert lease.release(taken, client) is True
    assert lease.acquire(output, "run-b", HOUR, client).created
    assert _read(output, client)["holder"] == "run-b"


def test_a_late_release_leaves_the_next_holders_lease_alone(tmp_path):
    """Local only: gcp-storage-emulator ignores generation preconditions (ifGenerationMatch),
    so on it a delete of an older generation succeeds; real GCS answers 412."""
    output = str(tmp_path / "day")
    taken = lease.acquire(output, "run-a", HOUR)
    lease.release(taken)
    lease.acquire(output, "run-b", HOUR)

    assert lease.release(taken) is False
    assert _read(output, None)["holder"] == "run-b"


def test_writing_without_a_lease_is_refused(day):
    output, client = day
    with pytest.raises(RuntimeError, match="no lease"):
        lease.check_held(output, "run-a", client)


@pytest.mark.parametrize("expired_before", [False, True])
def test_racing_holders_get_one_lease_on_a_local_disk(tmp_path, expired_before):
    """Sixteen threads race for a free day, or for one whose lease expired: one wins."""
    output = str(tmp_path / "day")
    if expired_before:
        lease.acquire(output, "killed-run", timedelta(seconds=-1))
    start = threading.Barrier(16)
    outcomes: dict[str, str] = {}

    def race(holder: str) -> None:
        start.wait()
        try:
            lease.acquire(output, holder, HOUR)
            outcomes[holder] = "won"
        except lease.LeaseHeld:
            outcomes[holder] = "refused"

    threads = [threading.Thread(target=race, args=(f"run-{i}",)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    winners = [holder for holder, outcome in outcomes.items() if outcome == "won"]
    assert len(outcomes) == 16
    assert winners == [_read(output, None)["holder"]]
