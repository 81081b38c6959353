"""A hostile day through the whole pipeline: every entry ends once, with a reason, the job succeeds.

tests/beam_jobs/test_images.py runs the same corpus through LoadImageFn alone and checks the input
root piece by piece; here the corpus, escaping entries and a hostile manifest (CRLF, duplicates,
comments, blanks) go through the real pipeline with `--input_root`, as the DAG launches it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from beam_jobs.image_embeddings.contract import LEASE_NAME, STAGE_INPUT, STAGE_READ, STAGES
from image_embeddings_airflow.dag.validation import validate_output
from tests.image_factory import (
    BAD_INPUT_STAGES,
    ESCAPING_STAGE,
    write_bad_inputs,
    write_escaping_entries,
    write_image,
)
from tests.reliability.runs import DIM, MODEL, Outputs, account, read_outputs, run_pipeline

pytestmark = pytest.mark.slow

DAY = "2026-11-28"


def write_extra_entries(root: Path) -> dict[str, tuple[str, str | None]]:
    """Entries beyond the shared corpus: name -> (manifest entry, expected stage or None)."""
    target = root / "image.webp"
    (root / "link-inside.webp").symlink_to(target)
    (root / "loop-a.jpg").symlink_to(root / "loop-b.jpg")
    (root / "loop-b.jpg").symlink_to(root / "loop-a.jpg")
    return {
        "jpeg_named_txt": (str(write_image(root / "photo.txt", seed=31)), None),
        "no_extension": (str(write_image(root / "photo", fmt="PNG", seed=32)), None),
        "uppercase_extension": (str(write_image(root / "UPPER.JPEG", seed=33)), None),
        "symlink_inside_root": (str(root / "link-inside.webp"), None),
        "symlink_loop": (str(root / "loop-a.jpg"), STAGE_READ),
        "name_too_long": (f"{root}/{'n' * 300}.jpg", STAGE_READ),
        "nul_byte": (f"{root}/nul\x00.jpg", STAGE_INPUT),
        "other_bucket": ("gs://someone-elses-bucket/secret.jpg", STAGE_INPUT),
        "file_scheme": ("file:///etc/passwd", STAGE_INPUT),
    }


def hostile_manifest(entries: list[str]) -> tuple[list[str], int]:
    """Manifest lines over `entries` as a careless producer writes them, and the extra copies.

    A comment and blanks, padding, every fifth entry twice (once padded), the first three again
    at the end; the caller joins them with CRLF.
    """
    lines = ["# images of the day", ""]
    extra = 0
    for index, entry in enumerate(entries):
        lines.append(entry)
        if index % 5 == 0:
            lines.append(f"  {entry}\t ")
            extra += 1
    lines += ["", *entries[:3], "   "]
    return lines, extra + 3


@dataclass
class HostileDay:
    output: str
    expected: dict[str, str | None]  # manifest entry -> stage, None when it must embed
    names: dict[str, str]  # corpus name -> manifest entry
    duplicate_lines: int
    outputs: Outputs


@pytest.fixture(scope="module")
def hostile_day(tmp_path_factory) -> HostileDay:
    base = tmp_path_factory.mktemp("hostile")
    root = base / "images" / DAY
    corpus = write_bad_inputs(root)
    entries = {name: (str(path), BAD_INPUT_STAGES[name]) for name, path in corpus.items()}
    entries |= {name: (uri, ESCAPING_STAGE) for name, uri in write_escaping_entries(root).items()}
    entries |= write_extra_entries(root)
    lines, duplicate_lines = hostile_manifest([uri for uri, _ in entries.values()])
    output = base / "embeddings" / DAY
    output.mkdir(parents=True)
    # Written as bytes: CRLF line endings, names in UTF-8, a NUL byte, as a producer may send.
    (output / "manifest.txt").write_bytes("".join(f"{line}\r\n" for line in lines).encode())

    run_pipeline(str(output), "--input_root", str(root), "--num_shards", "2")

    return HostileDay(
        output=str(output),
        expected=dict(entries.values()),
        names={name: uri for name, (uri, _) in entries.items()},
        duplicate_lines=duplicate_lines,
        outputs=read_outputs(str(output)),
    )


def test_every_entry_ends_exactly_once_with_its_stage(hostile_day, observe):
    observe.area = "bad inputs"
    observe.bad_inputs = len(hostile_day.expected)
    accounting = observe.add(account(hostile_day.expected, hostile_day.outputs))

    assert accounting.lost == accounting.duplicated == accounting.unexpected == 0
    outputs = hostile_day.outputs
    stages = {uri: None for uri in outputs.embedded}
    stages |= {uri: row["stage"] for uri, row in outputs.failures.items()}
    assert stages == hostile_day.expected
    assert len(hostile_day.expected) >= 40


def test_failures_say_why_in_one_readable_line(hostile_day):
    failures = hostile_day.outputs.failures
    for uri, row in failures.items():
        error = row["error"]
        # The uri has a column of its own; what is left must be a short sentence.
        reason = error.replace(uri, "<uri>")
        assert row["stage"] in STAGES
        assert reason.strip() and reason.isprintable() and len(reason) < 200, (uri, error)
        assert "Traceback" not in error, (uri, error)
    names = hostile_day.names
    root = str(Path(names["zero_byte"]).parent)
    for escaping in ("etc_passwd", "dotdot_traversal", "symlink_out_of_root", "file_scheme"):
        assert failures[names[escaping]]["error"] == f"outside input root {root}"
    assert failures[names["missing_file"]]["error"] == "file not found"
    assert failures[names["directory_named_jpg"]]["error"] == "is a directory"
    assert failures[names["zero_byte"]]["error"] == "file is 0 bytes"
    assert failures[names["nul_byte"]]["error"].startswith("not a valid path")
    assert "bomb" in failures[names["decompression_bomb_png"]]["error"]


def test_escaping_entries_are_refused_before_any_read(hostile_day):
    """Stage `input` means the entry was refused before it was opened (contract.STAGE_INPUT)."""
    outputs = hostile_day.outputs
    refused = {uri for uri, row in outputs.failures.items() if row["stage"] == STAGE_INPUT}
    names = hostile_day.names
    assert {
        names[name]
        for name in (
            "etc_passwd",
            "dotdot_traversal",
            "symlink_out_of_root",
            "shared_prefix_sibling",
            "other_bucket",
            "file_scheme",
            "nul_byte",
        )
    } == refused


def test_valid_images_embed_whatever_their_name_or_extension(hostile_day):
    outputs = hostile_day.outputs
    names = hostile_day.names
    for name in (
        "png_named_jpg",
        "jpeg_named_txt",
        "no_extension",
        "uppercase_extension",
        "webp",
        "bmp",
        "tiff",
        "animated_gif",
        "name_with_spaces",
        "name_unicode",
        "name_with_hash",
        "name_with_percent",
        "symlink_inside_root",
    ):
        vector = outputs.vectors[names[name]]
        assert vector.shape == (DIM,) and np.isfinite(vector).all() and vector.any(), name
    # A link inside the root embeds what it points to.
    np.testing.assert_allclose(
        outputs.vectors[names["symlink_inside_root"]], outputs.vectors[names["webp"]], rtol=1e-5
    )


def test_success_marker_counts_add_up(hostile_day):
    marker = hostile_day.outputs.marker
    failing = sum(stage is not None for stage in hostile_day.expected.values())
    assert marker["images"] == len(hostile_day.expected)
    assert (marker["embedded"], marker["failed"]) == (
        len(hostile_day.expected) - failing,
        failing,
    )
    assert marker["embedded"] + marker["failed"] == marker["images"]
    assert marker["duplicates"] == hostile_day.duplicate_lines
    assert (marker["model"], marker["dim"]) == (MODEL, DIM)


def test_validation_passes_on_the_hostile_day(hostile_day):
    report = validate_output(hostile_day.output, max_failure_rate=1.0, expected_dim=DIM)

    assert report.ok, report.problems
    assert report.counts["images"] == len(hostile_day.expected)
    assert (
        report.counts["manifest_lines"] == len(hostile_day.expected) + hostile_day.duplicate_lines
    )
    assert sum(report.failure_stages.values()) == report.counts["failed"]


def test_the_day_left_only_the_contract_files(hostile_day):
    marker = hostile_day.outputs.marker
    expected = {LEASE_NAME, "_SUCCESS", "manifest.txt"}
    expected |= {*marker["embeddings_files"], *marker["failures_files"]}
    # validation.json appears once the validation test above has run.
    assert set(hostile_day.outputs.names) == expected
    assert not any(name.startswith(".") for name in os.listdir(hostile_day.output))
