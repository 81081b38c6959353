"""Reuse instead of recompute on real DirectRunner runs: a day copies what earlier runs embedded."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystem import FileMetadata
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs.image_embeddings.contract import embeddings_schema, failures_schema
from beam_jobs.image_embeddings.engine.models import build_model, resolve_model
from beam_jobs.image_embeddings.images import HashedImage, load_image
from beam_jobs.image_embeddings.launcher import prepare_launch, run
from beam_jobs.image_embeddings.options import parse_known_args
from beam_jobs.image_embeddings.reuse.earlier_runs import ReuseSource
from beam_jobs.image_embeddings.reuse.transforms import (
    NEW_TAG,
    CopyFromRowGroup,
    EarlierRow,
    NewestEarlierRows,
    ReadDigests,
    Wanted,
    split_by_match,
)
from beam_jobs.image_embeddings.storage import lease
from image_embeddings_airflow.dag.validation import validate_output
from tests.image_factory import write_images

pytestmark = pytest.mark.slow

EARLIER, DAY = "2026-11-27", "2026-11-28"
RUN_ARGS = ["--weights=random", "--batch_size=4", "--num_shards=2"]
SHARED, NEW = 8, 2  # the day's good images: 80% were embedded on the earlier day


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def place(files: list[Path], folder: Path, prefix: str) -> list[Path]:
    """Copies of `files` under new names in `folder`: the same bytes on another day."""
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(path, folder / f"{prefix}-{path.name}")) for path in files]


def write_manifest(output: Path, files: list[Path]) -> Path:
    output.mkdir(parents=True, exist_ok=True)
    manifest = output / "manifest.txt"
    manifest.write_text("".join(f"{path}\n" for path in files))
    return manifest


def run_day(output: Path, files: list[Path], *extra: str) -> None:
    run([f"--manifest={write_manifest(output, files)}", f"--output={output}", *RUN_ARGS, *extra])


def rows_of(output: Path, kind: str = "embeddings") -> dict[str, dict]:
    shards = sorted(output.glob(f"{kind}-*.parquet"))
    return {row["uri"]: row for row in pa.concat_tables(map(pq.read_table, shards)).to_pylist()}


def marker(output: Path) -> dict:
    return json.loads((output / "_SUCCESS").read_text())


def write_shard(folder: Path, rows: list[dict], dim: int = 2) -> Path:
    """An earlier run's embeddings shard in `folder`, one row group per row."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "embeddings-00000-of-00001.parquet"
    pq.write_table(
        pa.Table.from_pylist(rows, schema=embeddings_schema(dim)), path, row_group_size=1
    )
    return path


def test_earlier_rows_are_located_by_digest_reading_only_the_digests(tmp_path):
    rows = [{"uri": "a.jpg", "sha256": "aa"}, {"uri": "b.jpg", "sha256": "bb"}]
    shard = write_shard(tmp_path / EARLIER, rows)
    read = ReadDigests({str(tmp_path / EARLIER): EARLIER})
    located = list(read.process(FileMetadata(str(shard), shard.stat().st_size)))
    assert located == [
        ("aa", EarlierRow(EARLIER, str(shard), 0, 0)),
        ("bb", EarlierRow(EARLIER, str(shard), 1, 0)),
    ]


def test_bytes_present_on_every_earlier_day_are_one_row_of_the_newest(tmp_path):
    days = [f"2026-11-{day:02d}" for day in range(1, 28)]
    sources = [ReuseSource(day, str(tmp_path / day)) for day in days]
    for day in days:
        rows = [{"uri": f"{day}/{name}.jpg", "sha256": "hot"} for name in ("x", "copy-of-x")]
        write_shard(tmp_path / day, [*rows, {"uri": f"{day}/only.jpg", "sha256": day}])
    pipeline = test_pipeline.TestPipeline()
    newest = pipeline | NewestEarlierRows(sources)
    shard = str(tmp_path / EARLIER / "embeddings-00000-of-00001.parquet")
    expected = [("hot", EarlierRow(EARLIER, shard, 1, 0))] + [
        (day, EarlierRow(day, str(tmp_path / day / "embeddings-00000-of-00001.parquet"), 2, 0))
        for day in days
    ]
    assert_that(newest, equal_to(expected))
    pipeline.run().wait_until_finish()


