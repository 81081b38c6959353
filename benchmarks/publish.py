"""Publishing a synthetic day of 2048-d embeddings into PostgreSQL with pgvector.

`python -m benchmarks.publish DAY_DIR URI` copies the day's rows into a new table with the binary
COPY that `publish.pgvector` streams (record batches of 4,096 rows), timing the copy alone, then
rolls back; it prints a BENCH_RESULT line. The parent starts a PostgreSQL with pgvector on
loopback (the tests' server, with PostgreSQL's own durability settings), runs a small and a large
day, and reports rows per second (whole runs and by difference) and the publisher's peak memory
against the goals. The HNSW index build is not in these figures: it is the server's work and
depends on its maintenance_work_mem.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from beam_jobs.image_embeddings.contract import FINGERPRINT_KEY, SUCCESS_MARKER
from benchmarks.daily import DAY, write_synthetic_day
from benchmarks.measure import print_result, python_command

TABLE = "bench_embeddings"
GOAL_ROWS_PER_S = 20_000
GOAL_PEAK_MB = 500


def publishable_day(folder: Path, rows: int) -> Path:
    """The synthetic day with a model fingerprint in its marker, as publishing requires."""
    day = write_synthetic_day(folder, rows)
    marker_path = day / SUCCESS_MARKER
    marker = json.loads(marker_path.read_text())
    if FINGERPRINT_KEY not in marker:
        marker[FINGERPRINT_KEY] = "bench-synthetic"
        marker_path.write_text(json.dumps(marker, indent=2) + "\n")
    return day


def copy_rows(folder: str, uri: str) -> dict:
    """COPY the day into a new table inside a transaction that is rolled back; time the copy."""
    import psycopg
    from psycopg import sql

    from image_embeddings_airflow.publish.pgvector import BATCH_ROWS, copy_day, create_schema
    from image_embeddings_airflow.publish.rows import day_marker

    with psycopg.connect(uri, autocommit=True) as connection:
        create_schema(connection, TABLE, day_marker(folder)["dim"])
        with connection.transaction(force_rollback=True):
            staging = sql.Identifier(TABLE + "_new")
            connection.execute(
                sql.SQL("CREATE TABLE {} (LIKE {})").format(staging, sql.Identifier(TABLE))
            )
            started = time.perf_counter()
            rows = copy_day(connection, staging, folder, DAY, BATCH_ROWS, None)
            seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}


def server_cpu_seconds(pid: int) -> float:
    """CPU seconds of the server's processes so far (user and system, children included)."""
    import psutil

    server = psutil.Process(pid)
    total = 0.0
    for process in (server, *server.children(recursive=True)):
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def measure_publish(bench, sizes: tuple[int, int]) -> dict:
    """Copy a small and a large day into one server; rows/s whole and by difference, peaks, and
    CPU seconds per million rows of the publisher and of the server (steadier than wall time on
    a busy machine)."""
    from tests.postgres_server import running_postgres

    runs = {}
    with running_postgres(settings={}) as server:
        for rows in sizes:
            day = publishable_day(bench.out / "days" / f"rows-{rows}", rows)
            before = server_cpu_seconds(server.pid)
            measured = bench.measure(
                f"publish-pgvector-{rows}",
                python_command("benchmarks.publish", str(day), server.uri),
            )
            runs[rows] = {
                **measured.result,
                "peak_mb": measured.peak_rss_mb,
                "publisher_cpu_s_per_million": measured.cpu_seconds / rows * 1e6,
                "server_cpu_s_per_million": (server_cpu_seconds(server.pid) - before) / rows * 1e6,
            }
    small, large = (runs[rows] for rows in sizes)
    marginal = (large["rows"] - small["rows"]) / (large["seconds"] - small["seconds"])
    return {"runs": runs, "marginal_rows_per_s": marginal, "sizes": list(sizes)}


def publish_table(result: dict) -> str:
    """The publish figures as Markdown, each against its goal."""
    lines = [
        "| pgvector COPY (halfvec, binary, 4,096-row batches) | rows | rows/s | peak MB "
        "| publisher CPU s / 1M rows | server CPU s / 1M rows |",
        "|---|---|---|---|---|---|",
    ]
    for rows, run in result["runs"].items():
        lines.append(
            f"| whole run | {rows:,} | {run['rows_per_s']:,.0f} | {run['peak_mb']:,.0f} "
            f"| {run['publisher_cpu_s_per_million']:,.0f} "
            f"| {run['server_cpu_s_per_million']:,.0f} |"
        )
    largest = result["runs"][max(result["runs"], key=int)]
    marginal = result["marginal_rows_per_s"]
    lines.append(f"| by difference | | {marginal:,.0f} | | | |")
    verdicts = [
        f"{'PASS' if marginal >= GOAL_ROWS_PER_S else 'FAIL'} publish COPY >= "
        f"{GOAL_ROWS_PER_S:,} rows/s: {marginal:,.0f}",
        f"{'PASS' if largest['peak_mb'] <= GOAL_PEAK_MB else 'FAIL'} publisher peak <= "
        f"{GOAL_PEAK_MB} MB: {largest['peak_mb']:,.0f}",
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(verdicts)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.publish", description=__doc__)
    parser.add_argument("folder", help="a day's output folder")
    parser.add_argument("uri", help="postgresql:// URI of a database with pgvector")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    print_result(copy_rows(args.folder, args.uri))


if __name__ == "__main__":
    main()
