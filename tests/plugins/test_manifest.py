"""Manifest staging on local folders and gs://: recursion, extensions, order, reruns."""

from __future__ import annotations

import pytest

from beam_jobs.image_embeddings.contract import MANIFEST_NAME, manifest_entries
from image_embeddings_airflow import storage
from image_embeddings_airflow.manifest import (
    ManifestInfo,
    image_uris,
    stage_manifest,
    unique_sorted,
)

IMAGES = ["b.jpg", "a/x.PNG", "a/deep/er/y.JpEg", "a.webp", "z/é #1.tiff", "c.GIF", "d.bmp"]
NOT_IMAGES = ["notes.txt", "a/.DS_Store", "archive.jpg.zip", "noext", "a/deep/README"]


@pytest.fixture(params=["local", "gcs"])
def roots(request, tmp_path):
    """(input root, output root) on the local disk or in the emulator's bucket."""
    if request.param == "local":
        return str(tmp_path / "images"), str(tmp_path / "embeddings")
    bucket = request.getfixturevalue("gcs_bucket").name
    return f"gs://{bucket}/images", f"gs://{bucket}/embeddings"


def write_day(input_root: str, names: list[str]) -> None:
    for name in names:
        storage.write_bytes(f"{input_root}/2026-11-28/{name}", b"\xff\xd8 not decoded here")


def read_manifest(uri: str) -> list[str]:
    with storage.open_file(uri, "r") as handle:
        return list(manifest_entries(handle))


def test_stages_every_image_sorted(roots):
    input_root, output_root = roots
    write_day(input_root, IMAGES + NOT_IMAGES)
    storage.write_bytes(f"{input_root}/2026-11-29/other-day.jpg", b"x")

    info = stage_manifest(f"{input_root}/2026-11-28", f"{output_root}/2026-11-28")

    expected = sorted(f"{input_root}/2026-11-28/{name}" for name in IMAGES)
    assert info == ManifestInfo(uri=f"{output_root}/2026-11-28/{MANIFEST_NAME}", count=len(IMAGES))
    assert read_manifest(info.uri) == expected
    with storage.open_file(info.uri, "r") as handle:
        assert handle.read() == "".join(uri + "\n" for uri in expected)


def test_missing_or_empty_prefix_counts_zero(roots):
    input_root, output_root = roots
    write_day(input_root, NOT_IMAGES)

    missing = stage_manifest(f"{input_root}/2026-01-01", f"{output_root}/2026-01-01")
    no_images = stage_manifest(f"{input_root}/2026-11-28", f"{output_root}/2026-11-28")

    assert (missing.count, no_images.count) == (0, 0)
    assert read_manifest(missing.uri) == read_manifest(no_images.uri) == []


def test_rerun_replaces_manifest_and_previous_outputs(roots):
    input_root, output_root = roots
    write_day(input_root, IMAGES)
    day_out = f"{output_root}/2026-11-28"
    stage_manifest(f"{input_root}/2026-11-28", day_out)
    storage.write_bytes(f"{day_out}/embeddings-00002-of-00003.parquet", b"stale shard")
    storage.write_bytes(f"{day_out}/beam-temp-1/part", b"stale temp")
    storage.delete_prefix(f"{input_root}/2026-11-28/a")

    info = stage_manifest(f"{input_root}/2026-11-28", day_out)

    assert info.count == len([name for name in IMAGES if not name.startswith("a/")])
    assert list(storage.list_files(day_out)) == [info.uri]
    assert len(read_manifest(info.uri)) == info.count


def test_local_paths_are_absolute(tmp_path, monkeypatch):
    write_day(str(tmp_path / "in"), ["one.jpg"])
    monkeypatch.chdir(tmp_path)

    info = stage_manifest("in/2026-11-28", "out/2026-11-28")

    assert info.uri == str(tmp_path / "out" / "2026-11-28" / MANIFEST_NAME)
    assert read_manifest(info.uri) == [str(tmp_path / "in" / "2026-11-28" / "one.jpg")]


def test_refuses_folders_that_clearing_would_damage(tmp_path):
    with pytest.raises(ValueError, match="lies inside output folder"):
        stage_manifest(str(tmp_path / "day" / "images"), str(tmp_path / "day"))
    with pytest.raises(ValueError, match="must be a day's folder below a root"):
        stage_manifest("gs://bucket/images/2026-11-28", "gs://bucket")


def test_image_uris_is_lazy_and_skips_line_breaks(tmp_path):
    write_day(str(tmp_path), ["ok.jpg", "bad\nname.jpg"])

    uris = image_uris(str(tmp_path / "2026-11-28"))

    assert iter(uris) is uris
    assert list(uris) == [str(tmp_path / "2026-11-28" / "ok.jpg")]


def test_unique_sorted_drops_repeats():
    assert list(unique_sorted(["a", "a", "b", "c", "c", "c"])) == ["a", "b", "c"]
