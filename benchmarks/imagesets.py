"""Photo-like JPEG sets for the benchmarks, generated once and cached, and their manifests."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops

from tests.image_factory import photo

JPEG_QUALITY = 90
# Scenes are drawn at a quarter of the camera size and enlarged: drawing (blur, noise) at 12
# megapixels costs seconds an image, while what decoding costs depends on the size and entropy
# of the file, which the full-size grain below restores.
SCENE_SHRINK = 4
GRAIN_LEVELS = 16  # uniform sensor-like grain of +-8 grey levels, added at full size
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class ImageSet:
    """A named set of same-size JPEGs under `folder`: image-00000.jpg, image-00001.jpg, ..."""

    name: str
    size: tuple[int, int]  # (width, height)
    folder: Path

    @property
    def label(self) -> str:
        return f"{self.size[0]}x{self.size[1]}"

    def path(self, index: int) -> Path:
        return self.folder / f"image-{index:05d}.jpg"


def image_set(root: Path, name: str, size: tuple[int, int]) -> ImageSet:
    return ImageSet(name=name, size=size, folder=root / "images" / name)


def camera_photo(size: tuple[int, int], seed: int) -> Image.Image:
    """A photo-like RGB image of `size` (width, height) with full-resolution grain."""
    width, height = size
    scene = photo((max(width // SCENE_SHRINK, 1), max(height // SCENE_SHRINK, 1)), seed)
    scene = scene.resize(size, Image.Resampling.BICUBIC)
    rng = np.random.default_rng(seed)
    grain = np.frombuffer(rng.bytes(width * height), np.uint8) % GRAIN_LEVELS
    grain_rgb = Image.fromarray(grain.reshape(height, width)).convert("RGB")
    return ImageChops.add(scene, grain_rgb, 1.0, -(GRAIN_LEVELS // 2))


def make_photo(size: tuple[int, int], seed: int) -> Image.Image:
    """The image of `seed` at `size`: drawn directly when small, via `camera_photo` when large."""
    small = size[0] * size[1] <= 1024 * 768
    return photo(size, seed) if small else camera_photo(size, seed)


def _recipe(images: ImageSet) -> dict:
    return {"size": list(images.size), "quality": JPEG_QUALITY, "version": GENERATOR_VERSION}


def ensure_images(images: ImageSet, count: int) -> list[Path]:
    """The first `count` images of the set, writing whichever are missing; returns their paths.

    A recipe file records how the images were made; a different recipe regenerates them all.
    """
    images.folder.mkdir(parents=True, exist_ok=True)
    recipe_file = images.folder / "recipe.json"
    recipe = _recipe(images)
    if recipe_file.exists() and json.loads(recipe_file.read_text()) != recipe:
        for stale in images.folder.glob("image-*.jpg"):
            stale.unlink()
    recipe_file.write_text(json.dumps(recipe))
    paths = [images.path(index) for index in range(count)]
    for index, path in enumerate(paths):
        if not path.exists():
            partial = path.with_suffix(".part")
            make_photo(images.size, seed=index).save(partial, "JPEG", quality=JPEG_QUALITY)
            partial.rename(path)
    return paths


def write_manifest(paths: Sequence[Path], manifest: Path) -> Path:
    """A manifest listing `paths`, one absolute path a line."""
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text("".join(f"{path.resolve()}\n" for path in paths))
    return manifest


def mean_file_bytes(paths: Sequence[Path]) -> float:
    return float(np.mean([path.stat().st_size for path in paths])) if paths else 0.0


def describe(images: ImageSet, paths: Sequence[Path]) -> dict:
    return {**asdict(images), "folder": str(images.folder), "count": len(paths)} | {
        "mean_file_bytes": round(mean_file_bytes(paths)),
        "jpeg_quality": JPEG_QUALITY,
    }
