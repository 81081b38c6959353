"""One run of a day at a time: a second run is refused, naming the holder, and touches nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from beam_jobs.image_embeddings.contract import LEASE_NAME
from beam_jobs.image_embeddings.storage import lease
from image_embeddings_airflow.dag.validation import validate_output
from tests.reliability.runs import (
    DIM,
    LaunchedPipeline,
    account,
    assert_same_results,
    pipeline_argv,
    read_outputs,
    run_pipeline,
)

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 600
FINISH_TIMEOUT_S = 900


def snapshot(folder: str) -> dict[str, bytes]:
    root = Path(folder)
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_command_line_run_is_refused_while_a_dag_run_holds_the_day(
    reference_day, tmp_path, observe
):
    observe.area = "one run a day"
    output = str(tmp_path / "embeddings" / "day")
    shutil.copytree(reference_day.output, output)
    lease.acquire(output, "dag:image_embeddings:manual__2026-11-29")
    before = snapshot(output)

    with pytest.raises(lease.LeaseHeld, match="manual__2026-11-29") as refused:
        run_pipeline(output, *reference_day.run_args)

    observe.overlapping_runs += 1
    assert f"day folder {output} is being written by dag:image_embeddings:" in str(refused.value)
    assert snapshot(output) == before


def test_two_overlapping_command_line_runs_of_a_day(reference_day, tmp_path, observe):
    """The second starts while the first embeds: refused; the first completes the day."""
    observe.area = "one run a day"
    output = str(tmp_path / "embeddings" / "day")
    shutil.copytree(reference_day.output, output)
    argv = pipeline_argv(output, *reference_day.run_args, "--progress_interval_secs", "0.5")

    with LaunchedPipeline(argv) as first:
        first.wait_for_line(lambda line: "progress: " in line, START_TIMEOUT_S)
        with pytest.raises(lease.LeaseHeld, match=f"cli:[^ ]+:{first.process.pid}"):
            run_pipeline(output, *reference_day.run_args)
        assert first.process.wait(timeout=FINISH_TIMEOUT_S) == 0, "".join(first.log[-40:])

    observe.overlapping_runs += 1
    observe.reruns += 1
    outputs = read_outputs(output)
    accounting = observe.add(account(reference_day.expected, outputs))
    assert accounting.lost == accounting.duplicated == accounting.unexpected == 0
    assert_same_results(outputs, reference_day.outputs)
    given_back = lease.LeaseRecord.from_bytes(Path(output, LEASE_NAME).read_bytes())
    assert given_back.released_at, "the first run gives the day back"
    assert validate_output(output, max_failure_rate=0.5, expected_dim=DIM).ok
