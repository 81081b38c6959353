"""The seed article's own Beam pipeline, as written there: what "x the seed's way" compares with.

ReadFromText -> Map(load): open, PIL decode, resize to 224x224 with LANCZOS -> Map(extract): a
singleton Keras ResNet50 (include_top=False, pooling=None), `model.predict` on one image ->
ParDo(store): one .npy of 7x7x2048 float32 per image; on the DirectRunner. Only the arguments
and the printed result are added. Weights are random: the timing does not depend on them.

`python -m benchmarks.seed_way MANIFEST OUTDIR` prints a BENCH_RESULT line.
"""

from __future__ import annotations

import argparse
import io
import os
from collections.abc import Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from PIL import Image

from benchmarks.measure import print_result

IMAGE_HEIGHT = IMAGE_WIDTH = 224


def singleton(cls):
    instances = {}

    def get_instance(*args, **kwargs):
        if cls not in instances:
            instances[cls] = cls(*args, **kwargs)
        return instances[cls]

    return get_instance


@singleton
class Extractor:
    def __init__(self):
        from keras.applications.resnet50 import ResNet50

        self.model = ResNet50(
            input_shape=(IMAGE_WIDTH, IMAGE_HEIGHT, 3),
            include_top=False,
            weights=None,
            pooling=None,
        )

    def extract(self, image):
        return self.model.predict(np.expand_dims(image, axis=0), verbose=0)[0]


def load(path):
    buf = FileSystems.open(path)
    img = Image.open(io.BytesIO(buf.read()))
    img = img.resize((IMAGE_HEIGHT, IMAGE_WIDTH), Image.LANCZOS)
    return {"path": path, "image": np.array(img)}


def extract(item):
    item["embedding"] = Extractor().extract(item["image"])
    del item["image"]
    return item


def store(item, output_path):
    name = item["path"].split("/")[-1].split(".")[0]
    with FileSystems.create(os.path.join(output_path, f"{name}.npy")) as f:
        fin = io.BytesIO()
        np.save(fin, item["embedding"])
        f.write(fin.getvalue())
    yield name


def run(manifest: str, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        (
            p
            | "source" >> beam.io.ReadFromText(manifest)
            | "load" >> beam.Map(load)
            | "extract" >> beam.Map(extract)
            | "store" >> beam.ParDo(store, out)
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.seed_way", description=__doc__)
    parser.add_argument("manifest", help="text file: one image path a line")
    parser.add_argument("outdir", help="folder for one .npy per image")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    run(args.manifest, args.outdir)
    stored = [entry.stat().st_size for entry in os.scandir(args.outdir)]
    print_result({"images": len(stored), "bytes_per_image": sum(stored) / max(len(stored), 1)})


if __name__ == "__main__":
    main()
