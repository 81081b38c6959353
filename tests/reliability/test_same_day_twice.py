"""The same day run twice: the second run leaves the same URIs and embeddings, and no stale file."""

from __future__ import annotations

import shutil

import pytest

from image_embeddings_airflow.dag.validation import validate_output
from tests.reliability.runs import (
    DIM,
    account,
    assert_same_results,
    read_outputs,
    run_pipeline,
)

pytestmark = pytest.mark.slow


def test_second_run_of_a_day_equals_the_first(reference_day, tmp_path, observe):
    observe.area = "same day twice"
    output = str(tmp_path / "embeddings" / "day")
    # The first run of this day is the reference run: its folder as it left it.
    shutil.copytree(reference_day.output, output)
    first = reference_day.outputs

    run_pipeline(output, *reference_day.run_args)

    second = read_outputs(output)
    observe.reruns += 1
    accounting = observe.add(account(reference_day.expected, second))
    assert accounting.lost == accounting.duplicated == accounting.unexpected == 0
    assert_same_results(second, first)
    assert second.names == first.names
    assert second.marker["started_at"] > first.marker["finished_at"], "the day was not rerun"
    for key in ("images", "embedded", "failed", "duplicates", "dim", "model", "weights"):
        assert second.marker[key] == first.marker[key], key
    assert validate_output(output, max_failure_rate=0.5, expected_dim=DIM).ok


def test_a_day_without_failures_can_be_run_again(tmp_path, reference_day, observe):
    """Its failures shard is empty both times: Beam took the new one for the old one and wrote
    neither, and the commit step could not tell which shards the run wrote."""
    observe.area = "same day twice"
    output = tmp_path / "embeddings" / "day"
    output.mkdir(parents=True)
    good = sorted(uri for uri, stage in reference_day.expected.items() if stage is None)
    (output / "manifest.txt").write_text("".join(f"{uri}\n" for uri in good))

    run_pipeline(str(output), *reference_day.run_args)
    first = read_outputs(str(output))
    run_pipeline(str(output), *reference_day.run_args)
    second = read_outputs(str(output))

    observe.reruns += 1
    accounting = observe.add(account(good, second))
    assert accounting.lost == accounting.duplicated == accounting.unexpected == 0
    assert (second.marker["embedded"], second.marker["failed"]) == (len(good), 0)
    assert_same_results(second, first)
    assert second.names == first.names
