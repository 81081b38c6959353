"""Figures from measured runs: throughput by difference, ratios, targets and Markdown tables."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from beam_jobs.image_embeddings.engine.accuracy import Thresholds
from benchmarks.measure import Measured

MB_LIMIT_PIPELINE = 2048
MB_LIMIT_DAILY = 1536


def throughput(n_small: int, t_small: float, n_large: int, t_large: float) -> float:
    """Images per second between a small and a large run: fixed start-up cost cancels out.

    NaN when the large run was not slower: too few images for the noise of the machine.
    """
    if n_large <= n_small:
        raise ValueError(f"the large run ({n_large}) must hold more images than the small one")
    if t_large <= t_small:
        return math.nan
    return (n_large - n_small) / (t_large - t_small)


def cpu_per_image(n_small: int, cpu_small: float, n_large: int, cpu_large: float) -> float:
    """CPU seconds each extra image cost between a small and a large run (all cores summed).

    Less sensitive than wall time to other work on a shared machine; 1 / this is the most
    images per second one fully used core could give.
    """
    return (cpu_large - cpu_small) / (n_large - n_small)


def startup_seconds(n_small: int, t_small: float, images_per_s: float) -> float:
    """The small run's time less the time its images took at the measured throughput."""
    return t_small - n_small / images_per_s


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator; None when either is missing, NaN when either is NaN."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def is_number(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


@dataclass(frozen=True)
class Pair:
    """A small and a large run of one command.

    `loading_small_s` and `loading_large_s` are the seconds each run spent before its first image
    (imports, model load, XLA compilation), as the run itself reports them. They vary by seconds
    from run to run, so throughput is taken from the time after them.
    """

    n_small: int
    n_large: int
    small: Measured
    large: Measured
    loading_small_s: float = 0.0
    loading_large_s: float = 0.0

    @property
    def images_per_s(self) -> float:
        small = self.small.seconds - self.loading_small_s
        large = self.large.seconds - self.loading_large_s
        return throughput(self.n_small, small, self.n_large, large)

    @property
    def cpu_s_per_image(self) -> float:
        small, large = self.small.cpu_seconds, self.large.cpu_seconds
        return cpu_per_image(self.n_small, small, self.n_large, large)

    @property
    def startup_s(self) -> float:
        return startup_seconds(self.n_small, self.small.seconds, self.images_per_s)

    @property
    def peak_growth(self) -> float:
        return self.large.peak_rss_bytes / self.small.peak_rss_bytes


@dataclass
class Row:
    """One line of the main table; `key` is `ceiling_<precision>`, `pipeline_<precision>_<set>`
    (`openvino_` before the precision for the OpenVINO engine) or `seed_<set>`."""

    key: str
    name: str
    images: str
    images_per_s: float
    startup_s: float
    peak_mb: float
    peak_large_mb: float | None = None
    cpu_s_per_image: float | None = None
    vs_ceiling: float | None = None
    vs_seed: float | None = None
    extra: dict = field(default_factory=dict)
    # Images/s of each repetition, in the order the repetitions ran; ratios of two rows measured
    # in the same repetitions pair them up, so each ratio compares runs minutes apart at most.
    samples: list[float] = field(default_factory=list)
    vs_ceiling_range: tuple[float, float] | None = None
    vs_seed_range: tuple[float, float] | None = None

    @property
    def vcpu_hours_per_million(self) -> float | None:
        """What a million images cost in vCPU-hours, at this row's CPU seconds per image."""
        return self.cpu_s_per_image * 1e6 / 3600 if is_number(self.cpu_s_per_image) else None


def pair_row(key: str, name: str, pair: Pair, **extra) -> Row:
    return Row(
        key=key,
        name=name,
        images=f"{pair.n_small} → {pair.n_large}",
        images_per_s=pair.images_per_s,
        startup_s=pair.startup_s,
        peak_mb=pair.small.peak_rss_mb,
        peak_large_mb=pair.large.peak_rss_mb,
        cpu_s_per_image=pair.cpu_s_per_image,
        extra=extra,
    )


