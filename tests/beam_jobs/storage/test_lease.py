"""The day lease on a local disk and on gs:// (fake-gcs-server, which honours generation
preconditions): one holder, fencing tokens, refusals, expiry, renewal, release."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from beam_jobs.image_embeddings.contract import LEASE_NAME
from beam_jobs.image_embeddings.storage import lease
from tests.conftest import TEST_BUCKET
from tests.gcs_emulator import client_of

HOUR = timedelta(hours=1)
TWO_DAYS = timedelta(days=2)
# A process that takes a day for itself and exits without giving it back, as a killed run.
LEASE_IN_CHILD = """
import sys
from beam_jobs.image_embeddings.storage import lease
taken = lease.acquire(sys.argv[1], "cli:child", process_bound=True)
print(taken.record.to_bytes().decode())
"""


@pytest.fixture(params=["local", "gcs"])
def day(request, tmp_path, monkeypatch):
    """(day folder, storage client or None) on a local disk, or in a folder of its own on
    fake-gcs-server (where the pipeline's own clients are pointed too)."""
    if request.param == "local":
        return str(tmp_path / "embeddings" / "2026-11-28"), None
    host = request.getfixturevalue("precondition_gcs")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", host)
    return f"gs://{TEST_BUCKET}/{uuid.uuid4().hex}/2026-11-28", client_of(host)


def _read(output: str, client) -> dict:
    if client is None:
        with open(f"{output}/{LEASE_NAME}") as handle:
            return json.load(handle)
    bucket, _, folder = output.removeprefix("gs://").partition("/")
    return json.loads(client.bucket(bucket).blob(f"{folder}/{LEASE_NAME}").download_as_bytes())


def _write(output: str, client, record: dict) -> None:
    data = json.dumps(record).encode()
    if client is None:
        with open(f"{output}/{LEASE_NAME}", "wb") as handle:
            handle.write(data)
        return
    bucket, _, folder = output.removeprefix("gs://").partition("/")
    client.bucket(bucket).blob(f"{folder}/{LEASE_NAME}").upload_from_string(data)


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
    lease.check_held(output, "run-a", renewed.token, "write", client)
    with pytest.raises(lease.LeaseLost, match="refusing to write"):
        lease.check_held(output, "run-b", renewed.token, "write", client)


def test_renewals_keep_the_token_and_a_take_over_gets_a_greater_one(day):
    output, client = day
    first = lease.acquire(output, "run-a", HOUR, client)
    renewed = lease.renew(output, "run-a", first.token, HOUR, client)
    lease.acquire(output, "run-a", timedelta(seconds=-1), client)

    taken = lease.acquire(output, "run-b", HOUR, client)

    assert renewed.token == first.token
    assert taken.created and taken.token > first.token


def test_a_stale_holders_steps_are_refused_once_its_day_was_taken_over(day):
    """The old run's lease expired and another run took the day: every fenced step of the old
    run, and its renewal, is refused, naming both runs' tokens."""
    output, client = day
    stale = lease.acquire(output, "dag:image_embeddings:run-a", timedelta(seconds=-1), client)
    fresh = lease.acquire(output, "dag:image_embeddings:run-b", HOUR, client)

    with pytest.raises(lease.LeaseLost, match=f"run-b's under token {fresh.token}") as refused:
        lease.check_held(output, stale.record.holder, stale.token, "write _SUCCESS", client)
    with pytest.raises(lease.LeaseLost):
        lease.renew(output, stale.record.holder, stale.token, HOUR, client)

    assert str(refused.value).startswith(f"refusing to write _SUCCESS in {output}: ")


def test_a_holder_whose_lease_expired_is_refused_until_it_takes_the_day_again(day):
    output, client = day
    taken = lease.acquire(output, "run-a", timedelta(seconds=-1), client)

    with pytest.raises(lease.LeaseLost, match="expired"):
        lease.check_held(output, "run-a", taken.token, "write", client)


def test_the_same_holder_under_an_older_token_is_refused(day):
    """A run released the day and took it again: a job launched under its first lease is
    refused, although the holder's name is the same."""
    output, client = day
    first = lease.acquire(output, "run-a", HOUR, client)
    lease.release_held(output, "run-a", first.token, client)
    again = lease.acquire(output, "run-a", HOUR, client)

    with pytest.raises(lease.LeaseLost, match=f"under token {first.token}"):
        lease.Fence(output, "run-a", first.token).check("delete files this run did not write")
    lease.Fence(output, "run-a", again.token).check("delete files this run did not write")
    assert again.token != first.token


def test_renewing_keeps_the_lease_alive_past_its_ttl(day):
    output, client = day
    ttl = timedelta(seconds=2)
    taken = lease.acquire(output, "run-a", ttl, client)

    with lease.renewing(output, "run-a", taken.token, ttl, client):
        time.sleep(3)

    lease.check_held(output, "run-a", taken.token, "write", client)


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

    assert lease.release_held(output, "run-b", taken.token, client) is False
    assert lease.release_held(output, "run-a", taken.token + 1, client) is False
    assert lease.release(taken, client) is True
    released = _read(output, client)
    with pytest.raises(lease.LeaseLost, match="holds no lease there .released by run-a"):
        lease.check_held(output, "run-a", taken.token, "write", client)
    assert lease.release_held(output, "run-a", taken.token, client) is False
    again = lease.acquire(output, "run-b", HOUR, client)

    assert (released["holder"], released["token"]) == ("run-a", taken.token)
    assert released["released_at"] is not None
    assert again.created and again.token > taken.token
    assert _read(output, client)["holder"] == "run-b"
    assert _read(output, client)["released_at"] is None


@pytest.mark.parametrize("lost_by", ["expiring", "releasing"])
def test_a_late_release_leaves_the_next_holders_lease_alone(day, lost_by):
    """The old holder releases after another run took the day (its lease had expired, or it had
    released it already): the new holder's lease stays, on fake-gcs-server too, which ignores
    the preconditions of deletes."""
    output, client = day
    stale = lease.acquire(output, "run-a", -HOUR if lost_by == "expiring" else HOUR, client)
    if lost_by == "releasing":
        assert lease.release(stale, client) is True
    fresh = lease.acquire(output, "run-b", HOUR, client)

    assert lease.release(stale, client) is False
    assert lease.release_held(output, "run-a", stale.token, client) is False
    assert _read(output, client)["holder"] == "run-b"
    lease.check_held(output, "run-b", fresh.token, "write", client)


def test_writing_without_a_lease_is_refused(day):
    output, client = day
    with pytest.raises(lease.LeaseLost, match="no lease"):
        lease.check_held(output, "run-a", 1, "write", client)


def test_expiry_counts_from_the_storage_services_time_not_the_writers_clock(day):
    """A writer whose clock runs a century ahead wrote `expires_at` in 2126; on gs:// the
    lease still ends TTL after the service's `updated` time of its write."""
    output, client = day
    taken = lease.acquire(output, "run-a", timedelta(seconds=-1), client)
    skewed = {**_read(output, client), "expires_at": "2126-01-01T00:00:00+00:00"}
    _write(output, client, skewed)

    if client is None:  # A local disk has no clock of its own: the writer's counts.
        with pytest.raises(lease.LeaseHeld):
            lease.acquire(output, "run-b", HOUR, client)
    else:
        assert lease.acquire(output, "run-b", HOUR, client).token > taken.token


def _clock_off_by(monkeypatch, offset: timedelta) -> None:
    """This host's clock runs `offset` ahead of the true time (behind, when negative)."""
    monkeypatch.setattr(lease, "host_now", lambda: datetime.now(UTC) + offset)


@pytest.mark.parametrize("day", ["gcs"], indirect=True)
def test_a_reader_whose_clock_runs_days_ahead_sees_a_live_gs_lease_as_held(day, monkeypatch):
    """On gs:// a lease's time is the storage service's: a host two days ahead neither takes
    a live lease over nor finds its own one expired."""
    output, client = day
    _clock_off_by(monkeypatch, TWO_DAYS)
    taken = lease.acquire(output, "run-a", HOUR, client)

    with pytest.raises(lease.LeaseHeld, match="being written by run-a") as refused:
        lease.acquire(output, "run-b", HOUR, client)
    lease.check_held(output, "run-a", taken.token, "write", client)
    # The refusal names the service's expiry, not the one the skewed writer estimated.
    named = datetime.fromisoformat(refused.value.record.expires_at)
    assert abs(named - (datetime.now(UTC) + HOUR)) < timedelta(minutes=1)
    assert lease.renew(output, "run-a", taken.token, HOUR, client).token == taken.token


@pytest.mark.parametrize("day", ["gcs"], indirect=True)
def test_a_gs_lease_past_its_ttl_is_taken_over_by_a_reader_whose_clock_runs_days_behind(
    day, monkeypatch
):
    output, client = day
    stale = lease.acquire(output, "run-a", timedelta(seconds=-1), client)
    _clock_off_by(monkeypatch, -TWO_DAYS)

    with pytest.raises(lease.LeaseLost, match="expired"):
        lease.check_held(output, "run-a", stale.token, "write", client)
    taken = lease.acquire(output, "run-b", HOUR, client)

    assert taken.created and taken.token > stale.token
    assert _read(output, client)["holder"] == "run-b"


@pytest.mark.parametrize("day", ["local"], indirect=True)
def test_a_local_lease_keeps_the_hosts_time(day, monkeypatch):
    """A local disk has no clock of its own: a host two days ahead finds an hour's lease
    expired, and takes it over."""
    output, client = day
    stale = lease.acquire(output, "run-a", HOUR, client)
    _clock_off_by(monkeypatch, TWO_DAYS)

    with pytest.raises(lease.LeaseLost, match="expired"):
        lease.check_held(output, "run-a", stale.token, "write", client)
    assert lease.acquire(output, "run-b", HOUR, client).created


def test_the_service_time_reads_a_date_header_doubled_by_a_proxy():
    """A proxy that adds its own `Date` to the service's: the joined value is still GMT."""
    doubled = "Fri, 04 Dec 2026 18:10:24 GMT, Fri, 04 Dec 2026 18:10:25 GMT"

    assert lease._service_now(doubled, "url") == datetime(2026, 12, 4, 18, 10, 24, tzinfo=UTC)


def race(output: str, client, contenders: int = 16) -> list[str]:
    """`contenders` threads, each with a client of its own, take the day at once: the winners."""
    clients = [client and client_of(client._connection.API_BASE_URL) for _ in range(contenders)]
    start = threading.Barrier(contenders)
    outcomes: dict[str, str] = {}

    def contend(number: int) -> None:
        holder = f"run-{number}"
        start.wait()
        try:
            lease.acquire(output, holder, HOUR, clients[number])
            outcomes[holder] = "won"
        except lease.LeaseHeld:
            outcomes[holder] = "refused"

    threads = [threading.Thread(target=contend, args=(number,)) for number in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(outcomes) == contenders
    return [holder for holder, outcome in outcomes.items() if outcome == "won"]


def leave_the_day(output: str, client, before: str) -> None:
    """The day as the last run left it: never taken ("free"), its lease expired ("expired"),
    or given back ("released")."""
    if before == "expired":
        lease.acquire(output, "killed-run", timedelta(seconds=-1), client)
    elif before == "released":
        lease.release(lease.acquire(output, "finished-run", HOUR, client), client)


@pytest.mark.parametrize("before", ["free", "expired", "released"])
def test_racing_holders_get_one_lease(day, before):
    """Sixteen contenders race for a free day, one whose lease expired, or one given back,
    twenty rounds over: every round exactly one wins, and the lease names it."""
    output, client = day
    for round_number in range(20):
        folder = f"{output}/round-{round_number}"
        leave_the_day(folder, client, before)

        winners = race(folder, client)

        assert winners == [_read(folder, client)["holder"]], f"round {round_number}"
