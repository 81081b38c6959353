"""The DAG file's own parse cost: seconds beyond Airflow's and the providers' imports, and which
heavy modules it loads (there should be none).

`python -m benchmarks.dag_parse` prints a BENCH_RESULT line.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.measure import print_result

ROOT = Path(__file__).resolve().parents[1]
DAG_FILE = ROOT / "dags" / "image_embeddings.py"
PLUGINS = ROOT / "plugins"
# What any DAG of this kind costs: the scheduler's processes have it loaded already.
AIRFLOW_IMPORTS = (
    "airflow.sdk",
    "airflow.providers.apache.beam.operators.beam",
    "airflow.providers.google.cloud.sensors.dataflow",
    "airflow.providers.google.cloud.triggers.dataflow",
)
HEAVY_MODULES = ("tensorflow", "keras", "apache_beam", "sklearn", "matplotlib", "pyarrow")


def parse_seconds(dag_file: Path) -> float:
    """Seconds to execute the DAG file as the DAG processor does, after Airflow's imports."""
    if str(PLUGINS) not in sys.path:
        sys.path.insert(0, str(PLUGINS))  # as Airflow does with its plugins folder
    for module in AIRFLOW_IMPORTS:
        importlib.import_module(module)
    started = time.perf_counter()
    spec = importlib.util.spec_from_file_location("image_embeddings_dag", dag_file)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dag_parse", description=__doc__)
    parser.add_argument("--dag_file", type=Path, default=DAG_FILE)
    args = parser.parse_args(argv)
    seconds = parse_seconds(args.dag_file)
    print_result(
        {
            "seconds": seconds,
            "heavy_modules": [name for name in HEAVY_MODULES if name in sys.modules],
        }
    )


if __name__ == "__main__":
    main()
