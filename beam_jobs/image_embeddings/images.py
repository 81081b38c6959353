"""Image loading: bounded read, safe decode, EXIF orientation, RGB, exact resize, as a Beam DoFn."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import os
import posixpath
import re
import stat
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue
from PIL import Image, ImageOps, UnidentifiedImageError
from pillow_heif import register_heif_opener

from beam_jobs.image_embeddings.contract import (
    IMAGE_FORMATS,
    METRICS_NAMESPACE,
    STAGE_DECODE,
    STAGE_INPUT,
    STAGE_READ,
    STAGES,
)
from beam_jobs.image_embeddings.storage import gcs  # noqa: F401 - bounds this process's GCS requests

DEFAULT_MAX_IMAGE_BYTES = 50 * 1024 * 1024
# Entries loading ahead of the model: two batches of the default size keep the loader threads busy
# through a model call.
DEFAULT_PREFETCH = 64
FAILED_TAG = "failed"

# HEIC/HEIF (phone photos) decode through pillow-heif's Pillow plugin, registered once here.
register_heif_opener()

# Only these Pillow plugins may identify a file: the contract's formats, those a photo bucket holds
# (JPEG includes multi-picture MPO). Others (EPS, which runs Ghostscript; PSD; ...) are refused.
SUPPORTED_FORMATS = tuple(IMAGE_FORMATS)

# Transparent pixels are composited over this colour: product shots and logos are drawn on white,
# while the colour hidden under alpha 0 is arbitrary (often black).
BACKGROUND = (255, 255, 255)

# Thumbnails for the day's report: the longer side in pixels, and the JPEG quality.
THUMBNAIL_SIDE = 96
THUMBNAIL_QUALITY = 80


@dataclass(frozen=True)
class LoadedImage:
    """One image ready for the model: `pixels` is uint8 (height, width, 3) RGB, not preprocessed.

    `width` and `height` are the original image's, after EXIF orientation; `thumbnail` is a
    JPEG of at most `THUMBNAIL_SIDE` pixels a side, aspect ratio kept; `sha256` (hex) and
    `size_bytes` describe the file's bytes.
    """

    pixels: np.ndarray
    width: int
    height: int
    thumbnail: bytes
    sha256: str | None = None
    size_bytes: int | None = None


class HashedImage(NamedTuple):
    """An image read and hashed (its sha256 is its key), not decoded: where it is and how big."""

    uri: str
    size_bytes: int


class ImageLoadError(Exception):
    """An image that cannot be loaded; `stage` is one of `contract.STAGES`, str() the reason."""

    def __init__(self, stage: str, message: str) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown failure stage {stage!r}; expected one of {STAGES}")
        super().__init__(message)
        self.stage = stage

    def __reduce__(self):
        return type(self), (self.stage, str(self))


_SCHEME = re.compile(r"([a-zA-Z][-a-zA-Z0-9+.]*)://(.*)", re.DOTALL)  # as Beam's FileSystems


def _split_uri(uri: str) -> tuple[str, str]:
    """(scheme, rest) of `scheme://rest`; scheme is "" for a local path."""
    matched = _SCHEME.fullmatch(uri)
    return (matched[1].lower(), matched[2]) if matched else ("", uri)


def _path_components(uri: str) -> tuple[str, ...]:
    """Scheme, then normalised path parts: symlinks resolved locally, `..` folded remotely."""
    scheme, rest = _split_uri(uri)
    path = posixpath.normpath("/" + rest) if scheme else os.path.realpath(rest)
    return (scheme, *(part for part in path.split("/") if part))


def check_inside_root(uri: str, input_root: str | None) -> None:
    """Raise ImageLoadError(STAGE_INPUT) unless `uri` lies inside `input_root` (None: no root).

    Paths are compared part by part after normalisation, so `/data/img2` is not inside
    `/data/img`, `..` cannot climb out, and a local symbolic link counts where it points.
    """
    if input_root is None:
        return
    try:
        inside = _path_components(uri)
        root = _path_components(input_root)
    except ValueError as error:
        raise ImageLoadError(STAGE_INPUT, f"not a valid path ({error})") from error
    if inside[: len(root)] != root:
        raise ImageLoadError(STAGE_INPUT, f"outside input root {input_root}")


def _describe_os_error(error: OSError) -> str:
    reasons = {
        errno.ENOENT: "file not found",
        errno.EISDIR: "is a directory",
        errno.EACCES: "permission denied",
    }
    return reasons.get(error.errno, f"cannot read ({type(error).__name__}: {error})")


def _over_cap(size: int | None, max_bytes: int) -> ImageLoadError:
    known = f" {size} bytes," if size is not None else ""
    return ImageLoadError(STAGE_READ, f"image is{known} over the {max_bytes}-byte cap")


def _check_local_file(path: str, max_bytes: int) -> None:
    """Refuse a local path that is not a regular file (a FIFO would block) or is over the cap."""
    mode_and_size = os.stat(path)
    if stat.S_ISDIR(mode_and_size.st_mode):
        raise ImageLoadError(STAGE_READ, "is a directory")
    if not stat.S_ISREG(mode_and_size.st_mode):
        raise ImageLoadError(STAGE_READ, "not a regular file")
    if mode_and_size.st_size > max_bytes:
        raise _over_cap(mode_and_size.st_size, max_bytes)


def _remote_size(uri: str) -> int | None:
    """The object's size for an error message; None when it vanished or cannot be stated."""
    try:
        return FileSystems.get_filesystem(uri).metadata(uri).size_in_bytes
    except Exception:
        return None


