"""Whole pipeline runs on the DirectRunner, local and on gs://, looked at through their outputs."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from beam_jobs.image_embeddings.contract import (
    FINGERPRINT_KEY,
    LEASE_NAME,
    STAGE_INFERENCE,
    SUCCESS_KEYS,
    embeddings_schema,
    failures_schema,
)
from beam_jobs.image_embeddings.engine.models import build_model, resolve_model
from beam_jobs.image_embeddings.images import THUMBNAIL_SIDE, load_image
from beam_jobs.image_embeddings.launcher import run
from beam_jobs.image_embeddings.outputs import ImageFacts
from beam_jobs.image_embeddings.pipeline import ToEmbeddingRows, failed_batch, parse_line
from tests.image_factory import BAD_INPUT_STAGES, write_bad_inputs, write_image, write_images

pytestmark = pytest.mark.slow

RESNET_INPUT = (224, 224)
BAD_ENTRIES = (
    "zero_byte",
    "text_named_jpg",
    "header_corrupted_jpeg",
    "truncated_png",
    "decompression_bomb_png",
    "directory_named_jpg",
    "missing_file",
    "cmyk_jpeg",
    "exif_rotated_jpeg",
    "name_with_spaces",
    "name_with_hash",
    "name_unicode",
)


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory) -> str:
    """Seeded random ResNet50 weights saved as a file: runs load them through --weights URI."""
    path = tmp_path_factory.mktemp("weights") / "resnet50-random.weights.h5"
    build_model(resolve_model("resnet50"), "random").save_weights(path)
    return str(path)


@pytest.fixture(scope="module")
def reference_model(weights_file):
    return build_model(resolve_model("resnet50"), weights_file)


def direct_embeddings(model, images: list[bytes]) -> np.ndarray:
    """The model applied straight to each image's preprocessed pixels, outside any pipeline."""
    from keras.applications.resnet50 import preprocess_input

    pixels = np.stack([load_image(data, RESNET_INPUT).pixels for data in images])
    return np.asarray(model(preprocess_input(pixels.astype(np.float32)), training=False))


class LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run_logged(argv: list[str]) -> list[str]:
    """Run the pipeline; return the log lines it wrote at INFO and above."""
    capture = LogCapture()
    root = logging.getLogger()
    saved_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.INFO)
    try:
        run(argv)
    finally:
        root.removeHandler(capture)
        root.setLevel(saved_level)
    return capture.lines


def read_rows(paths: list[Path | str | io.BytesIO]) -> list[dict]:
    return pa.concat_tables([pq.read_table(path) for path in paths]).to_pylist()


@dataclass
class LocalRun:
    output: Path
    images: dict[str, Path]  # uri -> file, for every entry expected to embed
    failing: dict[str, str]  # uri -> stage, for every entry expected to fail
    sizes: dict[str, tuple[int, int]]  # uri -> upright (width, height)
    duplicates: int
    logs: list[str]


def _manifest_text(uris: list[str]) -> str:
    """Manifest lines with what real ones hold: a comment, blanks, CRLF, padding, repeats."""
    lines = ["# images of the day", ""]
    for index, uri in enumerate(uris):
        lines.append(f"  {uri}  \r" if index % 3 == 0 else uri)
    lines += ["", uris[0], uris[1], "# end"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, weights_file) -> LocalRun:
    root = tmp_path_factory.mktemp("local")
    sizes: dict[str, tuple[int, int]] = {}
    formats = [
        ("JPEG", 8, (64, 48)),
        ("PNG", 4, (120, 40)),
        ("WEBP", 3, (30, 90)),
        ("BMP", 2, (50, 50)),
        ("TIFF", 2, (33, 77)),
    ]
    images: dict[str, Path] = {}
    for index, (fmt, count, size) in enumerate(formats):
        for path in write_images(root / fmt.lower(), count, size, fmt, seed=1000 + 100 * index):
            images[str(path)] = path
            sizes[str(path)] = size
    camera = write_image(root / "camera.jpg", size=(1600, 1200), seed=2000)
    images[str(camera)] = camera
    sizes[str(camera)] = (1600, 1200)

    corpus = write_bad_inputs(root / "corpus")
    failing = {}
    for name in BAD_ENTRIES:
        uri = str(corpus[name])
        if BAD_INPUT_STAGES[name] is None:
            images[uri] = corpus[name]
            sizes[uri] = (64, 48)
        else:
            failing[uri] = BAD_INPUT_STAGES[name]
    manifest = root / "manifest.txt"
    manifest.write_bytes(_manifest_text([*images, *failing]).encode("utf-8"))

    output = root / "out"
    logs = run_logged(
        [
            f"--manifest={manifest}",
            f"--output={output}",
            f"--weights={weights_file}",
            "--engine=tensorflow",
            "--batch_size=4",
            "--num_shards=2",
            "--progress_interval_secs=1",
        ]
    )
    return LocalRun(output, images, failing, sizes, duplicates=2, logs=logs)