def _median(values: Sequence[float]) -> float:
    """The median of the figures that are numbers; NaN when none is."""
    numbers = [value for value in values if is_number(value)]
    return float(np.median(numbers)) if numbers else math.nan


def repeated(rows: Sequence[Row]) -> Row:
    """One row of the same measurement repeated: the median of each figure, the largest peaks,
    and every repetition's images/s as samples."""
    first = rows[0]
    medians = {
        name: _median([getattr(row, name) for row in rows])
        for name in ("images_per_s", "startup_s", "cpu_s_per_image")
        if all(getattr(row, name) is not None for row in rows)
    }
    peaks = [row.peak_large_mb for row in rows if row.peak_large_mb is not None]
    return replace(
        first,
        **medians,
        peak_mb=max(row.peak_mb for row in rows),
        peak_large_mb=max(peaks) if peaks else None,
        samples=[row.images_per_s for row in rows],
    )


def paired_ratio(
    row: Row, reference: Row | None
) -> tuple[float | None, tuple[float, float] | None]:
    """row / reference: the median of the ratios of runs of one repetition, and their range,
    when both were repeated together; else the ratio of their figures."""
    if reference is None:
        return None, None
    if len(row.samples) > 1 and len(row.samples) == len(reference.samples):
        pairs = zip(row.samples, reference.samples, strict=True)
        ratios = [value for value in (ratio(*pair) for pair in pairs) if is_number(value)]
        if ratios:
            return float(np.median(ratios)), (min(ratios), max(ratios))
    return ratio(row.images_per_s, reference.images_per_s), None


def with_ratios(rows: dict[str, Row]) -> None:
    """Fill in each row's ratio to the ceiling of its precision and to the seed's way on its set.

    The seed's way runs at float32, so its ratio is to the float32 ceiling.
    """
    for row in rows.values():
        kind, *rest = row.key.split("_")
        # OpenVINO rows (`<kind>_openvino_<precision>[_<set>]`) compare with TensorFlow's
        # float32 call: the engine they replace.
        openvino = rest[:1] == ["openvino"]
        rest = rest[1:] if openvino else rest
        precision = rest[0] if kind in ("ceiling", "pipeline") and not openvino else "float32"
        row.vs_ceiling, row.vs_ceiling_range = paired_ratio(row, rows.get(f"ceiling_{precision}"))
        if kind == "pipeline":
            row.vs_seed, row.vs_seed_range = paired_ratio(row, rows.get(f"seed_{rest[1]}"))


@dataclass(frozen=True)
class Target:
    """One figure against its limit: `value >= limit` (at_least) or `value <= limit`."""

    name: str
    value: float | None
    limit: float
    at_least: bool
    unit: str = ""
    note: str = ""
    digits: str = ".3g"

    @property
    def status(self) -> str:
        if not is_number(self.value):
            return "n/a"
        met = self.value >= self.limit if self.at_least else self.value <= self.limit
        return "PASS" if met else "FAIL"

    def line(self) -> str:
        shown = f"{self.value:{self.digits}}{self.unit}" if is_number(self.value) else "-"
        sign = ">=" if self.at_least else "<="
        note = f"  ({self.note})" if self.note else ""
        return f"{self.status:4}  {self.name}: {shown} {sign} {self.limit:g}{self.unit}{note}"

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "value": self.value if is_number(self.value) else None,
            "limit": self.limit,
            "at_least": self.at_least,
            "unit": self.unit,
            "status": self.status,
            "note": self.note,
        }


def _value(row: Row | None, attribute: str) -> float | None:
    return getattr(row, attribute) if row is not None else None


def _growth(pairs: dict[str, list[Pair]], key: str) -> tuple[float | None, str]:
    """The largest peak-memory growth from a small to a large run of `key`, over repetitions."""
    runs = pairs.get(key)
    if not runs:
        return None, ""
    growth = max(pair.peak_growth for pair in runs)
    return growth, f"{runs[0].n_large / runs[0].n_small:g}x the images"


