"""The model's own limit: its compiled call on pre-decoded uint8 batches, no I/O, after warm-up.

`python -m benchmarks.ceiling --manifest M [--precision bfloat16]` prints a BENCH_RESULT line;
with `--engine openvino --prepared_model URI` it times the prepared OpenVINO model instead.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import psutil

from beam_jobs.image_embeddings.contract import ENGINES, PRECISIONS, manifest_entries
from beam_jobs.image_embeddings.engine.models import KerasModelHandler, resolve_model
from beam_jobs.image_embeddings.engine.openvino import OpenVINOModelHandler
from beam_jobs.image_embeddings.images import load_image
from benchmarks.measure import print_result


def decoded_batch(uris: Sequence[str], size: tuple[int, int], batch_size: int) -> np.ndarray:
    """`batch_size` images ready for the model, cycling through `uris`: uint8 (n, h, w, 3)."""
    loaded = [load_image(Path(uri).read_bytes(), size).pixels for uri in uris[:batch_size]]
    return np.stack([loaded[index % len(loaded)] for index in range(batch_size)])


def seconds_since_process_start() -> float:
    return time.time() - psutil.Process().create_time()


def timed_calls(embed, batch: np.ndarray, batches: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of `batches` calls on `batch`."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        embed(batch)
    return time.perf_counter() - wall, time.process_time() - cpu


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ceiling", description=__doc__)
    parser.add_argument("--manifest", required=True, help="images to pre-decode (local paths)")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--precision", default="float32", choices=PRECISIONS)
    parser.add_argument("--engine", default="tensorflow", choices=ENGINES)
    parser.add_argument("--prepared_model", help="with --engine openvino: the prepared model")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first")
    parser.add_argument("--batches", type=int, default=10, help="timed calls")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    spec = resolve_model(args.model)
    with open(args.manifest) as handle:
        uris = list(manifest_entries(handle))
    if args.engine == "openvino":
        handler = OpenVINOModelHandler(args.prepared_model, args.model, args.precision)
    else:
        handler = KerasModelHandler(
            args.model,
            args.weights,
            precision=args.precision,
            min_batch_size=args.batch_size,
            max_batch_size=args.batch_size,
        )
    loading = time.perf_counter()
    embedder = handler.load_model()
    load_s = time.perf_counter() - loading
    startup_s = seconds_since_process_start()
    batch = decoded_batch(uris, spec.input_size, args.batch_size)
    for _ in range(args.warmup):
        embedder(batch)
    seconds, cpu_seconds = timed_calls(embedder, batch, args.batches)
    images = args.batches * args.batch_size
    print_result(
        {
            "images_per_s": images / seconds,
            "cpu_s_per_image": cpu_seconds / images,
            "timed_images": images,
            "startup_s": startup_s,
            "load_s": load_s,
            "precision": args.precision,
            "engine": args.engine,
            "batch_size": args.batch_size,
        }
    )


if __name__ == "__main__":
    main()
