"""Tests of image loading: decode, orientation, modes, resize, bounds, input root, the DoFn."""

from __future__ import annotations

import hashlib
import io
import os
import pickle

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.pvalue import TaggedOutput
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp
from PIL import Image, ImageOps

from beam_jobs.image_embeddings.contract import IMAGE_FORMATS, STAGE_DECODE, STAGE_INPUT, STAGE_READ
from beam_jobs.image_embeddings.images import (
    FAILED_TAG,
    METRICS_NAMESPACE,
    THUMBNAIL_SIDE,
    HashedImage,
    ImageLoadError,
    LoadedImage,
    LoadImageFn,
    check_inside_root,
    decode_image,
    decode_pixels,
    load_image,
    open_image,
    read_bounded,
    resize_exact,
    to_rgb,
)
from tests.image_factory import (
    BAD_INPUT_STAGES,
    ESCAPING_STAGE,
    REAL_PHOTOS,
    photo,
    png_bomb_bytes,
    write_bad_inputs,
    write_escaping_entries,
    write_image,
)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def quadrants(width: int, height: int) -> Image.Image:
    """Top-left red, top-right green, bottom-left blue, bottom-right white."""
    pixels = np.zeros((height, width, 3), np.uint8)
    top, left = slice(0, height // 2), slice(0, width // 2)
    bottom, right = slice(height // 2, None), slice(width // 2, None)
    pixels[top, left], pixels[top, right] = RED, GREEN
    pixels[bottom, left], pixels[bottom, right] = BLUE, WHITE
    return Image.fromarray(pixels)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def full_decode_pixels(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """The reference path without draft decoding."""
    return resize_exact(to_rgb(ImageOps.exif_transpose(decode_image(data))), size)


# --- resize and orientation -------------------------------------------------------------------


@pytest.mark.parametrize(("source", "size"), [((300, 100), (50, 80)), ((90, 240), (224, 224))])
def test_resize_exact_keeps_height_width_order_and_layout(source, size):
    pixels = resize_exact(quadrants(*source), size)

    height, width = size
    assert pixels.shape == (height, width, 3)
    assert pixels.dtype == np.uint8
    assert tuple(pixels[2, 2]) == RED
    assert tuple(pixels[2, width - 3]) == GREEN
    assert tuple(pixels[height - 3, 2]) == BLUE
    assert tuple(pixels[height - 3, width - 3]) == WHITE


def test_resize_exact_refuses_non_rgb():
    with pytest.raises(ValueError, match="needs an RGB image, got mode L"):
        resize_exact(Image.new("L", (4, 4)), (2, 2))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, orientation):
    upright = write_image(tmp_path / "upright.png", size=(60, 30), fmt="PNG", seed=3)
    turned = write_image(
        tmp_path / "turned.png", size=(60, 30), fmt="PNG", seed=3, exif_orientation=orientation
    )

    loaded = load_image(turned.read_bytes(), (30, 40))

    assert (loaded.width, loaded.height) == (60, 30)
    np.testing.assert_array_equal(loaded.pixels, load_image(upright.read_bytes(), (30, 40)).pixels)


def test_exif_rotated_jpeg_is_turned_upright(tmp_path):
    image = quadrants(80, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter; viewers rotate it 90 degrees clockwise
    stored = image.transpose(Image.Transpose.ROTATE_90)
    data = encode(stored, "JPEG", exif=exif.tobytes(), quality=95)

    loaded = load_image(data, (20, 40))

    assert Image.open(io.BytesIO(data)).size == (40, 80)
    assert (loaded.width, loaded.height) == (80, 40)
    expected = resize_exact(image, (20, 40)).astype(int)
    assert np.abs(loaded.pixels.astype(int) - expected).mean() < 4


def test_thumbnail_is_a_small_upright_jpeg_of_the_whole_image(tmp_path):
    image = quadrants(800, 400)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(image.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif.tobytes())

    thumbnail = Image.open(io.BytesIO(load_image(data, (224, 224)).thumbnail))

    assert thumbnail.format == "JPEG"
    assert thumbnail.size == (THUMBNAIL_SIDE, THUMBNAIL_SIDE // 2)
    corners = np.asarray(thumbnail.convert("RGB").resize((2, 2), Image.Resampling.BOX)).astype(int)
    np.testing.assert_allclose(corners.reshape(4, 3), [RED, GREEN, BLUE, WHITE], atol=24)


def test_thumbnail_of_a_small_image_keeps_its_size():
    thumbnail = load_image(encode(quadrants(40, 30), "PNG"), (224, 224)).thumbnail

    assert Image.open(io.BytesIO(thumbnail)).size == (40, 30)


# --- modes ----------------------------------------------------------------------------------


def test_transparency_is_composited_over_white():
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(255, 0, 0, 255), (255, 0, 0, 0), (0, 0, 0, 128)])

    pixels = np.asarray(to_rgb(rgba))

    assert pixels[0].tolist() == [[255, 0, 0], [255, 255, 255], [127, 127, 127]]


def test_gray_alpha_is_composited_over_white():
    la = Image.new("LA", (2, 1))
    la.putdata([(10, 255), (10, 0)])

    assert np.asarray(to_rgb(la))[0].tolist() == [[10, 10, 10], [255, 255, 255]]


def test_palette_transparency_becomes_white(tmp_path):
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)
    palette.putdata([0, 1])
    data = encode(palette, "PNG", transparency=0)

    image = decode_image(data)

    assert image.mode == "P"
    assert np.asarray(to_rgb(image))[0].tolist() == [[255, 255, 255], [200, 30, 40]]


def test_rgb_with_transparent_colour_becomes_white():
    rgb = Image.new("RGB", (2, 1))
    rgb.putdata([(1, 2, 3), (9, 9, 9)])
    rgb.info["transparency"] = (1, 2, 3)

    assert np.asarray(to_rgb(rgb))[0].tolist() == [[255, 255, 255], [9, 9, 9]]


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_sixteen_bit_gray_scales_to_eight_bits(mode):
    values = np.array([[0, 257 * 10, 32896, 65535]])
    image = Image.fromarray(values.astype(np.uint16 if mode == "I;16" else np.int32))
    assert image.mode == mode

    pixels = np.asarray(to_rgb(image))

    assert pixels[0, :, 0].tolist() == [0, 10, 128, 255]
    assert (pixels == pixels[..., :1]).all()


def test_sixteen_bit_png_file_uses_the_full_range(tmp_path):
    ramp = np.linspace(0, 65535, 256).astype(np.uint16)[None, :].repeat(4, axis=0)
    path = tmp_path / "gray16.png"
    Image.fromarray(ramp).save(path)

    loaded = load_image(path.read_bytes(), (4, 256))

    assert decode_image(path.read_bytes()).mode == "I;16"
    assert loaded.pixels[0, 0].tolist() == [0, 0, 0]
    assert loaded.pixels[0, -1].tolist() == [255, 255, 255]
    assert np.abs(loaded.pixels[0, :, 0].astype(int) - np.arange(256)).max() <= 1


def test_float_keeps_pillow_scale():
    image = Image.fromarray(np.array([[0.0, 100.4, 300.0]], np.float32))

    assert np.asarray(to_rgb(image))[0, :, 0].tolist() == [0, 100, 255]


def test_cmyk_converts_to_rgb():
    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))

    assert np.asarray(to_rgb(cmyk))[0, 0].tolist() == [255, 0, 0]