def _daily_ratio(daily: list[dict], step: str) -> tuple[float | None, str]:
    runs = [entry for entry in daily if entry["step"] == step]
    if len(runs) != 2:
        return None, ""
    return runs[1]["seconds"] / runs[0]["seconds"], f"{runs[1]['rows']:,} / {runs[0]['rows']:,}"


def _spread(value_range: tuple[float, float] | None) -> str:
    return f"{value_range[0]:.2f}-{value_range[1]:.2f} over repetitions" if value_range else ""


def _ratio_target(name: str, row: Row | None, against: str, limit: float) -> Target:
    """`row`'s ratio to the ceiling (`against` "ceiling") or the seed's way, with its spread."""
    value = getattr(row, f"vs_{against}") if row else None
    spread = getattr(row, f"vs_{against}_range") if row else None
    return Target(name, value, limit, True, note=_spread(spread), digits=".2f")


def _guard_targets(guard: dict | None) -> list[Target]:
    """int8 against float32 as the int8 preparation measured it on held-out images, against the
    guard's default thresholds."""
    figures = (guard or {}).get("figures", {})
    note = guard.get("note", "") if guard else ""
    least = Thresholds()
    return [
        Target(f"int8 / float32: {label}", figures.get(key), limit, True, note=note, digits=".4f")
        for label, key, limit in (
            ("centred cosine, mean", "centred_cosine_mean", least.min_centred_cosine_mean),
            ("centred cosine, lowest", "centred_cosine_min", least.min_centred_cosine),
            ("top-5 neighbour overlap", "top5_overlap", least.min_top5_overlap),
        )
    ]


