"""Fixtures of the reliability tests: what each test observed, and a faulty GCS on loopback."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

from beam_jobs.image_embeddings.contract import STAGE_DECODE, STAGE_READ

# Reused: `make run`'s environment, and the session's Airflow (one for every module here)
# with its fake Dataflow.
from tests.e2e.conftest import airflow, airflow_environ, fake_dataflow  # noqa: F401
from tests.fault_proxy import FaultPlan, FaultProxy, serving
from tests.image_factory import write_images
from tests.reliability.runs import REPO, Accounting, Outputs, read_outputs, run_pipeline

# `make reliability` prints the table that scripts/reliability_report.py makes of these files.
RESULTS = REPO / "test-artifacts" / "reliability"


@dataclass
class Observation:
    """What one test tried and saw; written as RESULTS/<test>.json when the test ends."""

    test: str
    area: str = ""
    bad_inputs: int = 0
    faults: Counter = field(default_factory=Counter)
    entries: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    reruns: int = 0
    tampered: int = 0
    caught: int = 0
    secrets_searched: int = 0
    leaks: int = 0
    formats: Counter = field(default_factory=Counter)  # image format -> files tried
    skipped: Counter = field(default_factory=Counter)  # skip reason -> objects
    unaccounted: int = 0  # objects of a day neither embedded, failed nor skipped
    overlapping_runs: int = 0
    injections: int = 0  # script injections put in a report's data, once per page shown
    injections_run: int = 0  # of them, those a browser ran
    unauthorised: int = 0  # requests to the view without the right to read the DAG
    refused: int = 0
    stale_commits_refused: int = 0
    lease_rounds: int = 0
    killed_waits: int = 0
    outcome: str = "not run"

    def add(self, accounting: Accounting) -> Accounting:
        """Count one run's accounting of its manifest entries in."""
        self.entries += accounting.entries
        self.lost += accounting.lost
        self.duplicated += accounting.duplicated
        self.unexpected += accounting.unexpected
        return accounting

    def to_dict(self) -> dict:
        # asdict() would rebuild a Counter from its items, counting (kind, n) pairs.
        counters = {"faults", "formats", "skipped"}
        return {**asdict(self), **{name: dict(getattr(self, name)) for name in counters}}


def pytest_sessionstart(session):
    """Results of this run only: a report never mixes in an earlier run's.

    With parallel workers only the controlling process clears them, or one worker would delete
    what another already wrote.
    """
    if not hasattr(session.config, "workerinput"):
        shutil.rmtree(RESULTS, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" or report.failed:
        item.reliability_outcome = report.outcome
    return report


@pytest.fixture(autouse=True)
def observe(request):
    """The test's Observation, written out whether the test passes or fails (every test of this
    folder has one, so the report counts them all)."""
    observation = Observation(test=request.node.nodeid)
    yield observation
    observation.outcome = getattr(request.node, "reliability_outcome", "not run")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)
    (RESULTS / f"{name}.json").write_text(json.dumps(observation.to_dict(), indent=2) + "\n")


@pytest.fixture(scope="module")
def faulty_gcs(gcs_emulator):
    """A FaultProxy in front of the session's GCS emulator; every client of this process uses it.

    Faults are off until a test turns them on (`proxy.reset(enabled=True)`). Objects are written
    through the proxy too, so the links the emulator gives them lead back through it.
    """
    from beam_jobs.image_embeddings.storage import io

    with (
        serving(
            FaultProxy(os.environ["STORAGE_EMULATOR_HOST"], FaultPlan(), enabled=False)
        ) as proxy,
        pytest.MonkeyPatch.context() as patch,
    ):
        patch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        # Set once at import, before the emulator was known: without it Beam spends ~26 s
        # looking for credentials that the emulator does not need.
        io.use_emulator_credentials()
        yield proxy


DAY = "2026-11-29"
# A plain day: photo-like images in every format the pipeline reads, one text file named .jpg
# and one listed file that does not exist.
DAY_IMAGES = (("JPEG", 6, (160, 120)), ("PNG", 3, (96, 64)), ("WEBP", 2, (64, 96)))
DAY_IMAGES += (("BMP", 1, (50, 50)), ("TIFF", 1, (33, 77)), ("GIF", 1, (80, 60)))


@dataclass
class ReferenceDay:
    """Day DAY's images and the outputs of one uninterrupted run: what faulty runs must equal."""

    images: Path  # INPUT_ROOT/DAY
    files: list[Path]  # every file of the day, the text one included
    expected: dict[str, str | None]  # manifest entry -> failure stage, None when it embeds
    output: str  # the uninterrupted run's OUTPUT_ROOT/DAY (tests copy it, never change it)
    outputs: Outputs
    run_args: tuple[str, ...]


def write_day_images(images: Path) -> tuple[list[Path], dict[str, str | None]]:
    files = []
    for index, (fmt, count, size) in enumerate(DAY_IMAGES):
        files += write_images(images / fmt.lower(), count, size, fmt, seed=300 + 20 * index)
    notes = images / "notes.jpg"
    notes.write_bytes(b"minutes of the meeting, not a photo\n")
    expected: dict[str, str | None] = {str(path): None for path in files}
    expected |= {str(notes): STAGE_DECODE, str(images / "missing.jpg"): STAGE_READ}
    return [*files, notes], expected


@pytest.fixture(scope="session")
def reference_day(tmp_path_factory) -> ReferenceDay:
    base = tmp_path_factory.mktemp("reference")
    images = base / "images" / DAY
    files, expected = write_day_images(images)
    output = base / "embeddings" / DAY
    output.mkdir(parents=True)
    (output / "manifest.txt").write_text("".join(f"{uri}\n" for uri in sorted(expected)))
    run_args = ("--input_root", str(images), "--num_shards", "2")

    run_pipeline(str(output), *run_args)

    return ReferenceDay(images, files, expected, str(output), read_outputs(str(output)), run_args)
