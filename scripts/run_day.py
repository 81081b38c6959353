"""`make run DATE=D`: one DAG run for day D with `airflow dags test`, then where its outputs are."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins")]

from beam_jobs.image_embeddings.contract import (  # noqa: E402
    MANIFEST_NAME,
    PCA_NAME,
    PLOT_NAME,
    PROJECTION_NAME,
    REPORT_HTML_NAME,
    SUCCESS_MARKER,
    join,
)
from image_embeddings_airflow import storage  # noqa: E402
from image_embeddings_airflow.dag.validation import REPORT_NAME  # noqa: E402
from image_embeddings_airflow.settings import day_dir, load_settings, validate_date  # noqa: E402

OUTPUT_FILES = (
    MANIFEST_NAME,
    SUCCESS_MARKER,
    REPORT_NAME,
    PROJECTION_NAME,
    PCA_NAME,
    REPORT_HTML_NAME,
)
TASK_STARTED = re.compile(r"\[DAG TEST\] starting task_id=(\S+)")
EXCEPTION_LINE = re.compile(r"^[\w.]+(?:Error|Exception|Exit|Interrupt)\b(?::.*)?$")


def run_day(day: str, environ: Mapping[str, str], log: Path, echo: TextIO | None = None) -> bool:
    """One DAG run for `day` (`airflow dags test`); its output goes to `log`, and to `echo`."""
    command = [str(REPO / "scripts" / "airflow_local.sh"), "dags", "test", "image_embeddings", day]
    with (
        open(log, "w") as handle,
        subprocess.Popen(
            command, env=dict(environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as process,
    ):
        for line in process.stdout:
            handle.write(line)
            if echo is not None:
                echo.write(line)
    return process.returncode == 0


def failed_tasks(lines: Iterable[str]) -> list[tuple[str, str]]:
    """(task, exception line) for each task that failed, from an `airflow dags test` log."""
    failed, task, in_traceback = [], "?", False
    for line in lines:
        started = TASK_STARTED.search(line)
        if started:
            task, in_traceback = started.group(1), False
        elif "Task failed with exception" in line:
            in_traceback = True
        elif in_traceback and EXCEPTION_LINE.match(line.rstrip("\n")):
            failed.append((task, line.strip()))
            in_traceback = False
    return failed


def describe_day(output_root: str, day: str) -> list[str]:
    """Lines telling what the day's run wrote and where its report and plot are."""
    folder = day_dir(output_root, day)
    if not storage.exists(join(folder, SUCCESS_MARKER)):
        return [f"  {day}: nothing embedded (no {SUCCESS_MARKER} under {folder}/); see the log"]
    marker = storage.read_json(join(folder, SUCCESS_MARKER))
    files = sorted(storage.list_files(folder))
    missing = [name for name in OUTPUT_FILES if join(folder, name) not in files]
    lines = [
        f"  {day}: {marker['images']} images, {marker['embedded']} embedded, "
        f"{marker['failed']} failed ({marker['model']}, {marker['weights']} weights, "
        f"{marker['dim']}-d) in {marker['duration_s']:.0f} s",
        f"    outputs: {folder}/ ({len(files)} files)",
        f"    report:  {join(folder, REPORT_HTML_NAME)}",
        f"    plot:    {join(folder, PLOT_NAME)}",
    ]
    if missing:
        lines.append(f"    MISSING: {', '.join(missing)}")
    return lines


def describe_failure(log: Path) -> list[str]:
    """Lines naming each failed task and its error, and the log to read."""
    failed = failed_tasks(log.read_text().splitlines())
    lines = [f"    task {task}: {error}" for task, error in failed]
    return lines or ["    no task failed: Airflow itself stopped the run"]


def calendar_day(text: str) -> str:
    """`text` if it is a day written YYYY-MM-DD, else argparse's error saying why."""
    try:
        return validate_date(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Embed one day: a run of the image_embeddings DAG for DATE with `airflow "
        "dags test` on the local SQLite Airflow, then where the day's outputs and report are. "
        "Any day with images may be run, before IMAGE_EMBEDDINGS_START_DATE too. Settings come "
        "from the IMAGE_EMBEDDINGS_* environment variables.",
    )
    parser.add_argument("date", type=calendar_day, help="the day D, YYYY-MM-DD")
    parser.add_argument(
        "--log", type=Path, help="where the run's log goes too (default: DATA/run-logs/DATE.log)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = load_settings(os.environ)
    log = args.log or Path(os.environ.get("IMAGE_EMBEDDINGS_DATA") or REPO / "data") / (
        f"run-logs/{args.date}.log"
    )
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    ok = run_day(args.date, os.environ, log, echo=sys.stdout)
    seconds = time.monotonic() - started
    if ok:
        print(f"\nThe run of {args.date} succeeded in {seconds:.0f} s; log: {log}")
        print("\n".join(describe_day(settings.output_root, args.date)))
        return 0
    print(f"\nThe run of {args.date} FAILED after {seconds:.0f} s; log: {log}", file=sys.stderr)
    print("\n".join(describe_failure(log)), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