def test_cmyk_jpeg_matches_its_rgb_source(tmp_path):
    path = write_image(tmp_path / "cmyk.jpg", size=(64, 48), mode="CMYK", seed=4)
    source = np.asarray(photo((64, 48), seed=4), dtype=int)

    image = decode_image(path.read_bytes())

    assert image.mode == "CMYK"
    assert np.abs(np.asarray(to_rgb(image), dtype=int) - source).mean() < 8


def test_bilevel_and_gray_convert_to_rgb():
    bilevel = Image.new("1", (2, 1))
    bilevel.putdata([0, 255])
    gray = Image.new("L", (1, 1), 77)

    assert np.asarray(to_rgb(bilevel))[0].tolist() == [[0, 0, 0], [255, 255, 255]]
    assert np.asarray(to_rgb(gray))[0, 0].tolist() == [77, 77, 77]


@pytest.mark.parametrize(
    ("fmt", "options", "tolerance"),
    [
        ("GIF", {}, 0),
        ("PNG", {}, 0),
        ("WEBP", {"lossless": True}, 0),
        ("TIFF", {}, 0),
        ("AVIF", {"speed": 8}, 4),
        ("HEIF", {}, 4),
    ],
)
def test_multi_frame_files_give_their_first_frame(fmt, options, tolerance):
    frames = [Image.new("RGB", (16, 12), colour) for colour in (RED, GREEN, BLUE)]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, **options)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3

    loaded = load_image(data, (6, 8))

    assert np.abs(loaded.pixels.astype(int) - RED).max() <= tolerance