def read_bounded(uri: str, max_bytes: int) -> bytes:
    """The bytes of `uri` (local or any Beam filesystem), refusing files over `max_bytes`.

    Reads at most `max_bytes + 1` bytes, never decompresses by extension. Missing, a directory,
    unreadable or too large raises ImageLoadError(STAGE_READ).
    """
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    try:
        if not _split_uri(uri)[0]:
            _check_local_file(uri, max_bytes)
        with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as file:
            data = file.read(max_bytes + 1)
    except ImageLoadError:
        raise
    except OSError as error:
        raise ImageLoadError(STAGE_READ, _describe_os_error(error)) from error
    except Exception as error:
        # Cloud clients raise their own types: google.api_core's NotFound carries code 404.
        if getattr(error, "code", None) == 404:
            raise ImageLoadError(STAGE_READ, "file not found") from error
        message = f"cannot read ({type(error).__name__}: {error})"
        raise ImageLoadError(STAGE_READ, message) from error
    if len(data) > max_bytes:
        raise _over_cap(_remote_size(uri), max_bytes)
    return data


def _bomb_error(pixels: int | str) -> ImageLoadError:
    message = f"decompression bomb: {pixels} pixels > limit {Image.MAX_IMAGE_PIXELS}"
    return ImageLoadError(STAGE_DECODE, message)


@contextmanager
def _decode_stage() -> Iterator[None]:
    """Turn whatever Pillow raises while decoding into ImageLoadError(STAGE_DECODE)."""
    try:
        yield
    except ImageLoadError:
        raise
    except UnidentifiedImageError as error:
        raise ImageLoadError(STAGE_DECODE, "not an image (cannot identify format)") from error
    except Image.DecompressionBombError as error:
        counted = re.search(r"(\d+) pixels", str(error))
        raise _bomb_error(counted[1] if counted else str(error)) from error
    except Exception as error:
        message = f"cannot decode image ({type(error).__name__}: {error})"
        raise ImageLoadError(STAGE_DECODE, message) from error


def open_image(data: bytes) -> Image.Image:
    """Identify `data` as an image and read its header; pixels are not decoded yet.

    The result is the first frame of an animation. Pillow's decompression-bomb guard stays on and
    also refuses what it would only warn about (over `Image.MAX_IMAGE_PIXELS`).
    """
    if not data:
        raise ImageLoadError(STAGE_DECODE, "file is 0 bytes")
    with _decode_stage():
        image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    if image.width * image.height > Image.MAX_IMAGE_PIXELS:
        raise _bomb_error(image.width * image.height)
    return image


def decode_pixels(image: Image.Image, target: tuple[int, int] | None = None) -> Image.Image:
    """Decode the pixels of an opened image in place and return it.

    With `target` (height, width) a JPEG at least twice as large is decoded at a reduced scale
    (JPEG draft: 1/2, 1/4 or 1/8, averaged in the DCT domain), never below the target on either
    side; the antialiased resize does the rest. Truncated or corrupt data raises
    ImageLoadError(STAGE_DECODE).
    """
    with _decode_stage():
        if target is not None:
            # Square request: the resize ignores aspect ratio, and EXIF may swap the sides later.
            side = max(target)
            image.draft("RGB", (side, side))
        image.load()
    return image


