"""Manifest staging on local folders and gs://: recursion, extensions, order, reruns."""

from __future__ import annotations

import os

import pytest

from beam_jobs.image_embeddings.contract import (
    LEASE_NAME,
    MANIFEST_NAME,
    SKIPPED_NAME,
    manifest_entries,
)
from image_embeddings_airflow import storage
from image_embeddings_airflow.dag.manifest import (
    image_uris,
    stage_manifest,
    unique_sorted,
)
from image_embeddings_airflow.dag.skips import LINE_BREAK, NOT_AN_IMAGE, Skips
from tests.gcs_emulator import upload_as_producer

IMAGES = ["b.jpg", "a/x.PNG", "a/deep/er/y.JpEg", "a.webp", "z/é #1.tiff", "c.GIF", "d.bmp"]
IMAGES += ["phone/IMG_0001.HEIC", "p.heif", "web/cat.avif", "web/dog.JFIF", "e.jpe", "f.TIF"]
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
        uri = f"{input_root}/2026-11-28/{name}"
        if storage.is_gcs(uri):
            upload_as_producer(uri, b"\xff\xd8 not decoded here")
        else:
            storage.write_bytes(uri, b"\xff\xd8 not decoded here")


def read_manifest(uri: str) -> list[str]:
    with storage.open_file(uri, "r") as handle:
        return list(manifest_entries(handle))


def test_stages_every_image_sorted(roots):
    input_root, output_root = roots
    write_day(input_root, IMAGES + NOT_IMAGES)
    storage.write_bytes(f"{input_root}/2026-11-29/other-day.jpg", b"x")

    info = stage_manifest(f"{input_root}/2026-11-28", f"{output_root}/2026-11-28")

    expected = sorted(f"{input_root}/2026-11-28/{name}" for name in IMAGES)
    assert info.uri == f"{output_root}/2026-11-28/{MANIFEST_NAME}"
    assert info.count == len(IMAGES)
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


def test_rerun_replaces_manifest_and_reports_and_leaves_the_earlier_run_to_the_launch(roots):
    input_root, output_root = roots
    write_day(input_root, IMAGES)
    day_out = f"{output_root}/2026-11-28"
    stage_manifest(f"{input_root}/2026-11-28", day_out)
    earlier_run = [
        f"{day_out}/_SUCCESS",
        f"{day_out}/_previous_run/embeddings-00000-of-00001.parquet",
        f"{day_out}/embeddings-00002-of-00003.parquet",
    ]
    for uri in earlier_run:
        storage.write_bytes(uri, b"earlier run")
    storage.write_bytes(f"{day_out}/validation.json", b"stale report")
    storage.write_bytes(f"{day_out}/beam-temp-1/part", b"stale temp")
    storage.delete_prefix(f"{input_root}/2026-11-28/a")

    info = stage_manifest(f"{input_root}/2026-11-28", day_out)

    assert info.count == len([name for name in IMAGES if not name.startswith("a/")])
    # The launch sets the earlier run aside for reuse, then replaces it.
    assert sorted(storage.list_files(day_out)) == sorted(
        [*earlier_run, info.uri, f"{day_out}/{SKIPPED_NAME}"]
    )
    assert len(read_manifest(info.uri)) == info.count


def test_a_day_left_without_images_keeps_nothing_of_its_earlier_run(roots):
    input_root, output_root = roots
    write_day(input_root, IMAGES)
    day_out = f"{output_root}/2026-11-28"
    stage_manifest(f"{input_root}/2026-11-28", day_out)
    storage.write_bytes(f"{day_out}/_SUCCESS", b"{}")
    storage.write_bytes(f"{day_out}/embeddings-00000-of-00001.parquet", b"earlier run")
    storage.delete_prefix(f"{input_root}/2026-11-28")

    info = stage_manifest(f"{input_root}/2026-11-28", day_out)

    assert info.count == 0
    assert sorted(storage.list_files(day_out)) == sorted([info.uri, f"{day_out}/{SKIPPED_NAME}"])