@pytest.fixture(scope="module")
def real_photo() -> Image.Image:
    with Image.open(REAL_PHOTOS[0]) as source:
        source.thumbnail((256, 256))
        return source.convert("RGB")


@pytest.mark.parametrize("fmt", sorted(IMAGE_FORMATS))
def test_every_contract_format_decodes_a_real_photo(real_photo, fmt):
    lossless = encode(real_photo, "PNG")
    lossy_options = {"JPEG": {"quality": 90}, "AVIF": {"speed": 8}, "HEIF": {"quality": 90}}

    loaded = load_image(encode(real_photo, fmt, **lossy_options.get(fmt, {})), (64, 64))

    assert (loaded.width, loaded.height) == real_photo.size
    reference = load_image(lossless, (64, 64)).pixels.astype(int)
    # GIF holds 256 colours; the lossy codecs at these qualities stay within a few levels.
    assert np.abs(loaded.pixels.astype(int) - reference).mean() < (8 if fmt == "GIF" else 4)


def test_formats_outside_the_contract_are_refused(real_photo):
    with pytest.raises(ImageLoadError, match="cannot identify format") as refused:
        load_image(encode(real_photo, "PCX"), (8, 8))
    assert refused.value.stage == STAGE_DECODE


# --- draft decoding -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def large_jpeg(tmp_path_factory) -> bytes:
    folder = tmp_path_factory.mktemp("large")
    return write_image(folder / "large.jpg", size=(4000, 3000), seed=21).read_bytes()


@pytest.mark.parametrize(
    ("size", "target", "decoded"),
    [
        ((4000, 3000), (224, 224), (500, 375)),  # 1/8: the largest scale-down
        ((4000, 3000), (400, 400), (1000, 750)),  # 1/4: 1/8 would give 375 rows < 400
        ((640, 480), (224, 224), (320, 240)),
        ((400, 300), (224, 224), (400, 300)),  # under twice the target: decoded whole
    ],
)
def test_draft_decodes_jpeg_at_the_smallest_scale_not_below_the_target(
    tmp_path, size, target, decoded
):
    data = write_image(tmp_path / "image.jpg", size=size).read_bytes()

    assert decode_pixels(open_image(data), target).size == decoded


def test_draft_decoding_matches_full_decode(large_jpeg):
    size = (224, 224)

    loaded = load_image(large_jpeg, size)
    full = full_decode_pixels(large_jpeg, size)

    assert (loaded.width, loaded.height) == (4000, 3000)
    difference = np.abs(loaded.pixels.astype(int) - full.astype(int))
    assert difference.mean() < 1.5
    assert np.percentile(difference, 99) < 8