def test_matched_images_copy_the_earlier_row_and_the_others_go_to_the_model(tmp_path):
    rows = [
        {"uri": "old.jpg", "embedding": [1.0, 2.0], "sha256": "aa", "width": 4, "height": 3},
        {"uri": "x.jpg", "embedding": [3.0, 4.0], "sha256": "bb", "thumbnail": b"jpeg"},
    ]
    shard = str(write_shard(tmp_path / EARLIER, rows))
    images = [HashedImage(uri, 99) for uri in ("x.jpg", "copy-of-x.jpg")]
    earlier = EarlierRow(EARLIER, shard, 1, 0)
    (wanted,) = split_by_match(("bb", {"images": images, "earlier": [earlier]}))
    assert wanted == ((shard, 1), Wanted(0, EARLIER, "bb", images))
    new = list(split_by_match(("cc", {"images": images[:1], "earlier": []})))
    assert [(output.tag, output.value) for output in new] == [(NEW_TAG, "x.jpg")]
    assert list(split_by_match(("aa", {"images": [], "earlier": [earlier]}))) == []

    copied = list(CopyFromRowGroup("m", "float32").process(((shard, 1), [wanted[1]])))
    assert [(row["uri"], row["reused_from"], list(row["embedding"])) for row in copied] == [
        ("x.jpg", EARLIER, [3.0, 4.0]),
        ("copy-of-x.jpg", EARLIER, [3.0, 4.0]),
    ]
    facts = {
        (r["sha256"], r["size_bytes"], r["width"], r["height"], r["thumbnail"]) for r in copied
    }
    assert facts == {("bb", 99, None, None, b"jpeg")}


@dataclass
class TwoDays:
    root: Path
    earlier: Path  # OUTPUT_ROOT/EARLIER
    day: Path  # OUTPUT_ROOT/DAY
    shared: list[Path]  # the day's images whose bytes the earlier day embedded
    new: list[Path]
    broken: Path


@pytest.fixture(scope="module")
def two_days(tmp_path_factory) -> TwoDays:
    root = tmp_path_factory.mktemp("reuse")
    pool = write_images(root / "pool", 12, size=(64, 48), seed=7000)
    earlier_images = place(pool[:10], root / "images" / EARLIER, "a")
    shared = place(pool[:SHARED], root / "images" / DAY, "b")
    new = place(pool[10 : 10 + NEW], root / "images" / DAY, "b")
    broken = root / "images" / DAY / "notes.jpg"
    broken.write_bytes(b"not an image")
    outputs = root / "embeddings"
    run_day(outputs / EARLIER, earlier_images)
    run_day(outputs / DAY, [*shared, *new, broken])
    return TwoDays(root, outputs / EARLIER, outputs / DAY, shared, new, broken)


@pytest.fixture(scope="module")
def reference_model():
    return build_model(resolve_model("resnet50"), "random")


def direct_embeddings(model, files: list[Path]) -> np.ndarray:
    from keras.applications.resnet50 import preprocess_input

    pixels = np.stack([load_image(path.read_bytes(), (224, 224)).pixels for path in files])
    return np.asarray(model(preprocess_input(pixels.astype(np.float32)), training=False))


def test_the_day_reuses_exactly_the_images_the_earlier_day_embedded(two_days):
    rows = rows_of(two_days.day)
    reused = {uri: row["reused_from"] for uri, row in rows.items()}
    assert reused == {str(p): EARLIER for p in two_days.shared} | {
        str(p): None for p in two_days.new
    }
    record = marker(two_days.day)
    assert (record["images"], record["embedded"], record["failed"]) == (11, 10, 1)
    assert record["reused"] == SHARED
    assert record["reuse_sources"] == [{"day": EARLIER, "folder": str(two_days.earlier)}]
    assert marker(two_days.earlier)["reused"] == 0
    assert record["model_fingerprint"] == marker(two_days.earlier)["model_fingerprint"]


def test_reused_rows_are_the_earlier_ones_bit_for_bit(two_days, reference_model):
    """The day never decoded its reused images: their size and thumbnail come from the earlier
    rows, with the embedding."""
    earlier = {row["sha256"]: row for row in rows_of(two_days.earlier).values()}
    rows = rows_of(two_days.day)
    for path in two_days.shared:
        row = rows[str(path)]
        source = earlier[row["sha256"]]
        assert row["sha256"] == digest(path.read_bytes())
        assert row["size_bytes"] == path.stat().st_size
        assert np.array_equal(np.float32(row["embedding"]), np.float32(source["embedding"]))
        assert (row["width"], row["height"]) == (source["width"], source["height"]) == (64, 48)
        assert row["thumbnail"] == source["thumbnail"] and row["thumbnail"].startswith(b"\xff\xd8")
    new = np.array([rows[str(path)]["embedding"] for path in two_days.new], np.float32)
    expected = direct_embeddings(reference_model, two_days.new)
    np.testing.assert_allclose(new, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())
    (failure,) = rows_of(two_days.day, "failures").values()
    assert failure["sha256"] == digest(two_days.broken.read_bytes())
    assert pq.read_schema(next(two_days.day.glob("embeddings-*"))).equals(embeddings_schema(2048))
    assert pq.read_schema(next(two_days.day.glob("failures-*"))).equals(failures_schema())


def test_validation_counts_the_reused_rows(two_days):
    report = validate_output(str(two_days.day), max_failure_rate=0.5, expected_dim=2048)
    assert report.ok, report.problems
    assert report.counts["reused"] == SHARED == marker(two_days.day)["reused"]


