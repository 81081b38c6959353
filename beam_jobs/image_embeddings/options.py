"""The job's own command-line options; every other option passes through to Beam untouched."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from beam_jobs.image_embeddings.contract import EMBEDDING_DTYPES, ENGINES, PRECISIONS
from beam_jobs.image_embeddings.engine import calibration
from beam_jobs.image_embeddings.engine.accuracy import Thresholds
from beam_jobs.image_embeddings.engine.models import check_weights, resolve_model
from beam_jobs.image_embeddings.images import DEFAULT_MAX_IMAGE_BYTES
from beam_jobs.image_embeddings.storage.io import check_supported
from beam_jobs.image_embeddings.storage.lease import DEFAULT_TTL

DEFAULT_LOOKBACK_DAYS = 30

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
    engine: str = "openvino"
    precision: str = "float32"
    prepared_model: str | None = None
    model_cache: str | None = None  # None: default_model_cache()
    calibration_manifest: str | None = None
    calibration_size: int = calibration.CALIBRATION_SIZE
    held_out_size: int = calibration.HELD_OUT_SIZE
    calibration_seed: int = calibration.SEED
    min_centred_cosine_mean: float = Thresholds.min_centred_cosine_mean
    min_centred_cosine: float = Thresholds.min_centred_cosine
    min_top5_overlap: float = Thresholds.min_top5_overlap
    jit_compile: bool | None = None  # None: XLA for float32 only
    embedding_dtype: str = "float32"
    num_shards: int = 0
    progress_interval_secs: float = 30.0
    wait_until_finish: bool = False
    lease_holder: str | None = None  # None: this command holds the day, as `cli:<host>:<pid>`
    lease_token: int | None = None  # None: the holder's lease as found (or taken) at launch
    lease_ttl_secs: float = DEFAULT_TTL.total_seconds()
    lookback_days: int = DEFAULT_LOOKBACK_DAYS
    reuse_from: tuple[str, ...] = ()

    def thresholds(self) -> Thresholds:
        return Thresholds(
            self.min_centred_cosine_mean, self.min_centred_cosine, self.min_top5_overlap
        )


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


def _fraction(text: str) -> float:
    value = float(text)
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between -1 and 1, got {text}")
    return value


def location(text: str) -> str:
    try:
        return check_supported(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _locations(text: str) -> tuple[str, ...]:
    return tuple(location(part.strip()) for part in text.split(",") if part.strip())


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
        type=location,
        help="text file listing one image URI per line; blank lines and '#' lines are ignored",
    )
    job.add_argument(
        "--output",
        metavar="URI",
        required=True,
        type=location,
        help="folder for embeddings-*.parquet, failures-*.parquet and _SUCCESS; "
        "a rerun replaces what an earlier run left there",
    )
    add_model_arguments(job)
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
        type=location,
        default=None,
        help="when given, entries outside this folder are failures and are never opened",
    )
    job.add_argument(
        "--engine",
        choices=ENGINES,
        default=JobOptions.engine,
        help="openvino runs a model prepared once per fingerprint (as exact as TensorFlow in "
        "float32 and faster; int8 too); tensorflow runs the Keras model (default: %(default)s)",
    )
    job.add_argument(
        "--prepared_model",
        metavar="URI",
        type=location,
        default=None,
        help="OpenVINO: folder of a prepared model (python -m "
        "beam_jobs.image_embeddings.engine.prepare); "
        "without it the launcher prepares the model, or finds it in --model_cache",
    )
    add_preparation_arguments(parser)
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
    lease = parser.add_argument_group(
        "day lease",
        "one run at a time writes an output folder: a run takes its _LEASE file first and is "
        "refused, naming the holder, while another run holds it",
    )
    lease.add_argument(
        "--lease_holder",
        metavar="NAME",
        default=JobOptions.lease_holder,
        help="hold the output folder as NAME (the DAG passes its run id, so its own lease is "
        "renewed); default: this command, as cli:<host>:<pid>, giving it back when it ends",
    )
    lease.add_argument(
        "--lease_token",
        metavar="TOKEN",
        type=int,
        default=JobOptions.lease_token,
        help="with --lease_holder: the fencing token under which NAME took the day (the DAG "
        "passes the one claim_day got); the job refuses to clear, commit or publish once the "
        "lease is no longer NAME's under TOKEN",
    )
    lease.add_argument(
        "--lease_ttl_secs",
        metavar="SECONDS",
        type=_positive_float,
        default=JobOptions.lease_ttl_secs,
        help="seconds after which the lease of a run that died holding it expires "
        "(default: %(default)s)",
    )
    reuse = parser.add_argument_group(
        "reuse",
        "An image whose bytes (sha256) an earlier run embedded under the same model fingerprint "
        "is not sent through the model: its embedding is copied, and its row names the day "
        "(reused_from). Earlier runs: the output's own earlier run and, when the output folder is "
        "named after a day (OUTPUT_ROOT/YYYY-MM-DD), the finished days before it.",
    )
    reuse.add_argument(
        "--lookback_days",
        metavar="N",
        type=_non_negative_int,
        default=JobOptions.lookback_days,
        help="days before the output's day to reuse embeddings from; 0 with no --reuse_from "
        "turns reuse off (default: %(default)s)",
    )
    reuse.add_argument(
        "--reuse_from",
        metavar="URI[,URI...]",
        type=_locations,
        default=JobOptions.reuse_from,
        help="more output folders of earlier runs to reuse embeddings from, comma-separated; "
        "each is used only when its _SUCCESS has this run's model fingerprint",
    )
    return parser


def add_model_arguments(group: argparse._ActionsContainer) -> None:
    """--model, --weights and --precision: what the pipeline embeds with, and what is prepared."""
    group.add_argument(
        "--model",
        metavar="NAME|URI",
        default=JobOptions.model,
        help="keras.applications model name (resnet50, efficientnetb0, mobilenetv3small, ...) "
        "or the URI of a .keras model file (default: %(default)s)",
    )
    group.add_argument(
        "--weights",
        metavar="imagenet|random|URI",
        default=JobOptions.weights,
        help="'imagenet' (downloaded by Keras), 'random' (seeded, for offline runs) or the URI "
        "of a Keras weights file (default: %(default)s)",
    )
    group.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=JobOptions.precision,
        help="arithmetic of the model call: int8 (OpenVINO only) is quantized with NNCF, "
        "bfloat16 needs a CPU with bfloat16 instructions (AVX512_BF16 or AMX); with OpenVINO "
        "both are checked against float32 before anything is embedded (default: %(default)s)",
    )


def add_preparation_arguments(parser: argparse.ArgumentParser) -> None:
    """Where an OpenVINO model is prepared and how int8 is calibrated and checked."""
    group = parser.add_argument_group("model preparation (OpenVINO)")
    group.add_argument(
        "--model_cache",
        metavar="URI",
        type=location,
        default=None,
        help="where prepared models live, one folder per fingerprint (default: "
        "$IMAGE_EMBEDDINGS_MODEL_CACHE, else ~/.cache/image_embeddings/models)",
    )
    group.add_argument(
        "--calibration_manifest",
        metavar="URI",
        type=location,
        default=None,
        help="int8: manifest of the images to calibrate on and check against float32 "
        "(default: a seeded sample of the first day's --manifest, pinned in the model cache "
        "and reused every later day)",
    )
    group.add_argument(
        "--calibration_size",
        metavar="N",
        type=_positive_int,
        default=JobOptions.calibration_size,
        help="int8: images to calibrate on (default: %(default)s)",
    )
    group.add_argument(
        "--held_out_size",
        metavar="N",
        type=_positive_int,
        default=JobOptions.held_out_size,
        help="int8: other images to compare int8 with float32 on (default: %(default)s)",
    )
    group.add_argument(
        "--calibration_seed",
        metavar="N",
        type=int,
        default=JobOptions.calibration_seed,
        help="int8: seed of the calibration sample (default: %(default)s)",
    )
    for name, what in (
        ("min_centred_cosine_mean", "mean centred cosine"),
        ("min_centred_cosine", "smallest centred cosine"),
        ("min_top5_overlap", "mean top-5 neighbour overlap"),
    ):
        group.add_argument(
            f"--{name}",
            metavar="X",
            type=_fraction,
            default=getattr(JobOptions, name),
            help=f"int8 is refused below this {what} to float32 (default: %(default)s)",
        )


def check_engine(job: JobOptions) -> None:
    """Raise ValueError for an engine and precision that do not go together."""
    if job.engine == "tensorflow" and job.precision == "int8":
        raise ValueError("--precision int8 needs --engine openvino")
    if job.engine == "tensorflow" and job.prepared_model:
        raise ValueError("--prepared_model is an OpenVINO model: it needs --engine openvino")
    if job.engine == "openvino" and job.jit_compile is not None:
        raise ValueError("--jit_compile/--no_jit_compile apply to --engine tensorflow only")


def parse_known_args(argv: Sequence[str] | None) -> tuple[JobOptions, list[str]]:
    """Split `argv` into the job's options and the arguments left for Beam.

    An unknown model, or weights that cannot apply to it, end the program with a usage error.
    """
    parser = build_parser()
    known, beam_args = parser.parse_known_args(argv)
    job = JobOptions(**vars(known))
    if job.lease_token is not None and job.lease_holder is None:
        parser.error("argument --lease_token: it is the token of a --lease_holder: name both")
    try:
        check_weights(resolve_model(job.model), job.weights)
    except (ValueError, OSError) as error:
        parser.error(f"argument --model/--weights: {error}")
    try:
        check_engine(job)
    except ValueError as error:
        parser.error(f"argument --engine: {error}")
    return job, beam_args
