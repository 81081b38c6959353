"""The job's own command-line options; every other option passes through to Beam untouched."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from beam_jobs.image_embeddings.contract import EMBEDDING_DTYPES, PRECISIONS
from beam_jobs.image_embeddings.images import DEFAULT_MAX_IMAGE_BYTES
from beam_jobs.image_embeddings.io import check_supported
from beam_jobs.image_embeddings.models import check_weights, resolve_model

USAGE = "python -m beam_jobs.image_embeddings --manifest URI --output URI [options] [Beam options]"
EPILOG = """\
Any other option goes to Apache Beam unchanged, for example:
  --runner DataflowRunner --project P --region R --temp_location gs://B/tmp
  --setup_file beam_jobs/setup.py | --sdk_container_image IMAGE
  --direct_running_mode multi_processing --direct_num_workers 2
Locations may be local paths or gs:// URIs.
"""


@dataclass(frozen=True)
class JobOptions:
    """What one run of the pipeline embeds, with what, and where it writes."""

    manifest: str
    output: str
    model: str = "resnet50"
    weights: str = "imagenet"
    batch_size: int = 32
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    input_root: str | None = None
    precision: str = "float32"
    jit_compile: bool | None = None  # None: XLA for float32 only
    embedding_dtype: str = "float32"
    num_shards: int = 0
    progress_interval_secs: float = 30.0
    wait_until_finish: bool = False


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def _location(text: str) -> str:
    try:
        return check_supported(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m beam_jobs.image_embeddings",
        usage=USAGE,
        description="Embed every image listed in a manifest with a Keras CNN; write Parquet.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        # Beam's options pass through: never let a prefix of ours swallow one of them.
        allow_abbrev=False,
    )
    job = parser.add_argument_group("job options")
    job.add_argument(
        "--manifest",
        metavar="URI",
        required=True,
        type=_location,
        help="text file listing one image URI per line; blank lines and '#' lines are ignored",
    )
    job.add_argument(
        "--output",
        metavar="URI",
        required=True,
        type=_location,
        help="folder for embeddings-*.parquet, failures-*.parquet and _SUCCESS; "
        "a rerun replaces what an earlier run left there",
    )
    job.add_argument(
        "--model",
        metavar="NAME|URI",
        default=JobOptions.model,
        help="keras.applications model name (resnet50, efficientnetb0, mobilenetv3small, ...) "
        "or the URI of a .keras model file (default: %(default)s)",
    )
    job.add_argument(
        "--weights",
        metavar="imagenet|random|URI",
        default=JobOptions.weights,
        help="'imagenet' (downloaded by Keras), 'random' (seeded, for offline runs) or the URI "
        "of a Keras weights file (default: %(default)s)",
    )
    job.add_argument(
        "--batch_size",
        metavar="N",
        type=_positive_int,
        default=JobOptions.batch_size,
        help="images per model call (default: %(default)s)",
    )
    job.add_argument(
        "--max_image_bytes",
        metavar="BYTES",
        type=_positive_int,
        default=JobOptions.max_image_bytes,
        help="larger files are failures at the read stage, never read whole (default: %(default)s)",
    )
    job.add_argument(
        "--input_root",
        metavar="URI",
        type=_location,
        default=None,
        help="when given, entries outside this folder are failures and are never opened",
    )
    job.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=JobOptions.precision,
        help="arithmetic of the model call; bfloat16 is faster on CPUs that support it "
        "(default: %(default)s)",
    )
    xla = job.add_mutually_exclusive_group()
    xla.add_argument(
        "--jit_compile",
        action="store_const",
        const=True,
        help="compile the model with XLA (default with float32 precision: about a fifth faster)",
    )
    xla.add_argument(
        "--no_jit_compile",
        dest="jit_compile",
        action="store_const",
        const=False,
        help="run the model on TensorFlow's graph executor (default with bfloat16, for oneDNN's "
        "bfloat16 kernels; also for a .keras model with operations XLA cannot compile)",
    )
    job.add_argument(
        "--embedding_dtype",
        choices=EMBEDDING_DTYPES,
        default=JobOptions.embedding_dtype,
        help="float type of the stored embeddings; float16 halves the bytes (default: %(default)s)",
    )
    job.add_argument(
        "--num_shards",
        metavar="N",
        type=_non_negative_int,
        default=JobOptions.num_shards,
        help="number of embeddings files; 0 lets the runner decide (default: %(default)s)",
    )
    job.add_argument(
        "--progress_interval_secs",
        metavar="SECONDS",
        type=_positive_float,
        default=JobOptions.progress_interval_secs,
        help="seconds between progress lines on the DirectRunner (default: %(default)s)",
    )
    job.add_argument(
        "--wait_until_finish",
        action="store_true",
        help="with a remote runner (DataflowRunner), wait for the job to end instead of "
        "returning once it is submitted; local runners always wait",
    )
    return parser


def parse_known_args(argv: Sequence[str] | None) -> tuple[JobOptions, list[str]]:
    """Split `argv` into the job's options and the arguments left for Beam.

    An unknown model, or weights that cannot apply to it, end the program with a usage error.
    """
    parser = build_parser()
    known, beam_args = parser.parse_known_args(argv)
    job = JobOptions(**vars(known))
    try:
        check_weights(resolve_model(job.model), job.weights)
    except (ValueError, OSError) as error:
        parser.error(f"argument --model/--weights: {error}")
    return job, beam_args
