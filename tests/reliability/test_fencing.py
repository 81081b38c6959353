"""A run that lost its day touches nothing of it; the day's lease raced on gs:// preconditions."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from beam_jobs.image_embeddings.contract import SUCCESS_MARKER, join
from beam_jobs.image_embeddings.storage import io, lease
from tests.beam_jobs.storage.test_lease import leave_the_day, race
from tests.beam_jobs.test_outputs import _rows, _write_and_commit
from tests.conftest import TEST_BUCKET
from tests.gcs_emulator import client_of

OLD, NEW = "dag:image_embeddings:old-run", "dag:image_embeddings:new-run"


def _expired_and_taken_over(output: str) -> lease.Lease:
    client = lease.storage_client(output)
    stale = lease.acquire(output, OLD, timedelta(seconds=-1), client)
    lease.acquire(output, NEW, lease.DEFAULT_TTL, client)
    return stale


def _released_and_taken_again(output: str) -> lease.Lease:
    client = lease.storage_client(output)
    first = lease.acquire(output, OLD, lease.DEFAULT_TTL, client)
    lease.release(first, client)
    lease.acquire(output, OLD, lease.DEFAULT_TTL, client)
    return first


def _released(output: str) -> lease.Lease:
    client = lease.storage_client(output)
    first = lease.acquire(output, OLD, lease.DEFAULT_TTL, client)
    lease.release(first, client)
    return first


@pytest.fixture(params=["local", "gcs"])
def day_folder(request, tmp_path, monkeypatch) -> str:
    """A day folder on a local disk, or on fake-gcs-server, where both the lease and Beam's
    gs:// filesystem (on the workers, the commit's) are pointed."""
    if request.param == "local":
        return str(tmp_path / "day")
    monkeypatch.setenv(
        "STORAGE_EMULATOR_HOST", request.getfixturevalue("precondition_gcs_for_beam")
    )
    io.use_emulator_credentials()
    return f"gs://{TEST_BUCKET}/{uuid.uuid4().hex}/day"


@pytest.mark.parametrize(
    "lose_the_day", [_expired_and_taken_over, _released_and_taken_again, _released]
)
def test_a_stale_writers_commit_deletes_and_publishes_nothing(day_folder, observe, lose_the_day):
    """The old run's pipeline reaches its commit after losing the day: the next run's files stay,
    and no `_SUCCESS` appears."""
    observe.area = "one run a day"
    stale = lose_the_day(day_folder)
    shard = join(day_folder, "embeddings-00000-of-00002.parquet")
    io.write_text(shard, "the next run's shard")

    with pytest.raises(Exception, match="refusing to delete files this run did not write"):
        _write_and_commit(
            day_folder,
            _rows(3, 4),
            [],
            num_shards=1,
            fence=lease.Fence(day_folder, OLD, stale.token),
        )

    assert io.read_text(shard) == "the next run's shard"
    assert not io.exists(join(day_folder, SUCCESS_MARKER))
    observe.stale_commits_refused += 1


@pytest.mark.parametrize("before", ["free", "expired", "released"])
def test_sixteen_contenders_for_a_gs_day_get_one_lease_every_round(
    precondition_gcs, observe, before
):
    observe.area = "one run a day"
    client = client_of(precondition_gcs)
    for _ in range(20):
        output = f"gs://{TEST_BUCKET}/{uuid.uuid4().hex}/2026-11-28"
        leave_the_day(output, client, before)

        assert len(race(output, client)) == 1
        observe.lease_rounds += 1


def test_the_dag_task_of_a_run_that_lost_the_day_fails_without_touching_it(tmp_path, observe):
    """`stage_manifest`, which clears the day (the analysis job's own refusal is in
    tests/beam_jobs/analysis/test_job.py)."""
    from airflow.sdk.exceptions import AirflowFailException

    from image_embeddings_airflow.dag import tasks as dag_tasks

    observe.area = "one run a day"
    output = tmp_path / "embeddings" / "2026-11-28"
    plan = {"output_dir": str(output), "input_dir": str(tmp_path / "images"), "day": "2026-11-28"}
    stale = _expired_and_taken_over(str(output))
    (output / "manifest.txt").write_text("the next run's manifest\n")

    with pytest.raises(AirflowFailException, match="refusing to clear the day"):
        dag_tasks.stage(plan, OLD, stale.token)

    assert (output / "manifest.txt").read_text() == "the next run's manifest\n"
    assert sorted(path.name for path in output.iterdir()) == ["_LEASE", "manifest.txt"]
    observe.stale_commits_refused += 1