def marker(output: Path) -> dict:
    return json.loads((output / "_SUCCESS").read_text())


def test_every_entry_ends_exactly_once(local_run):
    embedded = [row["uri"] for row in read_rows(sorted(local_run.output.glob("embeddings-*")))]
    failed = [row["uri"] for row in read_rows(sorted(local_run.output.glob("failures-*")))]
    assert len(local_run.images) >= 20
    assert sorted(embedded) == sorted(local_run.images)
    assert sorted(failed) == sorted(local_run.failing)


def test_embeddings_equal_the_model_applied_to_each_image(local_run, reference_model):
    rows = read_rows(sorted(local_run.output.glob("embeddings-*")))
    uris = [row["uri"] for row in rows]
    stored = np.array([row["embedding"] for row in rows], dtype=np.float32)
    expected = direct_embeddings(
        reference_model, [local_run.images[uri].read_bytes() for uri in uris]
    )
    scale = np.abs(expected).max()
    np.testing.assert_allclose(stored, expected, rtol=1e-3, atol=1e-4 * scale)
    # Images are far apart compared with that tolerance: a swapped pair could not pass.
    distances = np.linalg.norm(stored[:, None, :] - expected[None, :, :], axis=-1)
    assert (distances.argmin(axis=1) == np.arange(len(uris))).all()
    off_diagonal = distances + np.diag(np.full(len(uris), np.inf))
    assert off_diagonal.min() > 10 * np.diag(distances).max()


def test_outputs_keep_the_contract_schemas(local_run):
    shards = sorted(local_run.output.glob("embeddings-*"))
    assert [path.name for path in shards] == [
        "embeddings-00000-of-00002.parquet",
        "embeddings-00001-of-00002.parquet",
    ]
    for path in shards:
        assert pq.read_schema(path).equals(embeddings_schema(2048))
    assert pq.read_schema(local_run.output / "failures-00000-of-00001.parquet").equals(
        failures_schema()
    )
    rows = read_rows(shards)
    assert {row["model"] for row in rows} == {"resnet50"}
    assert {row["uri"]: (row["width"], row["height"]) for row in rows} == local_run.sizes
    for row in rows:
        thumbnail = Image.open(io.BytesIO(row["thumbnail"]))
        width, height = local_run.sizes[row["uri"]]
        assert thumbnail.format == "JPEG"
        assert max(thumbnail.size) == min(THUMBNAIL_SIDE, max(width, height))


def test_failures_name_their_stage_and_reason(local_run):
    rows = read_rows(sorted(local_run.output.glob("failures-*")))
    assert {row["uri"]: row["stage"] for row in rows} == local_run.failing
    assert all(row["error"].strip() and row["model"] == "resnet50" for row in rows)
    errors = {Path(row["uri"]).name: row["error"] for row in rows}
    assert errors["missing.jpg"] == "file not found"
    assert "bomb" in errors["bomb.png"]


