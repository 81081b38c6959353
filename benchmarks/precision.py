"""`make bench --only precision`: the CPU's instruction sets and, per precision it runs natively,
the OpenVINO call and the pipeline's speed, CPU seconds per image and agreement with float32.

The precisions run in turn, repeated; each one's small and large sets are sized from a short
timing probe, so that the large run outlasts the small one by at least MIN_DIFFERENCE_S however
fast the CPU is.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np

from beam_jobs.image_embeddings.engine.accuracy import Thresholds, accuracy_figures
from beam_jobs.image_embeddings.engine.openvino import cpu_capabilities
from benchmarks import imagesets
from benchmarks.measure import python_command
from benchmarks.report import (
    Row,
    Target,
    fmt,
    fmt_ratio,
    markdown_table,
    paired_ratio,
    ratio,
)
from benchmarks.run import (
    Bench,
    embeddings_by_uri,
    in_turn,
    measure_ceiling,
    measure_pipeline,
    prepare_openvino,
)

# /proc/cpuinfo flags that decide what runs natively: VNNI and AMX-INT8 speed int8 up,
# AVX512_BF16 and AMX-BF16 make bfloat16 native.
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
# OpenVINO's OPTIMIZATION_CAPABILITIES entry each precision needs to run natively on the CPU.
CAPABILITY = {"float32": "FP32", "int8": "INT8", "bfloat16": "BF16"}
MIN_DIFFERENCE_S = 10.0
# The pipeline runs no faster than the model call it is sized by; the margin covers a probe
# taken in a quiet moment of a noisy machine.
MARGIN = 1.5
PROBE_BATCHES = 3
SMALL_BATCHES = 2
# Targets where the instructions exist: speed over the default (OpenVINO float32) pipeline.
SPEEDUP_TARGETS = {"int8": 3.0, "bfloat16": 1.5}
BF16_MIN_CENTRED_COSINE = 0.999


def cpu_flags(cpuinfo: str) -> list[str]:
    """The flags of CPU_FLAGS that the first processor of /proc/cpuinfo text lists."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            present = set(line.partition(":")[2].split())
            return [flag for flag in CPU_FLAGS if flag in present]
    return []


def instruction_sets() -> dict:
    """What the CPU offers, as OpenVINO and the kernel see it."""
    cpuinfo = Path("/proc/cpuinfo")
    return {
        "openvino": cpu_capabilities(),
        "cpu_flags": cpu_flags(cpuinfo.read_text() if cpuinfo.exists() else ""),
    }


def native_precisions(capabilities: list[str]) -> tuple[list[str], dict[str, str]]:
    """(the precisions this CPU runs natively, {precision: why skipped} for the others)."""
    runs = [name for name, needs in CAPABILITY.items() if needs in capabilities]
    skipped = {
        name: f"OpenVINO reports no {needs} on this CPU"
        for name, needs in CAPABILITY.items()
        if needs not in capabilities
    }
    return runs, skipped


def set_sizes(images_per_s: float, batch_size: int) -> tuple[int, int]:
    """(small, large) image counts whose difference takes MIN_DIFFERENCE_S at `images_per_s`
    (with MARGIN), in whole batches."""
    small = SMALL_BATCHES * batch_size
    batches = math.ceil(MIN_DIFFERENCE_S * MARGIN * images_per_s / batch_size)
    return small, small + max(1, batches) * batch_size


def probe(bench: Bench, photos: imagesets.ImageSet, precision: str, model: str) -> float:
    """Images per second of a few calls of the prepared model: what the sets are sized by."""
    manifest = bench.manifest(photos, bench.batch_size)
    measured = bench.measure(
        f"probe-openvino-{precision}",
        python_command(
            "benchmarks.ceiling",
            f"--manifest={manifest}",
            "--engine=openvino",
            f"--prepared_model={model}",
            f"--precision={precision}",
            f"--batch_size={bench.batch_size}",
            f"--batches={PROBE_BATCHES}",
        ),
    )
    return measured.result["images_per_s"]


def large_output(bench: Bench, precision: str, count: int) -> Path:
    """The folder `run.run_pipeline` wrote the last large run of `precision` to."""
    return bench.run_dir(f"pipeline-openvino-{precision}-float32-photos-{count}")


def agreement(reference: Path, candidate: Path) -> dict:
    """The accuracy guard's figures for the images both runs embedded."""
    first, second = embeddings_by_uri(reference), embeddings_by_uri(candidate)
    uris = sorted(set(first) & set(second))
    return accuracy_figures(
        np.stack([first[uri] for uri in uris]), np.stack([second[uri] for uri in uris])
    )


