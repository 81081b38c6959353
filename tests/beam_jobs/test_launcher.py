"""The launcher gives back the day it took, however often its lease was renewed meanwhile."""

from __future__ import annotations

from datetime import timedelta

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs.image_embeddings import launcher
from beam_jobs.image_embeddings.storage import lease

HOUR = timedelta(hours=1)


def test_a_command_gives_its_day_back_after_its_lease_was_renewed(tmp_path):
    """The renewals while the job ran wrote new versions of the lease: it is given back all the
    same, and the next run takes the day at once."""
    output = str(tmp_path / "day")
    taken = lease.acquire(output, lease.cli_holder(), HOUR, process_bound=True)
    lease.renew(output, taken.record.holder, taken.token, 2 * HOUR)

    launcher.give_back(taken, PipelineOptions(), job_ended=True)

    with pytest.raises(lease.LeaseLost, match="released by"):
        lease.check_held(output, taken.record.holder, taken.token, "write")
    assert lease.acquire(output, "next-run", HOUR).token > taken.token


def test_a_command_whose_job_still_runs_keeps_its_day(tmp_path):
    output = str(tmp_path / "day")
    taken = lease.acquire(output, lease.cli_holder(), HOUR)

    launcher.give_back(taken, PipelineOptions(), job_ended=False)

    lease.check_held(output, taken.record.holder, taken.token, "write")
