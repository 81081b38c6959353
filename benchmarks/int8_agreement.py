"""int8 against float32 over many varied images, per quantization setting: centred cosine
mean, lowest and percentiles, top-5 overlap, and the worst images by kind.

Uses the engine's own conversion, quantization and embedding; the settings differ only in what
`prepare.quantize` is given. Accuracy does not depend on machine load, so any machine will do.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from beam_jobs.image_embeddings.engine.accuracy import (
    Thresholds,
    accuracy_figures,
    centred_cosines,
)
from beam_jobs.image_embeddings.engine.models import resolve_model
from benchmarks import varied_images
from benchmarks.report import markdown_table

MODEL = "resnet50"
WEIGHTS = "random"  # the same arithmetic as ImageNet's; nothing to download
EVALUATION_SEED = 0
CALIBRATION_SEED = 1_000_000  # calibration images never among the evaluated ones
PERCENTILES = (0.1, 1, 5, 50)
WORST = 8
# Each setting: its calibration images ("photos": the precision bench's kind alone; "varied":
# the evaluation's mix of kinds), how many, the activation range estimator (NNCF's
# RangeEstimatorParametersSet: MEAN_MINMAX is NNCF's default, MINMAX the engine's since
# 2026-12-04) and what else `nncf.quantize` gets.
PHOTOS_64 = {"calibration": "photos", "images": 64, "activations": "MEAN_MINMAX"}
SETTINGS: dict[str, dict[str, Any]] = {
    "default": PHOTOS_64,
    "300-photos": PHOTOS_64 | {"images": 300},
    "mixed": PHOTOS_64 | {"preset": "mixed"},
    "bias-correction": PHOTOS_64 | {"fast_bias_correction": False},
    "float-first-conv": PHOTOS_64 | {"ignore": "first"},
    "float-last-block": PHOTOS_64 | {"ignore": "last"},
    "float-both-ends": PHOTOS_64 | {"ignore": "both"},
    "64-varied": PHOTOS_64 | {"calibration": "varied"},
    "300-varied": PHOTOS_64 | {"calibration": "varied", "images": 300},
    "no-overflow-fix": PHOTOS_64 | {"overflow_fix": "disable"},
    "minmax": PHOTOS_64 | {"activations": "MINMAX"},
    "minmax-300-varied": PHOTOS_64
    | {"calibration": "varied", "images": 300, "activations": "MINMAX"},
}
LAST_BLOCK_CONVOLUTIONS = 3  # ResNet50's conv5_block3: 1x1, 3x3, 1x1


def scaled_mix(count: int) -> dict[str, int]:
    """The evaluation's mix of kinds scaled to about `count` images, every kind at least once."""
    total = sum(varied_images.MIX.values())
    return {kind: max(1, round(n * count / total)) for kind, n in varied_images.MIX.items()}


def calibration_names(setting: dict[str, Any]) -> list[str]:
    if setting["calibration"] == "photos":
        mix = {"photo": setting["images"]}
    else:
        mix = scaled_mix(setting["images"])
    return varied_images.names(mix, CALIBRATION_SEED)


def cached_pixels(out: Path, names: list[str], size: tuple[int, int]) -> np.ndarray:
    """The images' model inputs, kept under `out` by a digest of their names."""
    key = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
    path = out / f"pixels-{key}.npy"
    if not path.exists():
        np.save(path, varied_images.load(names, size))
    return np.load(path, allow_pickle=False)


def float32_model(out: Path) -> Any:
    """The engine's float32 OpenVINO model of MODEL with WEIGHTS, converted once and kept."""
    import openvino as ov

    from beam_jobs.image_embeddings.engine.openvino import convert

    path = out / f"{MODEL}-{WEIGHTS}-float32.xml"
    if not path.exists():
        ov.save_model(convert(resolve_model(MODEL), WEIGHTS), path, compress_to_fp16=False)
    return ov.Core().read_model(path)


def float32_embeddings(out: Path, model: Any, evaluation: np.ndarray) -> np.ndarray:
    """The float32 model's embeddings of the evaluation images, computed once and kept."""
    from beam_jobs.image_embeddings.engine.prepare import embed_all

    key = hashlib.sha256(evaluation.tobytes()).hexdigest()[:16]
    path = out / f"float32-{MODEL}-{WEIGHTS}-{key}.npy"
    if not path.exists():
        np.save(path, embed_all(model, evaluation))
    return np.load(path, allow_pickle=False)