def targets(
    rows: dict[str, Row],
    pairs: dict[str, list[Pair]],
    cosine: dict | None,
    daily: list[dict],
    bf16_hardware: bool = True,
    dag_parse: dict | None = None,
    reuse: dict | None = None,
    guard: dict | None = None,
) -> list[Target]:
    """Every target, PASS, FAIL or n/a (not measured, or too noisy to tell): the engine issue's
    (the default pipeline is OpenVINO float32), the DAG file's parse time beyond Airflow's
    imports (DAG files import fast), then how much faster a day runs when most of its images
    were embedded before."""
    default_photos = rows.get("pipeline_openvino_float32_photos")
    default_camera = rows.get("pipeline_openvino_float32_camera")
    int8_photos = rows.get("pipeline_openvino_int8_photos")
    pipeline_runs = [
        run
        for key, repetitions in pairs.items()
        if key.startswith("pipeline_")
        for pair in repetitions
        for run in (pair.small, pair.large)
    ]
    startups = [
        row.startup_s
        for key, row in rows.items()
        if key.startswith("pipeline_openvino_") and is_number(row.startup_s)
    ]
    bf16 = ratio(
        _value(rows.get("pipeline_bfloat16_photos"), "images_per_s"),
        _value(rows.get("pipeline_float32_photos"), "images_per_s"),
    )
    photos_growth, photos_note = _growth(pairs, "pipeline_openvino_float32_photos")
    camera_growth, camera_note = _growth(pairs, "pipeline_openvino_float32_camera")
    validate_ratio, validate_note = _daily_ratio(daily, "validate")
    reduce_ratio, reduce_note = _daily_ratio(daily, "reduce")
    return [
        _ratio_target(
            "default pipeline / XLA TensorFlow call, 640x480", default_photos, "ceiling", 1.4
        ),
        _ratio_target("default pipeline / seed's way, 640x480", default_photos, "seed", 3),
        _ratio_target("default pipeline / seed's way, 4032x3024", default_camera, "seed", 4),
        _ratio_target("int8 pipeline / XLA TensorFlow call, 640x480", int8_photos, "ceiling", 2.2),
        _ratio_target("int8 pipeline / seed's way, 640x480", int8_photos, "seed", 5.5),
        *_guard_targets(guard),
        _ratio_target(
            "TensorFlow pipeline / XLA TensorFlow call, 640x480",
            rows.get("pipeline_float32_photos"),
            "ceiling",
            0.85,
        ),
        Target(
            "pipeline peak memory, any run",
            max((run.peak_rss_mb for run in pipeline_runs), default=None),
            MB_LIMIT_PIPELINE,
            False,
            " MB",
            digits=",.0f",
        ),
        Target("pipeline peak memory growth, 640x480", photos_growth, 1.10, False, "", photos_note),
        Target(
            "pipeline peak memory growth, 4032x3024", camera_growth, 1.10, False, "", camera_note
        ),
        Target(
            "pipeline start-up with a prepared model, slowest",
            max(startups, default=None),
            10,
            False,
            " s",
            digits=".1f",
        ),
        Target(
            "bf16 / fp32 pipeline throughput, 640x480",
            bf16,
            1.3,
            True,
            note=""
            if bf16_hardware
            else "this CPU has no AVX512_BF16 or AMX: bfloat16 is emulated",
        ),
        Target(
            "lowest cosine of a bf16 embedding to its fp32 one",
            cosine["min"] if cosine else None,
            0.99,
            True,
            note=f"{cosine['images']} images" if cosine else "",
            digits=".4f",
        ),
        Target(
            "validation, reduction and duplicate search peak memory",
            max((entry["peak_mb"] for entry in daily), default=None),
            MB_LIMIT_DAILY,
            False,
            " MB",
            digits=",.0f",
        ),
        Target("validation time ratio", validate_ratio, 2.3, False, "", validate_note),
        Target("reduction time ratio", reduce_ratio, 2.3, False, "", reduce_note),
        Target(
            "DAG file parse, beyond Airflow's imports",
            dag_parse["seconds"] if dag_parse else None,
            1,
            False,
            " s",
            _heavy_note(dag_parse),
            digits=".2f",
        ),
        # Images/s by difference of a small and a large day: start-up, the same for both kinds
        # of day, is reported on its own in the table.
        Target(
            "reuse: cold day / 80%-embedded day, CPU s per image, 30-day window",
            reuse["cpu_ratio"] if reuse else None,
            3,
            True,
            note=f"images/s: {reuse['images_per_s_ratio']:.2f}x; whole runs of "
            f"{reuse['images']} images, start-up included: {reuse['wall_ratio']:.2f}x"
            if reuse
            else "",
            digits=".2f",
        ),
        Target(
            "reuse: peak memory, 30-day window / 1-day window",
            window_growth(reuse),
            1.1,
            False,
            note="MB by window days: {}; {} earlier rows in the window".format(
                reuse["peak_mb_by_window"], reuse["window_rows"]
            )
            if reuse
            else "",
            digits=".2f",
        ),
    ]


def window_growth(reuse: dict | None) -> float | None:
    """The reuse day's peak memory with its longest window over that with one day."""
    if not reuse:
        return None
    peaks = reuse["peak_mb_by_window"]
    return peaks[max(peaks)] / peaks[min(peaks)]


def _heavy_note(dag_parse: dict | None) -> str:
    if not dag_parse:
        return ""
    heavy = dag_parse["heavy_modules"]
    return f"imports {', '.join(heavy)}" if heavy else "imports no TensorFlow, Beam or pyarrow"


def scaling(rows: dict[str, Row], cores: int) -> list[dict]:
    """Pipeline images per second per core, as measured and if every core were kept busy, and
    the core-hours a million images take at each."""
    entries = []
    for key, row in rows.items():
        if key.startswith("pipeline_") and is_number(row.images_per_s):
            per_core = row.images_per_s / cores
            busy = 1 / row.cpu_s_per_image if row.cpu_s_per_image else None
            entries.append(
                {
                    "run": row.name.split(" (")[0],
                    "images_per_s_per_core": per_core,
                    "core_hours_per_million": 1e6 / per_core / 3600,
                    "busy_images_per_s_per_core": busy,
                    "busy_core_hours_per_million": 1e6 / busy / 3600 if busy else None,
                }
            )
    return entries