def test_success_marker_counts_add_up(local_run):
    record = marker(local_run.output)
    assert set(SUCCESS_KEYS) <= set(record)
    images, failed = len(local_run.images), len(local_run.failing)
    assert (record["images"], record["embedded"], record["failed"]) == (
        images + failed,
        images,
        failed,
    )
    assert record["embedded"] + record["failed"] == record["images"]
    assert record["duplicates"] == local_run.duplicates
    assert (record["model"], record["dim"], record["runner"]) == ("resnet50", 2048, "direct")
    assert (record["precision"], record["embedding_dtype"]) == ("float32", "float32")
    assert record["weights"].endswith("resnet50-random.weights.h5")
    assert record["beam_version"] == "2.77.0"
    assert record["started_at"] < record["finished_at"]
    assert record["duration_s"] > 0
    files = sorted(path.name for path in local_run.output.iterdir())
    # The run's lease stays, given back: the next run's token comes above its token.
    expected = [LEASE_NAME, "_SUCCESS", *record["embeddings_files"], *record["failures_files"]]
    assert files == expected


def test_every_embeddings_shard_carries_the_model_fingerprint(local_run):
    record = marker(local_run.output)
    assert len(record[FINGERPRINT_KEY]) == 16 and record["fingerprint_parts"]["model"] == "resnet50"
    for name in record["embeddings_files"]:
        metadata = pq.read_schema(local_run.output / name).metadata
        assert metadata[FINGERPRINT_KEY.encode()] == record[FINGERPRINT_KEY].encode()


def test_progress_and_summary_are_logged(local_run):
    total = len(local_run.images) + len(local_run.failing)
    progress = [line for line in local_run.logs if line.startswith("progress: ")]
    assert progress, "no progress line"
    assert all(f"/{total} images" in line for line in progress)
    (summary,) = [line for line in local_run.logs if line.startswith("summary: ")]
    expected = f"{total} images, {len(local_run.images)} embedded, {len(local_run.failing)} failed"
    assert expected in summary
    assert "images/s" in summary


def test_manifest_lines_parse_like_the_contract():
    assert parse_line("  gs://b/a.jpg \r") == ["gs://b/a.jpg"]
    assert parse_line("# gs://b/a.jpg") == []
    assert parse_line("   ") == []
    assert parse_line("/x/hash#1.jpg") == ["/x/hash#1.jpg"]


def facts(uri: str) -> ImageFacts:
    return ImageFacts(uri, 3, 2, hashlib.sha256(uri.encode()).hexdigest(), 100, b"jpeg")


class RefusesOddPixels(ModelHandler):
    """A model that sums pixels in batches of four, and raises on a batch with an odd pixel."""

    def load_model(self):
        return None

    def run_inference(self, batch, model, inference_args=None):
        if any(int(example.flat[0]) % 2 for example in batch):
            raise ValueError("odd pixel")
        return [example.sum(keepdims=True).astype(np.float32) for example in batch]

    def batch_elements_kwargs(self):
        return {"min_batch_size": 4, "max_batch_size": 4}


def test_a_failing_batch_becomes_one_failure_per_image():
    """RunInference's dead letters, as Beam really emits them, name every image of the batch."""
    good = [(facts(f"good-{n}.jpg"), np.full((2, 2, 3), n, np.uint8)) for n in (2, 4, 6, 8)]
    bad = [(facts(f"bad-{n}.jpg"), np.full((2, 2, 3), n, np.uint8)) for n in (10, 1, 12, 14)]
    error = "model call failed: ValueError('odd pixel')"
    with beam.Pipeline() as pipeline:
        embedded, dead_letters = (
            pipeline
            | beam.Create(good + bad)
            | RunInference(KeyedModelHandler(RefusesOddPixels())).with_exception_handling()
        )
        failures = dead_letters.failed_inferences | beam.FlatMap(failed_batch)
        expected = [
            {"uri": key.uri, "stage": STAGE_INFERENCE, "error": error, "sha256": key.sha256}
            for key, _ in bad
        ]
        assert_that(failures, equal_to(expected), label="CheckFailures")
        assert_that(embedded | beam.Keys(), equal_to([key for key, _ in good]), label="CheckRows")