# --- refusals -------------------------------------------------------------------------------


def stage_and_message(function, *args) -> tuple[str, str]:
    with pytest.raises(ImageLoadError) as raised:
        function(*args)
    return raised.value.stage, str(raised.value)


def test_decompression_bomb_is_refused_at_the_header():
    stage, message = stage_and_message(load_image, png_bomb_bytes(60_000, 60_000), (224, 224))

    assert stage == STAGE_DECODE
    assert message == f"decompression bomb: 3600000000 pixels > limit {Image.MAX_IMAGE_PIXELS}"


def test_images_pillow_only_warns_about_are_refused_too():
    pixels = 10_000 * 10_000
    assert Image.MAX_IMAGE_PIXELS < pixels < 2 * Image.MAX_IMAGE_PIXELS

    with pytest.warns(Image.DecompressionBombWarning):
        stage, message = stage_and_message(open_image, png_bomb_bytes(10_000, 10_000))

    assert stage == STAGE_DECODE
    assert message.startswith(f"decompression bomb: {pixels} pixels > limit")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "file is 0 bytes"),
        (b"plain text, no image here", "not an image (cannot identify format)"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not an image"),
    ],
)
def test_non_images_are_refused_with_a_reason(data, message):
    stage, reason = stage_and_message(load_image, data, (8, 8))

    assert stage == STAGE_DECODE
    assert reason.startswith(message)


def test_truncated_jpeg_is_a_decode_failure_even_with_draft(large_jpeg):
    stage, message = stage_and_message(load_image, large_jpeg[: len(large_jpeg) // 3], (224, 224))

    assert stage == STAGE_DECODE
    assert "truncated" in message


def test_byte_cap_refuses_a_huge_local_file_without_opening_it(tmp_path, monkeypatch):
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as file:
        file.truncate(10 * 1024**3)  # sparse: reading it whole would need 10 GiB of memory

    def refuse_open(*args, **kwargs):
        raise AssertionError("a file over the cap was opened")

    monkeypatch.setattr(FileSystems, "open", refuse_open)
    stage, message = stage_and_message(read_bounded, str(huge), 1024 * 1024)

    assert stage == STAGE_READ
    assert message == "image is 10737418240 bytes, over the 1048576-byte cap"


def test_byte_cap_boundary(tmp_path):
    path = tmp_path / "image.jpg"
    path.write_bytes(b"x" * 1000)

    assert read_bounded(str(path), 1000) == b"x" * 1000
    assert stage_and_message(read_bounded, str(path), 999) == (
        STAGE_READ,
        "image is 1000 bytes, over the 999-byte cap",
    )


def make_fifo(path):
    os.mkfifo(path)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda folder: folder / "missing.jpg", "file not found"),
        (lambda folder: folder, "is a directory"),
        (lambda folder: make_fifo(folder / "pipe.jpg"), "not a regular file"),
    ],
    ids=["missing", "directory", "fifo"],
)
def test_unreadable_paths_are_read_failures(tmp_path, make, message):
    assert stage_and_message(read_bounded, str(make(tmp_path)), 1000) == (STAGE_READ, message)


# --- input root -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "root"),
    [
        ("/data/img/a.jpg", "/data/img"),
        ("/data/img/sub/a.jpg", "/data/img/"),
        ("/data/img/sub/../a.jpg", "/data/img"),
        ("gs://bucket/img/a.jpg", "gs://bucket/img"),
        ("gs://bucket/img/x/../a #1 %20.jpg", "gs://bucket/img/"),
        ("gs://bucket/img/a.jpg", "gs://bucket"),
        ("GS://bucket/img/a.jpg", "gs://bucket/img"),
        ("/etc/passwd", None),
    ],
)
def test_inside_root_is_accepted(uri, root):
    check_inside_root(uri, root)


