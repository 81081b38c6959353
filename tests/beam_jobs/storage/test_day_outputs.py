"""The one routine that replaces a day's outputs: what each caller deletes, failures reported."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from beam_jobs.image_embeddings.outputs import remove_earlier_run
from beam_jobs.image_embeddings.storage import day_outputs
from image_embeddings_airflow.dag.manifest import stage_manifest

SHARD = "embeddings-00000-of-00001.parquet"


@contextlib.contextmanager
def undeletable(path: Path) -> Iterator[None]:
    """`path` cannot be deleted while inside: its folder read-only, or immutable for root."""
    if os.geteuid() != 0:
        path.parent.chmod(0o555)
        try:
            yield
        finally:
            path.parent.chmod(0o755)
        return
    marked = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if marked.returncode != 0:
        pytest.skip(f"cannot make a file undeletable as root here: {marked.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def _write(root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x")


def test_the_commit_keeps_this_runs_shards_and_the_run_inputs(tmp_path):
    names = [SHARD, "embeddings-00000-of-00003.parquet", "failures-00000-of-00001.parquet"]
    names += ["beam-temp-failures-9/part", "_SUCCESS", "manifest.txt", "_LEASE", "validation.json"]
    _write(tmp_path, names)
    listing = [str(path) for path in tmp_path.rglob("*") if path.is_file()]

    deleted = day_outputs.remove(
        str(tmp_path),
        listing,
        os.remove,
        day_outputs.not_written_by([SHARD, "failures-00000-of-00001.parquet"]),
    )

    assert sorted(deleted) == sorted(
        str(tmp_path / name)
        for name in ("embeddings-00000-of-00003.parquet", "beam-temp-failures-9/part")
    )
    assert not (tmp_path / "beam-temp-failures-9").exists()


def test_a_failed_deletion_is_reported_by_name_and_the_rest_still_goes(tmp_path):
    _write(tmp_path, ["_SUCCESS", SHARD, "failures-00000-of-00001.parquet"])

    with undeletable(tmp_path / SHARD), pytest.raises(day_outputs.DeletionFailed) as failed:
        remove_earlier_run(str(tmp_path))

    assert str(tmp_path / SHARD) in [path for path, _ in failed.value.failures]
    assert f"files of an earlier run in {tmp_path}: {tmp_path / SHARD}" in str(failed.value)
    if os.geteuid() == 0:
        # Only that file was immutable: everything else went, the marker first.
        assert sorted(os.listdir(tmp_path)) == [SHARD]
        assert len(failed.value.failures) == 1


def test_staging_reports_a_file_it_cannot_delete(tmp_path):
    (tmp_path / "in" / "day").mkdir(parents=True)
    (tmp_path / "in" / "day" / "one.jpg").write_bytes(b"x")
    output = tmp_path / "out" / "day"
    _write(output, ["old/validation.json"])

    with (
        undeletable(output / "old" / "validation.json"),
        pytest.raises(day_outputs.DeletionFailed, match="validation.json"),
    ):
        stage_manifest(str(tmp_path / "in" / "day"), str(output))