def test_a_non_finite_embedding_is_a_failure_not_a_row():
    to_rows = ToEmbeddingRows("resnet50", "float32")
    (row,) = to_rows.process((facts("a.jpg"), np.array([0.5, 1.0], np.float32)))
    assert (row["uri"], row["width"], row["height"], row["thumbnail"]) == ("a.jpg", 3, 2, b"jpeg")
    assert (row["sha256"], row["reused_from"]) == (facts("a.jpg").sha256, None)
    (tagged,) = to_rows.process((facts("b.jpg"), np.array([np.nan, 1.0], np.float32)))
    assert tagged.tag == "failed"
    assert tagged.value == {
        "uri": "b.jpg",
        "stage": STAGE_INFERENCE,
        "error": "model output is not finite (NaN or inf)",
        "sha256": facts("b.jpg").sha256,
    }


@pytest.mark.parametrize(
    ("values", "dtype", "reason"),
    [
        ([65504.0, -1.0], "float16", None),
        ([65520.0, 1.0], "float16", "model output 65520 is out of range for float16"),
        ([1.0, -7e4], "float16", "model output 70000 is out of range for float16"),
        ([7e4, 1.0], "float32", None),
        ([np.inf, 1.0], "float32", "model output is not finite (NaN or inf)"),
    ],
)
def test_a_value_the_stored_dtype_cannot_hold_fails_that_image(values, dtype, reason):
    to_rows = ToEmbeddingRows("resnet50", dtype)

    (output,) = to_rows.process((facts("a.jpg"), np.array(values, np.float32)))

    if reason is None:
        assert np.all(np.isfinite(output["embedding"]))
        assert output["embedding"].dtype == np.dtype(dtype)
    else:
        assert output.tag == "failed"
        assert output.value["stage"] == STAGE_INFERENCE
        assert output.value["error"].startswith(reason)


def test_rerun_replaces_the_output(local_run, tmp_path, weights_file, reference_model):
    output = tmp_path / "out"
    shutil.copytree(local_run.output, output)
    (output / "beam-temp-embeddings-0123abcd").mkdir()
    (output / "beam-temp-embeddings-0123abcd" / "partial.parquet").write_bytes(b"partial")
    first = sorted(local_run.images)[:3]
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("\n".join(first) + "\n")
    argv = [f"--manifest={manifest}", f"--output={output}", "--num_shards=1", "--engine=tensorflow"]

    # A launch refused before it touches the day (no weights file to digest) leaves it whole.
    with pytest.raises(Exception, match="missing.weights.h5"):
        run([*argv, f"--weights={tmp_path / 'missing.weights.h5'}"])
    assert (output / "_SUCCESS").exists()
    # A run that fails after launch (weights that do not load) leaves no marker behind, not the
    # earlier run's.
    broken = tmp_path / "broken.weights.h5"
    broken.write_bytes(b"not a weights file")
    with pytest.raises(Exception, match="broken.weights.h5|file signature"):
        run([*argv, f"--weights={broken}"])
    assert not (output / "_SUCCESS").exists()

    run([*argv, f"--weights={weights_file}", "--embedding_dtype=float16"])
    assert sorted(path.name for path in output.iterdir()) == [
        LEASE_NAME,
        "_SUCCESS",
        "embeddings-00000-of-00001.parquet",
        "failures-00000-of-00001.parquet",
    ]
    record = marker(output)
    assert (record["images"], record["embedded"], record["failed"]) == (3, 3, 0)
    assert record["embedding_dtype"] == "float16"
    shard = output / "embeddings-00000-of-00001.parquet"
    assert pq.read_schema(shard).equals(embeddings_schema(2048, "float16"))
    rows = read_rows([shard])
    uris = [row["uri"] for row in rows]
    assert sorted(uris) == first
    stored = np.array([row["embedding"] for row in rows], dtype=np.float32)
    expected = direct_embeddings(reference_model, [local_run.images[u].read_bytes() for u in uris])
    np.testing.assert_allclose(stored, expected, rtol=2e-3, atol=1e-3 * np.abs(expected).max())
    assert read_rows([output / "failures-00000-of-00001.parquet"]) == []