def speedup_targets(rows: dict[str, Row], figures: dict[str, dict]) -> list[Target]:
    """int8 and bfloat16 against the default float32 pipeline, where they ran."""
    default = rows.get("pipeline_float32")
    least = Thresholds()
    checks = []
    for precision, limit in SPEEDUP_TARGETS.items():
        row = rows.get(f"pipeline_{precision}")
        if row is None:
            continue
        value, spread = paired_ratio(row, default)
        note = f"{spread[0]:.2f}-{spread[1]:.2f} over repetitions" if spread else ""
        name = f"{precision} pipeline / float32 pipeline (OpenVINO, 640x480)"
        checks.append(Target(name, value, limit, True, note=note, digits=".2f"))
    if "bfloat16" in figures:
        value = figures["bfloat16"]["centred_cosine_mean"]
        checks.append(
            Target("bfloat16 / float32: centred cosine, mean", value, BF16_MIN_CENTRED_COSINE, True)
        )
    if "int8" in figures:
        for label, key, limit in (
            ("centred cosine, mean", "centred_cosine_mean", least.min_centred_cosine_mean),
            ("centred cosine, lowest", "centred_cosine_min", least.min_centred_cosine),
            ("top-5 neighbour overlap", "top5_overlap", least.min_top5_overlap),
        ):
            value = figures["int8"][key]
            checks.append(Target(f"int8 / float32 pipeline: {label}", value, limit, True))
    return checks


def precision_table(rows: dict[str, Row], figures: dict[str, dict]) -> str:
    header = ["precision", "run", "images", "images/s", "/ float32", "CPU s / image"]
    header += ["float32 CPU s / its", "centred cosine mean / min", "top-5 overlap"]
    lines = []
    for key, row in rows.items():
        kind, precision = key.split("_")
        reference = rows.get(f"{kind}_float32")
        speedup, spread = paired_ratio(row, reference)
        agree = figures.get(precision) if kind == "pipeline" else None
        lines.append(
            [
                precision,
                "OpenVINO call" if kind == "ceiling" else "pipeline, 640x480",
                row.images,
                fmt(row.images_per_s),
                fmt_ratio(speedup, spread, 2),
                fmt(row.cpu_s_per_image, 4),
                fmt(ratio(reference and reference.cpu_s_per_image, row.cpu_s_per_image), 2),
                f"{agree['centred_cosine_mean']:.5f} / {agree['centred_cosine_min']:.5f}"
                if agree
                else "",
                f"{agree['top5_overlap']:.3f}" if agree else "",
            ]
        )
    return markdown_table(header, lines, "llrrrrrrr")


def measure_precisions(bench: Bench, photos: imagesets.ImageSet) -> dict:
    """The precision section: instruction sets, per native precision the OpenVINO call and the
    pipeline in turn and repeated, their agreement with float32, the targets, one table."""
    isa = instruction_sets()
    precisions, skipped = native_precisions(isa["openvino"])
    for precision, reason in skipped.items():
        bench.say(f"precision {precision} skipped: {reason}")
    imagesets.ensure_images(photos, bench.sizes.calibration_images)
    models = {precision: prepare_openvino(bench, photos, precision) for precision in precisions}
    sizes = {
        precision: set_sizes(probe(bench, photos, precision, model), bench.batch_size)
        for precision, model in models.items()
    }
    imagesets.ensure_images(photos, max(large for _, large in sizes.values()))
    measurements = {}
    for precision, model in models.items():
        measurements[f"ceiling_{precision}"] = partial(
            measure_ceiling, bench, photos, precision, model
        )
        measurements[f"pipeline_{precision}"] = partial(
            measure_pipeline, bench, photos, sizes[precision], precision, model
        )
    rows = in_turn(bench, measurements)
    figures = {
        precision: agreement(
            large_output(bench, "float32", sizes["float32"][1]),
            large_output(bench, precision, sizes[precision][1]),
        )
        for precision in precisions
        if precision != "float32"
    }
    differences = {
        precision: [
            pair.large.seconds - pair.small.seconds
            for pair in bench.pairs[f"pipeline_openvino_{precision}_photos"]
        ]
        for precision in precisions
    }
    checks = speedup_targets(rows, figures)
    return {
        "instruction_sets": isa,
        "skipped": skipped,
        "sizes": sizes,
        "large_minus_small_s": differences,
        "rows": {key: vars(row) for key, row in rows.items()},
        "agreement": figures,
        "targets": checks,
        "table": precision_table(rows, figures),
    }
