"""`make demo`: demo images for three days, one DAG run a day, then where outputs and plots are."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins"), str(REPO / "scripts")]

from demo_images import SCENES, day_images  # noqa: E402

from beam_jobs.image_embeddings.contract import (  # noqa: E402
    MANIFEST_NAME,
    PCA_NAME,
    PROJECTION_NAME,
    REPORT_HTML_NAME,
    SUCCESS_MARKER,
    join,
)
from image_embeddings_airflow import storage  # noqa: E402
from image_embeddings_airflow.settings import day_dir, load_settings  # noqa: E402
from image_embeddings_airflow.validation import REPORT_NAME  # noqa: E402

DAYS = ("2026-11-26", "2026-11-27", "2026-11-28")
PER_SCENE = 3
WEIGHTS_VARIABLE = "IMAGE_EMBEDDINGS_WEIGHTS"
# Keras keeps downloaded weights here; this file is ResNet50's, the default model's.
KERAS_CACHE = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
RESNET50_WEIGHTS = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
WEIGHTS_SERVER = "https://storage.googleapis.com/tensorflow/keras-applications/"
OUTPUT_FILES = (
    MANIFEST_NAME,
    SUCCESS_MARKER,
    REPORT_NAME,
    PROJECTION_NAME,
    PCA_NAME,
    REPORT_HTML_NAME,
)

RANDOM_BANNER = """
##########################################################################################
#  OFFLINE DEMO: ImageNet weights are neither cached nor downloadable from here.         #
#  The model runs with RANDOM weights: these embeddings and plots carry NO MEANING.      #
#  They only show that the pipeline, the DAG and the outputs work. For real embeddings,  #
#  run once where storage.googleapis.com is reachable (Keras caches the weights), or set #
#  IMAGE_EMBEDDINGS_WEIGHTS to a weights file.                                           #
##########################################################################################
"""


def imagenet_available(timeout_s: float = 3.0) -> bool:
    """True when Keras has the ImageNet weights cached or can download them."""
    if (KERAS_CACHE / RESNET50_WEIGHTS).is_file():
        return True
    try:
        urllib.request.urlopen(
            urllib.request.Request(WEIGHTS_SERVER, method="HEAD"), timeout=timeout_s
        )
    except OSError as error:
        # The server answers HEAD on its root with an HTTP error status: it is reachable.
        return isinstance(error, urllib.error.HTTPError)
    return True


def choose_weights(environ: Mapping[str, str]) -> str:
    """The weights the user set, else ImageNet when they can be had, else random."""
    chosen = environ.get(WEIGHTS_VARIABLE, "").strip()
    if chosen:
        return chosen
    return "imagenet" if imagenet_available() else "random"


def write_images(input_root: str) -> int:
    """Each day's scenes under INPUT_ROOT/D/ (local or gs://); return the images a day."""
    for number, day in enumerate(DAYS):
        folder = day_dir(input_root, day)
        for name, data in day_images(PER_SCENE, seed=number):
            storage.write_bytes(join(folder, name), data)
    return PER_SCENE * len(SCENES)


def run_day(day: str, environ: Mapping[str, str], log_dir: Path) -> tuple[bool, float, Path]:
    """One DAG run for `day`, as `make run DATE=day` does it; its log goes to a file."""
    log = log_dir / f"{day}.log"
    started = time.monotonic()
    with open(log, "w") as handle:
        done = subprocess.run(
            [str(REPO / "scripts" / "airflow_local.sh"), "dags", "test", "image_embeddings", day],
            env=dict(environ),
            stdout=handle,
            stderr=subprocess.STDOUT,
            check=False,
        )
    return done.returncode == 0, time.monotonic() - started, log


def describe_day(output_root: str, day: str) -> list[str]:
    """Lines telling what the day's run wrote and where its report and plot are."""
    folder = day_dir(output_root, day)
    marker = storage.read_json(join(folder, SUCCESS_MARKER))
    files = sorted(storage.list_files(folder))
    missing = [name for name in OUTPUT_FILES if join(folder, name) not in files]
    lines = [
        f"  {day}: {marker['images']} images, {marker['embedded']} embedded, "
        f"{marker['failed']} failed ({marker['model']}, {marker['weights']} weights, "
        f"{marker['dim']}-d) in {marker['duration_s']:.0f} s",
        f"    outputs: {folder}/ ({len(files)} files)",
        f"    report:  {join(folder, REPORT_HTML_NAME)}",
        f"    plot:    {join(folder, 'projection.png')}",
    ]
    if missing:
        lines.append(f"    MISSING: {', '.join(missing)}")
    return lines


def main() -> int:
    settings = load_settings(os.environ)
    weights = choose_weights(os.environ)
    environ = dict(os.environ, **{WEIGHTS_VARIABLE: weights})
    if weights == "random":
        print(RANDOM_BANNER, flush=True)
    per_day = write_images(settings.input_root)
    print(
        f"Wrote {per_day} photo-like images ({', '.join(SCENES)}) for each of {', '.join(DAYS)} "
        f"under {settings.input_root}/",
        flush=True,
    )
    log_dir = Path(os.environ.get("IMAGE_EMBEDDINGS_DATA") or REPO / "data") / "demo-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    for day in DAYS:
        print(f"Running the image_embeddings DAG for {day} ({weights} weights) ...", flush=True)
        ok, seconds, log = run_day(day, environ, log_dir)
        print(f"  {'succeeded' if ok else 'FAILED'} in {seconds:.0f} s; log: {log}", flush=True)
        if not ok:
            failed.append(day)
    print(f"\nOutputs under {settings.output_root}/:")
    for day in DAYS:
        if day in failed:
            print(f"  {day}: the run failed; see {log_dir / (day + '.log')}")
        else:
            print("\n".join(describe_day(settings.output_root, day)))
    if weights == "random":
        print(RANDOM_BANNER)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
