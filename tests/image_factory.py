"""Test images written with Pillow: photo-like content in every mode and format, bad inputs."""

from __future__ import annotations

import os
import struct
import sysconfig
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from pillow_heif import register_heif_opener

from beam_jobs.image_embeddings.contract import (
    IMAGE_FORMATS,
    STAGE_DECODE,
    STAGE_INPUT,
    STAGE_READ,
)

register_heif_opener()

EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp"}
EXTENSIONS |= {"TIFF": ".tif", "AVIF": ".avif", "HEIF": ".heic"}

# Real photos that installed packages ship: a temple, a flower, a portrait (scikit-learn and
# Matplotlib sample data), and a product shot with transparency.
_SITE = Path(sysconfig.get_paths()["purelib"])
REAL_PHOTOS = (
    _SITE / "sklearn" / "datasets" / "images" / "china.jpg",
    _SITE / "sklearn" / "datasets" / "images" / "flower.jpg",
    _SITE / "matplotlib" / "mpl-data" / "sample_data" / "grace_hopper.jpg",
    _SITE / "matplotlib" / "mpl-data" / "sample_data" / "Minduka_Present_Blue_Pack.png",
)
# Encoders' quality settings where the default is slow (AVIF) or lossless-large.
_SAVE_OPTIONS = {"JPEG": {"quality": 90}, "AVIF": {"speed": 8}, "HEIF": {"quality": 80}}

# exif_transpose turns the stored pixels upright with these; each is undone by the paired one.
_STORE_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
EXIF_ORIENTATION_TAG = 0x0112


def photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """An RGB image of `size` (width, height): gradient, shapes and noise, all chosen by `seed`.

    Shapes sit at coordinates relative to the size, so one seed looks alike at every size.
    """
    width, height = size
    rng = np.random.default_rng(seed)
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    angle = rng.uniform(0, 2 * np.pi)
    # Python floats keep the arithmetic in float32 (a NumPy float64 scalar would promote it).
    ramp = (float(np.cos(angle)) * xs + float(np.sin(angle)) * ys + 1.0) / 2.0
    start, end = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    pixels = start + (end - start) * ramp
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(3, 7)):
        x0, x1 = sorted(rng.uniform(0, 1, 2) * width)
        y0, y1 = sorted(rng.uniform(0, 1, 2) * height)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = (x0, y0, max(x1, x0 + 1), max(y1, y0 + 1))
        if rng.random() < 0.5:
            draw.ellipse(box, fill=colour)
        else:
            draw.rectangle(box, fill=colour)
    radius = max(min(width, height) / 200, 0.5)
    image = image.filter(ImageFilter.GaussianBlur(radius))
    noisy = rng.standard_normal((height, width, 3), dtype=np.float32)
    noisy *= 6
    noisy += np.asarray(image, dtype=np.float32)
    return Image.fromarray(np.clip(noisy, 0, 255, out=noisy).astype(np.uint8))


def in_mode(image: Image.Image, mode: str) -> Image.Image:
    """`image` (RGB) converted to `mode`; 16-bit and float modes keep a full-range gray ramp."""
    if mode == "I;16":
        gray = np.asarray(image.convert("L"), dtype=np.uint32) * 257
        return Image.fromarray(gray.astype(np.uint16))
    if mode == "P":
        return image.quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    if mode in ("LA", "RGBA"):
        converted = image.convert(mode)
        # Opaque on the left, transparent on the right.
        ramp = Image.linear_gradient("L").transpose(Image.Transpose.ROTATE_90)
        alpha = ramp.resize(image.size)
        converted.putalpha(alpha)
        return converted
    return image.convert(mode)