@pytest.mark.parametrize(
    ("uri", "root"),
    [
        ("/etc/passwd", "/data/img"),
        ("/data/img/../secret.jpg", "/data/img"),
        ("/data/img/../../etc/passwd", "/data/img"),
        ("/data/img2/a.jpg", "/data/img"),
        ("/data/img", "/data/img/a"),
        ("gs://bucket/img2/a.jpg", "gs://bucket/img"),
        ("gs://bucket/img/../other/a.jpg", "gs://bucket/img"),
        ("gs://bucket/../bucket2/img/a.jpg", "gs://bucket"),
        ("gs://bucket2/img/a.jpg", "gs://bucket"),
        ("gs://bucket/img/a.jpg", "/bucket/img"),
        ("/bucket/img/a.jpg", "gs://bucket/img"),
        ("s3://bucket/img/a.jpg", "gs://bucket/img"),
    ],
)
def test_outside_root_is_refused(uri, root):
    assert stage_and_message(check_inside_root, uri, root) == (
        STAGE_INPUT,
        f"outside input root {root}",
    )


def test_symbolic_links_count_where_they_point(tmp_path):
    root, outside = tmp_path / "img", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    (root / "inner").mkdir()
    (root / "out.jpg").symlink_to(outside / "secret.jpg")
    (root / "linked-dir").symlink_to(outside)
    (root / "in.jpg").symlink_to(root / "inner" / "a.jpg")
    (tmp_path / "root-link").symlink_to(root)

    check_inside_root(str(root / "in.jpg"), str(root))
    check_inside_root(str(tmp_path / "root-link" / "a.jpg"), str(root))
    check_inside_root(str(root / "a.jpg"), str(tmp_path / "root-link"))
    for escaping in (root / "out.jpg", root / "linked-dir" / "secret.jpg"):
        assert stage_and_message(check_inside_root, str(escaping), str(root))[0] == STAGE_INPUT


def test_load_errors_survive_pickling():
    error = pickle.loads(pickle.dumps(ImageLoadError(STAGE_READ, "file not found")))

    assert (error.stage, str(error)) == (STAGE_READ, "file not found")


def test_nul_byte_in_local_path_is_an_input_failure():
    stage, message = stage_and_message(check_inside_root, "/data/img/a\x00.jpg", "/data/img")

    assert stage == STAGE_INPUT
    assert message.startswith("not a valid path")


# --- the DoFn in a pipeline -----------------------------------------------------------------


def outcome_of_loaded(element: tuple[str, LoadedImage]) -> tuple[str, str | None, tuple]:
    uri, loaded = element
    return uri, None, loaded.pixels.shape


def outcome_of_failure(failure: dict) -> tuple[str, str | None, tuple]:
    assert failure["error"], f"no reason given for {failure['uri']}"
    return failure["uri"], failure["stage"], ()


def run_loader(uris: list[str], size, **options):
    """A pipeline running LoadImageFn over `uris`, and its outcomes: (uri, stage or None, shape)."""
    pipeline = test_pipeline.TestPipeline()
    results = (
        pipeline
        | beam.Create(uris)
        | beam.ParDo(LoadImageFn(size, **options)).with_outputs(FAILED_TAG, main="loaded")
    )
    loaded = results.loaded | "Loaded" >> beam.Map(outcome_of_loaded)
    failed = results[FAILED_TAG] | "Failed" >> beam.Map(outcome_of_failure)
    outcomes = (loaded, failed) | beam.Flatten()
    return pipeline, outcomes


def counters(result) -> dict[str, int]:
    query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    return {counter.key.metric.name: counter.committed for counter in query["counters"]}