@pytest.fixture(scope="module")
def gcs_run(gcs_emulator, tmp_path_factory, weights_file):
    """A run whose images, manifest and output all live on the emulated GCS."""
    from google.cloud import storage

    bucket = storage.Client.create_anonymous_client().bucket(gcs_emulator)
    prefix = "pipeline-test"
    root = f"gs://{gcs_emulator}/{prefix}"
    folder = tmp_path_factory.mktemp("gcs")
    files = write_images(folder, 4, size=(80, 60), seed=500)
    files += write_images(folder, 2, size=(48, 96), fmt="PNG", seed=600)
    images = {}
    for path in files:
        bucket.blob(f"{prefix}/images/{path.name}").upload_from_filename(path)
        images[f"{root}/images/{path.name}"] = path.read_bytes()
    bucket.blob(f"{prefix}/images/notes.jpg").upload_from_string(b"not an image")
    bucket.blob(f"{prefix}/elsewhere/outside.jpg").upload_from_filename(files[0])
    failing = {
        f"{root}/images/notes.jpg": "decode",
        f"{root}/images/missing.jpg": "read",
        f"{root}/elsewhere/outside.jpg": "input",
    }
    manifest = "\n".join([*images, *failing, *list(images)[:1]]) + "\n"
    bucket.blob(f"{prefix}/manifest.txt").upload_from_string(manifest)
    # What an earlier run with more shards, and an interrupted one, left behind.
    for name in ("_SUCCESS", "embeddings-00003-of-00004.parquet", "beam-temp-failures-9/x"):
        bucket.blob(f"{prefix}/out/{name}").upload_from_string(b"stale")

    run(
        [
            f"--manifest={root}/manifest.txt",
            f"--output={root}/out",
            f"--input_root={root}/images",
            f"--weights={weights_file}",
            "--engine=tensorflow",
            "--batch_size=4",
        ]
    )
    blobs = {
        blob.name.removeprefix(f"{prefix}/out/"): blob
        for blob in bucket.list_blobs(prefix=f"{prefix}/out/")
    }
    return images, failing, blobs


def test_gcs_run_keeps_the_contract(gcs_run, reference_model):
    images, failing, blobs = gcs_run
    assert sorted(blobs) == [
        "_LEASE",
        "_SUCCESS",
        "embeddings-00000-of-00001.parquet",
        "failures-00000-of-00001.parquet",
    ]
    record = json.loads(blobs["_SUCCESS"].download_as_bytes())
    assert (record["images"], record["embedded"], record["failed"]) == (9, 6, 3)
    assert record["duplicates"] == 1

    def table(name: str) -> list[dict]:
        return read_rows([io.BytesIO(blobs[name].download_as_bytes())])

    failures = table("failures-00000-of-00001.parquet")
    assert {row["uri"]: row["stage"] for row in failures} == failing
    rows = table("embeddings-00000-of-00001.parquet")
    uris = [row["uri"] for row in rows]
    assert sorted(uris) == sorted(images)
    stored = np.array([row["embedding"] for row in rows], dtype=np.float32)
    expected = direct_embeddings(reference_model, [images[uri] for uri in uris])
    np.testing.assert_allclose(stored, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())


def test_multi_process_direct_runner(local_run, tmp_path, weights_file, reference_model):
    """Worker processes of their own load images and the model, and report their progress."""
    chosen = sorted(local_run.images)[:3]
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("\n".join([*chosen, str(tmp_path / "missing.jpg")]) + "\n")
    output = tmp_path / "out"
    logs = run_logged(
        [
            f"--manifest={manifest}",
            f"--output={output}",
            f"--weights={weights_file}",
            "--engine=tensorflow",
            "--progress_interval_secs=0.001",
            "--direct_running_mode=multi_processing",
            "--direct_num_workers=2",
        ]
    )
    record = marker(output)
    assert (record["images"], record["embedded"], record["failed"]) == (4, 3, 1)
    rows = read_rows(sorted(output.glob("embeddings-*")))
    uris = [row["uri"] for row in rows]
    assert sorted(uris) == chosen
    stored = np.array([row["embedding"] for row in rows], dtype=np.float32)
    expected = direct_embeddings(reference_model, [local_run.images[u].read_bytes() for u in uris])
    np.testing.assert_allclose(stored, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())
    assert any("progress in worker process" in line for line in logs)
    assert any(line.startswith("summary: 4 images, 3 embedded, 1 failed") for line in logs)