def write_image(
    path: str | os.PathLike,
    size: tuple[int, int] = (64, 48),
    mode: str = "RGB",
    fmt: str = "JPEG",
    seed: int = 0,
    exif_orientation: int | None = None,
    frames: int = 1,
) -> Path:
    """Write a photo-like image of `size` (width, height) in `mode` and `fmt`; return its path.

    With `exif_orientation` the stored pixels are turned so that a viewer honouring the tag shows
    the upright `size` image (so orientations 5-8 store a height x width raster). With `frames` > 1
    (GIF, WebP, PNG) later frames use seeds `seed + 1`, `seed + 2`, ...; frame 0 is `seed`'s image.
    A palette image saved as PNG or GIF gets palette index 0 as its transparent colour.
    """
    path = Path(path)
    image = in_mode(photo(size, seed), mode)
    options: dict = {}
    if exif_orientation is not None:
        if exif_orientation > 1:
            image = image.transpose(_STORE_TRANSPOSE[exif_orientation])
        exif = Image.Exif()
        exif[EXIF_ORIENTATION_TAG] = exif_orientation
        options["exif"] = exif.tobytes()
    if mode == "P" and fmt in ("PNG", "GIF"):
        options["transparency"] = 0
    if frames > 1:
        rest = [in_mode(photo(size, seed + i), mode) for i in range(1, frames)]
        options |= {"save_all": True, "append_images": rest, "duration": 100, "loop": 0}
    if fmt == "JPEG":
        options["quality"] = 92
    image.save(path, format=fmt, **options)
    return path


