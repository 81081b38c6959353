"""Photo-like demo images: six kinds of scene, each with its own palette, layout and texture."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZES = ((640, 480), (480, 640), (800, 600), (512, 512), (720, 405))


def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    return xs, ys


def _vertical_gradient(size, top, bottom) -> np.ndarray:
    width, height = size
    _, ys = _grid(width, height)
    top, bottom = np.asarray(top, np.float32), np.asarray(bottom, np.float32)
    return np.broadcast_to(top + (bottom - top) * ys[..., None], (height, width, 3)).copy()


def _texture(rng: np.random.Generator, size, scale: float, blur: float) -> np.ndarray:
    """Smooth noise in [-1, 1]: coarse random values blurred to size."""
    width, height = size
    coarse = rng.uniform(0, 255, (max(2, height // 8), max(2, width // 8))).astype(np.uint8)
    smooth = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
    smooth = smooth.filter(ImageFilter.GaussianBlur(blur))
    return (np.asarray(smooth, np.float32) / 127.5 - 1.0)[..., None] * scale


def _finish(pixels: np.ndarray, rng: np.random.Generator) -> Image.Image:
    grain = rng.normal(0, 4, pixels.shape)
    return Image.fromarray(np.clip(pixels + grain, 0, 255).astype(np.uint8), "RGB")


def sunset(rng: np.random.Generator, size) -> Image.Image:
    width, height = size
    sky = _vertical_gradient(size, rng.uniform([40, 10, 70], [90, 40, 120]), [250, 140, 40])
    image = Image.fromarray(sky.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    cx, cy, r = rng.uniform(0.2, 0.8) * width, rng.uniform(0.45, 0.65) * height, height / 9
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(255, 210, 90))
    for layer in range(3):
        base = height * (0.62 + 0.1 * layer)
        xs = np.linspace(0, width, 24)
        ys = base + rng.normal(0, height / 30, xs.size)
        shade = 60 - 18 * layer
        draw.polygon(
            [(0, height), *zip(xs, ys, strict=True), (width, height)],
            fill=(shade, shade // 2, shade),
        )
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(1.2)), np.float32)
    return _finish(pixels, rng)


def forest(rng: np.random.Generator, size) -> Image.Image:
    width, height = size
    pixels = _vertical_gradient(size, [150, 190, 150], [40, 80, 30])
    pixels += _texture(rng, size, 35, 2) * np.array([0.6, 1.0, 0.5])
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(8, 16)):
        x = rng.uniform(0, width)
        trunk = rng.uniform(width / 80, width / 30)
        brown = tuple(int(c) for c in rng.uniform([60, 35, 15], [110, 70, 40]))
        draw.rectangle((x, height * rng.uniform(0.1, 0.4), x + trunk, height), fill=brown)
        cy, r = height * rng.uniform(0.05, 0.35), rng.uniform(width / 14, width / 7)
        green = tuple(int(c) for c in rng.uniform([20, 80, 20], [60, 150, 50]))
        draw.ellipse((x - r, cy - r, x + trunk + r, cy + r), fill=green)
    pixels = np.asarray(image, np.float32) + _texture(rng, size, 25, 1)
    return _finish(pixels, rng)


def ocean(rng: np.random.Generator, size) -> Image.Image:
    width, height = size
    xs, ys = _grid(width, height)
    horizon = rng.uniform(0.3, 0.5)
    sky = _vertical_gradient(size, [120, 170, 230], [200, 225, 245])
    sea = _vertical_gradient(size, [20, 70, 130], [10, 40, 90])
    waves = np.sin(xs * rng.uniform(20, 50) + np.sin(ys * 40) * 2 + ys * 300) * 18
    sea += (waves * (ys > horizon))[..., None] * np.array([0.4, 0.7, 1.0])
    pixels = np.where((ys > horizon)[..., None], sea, sky)
    pixels += _texture(rng, size, 10, 3)
    return _finish(pixels, rng)


def city(rng: np.random.Generator, size) -> Image.Image:
    width, height = size
    sky = _vertical_gradient(size, [150, 155, 165], [205, 205, 210])
    image = Image.fromarray(sky.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    x = 0.0
    while x < width:
        w = rng.uniform(width / 14, width / 6)
        top = height * rng.uniform(0.15, 0.6)
        grey = int(rng.uniform(50, 130))
        draw.rectangle((x, top, x + w, height), fill=(grey, grey, grey + 10))
        for wy in np.arange(top + 8, height - 8, 14):
            for wx in np.arange(x + 5, x + w - 8, 11):
                lit = rng.random() < 0.4
                draw.rectangle(
                    (wx, wy, wx + 5, wy + 7), fill=(240, 220, 130) if lit else (40, 45, 55)
                )
        x += w + rng.uniform(0, width / 40)
    return _finish(np.asarray(image, np.float32), rng)


def meadow(rng: np.random.Generator, size) -> Image.Image:
    width, height = size
    pixels = _vertical_gradient(size, [110, 170, 235], [140, 200, 90])
    _, ys = _grid(width, height)
    horizon = rng.uniform(0.25, 0.45)
    grass = np.array([70, 150, 50], np.float32) + _texture(rng, size, 30, 1)
    pixels = np.where((ys > horizon)[..., None], grass, pixels)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    palette = rng.uniform(120, 255, (3, 3))
    for _ in range(rng.integers(150, 300)):
        fx, fy = rng.uniform(0, width), rng.uniform(horizon, 1.0) * height
        r = 1.5 + 5 * (fy / height)
        colour = tuple(int(c) for c in palette[rng.integers(0, 3)])
        draw.ellipse((fx - r, fy - r, fx + r, fy + r), fill=colour)
    return _finish(np.asarray(image, np.float32), rng)


def mountains(rng: np.random.Generator, size) -> Image.Image:
    width, height = size
    sky = _vertical_gradient(size, [70, 120, 200], [190, 215, 240])
    image = Image.fromarray(sky.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(2, 5)):
        peak_x, peak_y = rng.uniform(0, width), height * rng.uniform(0.15, 0.45)
        spread = rng.uniform(width / 3, width / 1.5)
        rock = int(rng.uniform(80, 120))
        draw.polygon(
            [(peak_x - spread, height), (peak_x, peak_y), (peak_x + spread, height)],
            fill=(rock, rock, rock + 15),
        )
        snow = (height * 0.75 - peak_y) * 0.3
        draw.polygon(
            [
                (peak_x - spread * snow / (height - peak_y), peak_y + snow),
                (peak_x, peak_y),
                (peak_x + spread * snow / (height - peak_y), peak_y + snow),
            ],
            fill=(245, 248, 252),
        )
    pixels = np.asarray(image, np.float32) + _texture(rng, size, 12, 1)
    return _finish(pixels, rng)


SCENES: dict[str, Callable[[np.random.Generator, tuple[int, int]], Image.Image]] = {
    "sunset": sunset,
    "forest": forest,
    "ocean": ocean,
    "city": city,
    "meadow": meadow,
    "mountains": mountains,
}


def day_images(per_scene: int, seed: int) -> Iterator[tuple[str, bytes]]:
    """`per_scene` JPEGs of every scene as (file name, bytes); a seed gives one day's set."""
    rng = np.random.default_rng(seed)
    for scene, draw in SCENES.items():
        for index in range(per_scene):
            size = SIZES[rng.integers(0, len(SIZES))]
            buffer = io.BytesIO()
            draw(rng, size).save(buffer, "JPEG", quality=88)
            yield f"{scene}-{index:02d}.jpg", buffer.getvalue()