# --- Markdown -------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    return f"{value:,.{digits}f}" if is_number(value) else ""


def fmt_pair(first: float | None, second: float | None, digits: int = 0) -> str:
    """`a → b`, or just `a` when there is no second figure."""
    if second is None:
        return fmt(first, digits)
    return f"{fmt(first, digits)} → {fmt(second, digits)}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> str:
    """A Markdown table; `align` has one letter per column, `l` or `r`."""
    rule = ["---" if side == "l" else "---:" for side in align]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in (header, rule, *rows))


def fmt_ratio(value: float | None, value_range: tuple[float, float] | None, digits: int) -> str:
    """A ratio, with its range over repetitions when it was repeated."""
    if value_range is None:
        return fmt(value, digits)
    return f"{fmt(value, digits)} ({fmt(value_range[0], digits)}-{fmt(value_range[1], digits)})"


def main_table(rows: dict[str, Row]) -> str:
    header = ["run", "images", "images/s", "/ XLA TF call", "/ seed's way", "start-up s"]
    header += ["peak MB (small → large)", "CPU s / image", "vCPU-h / million images"]
    lines = [
        [
            row.name,
            row.images,
            fmt(row.images_per_s),
            fmt_ratio(row.vs_ceiling, row.vs_ceiling_range, 2),
            fmt_ratio(row.vs_seed, row.vs_seed_range, 1),
            fmt(row.startup_s),
            fmt_pair(row.peak_mb, row.peak_large_mb),
            fmt(row.cpu_s_per_image, 3),
            fmt(row.vcpu_hours_per_million, 0),
        ]
        for row in rows.values()
    ]
    return markdown_table(header, lines, "lrrrrrrrr")


def scaling_table(entries: list[dict]) -> str:
    lines = [
        [
            entry["run"],
            fmt(entry["images_per_s_per_core"], 2),
            fmt(entry["core_hours_per_million"], 0),
            fmt(entry["busy_images_per_s_per_core"], 2),
            fmt(entry["busy_core_hours_per_million"], 0),
        ]
        for entry in entries
    ]
    header = ["per core (vCPU)", "images/s", "core-hours per million"]
    header += ["images/s, cores kept busy", "core-hours per million, busy"]
    return markdown_table(header, lines, "lrrrr")


def storage_table(storage: list[dict]) -> str:
    lines = [
        [entry["output"], f"{entry['bytes_per_image']:,.0f}", f"{entry['vs_seed']:.3f}"]
        for entry in storage
    ]
    return markdown_table(["stored per image", "bytes", "/ seed's .npy"], lines, "lrr")


def daily_table(daily: list[dict]) -> str:
    lines = [
        [
            entry["step"],
            f"{entry['rows']:,}",
            fmt(entry["seconds"]),
            fmt(entry["wall_s"]),
            fmt(entry["peak_mb"], 0),
        ]
        for entry in daily
    ]
    header = ["daily step (2048-d embeddings)", "rows", "seconds", "process s", "peak MB"]
    return markdown_table(header, lines, "lrrrr")


def render(results: dict) -> str:
    """The whole report: machine line, tables, targets."""
    about = results["machine"]
    heading = (
        f"{about['cpu']}, {' '.join(about['isa'])}, {about['cores']} cores, "
        f"{about['memory_gb']} GB; load average "
        f"{about['load_average_at_start'][0]} at start, {about['load_average_at_end'][0]} at "
        f"end; {results['total_s'] / 60:.1f} min"
    )
    if results["pipeline_args"]:
        heading += f"; pipeline runs with {results['pipeline_args']}"
    if results["quick"]:
        heading += " (--quick: too few images for meaningful figures)"
    tables = results["tables"]
    parts = [heading, tables["main"], tables.get("precision", ""), tables["scaling"]]
    parts += [tables["storage"], tables["daily"], tables.get("search", "")]
    parts.append(tables.get("publish", ""))
    parts.append(tables.get("scale", ""))
    parts += ["Targets:", tables["targets"]]
    return "\n\n".join(part for part in parts if part) + "\n"
