"""The seed article's way, as a reference: batch-1 predict, full decode, LANCZOS, one .npy each.

Keras ResNet50 without its top and without pooling (7x7x2048 feature maps), `model.predict` on
one image at a time, every image decoded at full size and resized with LANCZOS to 224x224.
Two of the seed's bugs are fixed so the figures stay comparable: PIL gets (width, height), and
`preprocess_input` is applied (a cost too small to matter). Weights are random by default: the
same arithmetic as ImageNet's, without a download.

`python -m benchmarks.seed_way --manifest M --output DIR` prints a BENCH_RESULT line.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from beam_jobs.image_embeddings.contract import manifest_entries
from benchmarks.measure import print_result

INPUT_SIZE = (224, 224)  # (width, height), as PIL takes it
RANDOM_SEED = 1729


def build_model(weights: str):
    import keras

    if weights == "random":
        keras.utils.set_random_seed(RANDOM_SEED)
        return keras.applications.ResNet50(weights=None, include_top=False)
    return keras.applications.ResNet50(weights=weights, include_top=False)


def load_pixels(path: str) -> np.ndarray:
    """Full decode, RGB, LANCZOS resize to 224x224: float32 (1, 224, 224, 3)."""
    with Image.open(path) as image:
        resized = image.convert("RGB").resize(INPUT_SIZE, Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.float32)[np.newaxis]


def feature_path(output: Path, uri: str) -> Path:
    return output / f"{Path(uri).stem}.npy"


def embed_one(model, preprocess, uri: str, output: Path) -> None:
    features = model.predict(preprocess(load_pixels(uri)), verbose=0)
    np.save(feature_path(output, uri), features[0])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.seed_way", description=__doc__)
    parser.add_argument("--manifest", required=True, help="one local image path a line")
    parser.add_argument("--output", required=True, help="folder for one .npy per image")
    parser.add_argument("--weights", default="random", help="random, imagenet or a .h5 file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    from keras.applications.resnet50 import preprocess_input

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    with open(args.manifest) as handle:
        uris = list(manifest_entries(handle))
    model = build_model(args.weights)
    started = time.perf_counter()
    for uri in uris:
        embed_one(model, preprocess_input, uri, output)
    seconds = time.perf_counter() - started
    stored = sum(feature_path(output, uri).stat().st_size for uri in uris)
    print_result(
        {
            "images": len(uris),
            "loop_s": seconds,
            "bytes_per_image": stored / len(uris) if uris else 0,
        }
    )


if __name__ == "__main__":
    main()