def write_images(
    folder: str | os.PathLike,
    count: int,
    size: tuple[int, int] = (64, 48),
    fmt: str = "JPEG",
    seed: int = 0,
) -> list[Path]:
    """Write `count` distinct images `image-000.jpg`, ... (seeds `seed`, `seed + 1`, ...)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ext = EXTENSIONS[fmt]
    return [
        write_image(folder / f"image-{i:03d}{ext}", size=size, fmt=fmt, seed=seed + i)
        for i in range(count)
    ]


def write_real_photo_day(
    folder: str | os.PathLike, long_side: int = 320, photos: tuple[Path, ...] = REAL_PHOTOS
) -> list[Path]:
    """Every real photo of `photos` in every contract format under each of its extensions.

    Extensions alternate between lower and upper case (`.heic`, `.HEIC`), as phones and web
    exports write them, so every extension appears in both cases across the photos. Photos are
    scaled to `long_side` pixels on their longer side (still real photos, cheaper to encode and
    embed); RGBA stays where the format holds it (PNG, WebP, AVIF, HEIF).
    Names: `<photo>-<format>-<n><ext>`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for photo_index, photo_path in enumerate(photos):
        with Image.open(photo_path) as source:
            source.thumbnail((long_side, long_side))
            image = source.copy()
        for fmt, extensions in IMAGE_FORMATS.items():
            keeps_alpha = fmt in ("PNG", "WEBP", "AVIF", "HEIF")
            converted = image if keeps_alpha else image.convert("RGB")
            for index, extension in enumerate(extensions):
                spelled = extension.upper() if (photo_index + index) % 2 else extension
                path = folder / f"{photo_path.stem}-{fmt.lower()}-{index}{spelled}"
                converted.save(path, format=fmt, **_SAVE_OPTIONS.get(fmt, {}))
                written.append(path)
    return written


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb_bytes(width: int = 60_000, height: int = 60_000) -> bytes:
    """A tiny PNG whose header declares `width` x `height` RGB pixels (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = b"\x00" + b"\x00" * 3 * width
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(row * 4))
        + _png_chunk(b"IEND", b"")
    )


def corrupt_jpeg_header(data: bytes) -> bytes:
    """`data` (a JPEG) with its Huffman tables overwritten by junk: the header no longer decodes."""
    corrupted = bytearray(data)
    start = data.index(b"\xff\xc4") + 4  # first DHT segment, after marker and length
    corrupted[start : start + 17] = b"\xff" * 17  # 16 code counts of 255: an impossible table
    return bytes(corrupted)


# How each corpus entry must end: None embeds, a contract STAGE_* names the failing stage.
BAD_INPUT_STAGES: dict[str, str | None] = {
    "zero_byte": STAGE_DECODE,
    "text_named_jpg": STAGE_DECODE,
    "truncated_jpeg": STAGE_DECODE,
    "header_corrupted_jpeg": STAGE_DECODE,
    "truncated_png": STAGE_DECODE,
    "decompression_bomb_png": STAGE_DECODE,
    "directory_named_jpg": STAGE_READ,
    "missing_file": STAGE_READ,
    "cmyk_jpeg": None,
    "grayscale_jpeg": None,
    "gray16_png": None,
    "gray_alpha_png": None,
    "rgba_png": None,
    "palette_transparency_png": None,
    "bilevel_png": None,
    "animated_gif": None,
    "webp": None,
    "bmp": None,
    "tiff": None,
    "one_pixel": None,
    "wide_6000x8": None,
    "exif_rotated_jpeg": None,
    "png_named_jpg": None,
    "name_with_spaces": None,
    "name_unicode": None,
    "name_with_hash": None,
    "name_with_percent": None,
}


# Every entry of `write_escaping_entries` fails here when the pipeline is given that root.
ESCAPING_STAGE = STAGE_INPUT


def write_bad_inputs(folder: str | os.PathLike) -> dict[str, Path]:
    """Write the bad-input corpus into `folder`; keys are those of `BAD_INPUT_STAGES`.

    `missing_file` is a path that does not exist; `directory_named_jpg` is a directory.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    jpeg = write_image(folder / "source.jpg", size=(96, 64), seed=101).read_bytes()
    png = write_image(folder / "source.png", size=(96, 64), fmt="PNG", seed=102).read_bytes()
    (folder / "source.jpg").unlink()
    (folder / "source.png").unlink()

    def raw(name: str, data: bytes) -> Path:
        target = folder / name
        target.write_bytes(data)
        return target

    directory = folder / "directory.jpg"
    directory.mkdir(exist_ok=True)
    return {
        "zero_byte": raw("zero-byte.jpg", b""),
        "text_named_jpg": raw("text.jpg", b"this is a text file, not an image\n" * 20),
        "truncated_jpeg": raw("truncated.jpg", jpeg[: len(jpeg) // 2]),
        "header_corrupted_jpeg": raw("header-corrupted.jpg", corrupt_jpeg_header(jpeg)),
        "truncated_png": raw("truncated.png", png[: len(png) // 2]),
        "decompression_bomb_png": raw("bomb.png", png_bomb_bytes()),
        "directory_named_jpg": directory,
        "missing_file": folder / "missing.jpg",
        "cmyk_jpeg": write_image(folder / "cmyk.jpg", mode="CMYK", seed=1),
        "grayscale_jpeg": write_image(folder / "gray.jpg", mode="L", seed=2),
        "gray16_png": write_image(folder / "gray16.png", mode="I;16", fmt="PNG", seed=3),
        "gray_alpha_png": write_image(folder / "gray-alpha.png", mode="LA", fmt="PNG", seed=4),
        "rgba_png": write_image(folder / "rgba.png", mode="RGBA", fmt="PNG", seed=5),
        "palette_transparency_png": write_image(folder / "p.png", mode="P", fmt="PNG", seed=6),
        "bilevel_png": write_image(folder / "bilevel.png", mode="1", fmt="PNG", seed=7),
        "animated_gif": write_image(folder / "animated.gif", mode="P", fmt="GIF", seed=8, frames=3),
        "webp": write_image(folder / "image.webp", fmt="WEBP", seed=9),
        "bmp": write_image(folder / "image.bmp", fmt="BMP", seed=10),
        "tiff": write_image(folder / "image.tif", fmt="TIFF", seed=11),
        "one_pixel": write_image(folder / "one-pixel.png", size=(1, 1), fmt="PNG", seed=12),
        "wide_6000x8": write_image(folder / "wide.jpg", size=(6000, 8), seed=13),
        "exif_rotated_jpeg": write_image(folder / "rotated.jpg", seed=14, exif_orientation=6),
        "png_named_jpg": raw("really-a-png.jpg", png),
        "name_with_spaces": write_image(folder / "name with spaces.jpg", seed=15),
        "name_unicode": write_image(folder / "ünïcödé 画像.jpg", seed=16),
        "name_with_hash": write_image(folder / "hash#1.jpg", seed=17),
        "name_with_percent": write_image(folder / "percent%20.jpg", seed=18),
    }


def write_escaping_entries(root: str | os.PathLike) -> dict[str, str]:
    """Manifest entries that point outside `root`; each must fail at the input stage.

    Writes a valid image into the sibling folder `<root>-outside` (same name prefix as `root`, so
    a plain string-prefix check would wrongly accept it) and a symbolic link to it inside `root`.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    outside = root.parent / f"{root.name}-outside"
    outside.mkdir(exist_ok=True)
    secret = write_image(outside / "secret.jpg", seed=99)
    link = root / "escape.jpg"
    if not link.is_symlink():
        link.symlink_to(secret)
    return {
        "etc_passwd": "/etc/passwd",
        "dotdot_traversal": f"{root}/../{outside.name}/secret.jpg",
        "symlink_out_of_root": str(link),
        "shared_prefix_sibling": str(secret),
    }