# prefetch 0 loads on the bundle's thread; 2 keeps the loader threads waiting on the window.
@pytest.mark.parametrize("prefetch", [0, 2, 64])
def test_every_bad_input_lands_once_with_the_expected_stage(tmp_path, prefetch):
    folder = tmp_path / "images"
    corpus = write_bad_inputs(folder)
    escaping = write_escaping_entries(folder)
    size = (32, 48)
    expected = [
        (str(path), BAD_INPUT_STAGES[name], () if BAD_INPUT_STAGES[name] else (*size, 3))
        for name, path in corpus.items()
    ]
    expected += [(uri, ESCAPING_STAGE, ()) for uri in escaping.values()]

    pipeline, outcomes = run_loader(
        [uri for uri, _, _ in expected], size, input_root=str(folder), prefetch=prefetch
    )
    assert_that(outcomes, equal_to(expected))
    result = pipeline.run()
    result.wait_until_finish()

    stages = [stage for _, stage, _ in expected]
    found = counters(result)
    assert found["loaded"] == stages.count(None)
    for stage in (STAGE_INPUT, STAGE_READ, STAGE_DECODE):
        assert found[f"failed_{stage}"] == stages.count(stage)


def test_loader_runs_at_most_prefetch_entries_ahead_and_keeps_order_and_timestamps(tmp_path):
    paths = [str(write_image(tmp_path / f"{i}.jpg", size=(16, 12), seed=i)) for i in range(7)]
    paths.insert(3, str(tmp_path / "missing.jpg"))
    load = LoadImageFn((8, 8), prefetch=3)
    load.setup()
    load.start_bundle()
    emitted = []
    for index, path in enumerate(paths):
        emitted += load.process(path, timestamp=Timestamp(index), window=GlobalWindow())
        assert len(emitted) >= index + 1 - 3
    emitted += load.finish_bundle()
    load.teardown()

    values = [output.value if isinstance(output, TaggedOutput) else output for output in emitted]
    assert [value.timestamp for value in values] == [Timestamp(i) for i in range(len(paths))]
    assert [value.value["uri"] if i == 3 else value.value[0] for i, value in enumerate(values)] == (
        paths
    )
    assert isinstance(emitted[3], TaggedOutput) and emitted[3].tag == FAILED_TAG
    assert emitted[3].value.value["stage"] == STAGE_READ


def test_failure_reasons_are_readable(tmp_path):
    corpus = write_bad_inputs(tmp_path)
    load = LoadImageFn((8, 8), max_image_bytes=20_000)

    def reason(name: str) -> str:
        error, _, _ = load.load(str(corpus[name]))
        assert isinstance(error, ImageLoadError)
        return str(error)

    assert reason("zero_byte") == "file is 0 bytes"
    assert reason("text_named_jpg") == "not an image (cannot identify format)"
    assert reason("missing_file") == "file not found"
    assert reason("directory_named_jpg") == "is a directory"
    assert reason("decompression_bomb_png").startswith("decompression bomb: 3600000000 pixels")
    assert reason("truncated_png").startswith("cannot decode image (OSError: image file is trunc")
    assert reason("wide_6000x8") == (
        f"image is {corpus['wide_6000x8'].stat().st_size} bytes, over the 20000-byte cap"
    )


def test_without_decoding_images_are_only_read_and_keyed_by_digest(tmp_path):
    good = write_image(tmp_path / "good.jpg", size=(16, 12), seed=3)
    # Text is no image: had it been decoded, it would have failed.
    text = tmp_path / "notes.jpg"
    text.write_bytes(b"bytes an earlier run embedded")
    pipeline = test_pipeline.TestPipeline()
    uris = pipeline | "Day" >> beam.Create([str(good), str(text), str(tmp_path / "gone.jpg")])
    results = uris | beam.ParDo(LoadImageFn((8, 8), decode=False)).with_outputs(
        FAILED_TAG, main="hashed"
    )
    expected = [
        (hashlib.sha256(path.read_bytes()).hexdigest(), HashedImage(str(path), path.stat().st_size))
        for path in (good, text)
    ]
    assert_that(results.hashed, equal_to(expected), label="hashed")
    stages = results[FAILED_TAG] | beam.Map(lambda failure: failure["stage"])
    assert_that(stages, equal_to([STAGE_READ]), label="failed")
    result = pipeline.run()
    result.wait_until_finish()
    assert counters(result).get("loaded", 0) == 0