def convolutions(model: Any) -> list[str]:
    return [
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() == "Convolution"
    ]


def nncf_arguments(setting: dict[str, Any], model: Any) -> dict[str, Any]:
    """What `prepare.quantize` passes on to `nncf.quantize` for this setting."""
    import nncf

    arguments: dict[str, Any] = {}
    if "preset" in setting:
        arguments["preset"] = nncf.QuantizationPreset(setting["preset"])
    if "fast_bias_correction" in setting:
        arguments["fast_bias_correction"] = setting["fast_bias_correction"]
    ranges = nncf.quantization.range_estimator.RangeEstimatorParametersSet
    advanced = {"activations_range_estimator_params": getattr(ranges, setting["activations"])}
    if "overflow_fix" in setting:
        advanced["overflow_fix"] = nncf.OverflowFix(setting["overflow_fix"])
    arguments["advanced_parameters"] = nncf.AdvancedQuantizationParameters(**advanced)
    if "ignore" in setting:
        convs = convolutions(model)
        kept = {
            "first": convs[:1],
            "last": convs[-LAST_BLOCK_CONVOLUTIONS:],
            "both": convs[:1] + convs[-LAST_BLOCK_CONVOLUTIONS:],
        }[setting["ignore"]]
        arguments["ignored_scope"] = nncf.IgnoredScope(names=kept)
    return arguments


def tail(names: Sequence[str], reference: np.ndarray, candidate: np.ndarray) -> dict[str, Any]:
    """Percentiles of the centred cosines, images under the guard's minimum, the worst images
    with the size of their centred reference embedding (relative to the median)."""
    cosines = centred_cosines(reference.astype(np.float64), candidate.astype(np.float64))
    centred = np.linalg.norm(reference - reference.mean(axis=0), axis=1)
    relative = centred / np.median(centred)
    order = np.argsort(cosines)
    least = Thresholds().min_centred_cosine
    kinds = sorted({name.rpartition("-")[0] for name in names})
    by_kind = {
        kind: round(
            float(min(c for n, c in zip(names, cosines, strict=True) if n.startswith(kind + "-"))),
            4,
        )
        for kind in kinds
    }
    return {
        "percentiles": {str(p): round(float(np.percentile(cosines, p)), 5) for p in PERCENTILES},
        "under_min": int((cosines < least).sum()),
        "lowest_by_kind": by_kind,
        "worst": [
            {
                "image": names[i],
                "cosine": round(float(cosines[i]), 4),
                "centred_norm": round(float(relative[i]), 3),
            }
            for i in order[:WORST]
        ],
        "norm_correlation": round(float(np.corrcoef(cosines, relative)[0, 1]), 3),
    }


def keep(out: Path, name: str, model: Any, precision: str) -> str:
    """`model` as a model cache entry under `out` named by the setting, for timing it."""
    import tempfile

    import openvino as ov

    from beam_jobs.image_embeddings.engine.fingerprint import fingerprint
    from beam_jobs.image_embeddings.engine.model_cache import entry_uri, write_entry

    parts = {"model": MODEL, "weights": WEIGHTS, "precision": precision, "setting": name}
    entry = entry_uri(str(out / "model_cache"), name)
    with tempfile.TemporaryDirectory(prefix="agreement-") as directory:
        ov.save_model(model, f"{directory}/model.xml", compress_to_fp16=False)
        write_entry(
            entry, directory, {"fingerprint": fingerprint(parts), "fingerprint_parts": parts}
        )
    return entry


def measure(
    setting_name: str,
    model: Any,
    evaluation: np.ndarray,
    names: list[str],
    reference: np.ndarray,
    out: Path,
) -> dict[str, Any]:
    from beam_jobs.image_embeddings.engine.prepare import embed_all, quantize

    setting = SETTINGS[setting_name]
    calibration = cached_pixels(out, calibration_names(setting), resolve_model(MODEL).input_size)
    started = time.monotonic()
    quantized = quantize(model, calibration, **nncf_arguments(setting, model))
    quantize_s = time.monotonic() - started
    candidate = embed_all(quantized, evaluation, "int8")
    keep(out, setting_name, quantized, "int8")
    return {
        "setting": setting_name,
        **setting,
        "quantize_s": round(quantize_s, 1),
        **accuracy_figures(reference, candidate),
        **tail(names, reference, candidate),
    }


