"""The analysis job's own command-line options; every other option passes through to Beam."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from beam_jobs.image_embeddings.options import DEFAULT_LOOKBACK_DAYS
from beam_jobs.image_embeddings.storage.io import check_supported
from beam_jobs.image_embeddings.storage.lease import DEFAULT_TTL

USAGE = "python -m beam_jobs.image_embeddings.analysis --output URI [options] [Beam options]"
EPILOG = """\
The day folder must hold a finished, validated run (`_SUCCESS`). The job writes the day's
projection.parquet, pca.npz, projection.png, embedding-sample.npy, the neighbours index,
duplicates.parquet, drift.json and report.html, adds the duplicate counts to validation.json,
and writes _ANALYSED last. Any other option goes to Apache Beam unchanged, for example:
  --runner DataflowRunner --project P --region R --temp_location gs://B/tmp
Locations may be local paths or gs:// URIs.
"""


@dataclass(frozen=True)
class AnalysisOptions:
    """What one run of the analysis job reads, how, and under which lease."""

    output: str
    pca_components: int = 50
    pca_sample_size: int = 20_000
    duplicate_threshold: float = 0.95
    lookback_days: int = DEFAULT_LOOKBACK_DAYS
    drift_reference_days: int = 7
    drift_threshold: float = 0.2
    scratch: str | None = None  # None: under --temp_location, else a local temporary folder
    embedding_job_url: str | None = None  # the embedding job's console page, for the report
    lease_holder: str | None = None  # None: this command holds the day, as `cli:<host>:<pid>`
    lease_token: int | None = None  # None: the holder's lease as found (or taken) at launch
    lease_ttl_secs: float = DEFAULT_TTL.total_seconds()


def _at_least(low: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text}")
        return value

    return parse


def _share(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text}")
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
        raise argparse.ArgumentTypeError(str(error)) from None


def parser() -> argparse.ArgumentParser:
    defaults = AnalysisOptions(output="")
    parser = argparse.ArgumentParser(
        prog="python -m beam_jobs.image_embeddings.analysis",
        usage=USAGE,
        description="Analyse one embedded day: PCA, neighbours index, duplicates within the "
        "day and against comparable earlier days (searched in parallel, one earlier day per "
        "worker), drift, and the day's report.html.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--output", required=True, type=_location, help="the day's folder (OUTPUT_ROOT/D)"
    )
    parser.add_argument(
        "--pca_components",
        type=_at_least(1),
        default=defaults.pca_components,
        help="principal components kept (default %(default)s)",
    )
    parser.add_argument(
        "--pca_sample_size",
        type=_at_least(1),
        default=defaults.pca_sample_size,
        help="embeddings sampled to fit the PCA (default %(default)s)",
    )
    parser.add_argument(
        "--duplicate_threshold",
        type=_share,
        default=defaults.duplicate_threshold,
        help="centred cosine at or above which images are near copies (default %(default)s)",
    )
    parser.add_argument(
        "--lookback_days",
        type=_at_least(0),
        default=defaults.lookback_days,
        help="earlier days searched for copies (default %(default)s)",
    )
    parser.add_argument(
        "--drift_reference_days",
        type=_at_least(1),
        default=defaults.drift_reference_days,
        help="earlier days that form the drift reference (default %(default)s)",
    )
    parser.add_argument(
        "--drift_threshold",
        type=_positive_float,
        default=defaults.drift_threshold,
        help="relative Fréchet distance above which a day drifted (default %(default)s)",
    )
    parser.add_argument(
        "--scratch",
        type=_location,
        default=None,
        help="folder for the job's intermediate files, readable by every worker (default: "
        "under --temp_location, else a local temporary folder); deleted at the end",
    )
    parser.add_argument(
        "--embedding_job_url",
        metavar="URL",
        default=None,
        help="the Dataflow console page of the day's embedding job, linked from the report",
    )
    parser.add_argument(
        "--lease_holder",
        metavar="NAME",
        default=None,
        help="the holder of the day's lease this job writes under (the DAG: its run)",
    )
    parser.add_argument(
        "--lease_token",
        type=int,
        default=None,
        help="with --lease_holder: the fencing token under which NAME took the day",
    )
    return parser


def parse_known_args(argv: Sequence[str] | None) -> tuple[AnalysisOptions, list[str]]:
    """(the job's options, the arguments left for Beam)."""
    known, beam_args = parser().parse_known_args(argv)
    if known.lease_token is not None and known.lease_holder is None:
        parser().error("argument --lease_token: it is the token of a --lease_holder: name both")
    return AnalysisOptions(**vars(known)), beam_args