def decode_image(data: bytes, target: tuple[int, int] | None = None) -> Image.Image:
    """The decoded first frame of `data`: `open_image` then `decode_pixels`."""
    return decode_pixels(open_image(data), target)


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    """A 16-bit (or 32-bit integer) grayscale image scaled from 0..65535 to 0..255."""
    values = np.clip(np.asarray(image, dtype=np.float64), 0, 65535)
    return Image.fromarray(np.round(values / 257).astype(np.uint8))


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` in RGB: transparency composited over white, 16-bit gray scaled to 8 bits.

    Modes `I;16*` and `I` are read as 0..65535; `F` keeps Pillow's convention (0..255, clipped);
    CMYK, palette, bilevel and the rest use Pillow's conversions.
    """
    if image.mode.startswith("I;16") or image.mode == "I":
        return _sixteen_bit_to_l(image).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa") or "transparency" in image.info:
        background = Image.new("RGBA", image.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


def resize_exact(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """The whole RGB `image` resized to `size` (height, width), bilinear: uint8 (h, w, 3)."""
    if image.mode != "RGB":
        raise ValueError(f"resize_exact needs an RGB image, got mode {image.mode}")
    height, width = size
    resized = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def thumbnail_jpeg(image: Image.Image) -> bytes:
    """A JPEG of the RGB `image` shrunk to fit `THUMBNAIL_SIDE` pixels, aspect ratio kept."""
    small = image.copy()
    small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    return buffer.getvalue()


def load_image(data: bytes, size: tuple[int, int]) -> LoadedImage:
    """Decode `data` into model-ready pixels of `size` (height, width).

    Draft-decodes large JPEGs, applies EXIF orientation, converts to RGB and resizes the whole
    image (no crop), and makes its thumbnail from the same decoded pixels. Any failure raises
    ImageLoadError(STAGE_DECODE).
    """
    image = open_image(data)
    stored = image.size
    decode_pixels(image, size)
    with _decode_stage():
        upright = to_rgb(ImageOps.exif_transpose(image))
        pixels = resize_exact(upright, size)
        thumbnail = thumbnail_jpeg(upright)
    turned = upright.size != image.size
    width, height = (stored[1], stored[0]) if turned else stored
    return LoadedImage(pixels=pixels, width=width, height=height, thumbnail=thumbnail)


class LoadImageFn(beam.DoFn):
    """URI -> (uri, LoadedImage); a bad entry goes to the `failed` output with stage and reason.

    With `decode` False, an image is read and hashed but not decoded: the output is
    (sha256, HashedImage), for reuse to look its bytes up among earlier runs' before decoding.

    Images load on a pool of threads, up to `prefetch` entries ahead of what has been emitted, so
    reading and decoding overlap the model calls downstream (Pillow, the storage clients and the
    model all release the GIL). Outputs keep the order of the inputs.
    """

    def __init__(
        self,
        size: tuple[int, int],
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        input_root: str | None = None,
        prefetch: int = DEFAULT_PREFETCH,
        decode: bool = True,
    ) -> None:
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be (height, width) with positive sides, got {size}")
        if max_image_bytes < 1:
            raise ValueError(f"max_image_bytes must be positive, got {max_image_bytes}")
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        self.size = tuple(size)
        self.max_image_bytes = max_image_bytes
        self.input_root = input_root
        self.prefetch = prefetch
        self.decode = decode
        self.loaded = Metrics.counter(METRICS_NAMESPACE, "loaded")
        self.failed = {
            stage: Metrics.counter(METRICS_NAMESPACE, f"failed_{stage}") for stage in STAGES
        }
        self.bytes_read = Metrics.distribution(METRICS_NAMESPACE, "bytes_read")
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[tuple[str, WindowedValue, Future]] = deque()

    def load(self, uri: str) -> tuple[LoadedImage | HashedImage | ImageLoadError, int, str | None]:
        """(the loaded or only hashed image, or why it failed; bytes read; their sha256 or
        None when the bytes were never read); safe to call from any thread."""
        data, digest = b"", None
        try:
            check_inside_root(uri, self.input_root)
            data = read_bounded(uri, self.max_image_bytes)
            digest = hashlib.sha256(data).hexdigest()
            if not self.decode:
                return HashedImage(uri, len(data)), len(data), digest
            loaded = load_image(data, self.size)
            return (
                dataclasses.replace(loaded, sha256=digest, size_bytes=len(data)),
                len(data),
                digest,
            )
        except ImageLoadError as error:
            return error, len(data), digest

    def setup(self) -> None:
        threads = min(self.prefetch, os.cpu_count() or 1)
        if threads:
            self._pool = ThreadPoolExecutor(threads, thread_name_prefix="load-image")

    def start_bundle(self) -> None:
        self._pending.clear()

    # No return annotations on Beam's entry points: Beam would read them as the output type.
    def process(
        self,
        uri: str,
        timestamp=beam.DoFn.TimestampParam,
        window=beam.DoFn.WindowParam,
    ):
        at = WindowedValue(None, timestamp, [window])
        if self._pool is None:
            yield from self._outputs(uri, at, self.load(uri))
            return
        self._pending.append((uri, at, self._pool.submit(self.load, uri)))
        while self._pending and (len(self._pending) > self.prefetch or self._pending[0][2].done()):
            yield from self._emit_oldest()

    def finish_bundle(self):
        while self._pending:
            yield from self._emit_oldest()

    def teardown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    def _emit_oldest(self) -> Iterator[WindowedValue | beam.pvalue.TaggedOutput]:
        uri, at, future = self._pending.popleft()
        yield from self._outputs(uri, at, future.result())

    def _outputs(
        self,
        uri: str,
        at: WindowedValue,
        outcome: tuple[LoadedImage | HashedImage | ImageLoadError, int, str | None],
    ) -> Iterator[WindowedValue | beam.pvalue.TaggedOutput]:
        # Metrics are counted here, on the bundle's thread: Beam's metric cells are per thread.
        loaded, bytes_read, digest = outcome
        if bytes_read:
            self.bytes_read.update(bytes_read)
        if isinstance(loaded, ImageLoadError):
            self.failed[loaded.stage].inc()
            failure = {"uri": uri, "stage": loaded.stage, "error": str(loaded), "sha256": digest}
            yield beam.pvalue.TaggedOutput(FAILED_TAG, at.with_value(failure))
            return
        if isinstance(loaded, HashedImage):
            yield at.with_value((digest, loaded))
            return
        self.loaded.inc()
        yield at.with_value((uri, loaded))