def table(results: list[dict[str, Any]]) -> str:
    header = [
        "setting",
        "calibration",
        "quantize s",
        "mean",
        "lowest",
        "0.1%",
        "1%",
        "top-5",
        "under 0.97",
        "worst images",
    ]
    rows = [
        [
            r["setting"],
            f"{r['images']} {r['calibration']}",
            f"{r['quantize_s']:.0f}",
            f"{r['centred_cosine_mean']:.4f}",
            f"{r['centred_cosine_min']:.4f}",
            f"{r['percentiles']['0.1']:.4f}",
            f"{r['percentiles']['1']:.4f}",
            f"{r['top5_overlap']:.3f}",
            str(r["under_min"]),
            ", ".join(f"{w['image']} {w['cosine']:.3f}" for w in r["worst"][:3]),
        ]
        for r in results
    ]
    return markdown_table(header, rows, "llrrrrrrrl")


def speed(out: Path, settings: list[str], repeats: int) -> str:
    """The OpenVINO call of float32 and of each kept int8 setting, in turn, `repeats` times,
    with the bench's own machinery; a table of images/s and CPU s per image against float32."""
    from benchmarks import imagesets
    from benchmarks.run import (
        QUICK,
        Bench,
        Sizes,
        environment_for_children,
        in_turn,
        measure_ceiling,
    )

    sizes = Sizes(repeats=repeats, images=(QUICK.images[0], 32))
    bench = Bench(out / "speed", sizes, 32, environment_for_children(warm=True), 900.0)
    photos = imagesets.image_set(out, "photos", varied_images.PHOTO_SIZE)
    imagesets.ensure_images(photos, 32)
    models = {"float32": keep(out, "float32", float32_model(out), "float32")}
    models |= {name: str(out / "model_cache" / name) for name in settings}
    rows = in_turn(
        bench,
        {
            name: partial(
                measure_ceiling, bench, photos, "float32" if name == "float32" else "int8", model
            )
            for name, model in models.items()
        },
    )
    reference = rows["float32"]
    lines = [
        [
            name,
            f"{row.images_per_s:.1f}",
            f"{row.images_per_s / reference.images_per_s:.2f}",
            ", ".join(
                f"{sample / ref:.2f}"
                for sample, ref in zip(row.samples, reference.samples, strict=True)
            ),
            f"{row.cpu_s_per_image:.4f}",
            f"{reference.cpu_s_per_image / row.cpu_s_per_image:.2f}",
        ]
        for name, row in rows.items()
    ]
    header = ["model", "images/s", "/ float32", "per repetition", "CPU s / image", "CPU / float32"]
    return markdown_table(header, lines, "lrrrrr")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.int8_agreement",
        description="int8 against float32 (OpenVINO, NNCF) over many varied images, one row per "
        "quantization setting; results also in OUT/results.json.",
    )
    parser.add_argument(
        "--settings",
        default=",".join(SETTINGS),
        help=f"comma-separated settings to measure, of {', '.join(SETTINGS)} (default: all)",
    )
    parser.add_argument(
        "--images",
        type=int,
        default=sum(varied_images.MIX.values()),
        help="about how many varied images to evaluate on (default: %(default)s)",
    )
    parser.add_argument(
        "--speed",
        action="store_true",
        help="instead: time the OpenVINO call of float32 and of the settings already measured "
        "(kept under OUT/model_cache), in turn, --repeats times",
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="--speed: repetitions (default: %(default)s)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("benchmarks/out/agreement"),
        help="where inputs are cached and results written (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    unknown = set(args.settings.split(",")) - set(SETTINGS)
    if unknown:
        parser.error(
            f"unknown settings {', '.join(sorted(unknown))}: choose from {', '.join(SETTINGS)}"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.speed:
        print(speed(args.out, args.settings.split(","), args.repeats))
        return 0
    names = varied_images.names(scaled_mix(args.images), EVALUATION_SEED)
    evaluation = cached_pixels(args.out, names, resolve_model(MODEL).input_size)
    model = float32_model(args.out)
    reference = float32_embeddings(args.out, model, evaluation)
    results = []
    for setting in args.settings.split(","):
        results.append(measure(setting, model, evaluation, names, reference, args.out))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    (args.out / "results.json").write_text(
        json.dumps({"images": len(names), "results": results}, indent=2)
    )
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