def test_the_digest_is_of_the_bytes_read_and_absent_when_none_were(tmp_path):
    corpus = write_bad_inputs(tmp_path / "corpus")
    good = write_image(tmp_path / "good.jpg", size=(16, 12), seed=3)
    load = LoadImageFn((8, 8))

    image, bytes_read, digest = load.load(str(good))
    assert digest == image.sha256 == hashlib.sha256(good.read_bytes()).hexdigest()
    assert image.size_bytes == bytes_read == good.stat().st_size
    not_an_image = corpus["text_named_jpg"]
    error, _, digest = load.load(str(not_an_image))
    assert isinstance(error, ImageLoadError)
    assert digest == hashlib.sha256(not_an_image.read_bytes()).hexdigest()
    error, bytes_read, digest = load.load(str(corpus["missing_file"]))
    assert (error.stage, bytes_read, digest) == (STAGE_READ, 0, None)


# --- gs:// through Beam's filesystem --------------------------------------------------------


@pytest.fixture
def beam_gcs(gcs_bucket, monkeypatch):
    """The emulator bucket, with Beam's GCS filesystem using anonymous credentials."""
    from apache_beam.internal.gcp import auth

    monkeypatch.setattr(auth._Credentials, "_credentials_init", True)
    monkeypatch.setattr(auth._Credentials, "_credentials", None)
    return gcs_bucket


def test_images_load_from_gcs(beam_gcs, tmp_path):
    image = write_image(tmp_path / "a.jpg", size=(64, 48), seed=5)
    big = os.urandom(300_000)
    # No `#` or `%` here: the emulator's mediaLink leaves them unescaped (real GCS escapes them).
    names = {"plain": "day/a.jpg", "odd name": "day/odd name ü.jpg", "big": "day/big.jpg"}
    beam_gcs.blob(names["plain"]).upload_from_filename(image)
    beam_gcs.blob(names["odd name"]).upload_from_filename(image)
    beam_gcs.blob(names["big"]).upload_from_string(big)
    root = f"gs://{beam_gcs.name}/day"
    uri = {key: f"gs://{beam_gcs.name}/{name}" for key, name in names.items()}

    assert read_bounded(uri["plain"], 200_000) == image.read_bytes()
    assert stage_and_message(read_bounded, uri["big"], 200_000) == (
        STAGE_READ,
        "image is 300000 bytes, over the 200000-byte cap",
    )
    assert stage_and_message(read_bounded, f"{root}/missing.jpg", 200_000) == (
        STAGE_READ,
        "file not found",
    )

    size = (24, 32)
    expected = [
        (uri["plain"], None, (*size, 3)),
        (uri["odd name"], None, (*size, 3)),
        (uri["big"], STAGE_READ, ()),
        (f"{root}/missing.jpg", STAGE_READ, ()),
        (f"{root}/../secret.jpg", STAGE_INPUT, ()),
        (f"gs://{beam_gcs.name}/day2/a.jpg", STAGE_INPUT, ()),
    ]
    pipeline, outcomes = run_loader(
        [u for u, _, _ in expected], size, max_image_bytes=200_000, input_root=root
    )
    assert_that(outcomes, equal_to(expected))
    pipeline.run().wait_until_finish()

    local = load_image(image.read_bytes(), size)
    first, bytes_read, digest = LoadImageFn(size).load(uri["odd name"])
    np.testing.assert_array_equal(first.pixels, local.pixels)
    assert (first.width, first.height, bytes_read) == (64, 48, image.stat().st_size)
    assert digest == first.sha256 == hashlib.sha256(image.read_bytes()).hexdigest()
    assert first.size_bytes == image.stat().st_size
