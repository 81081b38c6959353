"""`make bench`: model ceiling, pipeline (TensorFlow and OpenVINO), the seed's way, bfloat16, the
precisions this CPU runs natively, reuse, daily steps, storage, search recall and publishing into
pgvector.

Every figure comes from child processes, so each one's start-up and peak memory are its own.
Throughput is the difference between a small and a large run of the same command, each less the
loading time it reports (imports, model load, XLA compilation); start-up is what remains of the
small run. Results print as Markdown and go to `benchmarks/out/results.json`.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from functools import partial
from importlib import metadata
from pathlib import Path

import numpy as np

from beam_jobs.image_embeddings.contract import EMBEDDINGS_PREFIX, SUCCESS_MARKER, shard_glob
from beam_jobs.image_embeddings.vectors import row_cosines
from benchmarks import imagesets, search_recall
from benchmarks.daily import _write_shard as write_shard
from benchmarks.daily import shard_name, write_synthetic_day
from benchmarks.measure import (
    Measured,
    child_environment,
    python_command,
    run_measured,
)
from benchmarks.publish import measure_publish, publish_table
from benchmarks.report import (
    Pair,
    Row,
    daily_table,
    main_table,
    pair_row,
    ratio,
    render,
    repeated,
    scaling,
    scaling_table,
    storage_table,
    targets,
    with_ratios,
)
from benchmarks.scale import measure as measure_analysis_scale
from benchmarks.scale import parse_args as parse_scale_args
from benchmarks.scale import table as scale_table

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "out"
MODEL = "resnet50"
WEIGHTS = "random"  # the same arithmetic as ImageNet's; nothing to download
# "main" is the model ceiling and the pipeline on 640x480 photos, which the other rows compare to.
SECTIONS = (
    "main",
    "openvino",
    "camera",
    "seed",
    "bf16",
    "precision",
    "reuse",
    "daily",
    "storage",
    "dag",
    "search",
    "publish",
    "scale",
)
# Share of a reuse day's images that an earlier run embedded.
REUSED_SHARE = 0.8
# The reuse day's lookback: earlier days, each holding the cold day's images (digests present on
# every day of the window) and rows of its own the day does not hold, so the window grows with
# its days; its peak memory is compared with a window of one such day.
REUSE_WINDOW_DAYS = 30
REUSE_OWN_ROWS = 1_000
REUSE_DAY = date(2026, 2, 1)
TABLE_ORDER = (
    "ceiling_float32",
    "ceiling_openvino_float32",
    "ceiling_openvino_int8",
    "ceiling_bfloat16",
    "pipeline_float32_photos",
    "pipeline_openvino_float32_photos",
    "pipeline_openvino_int8_photos",
    "pipeline_bfloat16_photos",
    "pipeline_openvino_float32_camera",
    "seed_photos",
    "seed_camera",
    "reuse_cold_photos",
    "reuse_warm_photos",
)
# CPU flags that decide the model's speed; without one of BF16_FLAGS, bfloat16 is emulated.
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
SMALL_SET = ("photos", (640, 480))
CAMERA_SET = ("camera", (4032, 3024))
# What the seed stored per image: a 7x7x2048 float32 .npy (128-byte header).
SEED_NPY_BYTES = 7 * 7 * 2048 * 4 + 128
# The pipeline's log line once a process has its model ready, and its timestamp's format.
LOADED_MODEL_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*Loaded model ", re.M)
LOG_TIME_FORMAT = "%Y-%m-%d %H:%M:%S,%f"
# The int8 guard's thresholds for the benchmark's random weights, whose int8 model strays from
# float32 (no real activation ranges to calibrate on): the figures are recorded, not judged.
LENIENT_GUARD = (
    "--min_centred_cosine_mean=-1",
    "--min_centred_cosine=-1",
    "--min_top5_overlap=0",
)
WARMUP_IMPORTS = (
    "import tensorflow, keras, apache_beam, pyarrow.parquet, pandas, matplotlib.figure; "
    "import beam_jobs.image_embeddings.launcher, image_embeddings_airflow.dag.validation, "
    "beam_jobs.image_embeddings.analysis.reduction, benchmarks.ceiling, benchmarks.seed_way"
)


@dataclass(frozen=True)
class Sizes:
    """How many images (small, large) each pair of runs embeds, and the other workloads."""

    images: tuple[int, int] = (96, 384)
    camera_images: tuple[int, int] = (32, 128)
    seed_images: tuple[int, int] = (32, 128)
    seed_camera_images: tuple[int, int] = (16, 64)
    ceiling_batches: int = 10
    daily_rows: tuple[int, int] = (200_000, 400_000)
    calibration_images: int = 576  # int8: 64 to calibrate on, 512 held out (the defaults)
    reuse_images: tuple[int, int] = (80, 400)
    publish_rows: tuple[int, int] = (100_000, 1_000_000)
    # The seed's way and the runs compared with it, in turn, this many times: ratios of runs
    # minutes apart, and their spread.
    repeats: int = 3


QUICK = Sizes(
    images=(4, 8),
    camera_images=(2, 4),
    seed_images=(2, 4),
    seed_camera_images=(1, 2),
    ceiling_batches=2,
    daily_rows=(2_000, 4_000),
    calibration_images=12,
    reuse_images=(5, 10),
    publish_rows=(2_000, 4_000),
    repeats=1,
)


@dataclass
class Bench:
    """Where runs write, how children are started, and what has been measured so far."""

    out: Path
    sizes: Sizes
    batch_size: int
    environment: dict
    timeout_s: float
    pipeline_args: tuple[str, ...] = ()
    log_progress: bool = True
    rows: dict[str, Row] = field(default_factory=dict)
    pairs: dict[str, list[Pair]] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)
    repetition: int = 0

    def say(self, message: str) -> None:
        if self.log_progress:
            print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def measure(
        self, name: str, command: Sequence[str], environment: dict | None = None
    ) -> Measured:
        """Run `command` as a child (with `environment`, or the children's own), log, record."""
        name = self.repeated_name(name)
        measured = run_measured(
            command,
            self.out / "logs" / f"{name}.log",
            environment or self.environment,
            self.timeout_s,
        )
        self.say(
            f"{name}: {measured.seconds:.1f} s, {measured.cpu_seconds:.1f} CPU s, "
            f"peak {measured.peak_rss_mb:,.0f} MB"
        )
        self.runs[name] = {
            "seconds": measured.seconds,
            "cpu_seconds": measured.cpu_seconds,
            "peak_mb": measured.peak_rss_mb,
            "result": measured.result,
        }
        return measured

    def manifest(self, images: imagesets.ImageSet, count: int) -> Path:
        paths = [images.path(index) for index in range(count)]
        return imagesets.write_manifest(
            paths, self.out / "manifests" / f"{images.name}-{count}.txt"
        )

    def run_dir(self, name: str) -> Path:
        return self.out / "runs" / name

    def repeated_name(self, name: str) -> str:
        """`name`, marked with its repetition after the first: no run's log replaces another's."""
        return f"{name}-r{self.repetition + 1}" if self.repetition else name

    def add_pair(self, key: str, pair: Pair) -> Pair:
        self.pairs.setdefault(key, []).append(pair)
        return pair


def parse_pair(text: str) -> tuple[int, int]:
    small, large = (int(part) for part in text.split(","))
    if not 0 < small < large:
        raise argparse.ArgumentTypeError(f"expected SMALL,LARGE with 0 < SMALL < LARGE: {text}")
    return small, large


def parse_sections(text: str) -> frozenset[str]:
    chosen = frozenset(part for part in text.split(",") if part)
    unknown = chosen - set(SECTIONS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown sections {sorted(unknown)}: use {SECTIONS}")
    return chosen


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = Sizes()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that it works")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="cache and results folder")
    parser.add_argument(
        "--images", type=parse_pair, help=f"640x480 pipeline runs (default {defaults.images})"
    )
    parser.add_argument(
        "--camera-images",
        type=parse_pair,
        help=f"4032x3024 pipeline runs (default {defaults.camera_images})",
    )
    parser.add_argument(
        "--seed-images",
        type=parse_pair,
        help=f"640x480 runs of the seed's way (default {defaults.seed_images})",
    )
    parser.add_argument(
        "--seed-camera-images",
        type=parse_pair,
        help=f"4032x3024 runs of the seed's way (default {defaults.seed_camera_images})",
    )
    parser.add_argument(
        "--ceiling-batches",
        type=int,
        help=f"timed model calls for the ceiling (default {defaults.ceiling_batches})",
    )
    parser.add_argument(
        "--daily-rows",
        type=parse_pair,
        help="embeddings validated, reduced and searched for duplicates "
        f"(default {defaults.daily_rows})",
    )
    parser.add_argument(
        "--reuse-images",
        type=parse_pair,
        help=f"640x480 days, cold and {REUSED_SHARE * 100:.0f}%% embedded before "
        f"(default {defaults.reuse_images})",
    )
    parser.add_argument(
        "--publish-rows",
        type=parse_pair,
        help=f"embeddings copied into pgvector (default {defaults.publish_rows})",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        help="times the seed's way and the runs it is compared with are measured, in turn "
        f"(default {defaults.repeats})",
    )
    parser.add_argument("--batch_size", type=int, default=32, help="images per model call")
    parser.add_argument(
        "--skip", type=parse_sections, default=frozenset(), help=f"any of {','.join(SECTIONS)}"
    )
    parser.add_argument(
        "--only",
        type=parse_sections,
        default=frozenset(),
        help="run only these sections (same names as --skip), e.g. --only reuse",
    )
    parser.add_argument(
        "--no-warmup",
        action="store_true",
        help="measure cold imports: no warm-up run, and PYTHONDONTWRITEBYTECODE left as it is",
    )
    parser.add_argument(
        "--pipeline-args",
        default="",
        help="more arguments for every pipeline run, e.g. "
        "'--direct_running_mode multi_threading --direct_num_workers 2'",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per child run")
    return parser.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> Sizes:
    base = QUICK if args.quick else Sizes()
    chosen = {
        name: getattr(args, name)
        for name in (
            "images",
            "camera_images",
            "seed_images",
            "seed_camera_images",
            "ceiling_batches",
            "daily_rows",
            "reuse_images",
            "publish_rows",
            "repeats",
        )
        if getattr(args, name) is not None
    }
    return replace(base, **chosen)


def environment_for_children(warm: bool) -> dict[str, str]:
    """PYTHONPATH for the packages; a warm run lets Python cache bytecode as installs do."""
    environment = child_environment([ROOT, ROOT / "plugins"])
    if warm:
        environment.pop("PYTHONDONTWRITEBYTECODE", None)
    return environment


def cpu_info(text: str) -> dict[str, str]:
    """The fields of the first processor in /proc/cpuinfo text."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def machine() -> dict:
    """The machine and software the figures were measured with."""
    import psutil

    cpuinfo = Path("/proc/cpuinfo")
    fields = cpu_info(cpuinfo.read_text()) if cpuinfo.exists() else {}
    flags = set(fields.get("flags", "").split())
    cpu = fields.get("model name") or platform.processor()
    if "cpu family" in fields:
        cpu += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    packages = ("tensorflow-cpu", "keras", "apache-beam", "pillow", "numpy", "pyarrow")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "isa": [name for name in VECTOR_FLAGS if name in flags],
        "bf16_hardware": bool(flags & BF16_FLAGS),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in packages},
        "load_average_at_start": [round(value, 2) for value in os.getloadavg()],
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


# --- the runs -------------------------------------------------------------------------------


def skipped_sections(args: argparse.Namespace) -> frozenset[str]:
    """The sections not to run: those of --skip, all but those of --only, bf16 and storage
    without main (they compare with its runs), and scale unless --only names it (an hour, 15 GB)."""
    skip = args.skip | (frozenset(SECTIONS) - args.only if args.only else frozenset())
    skip |= frozenset() if "scale" in args.only else {"scale"}
    return skip | {"bf16", "storage"} if "main" in skip else skip


def prepare_images(bench: Bench, skip: frozenset[str]) -> dict[str, imagesets.ImageSet]:
    sizes = bench.sizes
    photos = [sizes.images[1] if "main" not in skip else 0]
    photos.append(sizes.seed_images[1] if "seed" not in skip else 0)
    photos.append(sizes.calibration_images if "openvino" not in skip else 0)
    photos.append(max(reuse_day(sizes.reuse_images[1])) + 1 if "reuse" not in skip else 0)
    wanted = {SMALL_SET: max(photos)}
    if "camera" not in skip:
        camera_seed = sizes.seed_camera_images[1] if "seed" not in skip else 0
        wanted[CAMERA_SET] = max(sizes.camera_images[1], camera_seed)
    sets = {}
    for (name, size), count in wanted.items():
        images = imagesets.image_set(bench.out, name, size)
        started = time.perf_counter()
        paths = imagesets.ensure_images(images, count)
        info = imagesets.describe(images, paths)
        bench.say(
            f"image set {images.label}: {count} JPEGs of {info['mean_file_bytes'] / 1e3:,.0f} kB "
            f"on average, ready in {time.perf_counter() - started:.1f} s"
        )
        sets[name] = images
    return sets


def warm_up(bench: Bench) -> None:
    """One unmeasured child that imports the whole stack: caches warm, as on a running worker."""
    bench.measure("warmup", [sys.executable, "-c", WARMUP_IMPORTS])


def prepare_openvino(bench: Bench, photos: imagesets.ImageSet, precision: str) -> str:
    """Prepare the OpenVINO model as the DAG's prepare_model task does; its cache folder."""
    calibration = bench.manifest(photos, bench.sizes.calibration_images)
    measured = bench.measure(
        f"prepare-openvino-{precision}",
        python_command(
            "beam_jobs.image_embeddings.engine.prepare",
            f"--model={MODEL}",
            f"--weights={WEIGHTS}",
            f"--precision={precision}",
            f"--model_cache={bench.out / 'model_cache'}",
            f"--calibration_manifest={calibration}",
            *LENIENT_GUARD,
        ),
    )
    lines = measured.log.read_text(errors="replace").splitlines()
    prepared = json.loads(next(line for line in reversed(lines) if line.startswith("{")))
    bench.runs[f"prepare-openvino-{precision}"]["result"] = prepared
    return prepared["prepared_model"]


def int8_guard(bench: Bench) -> dict | None:
    """The int8 preparation's accuracy figures against float32, and what they were measured on."""
    run = bench.runs.get("prepare-openvino-int8")
    if not run or not run["result"].get("accuracy"):
        return None
    figures = run["result"]["accuracy"]
    return {
        "figures": figures,
        "note": f"{figures['images']} held-out synthetic photos, random weights",
    }


def measure_ceiling(
    bench: Bench, photos: imagesets.ImageSet, precision: str, prepared_model: str | None = None
) -> Row:
    """The model call alone; `prepared_model` times that OpenVINO model instead of TensorFlow."""
    # The batch cycles through these images: decoding them is not part of what is timed.
    manifest = bench.manifest(photos, min(bench.batch_size, bench.sizes.images[1]))
    engine = ["--engine", "openvino", "--prepared_model", prepared_model] if prepared_model else []
    label = f"openvino-{precision}" if prepared_model else precision
    measured = bench.measure(
        f"ceiling-{label}",
        python_command(
            "benchmarks.ceiling",
            "--manifest",
            str(manifest),
            "--weights",
            WEIGHTS,
            "--precision",
            precision,
            "--batch_size",
            str(bench.batch_size),
            "--batches",
            str(bench.sizes.ceiling_batches),
            *engine,
        ),
    )
    result = measured.result
    what = "OpenVINO, prepared model" if prepared_model else "compiled call"
    return Row(
        key=f"ceiling_{label.replace('-', '_')}",
        name=f"model ceiling, {precision} ({what}, uint8 batches of {bench.batch_size}, no I/O)",
        images=str(result["timed_images"]),
        images_per_s=result["images_per_s"],
        startup_s=result["startup_s"],
        peak_mb=measured.peak_rss_mb,
        cpu_s_per_image=result["cpu_s_per_image"],
    )


def pipeline_command(
    manifest: Path,
    output: Path,
    batch_size: int,
    precision: str,
    dtype: str,
    extra: Sequence[str] = (),
) -> list[str]:
    return python_command(
        "beam_jobs.image_embeddings",
        "--manifest",
        str(manifest),
        "--output",
        str(output),
        "--model",
        MODEL,
        "--weights",
        WEIGHTS,
        "--batch_size",
        str(batch_size),
        "--precision",
        precision,
        "--embedding_dtype",
        dtype,
        *extra,
    )


def check_success(output: Path, count: int) -> dict:
    """The run's `_SUCCESS` marker, after checking that every image was embedded."""
    marker = json.loads((output / SUCCESS_MARKER).read_text())
    if marker["embedded"] != count or marker["failed"]:
        raise RuntimeError(
            f"{output}: {marker['embedded']} of {count} images embedded, "
            f"{marker['failed']} failed; see failures-*.parquet"
        )
    return marker


def engine_args(prepared_model: str | None, precision: str) -> list[str]:
    """The pipeline's engine: OpenVINO with a prepared model, else TensorFlow (XLA)."""
    if not prepared_model:
        return ["--engine", "tensorflow"]
    guard = LENIENT_GUARD if precision != "float32" else ()
    return ["--engine", "openvino", "--prepared_model", prepared_model, *guard]


def run_pipeline(
    bench: Bench,
    images: imagesets.ImageSet,
    count: int,
    precision: str,
    dtype: str = "float32",
    prepared_model: str | None = None,
) -> tuple[Measured, Path]:
    engine = "openvino-" if prepared_model else ""
    name = f"pipeline-{engine}{precision}-{dtype}-{images.name}-{count}"
    manifest = bench.manifest(images, count)
    output = bench.run_dir(name)
    # A day's earlier run would be reused: every run starts from an empty output.
    shutil.rmtree(output, ignore_errors=True)
    extra = [*engine_args(prepared_model, precision), *bench.pipeline_args]
    measured = bench.measure(
        name, pipeline_command(manifest, output, bench.batch_size, precision, dtype, extra)
    )
    check_success(output, count)
    return measured, output


def model_loaded_after(measured: Measured) -> float:
    """Seconds from a pipeline run's start until its last process logged `Loaded model`."""
    stamps = LOADED_MODEL_LINE.findall(measured.log.read_text(errors="replace"))
    if not stamps:
        raise RuntimeError(f"no 'Loaded model' line in {measured.log}: pass --log_level INFO?")
    loaded = max(datetime.strptime(stamp, LOG_TIME_FORMAT).timestamp() for stamp in stamps)
    return loaded - measured.started_at


def measure_pipeline(
    bench: Bench,
    images: imagesets.ImageSet,
    counts: tuple[int, int],
    precision: str,
    prepared_model: str | None = None,
) -> Row:
    small, _ = run_pipeline(bench, images, counts[0], precision, prepared_model=prepared_model)
    large, _ = run_pipeline(bench, images, counts[1], precision, prepared_model=prepared_model)
    engine = "openvino_" if prepared_model else ""
    key = f"pipeline_{engine}{precision}_{images.name}"
    pair = bench.add_pair(
        key,
        Pair(
            counts[0], counts[1], small, large, model_loaded_after(small), model_loaded_after(large)
        ),
    )
    what = "OpenVINO" if prepared_model else "TensorFlow"
    name = f"pipeline, {what} {precision}, {images.label} (DirectRunner, manifest to Parquet)"
    return pair_row(key, name, pair)


def run_seed_way(bench: Bench, images: imagesets.ImageSet, count: int) -> Measured:
    """The article's pipeline over `count` images, from an empty output folder."""
    name = f"seed-way-{images.name}-{count}"
    output = bench.run_dir(name)
    shutil.rmtree(output, ignore_errors=True)
    measured = bench.measure(
        name, python_command("benchmarks.seed_way", str(bench.manifest(images, count)), str(output))
    )
    if measured.result["images"] != count:
        raise RuntimeError(f"{output}: {measured.result['images']} of {count} images stored")
    return measured


def measure_seed_way(bench: Bench, images: imagesets.ImageSet, counts: tuple[int, int]) -> Row:
    """The seed's way by difference of whole runs: it reports no loading time of its own."""
    small = run_seed_way(bench, images, counts[0])
    large = run_seed_way(bench, images, counts[1])
    key = f"seed_{images.name}"
    pair = bench.add_pair(key, Pair(counts[0], counts[1], small, large))
    name = f"seed's way, {images.label} (the article's Beam pipeline, batch-1 predict, .npy)"
    return pair_row(key, name, pair, bytes_per_image=large.result["bytes_per_image"])


def in_turn(bench: Bench, measurements: dict[str, Callable[[], Row]]) -> dict[str, Row]:
    """Each measurement once per repetition, in turn; a row per key of their medians."""
    measured: dict[str, list[Row]] = {key: [] for key in measurements}
    for repetition in range(bench.sizes.repeats):
        bench.repetition = repetition
        for key, measure in measurements.items():
            measured[key].append(measure())
    bench.repetition = 0
    return {key: repeated(rows) for key, rows in measured.items()}


def measure_photos_in_turn(
    bench: Bench, photos: imagesets.ImageSet, prepared: dict[str, str], skip: frozenset[str]
) -> dict[str, Row]:
    """The XLA TensorFlow call, the seed's way and the OpenVINO pipelines on 640x480, in turn."""
    sizes = bench.sizes
    measurements = {}
    if "main" not in skip:
        measurements["ceiling_float32"] = partial(measure_ceiling, bench, photos, "float32")
    if "seed" not in skip:
        measurements["seed_photos"] = partial(measure_seed_way, bench, photos, sizes.seed_images)
    for precision, model in prepared.items():
        measurements[f"pipeline_openvino_{precision}_photos"] = partial(
            measure_pipeline, bench, photos, sizes.images, precision, model
        )
    return in_turn(bench, measurements)


def measure_camera_in_turn(
    bench: Bench, camera: imagesets.ImageSet, prepared_model: str | None, skip: frozenset[str]
) -> dict[str, Row]:
    """The default pipeline (TensorFlow when OpenVINO is skipped) and the seed's way on
    4032x3024, in turn."""
    sizes = bench.sizes
    key = f"pipeline_{'openvino_' if prepared_model else ''}float32_camera"
    measurements = {
        key: partial(
            measure_pipeline, bench, camera, sizes.camera_images, "float32", prepared_model
        )
    }
    if "seed" not in skip:
        measurements["seed_camera"] = partial(
            measure_seed_way, bench, camera, sizes.seed_camera_images
        )
    return in_turn(bench, measurements)


def reuse_day(count: int) -> list[int]:
    """Indices of a day of `count` images whose first REUSED_SHARE were in the cold day (the
    first `count` images); the rest come after those."""
    shared = round(count * REUSED_SHARE)
    return [*range(shared), *range(count, 2 * count - shared)]


def earlier_days(bench: Bench, cold_output: Path, days: int) -> list[Path]:
    """`days` finished days before REUSE_DAY, each the cold day's run plus REUSE_OWN_ROWS rows
    of its own (distinct digests), under one fingerprint."""
    import pyarrow.parquet as pq

    dim = pq.read_schema(embedding_shards(cold_output)[0]).field("embedding").type.list_size
    folders = []
    for back in range(1, days + 1):
        folder = bench.out / "reuse-window" / f"{days}-days" / str(REUSE_DAY - timedelta(back))
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(cold_output, folder)
        own = folder / shard_name(EMBEDDINGS_PREFIX, 99_999, 99_999)
        rng = np.random.default_rng(back)
        write_shard(own, back * REUSE_OWN_ROWS, REUSE_OWN_ROWS, dim, rng)
        folders.append(folder)
    return folders


def run_reuse_day(
    bench: Bench,
    photos: imagesets.ImageSet,
    count: int,
    earlier: Sequence[Path],
    prepared_model: str | None,
) -> tuple[Measured, Path]:
    """A day of `count` images: cold (no `earlier` day: the first `count`), or 80% of them again
    reusing the `earlier` days' embeddings. Outputs start empty, so the day has no earlier run of
    its own. The engine is the default one with its prepared model (TensorFlow without one)."""
    kind = f"warm-{len(earlier)}d" if earlier else "cold"
    indices = reuse_day(count) if earlier else list(range(count))
    manifest = imagesets.write_manifest(
        [photos.path(index) for index in indices],
        bench.out / "manifests" / f"reuse-{kind}-{count}.txt",
    )
    output = bench.run_dir(f"reuse-{kind}-{count}")
    shutil.rmtree(output, ignore_errors=True)
    sources = ["--reuse_from", ",".join(map(str, earlier))] if earlier else []
    extra = ["--lookback_days", "0", *sources, *engine_args(prepared_model, "float32")]
    extra += bench.pipeline_args
    measured = bench.measure(
        f"reuse-{kind}-{count}",
        pipeline_command(manifest, output, bench.batch_size, "float32", "float32", extra),
    )
    marker = check_success(output, count)
    expected = round(count * REUSED_SHARE) if earlier else 0
    if marker["reused"] != expected:
        raise RuntimeError(f"{output}: {marker['reused']} reused, {expected} expected")
    return measured, output


def measure_reuse(
    bench: Bench, photos: imagesets.ImageSet, counts: tuple[int, int], prepared_model: str | None
) -> dict:
    """Cold days and days 80% embedded before, reusing a window of REUSE_WINDOW_DAYS earlier days
    or of one: in turn, each warm run right after its cold one, repeated.

    Images/s and CPU seconds per image by difference of whole runs (start-up cancels out): what
    a day costs per image once start-up is spread over a real day's images; the large pair's
    wall times too, and the peak memory of the large warm runs by window.
    """
    windows = (1, REUSE_WINDOW_DAYS)
    repetitions: dict[str, list[Row]] = {}
    walls, peaks = [], {days: [] for days in windows}
    for repetition in range(bench.sizes.repeats):
        bench.repetition = repetition
        runs = {}
        for count in counts:
            cold, cold_output = run_reuse_day(bench, photos, count, [], prepared_model)
            runs[count] = {"cold": cold}
            # The one-day window is compared with the long one on the large day only.
            for days in windows if count == counts[1] else windows[1:]:
                window = earlier_days(bench, cold_output, days)
                runs[count][days], _ = run_reuse_day(bench, photos, count, window, prepared_model)
        small, large = counts
        for kind, run in (("cold", "cold"), ("warm", REUSE_WINDOW_DAYS)):
            key = f"reuse_{kind}_photos"
            pair = bench.add_pair(key, Pair(small, large, runs[small][run], runs[large][run]))
            share = "" if kind == "cold" else f", {REUSED_SHARE:.0%} embedded before"
            name = f"reuse: a day {kind}{share}, {photos.label} (DirectRunner, whole runs)"
            if kind == "warm":
                name += f", a {REUSE_WINDOW_DAYS}-day window"
            repetitions.setdefault(key, []).append(pair_row(key, name, pair))
        walls.append(runs[large]["cold"].seconds / runs[large][REUSE_WINDOW_DAYS].seconds)
        for days in windows:
            peaks[days].append(runs[large][days].peak_rss_mb)
    bench.repetition = 0
    rows = {key: repeated(measured) for key, measured in repetitions.items()}
    return {
        "rows": rows,
        "images_per_s_ratio": ratio(
            rows["reuse_warm_photos"].images_per_s, rows["reuse_cold_photos"].images_per_s
        ),
        "cpu_ratio": ratio(
            rows["reuse_cold_photos"].cpu_s_per_image, rows["reuse_warm_photos"].cpu_s_per_image
        ),
        "wall_ratio": float(np.median(walls)),
        "images": large,
        "window_days": REUSE_WINDOW_DAYS,
        "window_rows": REUSE_WINDOW_DAYS * (counts[1] + REUSE_OWN_ROWS),
        "peak_mb_by_window": {days: max(values) for days, values in peaks.items()},
    }


def embedding_shards(output: Path) -> list[str]:
    return glob.glob(shard_glob(str(output), EMBEDDINGS_PREFIX))


def embeddings_by_uri(output: Path) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    vectors = {}
    for shard in sorted(embedding_shards(output)):
        table = pq.read_table(shard, columns=["uri", "embedding"])
        matrix = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
        vectors.update(zip(table.column("uri").to_pylist(), matrix, strict=True))
    return vectors


def bf16_agreement(fp32_output: Path, bf16_output: Path) -> dict:
    """Cosine of every image's bfloat16 embedding to its float32 one."""
    reference = embeddings_by_uri(fp32_output)
    reduced = embeddings_by_uri(bf16_output)
    uris = sorted(reference)
    if sorted(reduced) != uris:
        raise RuntimeError(f"{fp32_output} and {bf16_output} embedded different images")
    cosines = row_cosines(
        np.stack([reference[uri] for uri in uris]).astype(np.float64),
        np.stack([reduced[uri] for uri in uris]).astype(np.float64),
    )
    return {"images": len(uris), "min": float(cosines.min()), "mean": float(cosines.mean())}


def stored_bytes_per_image(output: Path) -> float:
    marker = json.loads((output / SUCCESS_MARKER).read_text())
    stored = sum(Path(path).stat().st_size for path in embedding_shards(output))
    return stored / marker["embedded"]


def column_bytes_per_image(output: Path, column: str) -> float:
    """Stored (compressed) bytes of one column of the embeddings, per embedded image."""
    import pyarrow.parquet as pq

    marker = json.loads((output / SUCCESS_MARKER).read_text())
    stored = 0
    for path in embedding_shards(output):
        metadata = pq.ParquetFile(path).metadata
        index = metadata.schema.to_arrow_schema().get_field_index(column)
        stored += sum(
            metadata.row_group(group).column(index).total_compressed_size
            for group in range(metadata.num_row_groups)
        )
    return stored / marker["embedded"]


def measure_storage(bench: Bench, photos: imagesets.ImageSet, seed_row: Row | None) -> list:
    # The large run: the sink's dictionary pages weigh less per image as a file grows.
    count = bench.sizes.images[1]
    float32_output = bench.run_dir(f"pipeline-float32-float32-{photos.name}-{count}")
    _, float16_output = run_pipeline(bench, photos, count, "float32", "float16")
    seed_bytes = seed_row.extra["bytes_per_image"] if seed_row else SEED_NPY_BYTES
    entries = [
        ("seed's way: one .npy of 7x7x2048 float32", seed_bytes),
        ("pipeline: Parquet, 2048 float32", stored_bytes_per_image(float32_output)),
        ("pipeline: Parquet, 2048 float16", stored_bytes_per_image(float16_output)),
        (
            "pipeline: of which the ~96 px JPEG thumbnail",
            column_bytes_per_image(float32_output, "thumbnail"),
        ),
    ]
    return [
        {"output": name, "bytes_per_image": value, "vs_seed": value / seed_bytes}
        for name, value in entries
    ]


def measure_daily(bench: Bench) -> list[dict]:
    entries = []
    for rows in bench.sizes.daily_rows:
        started = time.perf_counter()
        day = write_synthetic_day(bench.out / "days" / f"rows-{rows}", rows)
        bench.say(
            f"synthetic day of {rows:,} embeddings ready in {time.perf_counter() - started:.1f} s"
        )
        for step in ("validate", "reduce", "duplicates"):
            measured = bench.measure(
                f"daily-{step}-{rows}", python_command("benchmarks.daily", step, str(day))
            )
            entries.append(
                {
                    "step": step,
                    "rows": rows,
                    "seconds": measured.result["seconds"],
                    "wall_s": measured.seconds,
                    "peak_mb": measured.peak_rss_mb,
                }
            )
    return entries


def measure_dag_parse(bench: Bench) -> dict:
    """The DAG file's parse seconds beyond Airflow's imports, in a child with its own home."""
    home = bench.out / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    environment = {**bench.environment, "AIRFLOW_HOME": str(home)}
    return bench.measure("dag-parse", python_command("benchmarks.dag_parse"), environment).result


def measure_search(bench: Bench, quick: bool) -> dict:
    """Recall@10 of the day's index against exact search on a synthetic day of clustered rows."""
    rows = "50000" if quick else "1000000"
    command = python_command("benchmarks.search_recall", "--rows", rows)
    return bench.measure(f"search-recall-{rows}", command).result


# --- entry point ----------------------------------------------------------------------------


def precision_record(precisions: dict | None) -> dict | None:
    """The precision section's figures, its targets and table left to the results' own lists."""
    if precisions is None:
        return None
    return {key: value for key, value in precisions.items() if key not in ("targets", "table")}


def measure_scale(out: Path) -> dict:
    """The day's analysis at a million rows with a 30-day lookback (benchmarks/scale.py)."""
    return measure_analysis_scale(parse_scale_args(["--out", str(out)]))


def run(args: argparse.Namespace) -> dict:
    sizes = sizes_from(args)
    skip = skipped_sections(args)
    bench = Bench(
        out=args.out.resolve(),
        sizes=sizes,
        batch_size=args.batch_size,
        environment=environment_for_children(warm=not args.no_warmup),
        timeout_s=args.timeout,
        pipeline_args=tuple(shlex.split(args.pipeline_args)),
    )
    about = machine()
    started = time.perf_counter()
    sets = prepare_images(bench, skip)
    photos, camera = sets["photos"], sets.get("camera")
    if not args.no_warmup:
        warm_up(bench)
    rows = bench.rows
    # The runs each ratio compares follow one another, in turn, repeated: this machine's speed
    # drifts by about 10% from minute to minute, and a ratio of runs minutes apart carries that.
    prepared = {}
    if "openvino" not in skip:
        prepared = {p: prepare_openvino(bench, photos, p) for p in ("float32", "int8")}
    for precision, model in prepared.items():
        rows[f"ceiling_openvino_{precision}"] = measure_ceiling(bench, photos, precision, model)
    if "main" not in skip:
        rows["pipeline_float32_photos"] = measure_pipeline(bench, photos, sizes.images, "float32")
    rows.update(measure_photos_in_turn(bench, photos, prepared, skip))
    if camera is not None:
        rows.update(measure_camera_in_turn(bench, camera, prepared.get("float32"), skip))
    cosine = None
    if "bf16" not in skip:
        rows["ceiling_bfloat16"] = measure_ceiling(bench, photos, "bfloat16")
        rows["pipeline_bfloat16_photos"] = measure_pipeline(bench, photos, sizes.images, "bfloat16")
        cosine = bf16_agreement(
            bench.run_dir(f"pipeline-float32-float32-photos-{sizes.images[1]}"),
            bench.run_dir(f"pipeline-bfloat16-float32-photos-{sizes.images[1]}"),
        )
    precisions = None
    if "precision" not in skip:
        # Imported here: the section builds on this module's runs.
        from benchmarks.precision import measure_precisions

        precisions = measure_precisions(bench, photos)
    reuse = None
    if "reuse" not in skip:
        reuse = measure_reuse(bench, photos, sizes.reuse_images, prepared.get("float32"))
        rows.update(reuse.pop("rows"))
    rows = {key: rows[key] for key in TABLE_ORDER if key in rows}
    with_ratios(rows)
    storage = [] if "storage" in skip else measure_storage(bench, photos, rows.get("seed_photos"))
    daily = [] if "daily" in skip else measure_daily(bench)
    dag = None if "dag" in skip else measure_dag_parse(bench)
    search = None if "search" in skip else measure_search(bench, args.quick)
    publish = None if "publish" in skip else measure_publish(bench, sizes.publish_rows)
    scale = None if "scale" in skip else measure_scale(bench.out / "scale")
    guard = int8_guard(bench)
    checks = targets(rows, bench.pairs, cosine, daily, about["bf16_hardware"], dag, reuse, guard)
    checks += precisions["targets"] if precisions else []
    per_core = scaling(rows, about["cores"])
    about["load_average_at_end"] = [round(value, 2) for value in os.getloadavg()]
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "warm_imports": not args.no_warmup,
        "total_s": time.perf_counter() - started,
        "machine": about,
        "sizes": asdict(sizes),
        "batch_size": args.batch_size,
        "pipeline_args": args.pipeline_args,
        "rows": [asdict(row) for row in rows.values()],
        "runs": bench.runs,
        "bf16_cosine": cosine,
        "int8_guard": guard,
        "precision": precision_record(precisions),
        "reuse": reuse,
        "storage": storage,
        "daily": daily,
        "dag_parse": dag,
        "search_recall": search,
        "publish": publish,
        "scale": scale,
        "scaling": per_core,
        "targets": [target.to_dict() for target in checks],
        "tables": {
            "main": main_table(rows),
            "precision": precisions["table"] if precisions else "",
            "daily": daily_table(daily) if daily else "",
            "storage": storage_table(storage) if storage else "",
            "scaling": scaling_table(per_core) if per_core else "",
            "search": search_recall.table(search) if search else "",
            "scale": scale_table(scale) if scale else "",
            "targets": "\n".join(target.line() for target in checks),
            "publish": publish_table(publish) if publish else "",
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    text = render(results)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    name = "results-quick" if args.quick else "results"
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