def test_every_object_is_staged_or_counted_as_skipped(roots, caplog):
    input_root, output_root = roots
    write_day(input_root, [*IMAGES, *NOT_IMAGES, "more.txt", "a/data.JSON", "bad\nname.jpg"])
    caplog.set_level("INFO", logger="image_embeddings_airflow.dag.manifest")

    info = stage_manifest(f"{input_root}/2026-11-28", f"{output_root}/2026-11-28")

    record = storage.read_json(f"{output_root}/2026-11-28/{SKIPPED_NAME}")
    assert info.count + record["total"] == len(IMAGES) + len(NOT_IMAGES) + 3
    assert record["by_reason"] == {
        LINE_BREAK: {".jpg": 1},
        NOT_AN_IMAGE: {"(none)": 3, ".txt": 2, ".json": 1, ".zip": 1},
    }
    assert record["by_extension"][".txt"] == 2
    assert info.skipped.to_dict() == record
    assert "skipped 8: (none) 3, .txt 2, .jpg 1, .json 1, .zip 1" in caplog.text


def test_skip_summary_reads_like_the_task_log():
    skips = Skips()
    for name in ("a.txt", "b.txt", "c.json"):
        skips.add(NOT_AN_IMAGE, name)

    assert skips.summary() == "skipped 3: .txt 2, .json 1 (not an image by extension 3)"
    assert Skips().summary() == "skipped 0"


def test_staging_keeps_the_lease_of_the_run_that_stages(tmp_path):
    write_day(str(tmp_path / "in"), ["one.jpg"])
    day_out = tmp_path / "out" / "2026-11-28"
    day_out.mkdir(parents=True)
    (day_out / LEASE_NAME).write_text("{}")
    (day_out / "validation.json").write_text("{}")

    stage_manifest(str(tmp_path / "in" / "2026-11-28"), str(day_out))

    assert sorted(os.listdir(day_out)) == sorted([LEASE_NAME, MANIFEST_NAME, SKIPPED_NAME])


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
    with pytest.raises(ValueError, match="must be a day's folder below a root"):
        stage_manifest("gs://bucket/images/2026-11-28", "gs://bucket/day/..")


def test_the_overlap_guard_sees_through_links_and_dots(tmp_path):
    """An output root linked to the input root, or reached through `..`, still overlaps."""
    images = tmp_path / "data" / "images"
    write_day(str(images), ["one.jpg"])
    (tmp_path / "linked").symlink_to(tmp_path / "data")

    with pytest.raises(ValueError, match="lies inside output folder"):
        stage_manifest(str(images / "2026-11-28"), str(tmp_path / "linked"))
    with pytest.raises(ValueError, match="lies inside output folder"):
        stage_manifest(str(images / "2026-11-28"), str(tmp_path / "data" / "x" / ".."))
    with pytest.raises(ValueError, match="lies inside output folder"):
        stage_manifest("gs://b/out/../in/2026-11-28", "gs://b/in/x/..")
    assert (images / "2026-11-28" / "one.jpg").exists()


def test_links_and_special_files_are_staged_or_skipped_never_left_out(tmp_path):
    day = tmp_path / "images" / "2026-11-28"
    write_day(str(tmp_path / "images"), ["real.jpg"])
    os.mkfifo(day / "pipe.jpg")
    (day / "gone.png").symlink_to(day / "deleted.png")
    (day / "folder-link").symlink_to(tmp_path)

    info = stage_manifest(str(day), str(tmp_path / "embeddings" / "2026-11-28"))

    # The loader then fails the pipe and the dangling link at the read stage, with the reason.
    assert read_manifest(info.uri) == [
        str(day / name) for name in ("gone.png", "pipe.jpg", "real.jpg")
    ]
    assert info.skipped.to_dict()["by_reason"] == {NOT_AN_IMAGE: {"(none)": 1}}


def test_image_uris_is_lazy_and_skips_line_breaks(tmp_path):
    write_day(str(tmp_path), ["ok.jpg", "bad\nname.jpg"])
    skips = Skips()

    uris = image_uris(str(tmp_path / "2026-11-28"), skips)

    assert iter(uris) is uris
    assert list(uris) == [str(tmp_path / "2026-11-28" / "ok.jpg")]
    assert skips.to_dict()["by_reason"] == {LINE_BREAK: {".jpg": 1}}


def test_unique_sorted_drops_repeats():
    assert list(unique_sorted(["a", "a", "b", "c", "c", "c"])) == ["a", "b", "c"]
