"""Validation catches a real run's outputs tampered with, and its report names the problem.

tests/plugins/dag/test_validation.py tampers with outputs it writes itself; here the outputs are
those of a real pipeline run (the reference day), changed the way a faulty disk or a bad copy would.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_jobs.image_embeddings.contract import SUCCESS_MARKER
from image_embeddings_airflow.dag.validation import REPORT_NAME, ValidationError, validate_output
from tests.reliability.runs import DIM

pytestmark = pytest.mark.slow


def fullest_shard(day: Path) -> Path:
    """The embeddings shard with the most rows (a run may leave some shards empty)."""
    shards = sorted(day.glob("embeddings-*.parquet"))
    return max(shards, key=lambda path: pq.read_metadata(path).num_rows)


def rewrite(shard: Path, change: Callable[[list[dict]], list[dict]]) -> list[dict]:
    """Rewrite a shard's rows through `change`, keeping its schema; return the original rows."""
    table = pq.read_table(shard)
    rows = table.to_pylist()
    pq.write_table(pa.Table.from_pylist(change([dict(row) for row in rows]), table.schema), shard)
    return rows


def delete_shard(day: Path) -> list[str]:
    shard = fullest_shard(day)
    uris = pq.read_table(shard, columns=["uri"]).column("uri").to_pylist()
    shard.unlink()
    total = len(list(day.glob("embeddings-*.parquet"))) + 1
    index = int(shard.name.split("-")[1])
    return [
        f"embeddings shard {index} of {total} missing",
        f"{shard.name} listed in {SUCCESS_MARKER} is missing",
        f"{len(uris)} manifest entries missing from the outputs: {min(uris)}",
    ]


def nan_row(day: Path) -> list[str]:
    shard = fullest_shard(day)

    def poison(rows: list[dict]) -> list[dict]:
        rows[2]["embedding"][7] = float("nan")
        return rows

    rewrite(shard, poison)
    return [f"1 embeddings with NaN or infinity: row 2 of {shard.name} has NaN"]


def duplicated_row(day: Path) -> list[str]:
    shard = fullest_shard(day)
    rows = rewrite(shard, lambda rows: [*rows, rows[1]])
    embedded = json.loads((day / SUCCESS_MARKER).read_text())["embedded"]
    return [
        f"1 URIs written more than once: {rows[1]['uri']} in embeddings",
        f"{SUCCESS_MARKER} says {embedded} embedded but the embeddings shards hold "
        f"{embedded + 1} rows",
    ]


def missing_marker(day: Path) -> list[str]:
    (day / SUCCESS_MARKER).unlink()
    return [f"{SUCCESS_MARKER} missing: the job did not finish"]


@pytest.mark.parametrize(
    ("tamper", "check"),
    [
        (delete_shard, "missing"),
        (nan_row, "finite"),
        (duplicated_row, "duplicates"),
        (missing_marker, "success_marker"),
    ],
    ids=["deleted-shard", "nan-row", "duplicated-row", "missing-success"],
)
def test_validation_names_what_was_tampered_with(reference_day, tmp_path, observe, tamper, check):
    observe.area = "tampered outputs"
    day = tmp_path / "day"
    shutil.copytree(reference_day.output, day)
    assert validate_output(str(day), max_failure_rate=0.5, expected_dim=DIM).ok

    expected = tamper(day)
    observe.tampered += 1

    with pytest.raises(ValidationError) as raised:
        validate_output(str(day), max_failure_rate=0.5, expected_dim=DIM)
    observe.caught += 1
    report = json.loads((day / REPORT_NAME).read_text())
    assert report["ok"] is False
    assert report["problems"] == raised.value.report.problems
    failed = {entry["name"] for entry in report["checks"] if not entry["passed"]}
    assert check in failed
    for phrase in expected:
        assert phrase in str(raised.value), (phrase, report["problems"])
