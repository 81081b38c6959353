"""Fixtures of the reliability tests: what each test observed, and a faulty GCS on loopback."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field

import pytest

from tests.fault_proxy import FaultPlan, FaultProxy, serving
from tests.reliability.runs import REPO, Accounting

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
    tampered: int = 0
    caught: int = 0
    secrets_searched: int = 0
    leaks: int = 0
    outcome: str = "not run"

    def add(self, accounting: Accounting) -> Accounting:
        """Count one run's accounting of its manifest entries in."""
        self.entries += accounting.entries
        self.lost += accounting.lost
        self.duplicated += accounting.duplicated
        self.unexpected += accounting.unexpected
        return accounting


@pytest.fixture(scope="session", autouse=True)
def _fresh_results():
    """Results of this session only: a report never mixes in an earlier session's."""
    shutil.rmtree(RESULTS, ignore_errors=True)
    RESULTS.mkdir(parents=True)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" or report.failed:
        item.reliability_outcome = report.outcome
    return report


@pytest.fixture
def observe(request):
    """The test's Observation, written out whether the test passes or fails."""
    observation = Observation(test=request.node.nodeid)
    yield observation
    observation.outcome = getattr(request.node, "reliability_outcome", "not run")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)
    (RESULTS / f"{name}.json").write_text(json.dumps(asdict(observation), indent=2) + "\n")


@pytest.fixture(scope="module")
def faulty_gcs(gcs_emulator):
    """A FaultProxy in front of the session's GCS emulator; every client of this process uses it.

    Faults are off until a test turns them on (`proxy.reset(enabled=True)`). Objects are written
    through the proxy too, so the links the emulator gives them lead back through it.
    """
    from beam_jobs.image_embeddings import io

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
