"""Varied images for int8 agreement: synthetic photos, crops of real photos, and hard kinds
(tiny, flat, extreme colour, grey, noise, stark patterns), each named by its kind and seed.

`photo-N` is the precision bench's image N (`tests.image_factory.photo` of seed N at 640x480)."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from beam_jobs.image_embeddings.images import load_image
from tests.image_factory import REAL_PHOTOS, photo

PHOTO_SIZE = (640, 480)  # the precision bench's photos
JPEG_QUALITY = 90
# How many of each kind a set of `scale` 1 holds: most are photo-like, as a day's images are.
MIX = {
    "photo": 1024,
    "real": 320,
    "tiny": 64,
    "flat": 32,
    "extreme": 96,
    "grey": 64,
    "noise": 32,
    "pattern": 32,
}
LOAD_THREADS = 4


def real_crop(rng: np.random.Generator) -> Image.Image:
    """A random crop of one of the real photos, flipped or not, at a random size, with its
    brightness and contrast changed a little."""
    with Image.open(REAL_PHOTOS[rng.integers(len(REAL_PHOTOS))]) as source:
        image = source.convert("RGB")
    width, height = image.size
    share = rng.uniform(0.15, 1.0)
    crop_w, crop_h = max(8, int(width * share)), max(8, int(height * rng.uniform(0.15, 1.0)))
    left, top = rng.integers(0, width - crop_w + 1), rng.integers(0, height - crop_h + 1)
    image = image.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    long_side = int(rng.integers(160, 800))
    image.thumbnail((long_side, long_side))
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.7, 1.3))
    return ImageEnhance.Contrast(image).enhance(rng.uniform(0.7, 1.3))


def tiny(rng: np.random.Generator) -> Image.Image:
    """A photo a few pixels wide, which the resize blows up to the model's input."""
    side = int(rng.integers(4, 33))
    return photo((side, max(4, int(side * rng.uniform(0.5, 1.5)))), int(rng.integers(1 << 30)))


def flat(rng: np.random.Generator) -> Image.Image:
    """One colour, with a little grain (a blank scan, a sky)."""
    colour = rng.integers(0, 256, 3)
    grain = rng.normal(0, rng.uniform(0, 4), (240, 320, 3))
    return Image.fromarray(np.clip(colour + grain, 0, 255).astype(np.uint8))


def extreme(rng: np.random.Generator) -> Image.Image:
    """A photo pushed to an extreme: one channel alone, near black, near white or oversaturated."""
    image = photo(PHOTO_SIZE, int(rng.integers(1 << 30)))
    pixels = np.asarray(image, dtype=np.float32)
    way = rng.integers(4)
    if way == 0:
        pixels *= np.eye(3, dtype=np.float32)[rng.integers(3)]
    elif way == 1:
        pixels *= rng.uniform(0.02, 0.15)
    elif way == 2:
        pixels = 255 - (255 - pixels) * rng.uniform(0.02, 0.15)
    else:
        return ImageEnhance.Color(image).enhance(rng.uniform(3, 8))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def grey(rng: np.random.Generator) -> Image.Image:
    """A photo or a real crop in shades of grey."""
    image = real_crop(rng) if rng.random() < 0.5 else photo(PHOTO_SIZE, int(rng.integers(1 << 30)))
    return image.convert("L")


def noise(rng: np.random.Generator) -> Image.Image:
    """Uniform colour noise at a random grain size."""
    side = int(rng.integers(8, 481))
    return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))


def pattern(rng: np.random.Generator) -> Image.Image:
    """Stark stripes or checks of two colours (documents, screenshots, textiles)."""
    period = int(rng.integers(2, 40))
    ys, xs = np.mgrid[0:480, 0:640] // period
    mask = (xs + ys) % 2 if rng.random() < 0.5 else xs % 2
    colours = rng.integers(0, 256, (2, 3))
    return Image.fromarray(colours[mask].astype(np.uint8))


MAKERS: dict[str, Callable[[np.random.Generator], Image.Image]] = {
    "real": real_crop,
    "tiny": tiny,
    "flat": flat,
    "extreme": extreme,
    "grey": grey,
    "noise": noise,
    "pattern": pattern,
}


def jpeg_bytes(image: Image.Image) -> bytes:
    encoded = io.BytesIO()
    image.save(encoded, "JPEG", quality=JPEG_QUALITY)
    return encoded.getvalue()


def names(mix: dict[str, int], seed: int) -> list[str]:
    """`kind-seed` names of a set: each kind's count, seeds counted up from `seed`."""
    return [f"{kind}-{seed + index}" for kind, count in mix.items() for index in range(count)]


def pixels(name: str, size: tuple[int, int]) -> np.ndarray:
    """The uint8 model input of the image `name`, through JPEG and the pipeline's own loader."""
    kind, _, seed = name.rpartition("-")
    if kind == "photo":
        image = photo(PHOTO_SIZE, int(seed))
    else:
        image = MAKERS[kind](np.random.default_rng([list(MIX).index(kind), int(seed)]))
    return load_image(jpeg_bytes(image), size).pixels


def load(image_names: Iterable[str], size: tuple[int, int]) -> np.ndarray:
    """uint8 (n, height, width, 3) model inputs of the named images."""
    with ThreadPoolExecutor(LOAD_THREADS) as pool:
        return np.stack(list(pool.map(lambda name: pixels(name, size), image_names)))