def test_a_rerun_with_late_files_embeds_only_those_even_after_a_dead_launch(two_days, tmp_path):
    outputs = tmp_path / "embeddings"
    shutil.copytree(two_days.earlier, outputs / EARLIER)
    shutil.copytree(two_days.day, outputs / DAY)
    day = outputs / DAY
    before = rows_of(day)
    late = write_images(tmp_path / "late", 1, size=(40, 40), seed=9000)
    files = [*two_days.shared, *two_days.new, two_days.broken, *late]
    argv = [f"--manifest={write_manifest(day, files)}", f"--output={day}", *RUN_ARGS]

    # A launch that died once it had cleared the day: its earlier run is only in the aside copy.
    job, _ = parse_known_args(argv)
    taken = lease.acquire(str(day), lease.cli_holder())
    fence = lease.Fence(str(day), taken.record.holder, taken.token)
    prepare_launch(job, count=False, fingerprint=marker(day)["model_fingerprint"], fence=fence)
    lease.release(taken)
    assert not (day / "_SUCCESS").exists() and not list(day.glob("embeddings-*"))
    assert (day / "_previous_run" / "_SUCCESS").exists()

    run(argv)

    rows = rows_of(day)
    assert {uri: row["reused_from"] for uri, row in rows.items()} == {
        **{uri: DAY for uri in before},
        str(late[0]): None,
    }
    for uri, row in before.items():
        assert np.array_equal(np.float32(rows[uri]["embedding"]), np.float32(row["embedding"]))
    record = marker(day)
    assert (record["embedded"], record["reused"], record["failed"]) == (11, 10, 1)
    assert not (day / "_previous_run").exists()
    assert validate_output(str(day), max_failure_rate=0.5).counts["reused"] == 10


def test_no_reuse_when_turned_off(two_days, tmp_path):
    outputs = tmp_path / "embeddings"
    shutil.copytree(two_days.earlier, outputs / EARLIER)
    run_day(outputs / DAY, two_days.shared[:2], "--lookback_days=0")
    assert {row["reused_from"] for row in rows_of(outputs / DAY).values()} == {None}
    assert marker(outputs / DAY)["reused"] == 0


def test_reuse_on_gcs(gcs_emulator, tmp_path):
    from google.cloud import storage

    bucket = storage.Client.create_anonymous_client().bucket(gcs_emulator)
    root = f"gs://{gcs_emulator}/reuse"
    pool = write_images(tmp_path, 4, size=(48, 40), seed=8000)
    uris = {}
    for day, names in ((EARLIER, pool[:3]), (DAY, pool)):
        for path in names:
            bucket.blob(f"reuse/images/{day}/{path.name}").upload_from_filename(path)
        uris[day] = [f"{root}/images/{day}/{path.name}" for path in names]
        manifest = f"reuse/embeddings/{day}/manifest.txt"
        bucket.blob(manifest).upload_from_string("".join(f"{uri}\n" for uri in uris[day]))
        run(
            [
                f"--manifest=gs://{gcs_emulator}/{manifest}",
                f"--output={root}/embeddings/{day}",
                *RUN_ARGS,
            ]
        )

    def rows(day: str) -> dict[str, dict]:
        blobs = bucket.list_blobs(prefix=f"reuse/embeddings/{day}/embeddings-")
        tables = [pq.read_table(io.BytesIO(blob.download_as_bytes())) for blob in blobs]
        return {row["uri"]: row for row in pa.concat_tables(tables).to_pylist()}

    earlier, today = rows(EARLIER), rows(DAY)
    by_digest = {row["sha256"]: row["embedding"] for row in earlier.values()}
    assert {uri: row["reused_from"] for uri, row in today.items()} == {
        **{uri: EARLIER for uri in uris[DAY][:3]},
        uris[DAY][3]: None,
    }
    for uri in uris[DAY][:3]:
        assert np.array_equal(today[uri]["embedding"], by_digest[today[uri]["sha256"]])
    record = json.loads(bucket.blob(f"reuse/embeddings/{DAY}/_SUCCESS").download_as_bytes())
    assert (record["embedded"], record["reused"]) == (4, 3)
    report = validate_output(f"{root}/embeddings/{DAY}", max_failure_rate=0.0)
    assert report.ok and report.counts["reused"] == 3


def test_worker_processes_reuse_the_same_rows(two_days, tmp_path):
    outputs = tmp_path / "embeddings"
    shutil.copytree(two_days.earlier, outputs / EARLIER)
    files = [*two_days.shared, *two_days.new, two_days.broken]
    run_day(
        outputs / DAY,
        files,
        "--direct_running_mode=multi_processing",
        "--direct_num_workers=2",
    )
    rows, expected = rows_of(outputs / DAY), rows_of(two_days.day)
    assert {uri: row["reused_from"] for uri, row in rows.items()} == {
        uri: row["reused_from"] for uri, row in expected.items()
    }
    for uri, row in rows.items():
        stored, wanted = np.float32(row["embedding"]), np.float32(expected[uri]["embedding"])
        if row["reused_from"]:
            assert np.array_equal(stored, wanted)
        else:
            np.testing.assert_allclose(stored, wanted, rtol=1e-3, atol=1e-4 * np.abs(wanted).max())
    assert (marker(outputs / DAY)["reused"], marker(outputs / DAY)["failed"]) == (SHARED, 1)
