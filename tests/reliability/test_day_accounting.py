"""A day as phones, cameras and the web leave it: every object embedded, failed or skipped."""

from __future__ import annotations

import posixpath
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from beam_jobs.image_embeddings.contract import STAGE_INFERENCE, join
from image_embeddings_airflow import storage
from image_embeddings_airflow.dag.manifest import stage_manifest
from image_embeddings_airflow.dag.skips import LINE_BREAK, NOT_AN_IMAGE
from image_embeddings_airflow.dag.validation import REPORT_NAME, validate_output
from tests.gcs_emulator import upload_as_producer
from tests.image_factory import REAL_PHOTOS, write_real_photo_day
from tests.reliability.runs import DIM, account, read_outputs, run_pipeline

pytestmark = pytest.mark.slow

# What a photo folder holds beside the photos: none of these is an image by its name.
OTHER_FILES = {"notes.txt": b"minutes", "album.json": b"{}", "sidecar/IMG_0001.xmp": b"<x/>"}
OTHER_FILES |= {"Thumbs.db": b"\x00", "README": b"read me", "broken\nname.jpg": b"\xff\xd8"}


def write_photo_day(folder: Path, photos: tuple[Path, ...] = REAL_PHOTOS) -> list[Path]:
    images = write_real_photo_day(folder, photos=photos)
    for name, data in OTHER_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return images


@pytest.fixture(scope="module")
def photo_day(tmp_path_factory) -> tuple[Path, list[Path]]:
    folder = tmp_path_factory.mktemp("photos") / "images" / "2026-11-30"
    return folder, write_photo_day(folder)


def _formats(paths: list[Path]) -> Counter:
    counts = Counter()
    for path in paths:
        with Image.open(path) as image:
            counts[image.format] += 1
    return counts


def _check_day(images: str, output: str, expected: list[str], observe) -> None:
    """Stage, embed and validate one day; every image embedded, every other object skipped."""
    staged = stage_manifest(images, output)
    run_pipeline(output, "--input_root", images, "--num_shards", "2")
    report = validate_output(output, max_failure_rate=0.0, expected_dim=DIM)

    outputs = read_outputs(output)
    accounting = observe.add(account(expected, outputs))
    skipped = report.skipped
    observe.skipped.update(
        {reason: sum(counts.values()) for reason, counts in skipped["by_reason"].items()}
    )
    objects = len(list(storage.list_files(images)))
    observe.unaccounted += objects - len(outputs.embedded) - len(outputs.failed) - skipped["total"]
    assert accounting.lost == accounting.duplicated == accounting.unexpected == 0
    assert outputs.failures == {}, outputs.failures
    assert sorted(outputs.embedded) == sorted(expected)
    assert staged.count == len(expected)
    assert skipped["by_reason"] == {
        LINE_BREAK: {".jpg": 1},
        NOT_AN_IMAGE: {"(none)": 1, ".db": 1, ".json": 1, ".txt": 1, ".xmp": 1},
    }
    assert staged.skipped.to_dict() == skipped
    assert storage.read_json(join(output, REPORT_NAME))["skipped"] == skipped
    assert observe.unaccounted == 0


def test_a_day_of_real_photos_in_every_format_embeds_in_full(photo_day, tmp_path, observe):
    observe.area = "formats and skips"
    folder, images = photo_day
    observe.formats.update(_formats(images))
    extensions = {posixpath.splitext(path.name)[1] for path in images}

    _check_day(
        str(folder), str(tmp_path / "embeddings" / "2026-11-30"), list(map(str, images)), observe
    )

    # Every extension of the contract, in lower and upper case, and every format.
    assert {ext.lower() for ext in extensions} == {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp",
        ".avif", ".heic", ".heif",
    }  # fmt: skip
    assert any(ext.isupper() for ext in extensions) and any(ext.islower() for ext in extensions)
    assert set(observe.formats) == {"JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "AVIF", "HEIF"}


def test_a_day_of_real_photos_on_gcs_embeds_in_full(gcs_emulator, tmp_path, observe):
    observe.area = "formats and skips"
    local = tmp_path / "photos"
    photos = write_photo_day(local, photos=REAL_PHOTOS[:1])
    observe.formats.update(_formats(photos))
    images = f"gs://{gcs_emulator}/formats/images/2026-11-30"
    for path in local.rglob("*"):
        if path.is_file():
            upload_as_producer(join(images, path.relative_to(local).as_posix()), path.read_bytes())
    expected = [join(images, path.relative_to(local).as_posix()) for path in photos]

    _check_day(images, f"gs://{gcs_emulator}/formats/embeddings/2026-11-30", expected, observe)


def save_scaling_model(path: Path, gain: float) -> Path:
    """A `.keras` model whose 2-d embedding is `gain` x the image's mean pixel (0..255) per
    channel, summed: bright images give values beyond float16's range, dark ones do not."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(
                2, use_bias=False, kernel_initializer=keras.initializers.Constant(gain)
            ),
        ]
    )
    model.save(path)
    return path


def test_a_value_float16_cannot_hold_fails_that_image_not_the_day(tmp_path, observe):
    observe.area = "one image's fault"
    images = tmp_path / "images" / "2026-11-30"
    images.mkdir(parents=True)
    bright = Image.new("RGB", (40, 30), (250, 250, 250))
    bright.save(images / "snow.png")
    Image.new("RGB", (40, 30), (10, 20, 30)).save(images / "night.png")
    Image.new("RGB", (40, 30), (90, 100, 110)).save(images / "dusk.jpg")
    model = save_scaling_model(tmp_path / "scaling.keras", gain=100.0)
    output = str(tmp_path / "embeddings" / "2026-11-30")
    stage_manifest(str(images), output)

    run_pipeline(
        # The default weights of a .keras model are its own.
        output,
        "--model",
        str(model),
        "--weights",
        "imagenet",
        "--embedding_dtype",
        "float16",
    )

    outputs = read_outputs(output)
    observe.bad_inputs += 1
    accounting = observe.add(account([str(p) for p in images.iterdir()], outputs))
    assert accounting.lost == accounting.duplicated == accounting.unexpected == 0
    (failure,) = outputs.failures.values()
    assert failure["uri"] == str(images / "snow.png")
    assert failure["stage"] == STAGE_INFERENCE
    assert "out of range for float16 (largest 65504)" in failure["error"]
    assert np.all(np.isfinite(outputs.vectors[str(images / "night.png")]))
    assert outputs.marker["failed"] == 1
    assert validate_output(output, max_failure_rate=0.5).ok
