"""Pipeline runs for the reliability tests, and what they left: outputs read back and accounted."""

from __future__ import annotations

import io
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from beam_jobs.image_embeddings.contract import (
    EMBEDDINGS_PREFIX,
    FAILURES_PREFIX,
    MANIFEST_NAME,
    SUCCESS_MARKER,
    join,
    shard_glob,
)
from image_embeddings_airflow import storage

REPO = Path(__file__).resolve().parents[2]
# The model does not matter here, only that every entry is accounted for: the smallest one.
MODEL, DIM = "mobilenetv3small", 576
SMALL_RUN = ["--model", MODEL, "--weights", "random", "--batch_size", "4"]
# Short bounds for runs behind the fault proxy: a stalled request is retried after this long.
GCS_BOUNDS = ["--gcs_timeout_secs", "3", "--gcs_retry_deadline_secs", "90"]
# Embeddings of one image may differ in the last bits when it lands in another batch.
RTOL, ATOL = 1e-4, 1e-5


def pipeline_argv(output: str, *extra: str) -> list[str]:
    """Command-line arguments of a run whose manifest is the day's `output/manifest.txt`."""
    return [
        "--manifest",
        join(output, MANIFEST_NAME),
        "--output",
        output,
        *SMALL_RUN,
        *extra,
    ]


def run_pipeline(output: str, *extra: str) -> None:
    """Run the pipeline in this process (TensorFlow is loaded once per test session)."""
    from beam_jobs.image_embeddings.launcher import run

    run(pipeline_argv(output, *extra))


@dataclass
class Outputs:
    """What one run left under its output folder, read back through the plugin's storage."""

    names: list[str]  # every file (and local folder) below the output folder, relative
    embedded: list[str]  # the uri of each embeddings row, duplicates kept
    vectors: dict[str, np.ndarray]
    failed: list[str]  # the uri of each failures row, duplicates kept
    failures: dict[str, dict[str, Any]]
    marker: dict[str, Any] | None


def listing(output: str) -> list[str]:
    """Names below `output`, relative: objects on gs://; files and folders on a local disk."""
    if storage.is_gcs(output):
        prefix = output.rstrip("/") + "/"
        return sorted(uri[len(prefix) :] for uri in storage.list_files(output))
    root = Path(output)
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def _rows(output: str, prefix: str) -> list[dict[str, Any]]:
    tables = [
        pq.read_table(io.BytesIO(storage.read_bytes(shard)))
        for shard in storage.glob(shard_glob(output, prefix))
    ]
    return pa.concat_tables(tables).to_pylist() if tables else []


def read_outputs(output: str) -> Outputs:
    embeddings = _rows(output, EMBEDDINGS_PREFIX)
    failures = _rows(output, FAILURES_PREFIX)
    marker_uri = join(output, SUCCESS_MARKER)
    return Outputs(
        names=listing(output),
        embedded=[row["uri"] for row in embeddings],
        vectors={row["uri"]: np.asarray(row["embedding"], np.float32) for row in embeddings},
        failed=[row["uri"] for row in failures],
        failures={row["uri"]: row for row in failures},
        marker=storage.read_json(marker_uri) if storage.exists(marker_uri) else None,
    )


@dataclass(frozen=True)
class Accounting:
    """Distinct manifest entries, and how many of them the outputs lost or hold more than once."""

    entries: int
    lost: int
    duplicated: int
    unexpected: int

    def as_dict(self) -> dict[str, int]:
        return {
            "entries": self.entries,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "unexpected": self.unexpected,
        }


def account(expected: Iterable[str], outputs: Outputs) -> Accounting:
    """Compare the distinct entries `expected` with the rows of both outputs."""
    wanted = set(expected)
    rows = Counter(outputs.embedded) + Counter(outputs.failed)
    return Accounting(
        entries=len(wanted),
        lost=len(wanted - set(rows)),
        duplicated=sum(count - 1 for count in rows.values()),
        unexpected=len(set(rows) - wanted),
    )


def same_uri(uri: str) -> str:
    return uri


def assert_same_results(
    got: Outputs, reference: Outputs, key: Callable[[str], str] = same_uri
) -> None:
    """Same entries in each output, same failure stages, same embeddings (to float tolerance).

    `key` maps a URI to what identifies its image across runs: the URI itself, or the file name
    when the same images were read from another place.
    """
    assert sorted(map(key, got.embedded)) == sorted(map(key, reference.embedded))
    assert sorted(map(key, got.failed)) == sorted(map(key, reference.failed))
    assert {key(uri): row["stage"] for uri, row in got.failures.items()} == {
        key(uri): row["stage"] for uri, row in reference.failures.items()
    }
    vectors = {key(uri): vector for uri, vector in got.vectors.items()}
    for uri, vector in reference.vectors.items():
        np.testing.assert_allclose(vectors[key(uri)], vector, rtol=RTOL, atol=ATOL, err_msg=uri)


class LaunchedPipeline:
    """`python -m beam_jobs.image_embeddings` in its own process group, its output collected."""

    def __init__(self, argv: list[str], environ: dict[str, str] | None = None) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "beam_jobs.image_embeddings", *argv],
            cwd=REPO,
            env=environ if environ is not None else dict(os.environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.log.append(line)
            self.lines.put(line)

    def wait_for_line(self, wanted: Callable[[str], bool], timeout_s: float) -> str:
        """The first output line that `wanted` accepts; fail if the process ends first, or after
        `timeout_s` (a bound on a hang, not a measure of speed)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    break
                continue
            if wanted(line):
                return line
        raise AssertionError("the awaited line never came:\n" + "".join(self.log[-40:]))

    def wait_for(self, event: threading.Event, timeout_s: float) -> None:
        """Wait until `event` is set; fail if the process ends first, or after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not event.wait(0.5):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the awaited point never came:\n" + "".join(self.log[-40:]))

    def kill(self) -> int:
        """SIGKILL the whole process group; return the exit status."""
        os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.wait(timeout=60)

    def __enter__(self) -> LaunchedPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        # A test that failed before its kill leaves no pipeline running behind it.
        if self.process.poll() is None:
            self.kill()
