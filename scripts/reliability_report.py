"""Print what the reliability tests tried and saw, from their results; fail on any loss."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "reliability"
# How each kind of injected fault is named in the table.
FAULT_NAMES = {"SIGKILL": "SIGKILL mid-run", "503": "503 answer", "stall": "stalled connection"}


@dataclass
class Totals:
    """The sums over every test's result file (written by tests/reliability/conftest.py)."""

    tests: int = 0
    passed: int = 0
    failed: list[str] = field(default_factory=list)
    bad_inputs: int = 0
    faults: Counter = field(default_factory=Counter)
    reruns: int = 0
    entries: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    tampered: int = 0
    caught: int = 0
    secrets_searched: int = 0
    leaks: int = 0
    formats: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    unaccounted: int = 0
    overlapping_runs: int = 0
    injections: int = 0
    injections_run: int = 0
    unauthorised: int = 0
    refused: int = 0
    stale_commits_refused: int = 0
    lease_rounds: int = 0
    killed_waits: int = 0


def add(totals: Totals, result: dict) -> None:
    totals.tests += 1
    if result["outcome"] == "passed":
        totals.passed += 1
    else:
        totals.failed.append(f"{result['test']} ({result['outcome']})")
    totals.faults.update(result["faults"])
    totals.formats.update(result.get("formats", {}))
    totals.skipped.update(result.get("skipped", {}))
    for name in (
        "bad_inputs",
        "reruns",
        "entries",
        "lost",
        "duplicated",
        "unexpected",
        "tampered",
        "caught",
        "secrets_searched",
        "leaks",
        "unaccounted",
        "overlapping_runs",
        "injections",
        "injections_run",
        "unauthorised",
        "refused",
        "stale_commits_refused",
        "lease_rounds",
        "killed_waits",
    ):
        setattr(totals, name, getattr(totals, name) + result.get(name, 0))


def load(folder: Path) -> Totals:
    totals = Totals()
    for path in sorted(folder.glob("*.json")):
        add(totals, json.loads(path.read_text()))
    return totals


def fault_detail(faults: Counter, tampered: int) -> str:
    parts = [f"{FAULT_NAMES.get(kind, kind)} {count}" for kind, count in sorted(faults.items())]
    return ", ".join(parts + [f"tampered output {tampered}"])


def tally(counts: Counter) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items()))


def problems(totals: Totals) -> list[str]:
    """Why the results are not acceptable; empty when they are."""
    found = [f"test not passed: {name}" for name in totals.failed]
    if totals.tests == 0:
        found.append("no results: run the reliability tests first")
    for name in ("lost", "duplicated", "unexpected", "unaccounted", "leaks", "injections_run"):
        if getattr(totals, name):
            found.append(f"{name}: {getattr(totals, name)}, must be 0")
    if totals.caught < totals.tampered:
        found.append(f"validation caught {totals.caught} of {totals.tampered} tampered outputs")
    if totals.refused < totals.unauthorised:
        found.append(
            f"the view refused {totals.refused} of {totals.unauthorised} unauthorised requests"
        )
    # Zero losses mean something only if every kind of trouble was actually tried.
    tried = {
        "bad inputs": totals.bad_inputs,
        **{FAULT_NAMES[kind]: totals.faults[kind] for kind in FAULT_NAMES},
        "rerun of a day": totals.reruns,
        "tampered output": totals.tampered,
        "manifest entry checked": totals.entries,
        "search for credentials": totals.secrets_searched,
        "image format": len(totals.formats),
        "skipped object": sum(totals.skipped.values()),
        "overlapping run of one day": totals.overlapping_runs,
        "script injection": totals.injections,
        "unauthorised request": totals.unauthorised,
        "stale writer's commit": totals.stale_commits_refused,
        "gs:// lease round": totals.lease_rounds,
        "run killed or timed out during wait": totals.killed_waits,
    }
    found += [f"no {what} in the results" for what, count in tried.items() if not count]
    return found


def table(totals: Totals) -> list[tuple[str, str, str]]:
    """(what, how many, requirement or detail) rows of the summary."""
    return [
        ("bad inputs tried", str(totals.bad_inputs), "distinct hostile manifest entries"),
        (
            "faults injected",
            str(sum(totals.faults.values()) + totals.tampered),
            fault_detail(totals.faults, totals.tampered),
        ),
        ("days run again", str(totals.reruns), "same URIs and embeddings"),
        ("image formats tried", str(len(totals.formats)), f"files: {tally(totals.formats)}"),
        ("objects skipped", str(sum(totals.skipped.values())), tally(totals.skipped)),
        ("objects unaccounted", str(totals.unaccounted), "must be 0: embedded, failed or skipped"),
        (
            "overlapping runs of one day",
            str(totals.overlapping_runs),
            "one writes at a time; the day ends complete",
        ),
        (
            "stale-writer commits refused",
            str(totals.stale_commits_refused),
            "a run that lost the day deletes and publishes nothing",
        ),
        (
            "gs:// lease rounds",
            str(totals.lease_rounds),
            "16 contenders on a server honouring ifGenerationMatch: one winner each",
        ),
        (
            "runs killed or timed out during wait",
            str(totals.killed_waits),
            "the Dataflow job cancelled, the day's lease free",
        ),
        ("manifest entries checked", str(totals.entries), "after every run above"),
        ("entries lost", str(totals.lost), "must be 0"),
        ("entries duplicated", str(totals.duplicated), "must be 0"),
        ("entries not in the manifest", str(totals.unexpected), "must be 0"),
        ("tampered outputs caught", f"{totals.caught}/{totals.tampered}", "must be all"),
        ("places searched for credentials", str(totals.secrets_searched), ""),
        ("credentials found", str(totals.leaks), "must be 0"),
        (
            "script injections tried",
            str(totals.injections),
            "in a report's data, shown in a browser",
        ),
        ("script injections run", str(totals.injections_run), "must be 0"),
        (
            "unauthorised requests refused",
            f"{totals.refused}/{totals.unauthorised}",
            "must be all: no token, or a user who may not read the DAG",
        ),
        ("tests passed", f"{totals.passed}/{totals.tests}", "must be all"),
    ]


def render(rows: list[tuple[str, str, str]]) -> str:
    width = max(len(what) for what, _, _ in rows)
    count_width = max(len(count) for _, count, _ in rows)
    return "\n".join(
        f"  {what:<{width}}  {count:>{count_width}}  {note}".rstrip() for what, count, note in rows
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", nargs="?", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    totals = load(args.results)
    print(f"Reliability: what {totals.tests} tests tried and observed ({args.results})\n")
    print(render(table(totals)))
    found = problems(totals)
    print()
    for problem in found:
        print(f"FAIL: {problem}")
    if not found:
        print(
            "OK: nothing lost, nothing duplicated, every tampering caught, no credential found,"
            " no injected script run, every unauthorised request refused"
        )
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
