"""Run a command as a child process: wall time, peak memory of its process tree, its result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

RESULT_PREFIX = "BENCH_RESULT "
SAMPLE_INTERVAL_S = 0.05
LOG_TAIL_CHARS = 3000


@dataclass(frozen=True)
class Measured:
    """One finished child process: when it started (epoch seconds), seconds from start to exit,
    CPU seconds (user and system, its whole process tree), peak memory, its printed result."""

    started_at: float
    seconds: float
    cpu_seconds: float
    peak_rss_bytes: int
    result: dict | None
    log: Path

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss_bytes / 2**20


class CommandFailed(RuntimeError):
    """A measured command exited with an error or ran out of time."""


def python_command(module: str, *args: str) -> list[str]:
    """`python -m module args...` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def child_environment(extra_paths: Sequence[Path] = ()) -> dict[str, str]:
    """This process's environment with `extra_paths` first on PYTHONPATH."""
    environment = dict(os.environ)
    paths = [str(path) for path in extra_paths]
    if environment.get("PYTHONPATH"):
        paths.append(environment["PYTHONPATH"])
    if paths:
        environment["PYTHONPATH"] = os.pathsep.join(paths)
    return environment


def tree_rss(process: psutil.Process) -> int:
    """Resident bytes of a process and all its descendants; 0 once it is gone."""
    total = 0
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue
    return total


class _TreeSampler(threading.Thread):
    """Samples the summed RSS of a process tree until stopped; keeps the largest sum."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self._pid = pid
        self._stop_event = threading.Event()
        self.peak = 0

    def run(self) -> None:
        try:
            process = psutil.Process(self._pid)
        except psutil.Error:
            return
        while not self._stop_event.is_set():
            self.peak = max(self.peak, tree_rss(process))
            self._stop_event.wait(SAMPLE_INTERVAL_S)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


def parse_result(text: str) -> dict | None:
    """The JSON object of the last `BENCH_RESULT {...}` line of a child's output, if any."""
    for line in reversed(text.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    return None


def print_result(result: Mapping) -> None:
    """What a benchmark child prints last, for `parse_result` in the parent."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_measured(
    command: Sequence[str],
    log: Path,
    environment: Mapping[str, str] | None = None,
    timeout_s: float = 1800,
) -> Measured:
    """Run `command` with its output in `log`; raise CommandFailed unless it exits with 0.

    Peak memory is the larger of the sampled sum over the process tree (several worker
    processes count together) and the kernel's own peak for the largest single process
    (`wait4`'s ru_maxrss), which no sampling interval can miss.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as output:
        started_at = time.time()
        started = time.perf_counter()
        process = subprocess.Popen(
            list(command),
            stdout=output,
            stderr=subprocess.STDOUT,
            env=dict(environment) if environment is not None else None,
            start_new_session=True,
        )
        sampler = _TreeSampler(process.pid)
        sampler.start()
        timer = threading.Timer(timeout_s, os.killpg, (process.pid, signal.SIGKILL))
        timer.start()
        try:
            # wait4 reaps the child itself, so Popen never sees its status: record it by hand.
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            # The child has its own session, so an interrupt here never reached it.
            os.killpg(process.pid, signal.SIGKILL)
            os.waitpid(process.pid, 0)
            sampler.stop()
            raise
        finally:
            timer.cancel()
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        sampled_peak = sampler.stop()
    text = log.read_text(errors="replace")
    if process.returncode != 0:
        reason = "timed out" if process.returncode == -signal.SIGKILL else "failed"
        raise CommandFailed(
            f"{' '.join(command)} {reason} (exit {process.returncode}); log {log}:\n"
            f"{text[-LOG_TAIL_CHARS:]}"
        )
    return Measured(
        started_at=started_at,
        seconds=seconds,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        peak_rss_bytes=max(sampled_peak, usage.ru_maxrss * 1024),
        result=parse_result(text),
        log=log,
    )
