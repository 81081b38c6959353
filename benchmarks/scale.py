"""The day's analysis at scale: a synthetic day D of clustered rows, with planted exact and near
copies of itself and of each of `--days` earlier days, analysed by the analysis job (PCA and
projection, neighbours index, duplicates within D and across the lookback, drift, the report) on
the DirectRunner with one worker, in a child process: its peak memory, CPU-seconds per row at each
size, copies found.

Disk: day D's shards are float16 (about 4.2 kB a row: 4.2 GB at 1M rows) and are deleted after
each size; each earlier day holds only what the lookback reads (about 300 B a row: 9 GB for 30
days of 1M rows), deleted at the end unless `--keep` (a later run of the same sizes reuses them).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from benchmarks import synthetic
from benchmarks.measure import child_environment, print_result, python_command, run_measured

ROOT = Path(__file__).resolve().parents[1]

DAY = "2026-12-31"
THRESHOLD = 0.95
PCA_SAMPLE = 20_000
# What a kept lookback was generated with; bump GENERATOR when benchmarks/synthetic.py changes.
LOOKBACK_RECORD = "lookback.json"
GENERATOR = 1


def parse_rows(text: str) -> list[int]:
    try:
        rows = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes such as 250000,1000000: {text}") from None
    if not rows or min(rows) < synthetic.SAMPLE_ROWS:
        raise argparse.ArgumentTypeError(f"each size needs at least {synthetic.SAMPLE_ROWS} rows")
    return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--rows",
        type=parse_rows,
        default=[250_000, 1_000_000],
        help="sizes of day D, smallest first (default 250000,1000000)",
    )
    parser.add_argument(
        "--lookback-rows",
        type=int,
        default=1_000_000,
        help="rows of each earlier day (default 1000000)",
    )
    parser.add_argument("--days", type=int, default=30, help="earlier days (default 30)")
    parser.add_argument(
        "--per-day",
        type=int,
        default=5,
        help="exact and near copies planted of each day (default 5 each)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/scale"))
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the synthetic earlier days; a later run with the same --days and "
        "--lookback-rows reuses them instead of generating them again",
    )
    parser.add_argument("--analyse", metavar="FOLDER", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def analyse(folder: str, days: int) -> dict:
    """The analysis job on the DirectRunner with one worker, in this process; its record."""
    from beam_jobs.image_embeddings.analysis.job import run
    from beam_jobs.image_embeddings.contract import ANALYSIS_MARKER, join
    from beam_jobs.image_embeddings.storage import files

    run(
        [
            f"--output={folder}",
            f"--pca_components={synthetic.COMPONENTS}",
            f"--pca_sample_size={PCA_SAMPLE}",
            f"--duplicate_threshold={THRESHOLD}",
            f"--lookback_days={days}",
            "--direct_num_workers=1",
        ]
    )
    record = files.read_json(join(folder, ANALYSIS_MARKER))
    return {"rows": record["rows"], "counts": record["duplicates"]}


def expected(planted: list[synthetic.Plant]) -> set[tuple[str, str, str, str]]:
    """(uri, duplicate_of, kind, day_of_other) per plant; within D the larger URI is the copy."""
    rows = set()
    for plant in planted:
        copy = synthetic.image_uri(DAY, plant.row)
        original = synthetic.image_uri(plant.day, plant.source)
        if plant.day == DAY:
            copy, original = max(copy, original), min(copy, original)
        rows.add((copy, original, plant.kind, plant.day))
    return rows


def found_rows(folder: Path) -> set[tuple[str, str, str, str]]:
    import pyarrow.parquet as pq

    table = pq.read_table(folder / "duplicates.parquet")
    return set(
        zip(
            *(table[name].to_pylist() for name in ("uri", "duplicate_of", "kind", "day_of_other")),
            strict=True,
        )
    )


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def lookback_key(args: argparse.Namespace) -> dict:
    return {"days": args.days, "rows_per_day": args.lookback_rows, "generator": GENERATOR}


def kept_lookback(root: Path, args: argparse.Namespace) -> float | None:
    """The generation seconds of earlier days a `--keep` run left for these sizes, if any."""
    try:
        record = json.loads((root / LOOKBACK_RECORD).read_text())
    except (FileNotFoundError, ValueError):
        return None
    if {key: record.get(key) for key in lookback_key(args)} != lookback_key(args):
        return None
    print(f"Reusing the earlier days kept in {root}", file=sys.stderr)
    return record["seconds"]


def measure(args: argparse.Namespace) -> dict:
    from beam_jobs.image_embeddings.analysis.history import window

    root = args.out.resolve() / "days"
    space = synthetic.Space.make()
    earlier = window(DAY, args.days)
    seeds = {day: number + 1 for number, day in enumerate(earlier)}
    started = time.perf_counter()
    # Generation runs in a spawned process: the analysis' child would otherwise inherit this
    # process's peak memory in the kernel's count (ru_maxrss survives fork and exec).
    spawn = multiprocessing.get_context("spawn")
    generated = kept_lookback(root, args)
    if generated is None:
        shutil.rmtree(root, ignore_errors=True)
        with ProcessPoolExecutor(1, mp_context=spawn) as pool:
            for day in earlier:
                pool.submit(
                    synthetic.write_lookback_day,
                    root / day,
                    space,
                    day,
                    seeds[day],
                    args.lookback_rows,
                ).result()
        generated = time.perf_counter() - started
        (root / LOOKBACK_RECORD).write_text(
            json.dumps({**lookback_key(args), "seconds": generated}) + "\n"
        )
    lookback = {
        "days": args.days,
        "rows_per_day": args.lookback_rows,
        "seconds": generated,
        "bytes": folder_bytes(root),
    }
    planted = synthetic.plants(DAY, earlier, args.per_day)
    sizes = []
    for rows in args.rows:
        folder = root / DAY
        started = time.perf_counter()
        with ProcessPoolExecutor(1, mp_context=spawn) as pool:
            pool.submit(synthetic.write_day, folder, space, DAY, 0, rows, planted, seeds).result()
        generated = {"seconds": time.perf_counter() - started, "bytes": folder_bytes(folder)}
        run = run_measured(
            python_command("benchmarks.scale", "--analyse", str(folder), "--days", str(args.days)),
            args.out.resolve() / f"analyse-{rows}.log",
            child_environment([ROOT]),
        )
        wanted, found = expected(planted), found_rows(folder)
        sizes.append(
            {
                "rows": rows,
                "generated": generated,
                "peak_rss_mb": run.peak_rss_mb,
                "cpu_seconds": run.cpu_seconds,
                "wall_seconds": run.seconds,
                "cpu_us_per_row": 1e6 * run.cpu_seconds / rows,
                "planted": len(wanted),
                "planted_found": len(wanted & found),
                "other_copies_found": len(found - wanted),
            }
        )
        shutil.rmtree(folder)
    if not args.keep:
        shutil.rmtree(root)
    small, large = sizes[0], sizes[-1]
    return {
        "lookback": lookback,
        "sizes": sizes,
        "cpu_per_row_growth": large["cpu_us_per_row"] / small["cpu_us_per_row"],
    }


def table(results: dict) -> str:
    lookback = results["lookback"]
    lines = [
        f"Lookback: {lookback['days']} days x {lookback['rows_per_day']:,} rows, generated in "
        f"{lookback['seconds']:.0f} s, {lookback['bytes'] / 1e9:.2f} GB on disk",
        "| rows of D | peak RSS MB | CPU s | CPU us/row | wall s | planted found | other copies |"
        " D generated s | D GB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for size in results["sizes"]:
        lines.append(
            f"| {size['rows']:,} | {size['peak_rss_mb']:.0f} | {size['cpu_seconds']:.0f} | "
            f"{size['cpu_us_per_row']:.0f} | {size['wall_seconds']:.0f} | "
            f"{size['planted_found']}/{size['planted']} | {size['other_copies_found']} | "
            f"{size['generated']['seconds']:.0f} | {size['generated']['bytes'] / 1e9:.2f} |"
        )
    lines.append(f"CPU per row, largest over smallest: {results['cpu_per_row_growth']:.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.analyse:
        print_result(analyse(args.analyse, args.days))
        return 0
    results = measure(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
