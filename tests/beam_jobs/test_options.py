"""The job's command line: its options, their checks, and what passes through to Beam."""

from __future__ import annotations

import subprocess
import sys

import pytest

from beam_jobs.image_embeddings.engine.accuracy import Thresholds
from beam_jobs.image_embeddings.options import JobOptions, parse_known_args

REQUIRED = ["--manifest", "gs://bucket/day/manifest.txt", "--output", "gs://bucket/day"]


def test_defaults_follow_the_design():
    job, beam_args = parse_known_args(REQUIRED)
    assert job == JobOptions(manifest="gs://bucket/day/manifest.txt", output="gs://bucket/day")
    assert (job.model, job.weights, job.batch_size) == ("resnet50", "imagenet", 32)
    assert (job.engine, job.prepared_model, job.model_cache) == ("openvino", None, None)
    assert job.thresholds() == Thresholds(0.99, 0.97, 0.9)
    assert (job.precision, job.embedding_dtype, job.progress_interval_secs) == (
        "float32",
        "float32",
        30.0,
    )
    assert beam_args == []


def test_job_options_are_parsed_and_beam_options_pass_through_untouched():
    beam = ["--runner=DataflowRunner", "--project", "p", "--max_num_workers=4", "--dry_run=True"]
    job, beam_args = parse_known_args(
        [
            *REQUIRED,
            *beam,
            "--model=MobileNetV3Small",
            "--weights=random",
            "--batch_size=8",
            "--max_image_bytes=1000",
            "--input_root=gs://bucket/images/2026-11-28",
            "--precision=bfloat16",
            "--embedding_dtype=float16",
            "--num_shards=3",
            "--progress_interval_secs=2.5",
            "--wait_until_finish",
        ]
    )
    assert beam_args == beam
    assert (job.model, job.weights, job.batch_size, job.max_image_bytes) == (
        "MobileNetV3Small",
        "random",
        8,
        1000,
    )
    assert job.input_root == "gs://bucket/images/2026-11-28"
    assert (job.precision, job.embedding_dtype, job.num_shards) == ("bfloat16", "float16", 3)
    assert (job.progress_interval_secs, job.wait_until_finish) == (2.5, True)
    assert job.jit_compile is None


@pytest.mark.parametrize(
    ("flag", "jit_compile"), [("--jit_compile", True), ("--no_jit_compile", False)]
)
def test_xla_can_be_forced_either_way(flag, jit_compile):
    job, _ = parse_known_args([*REQUIRED, "--engine=tensorflow", flag])
    assert job.jit_compile is jit_compile


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: --manifest, --output"),
        (["--batch_size=0"], "expected an integer >= 1, got 0"),
        (["--max_image_bytes=-5"], "expected an integer >= 1, got -5"),
        (["--num_shards=-1"], "expected an integer >= 0, got -1"),
        (["--progress_interval_secs=0"], "expected a number > 0, got 0"),
        (["--precision=float16"], "invalid choice: 'float16'"),
        (["--embedding_dtype=int8"], "invalid choice: 'int8'"),
        (["--jit_compile", "--no_jit_compile"], "not allowed with argument --jit_compile"),
        (["--engine=onnx"], "invalid choice: 'onnx'"),
        (["--engine=tensorflow", "--precision=int8"], "--precision int8 needs --engine openvino"),
        (["--engine=tensorflow", "--prepared_model=/m"], "--prepared_model is an OpenVINO model"),
        (["--jit_compile"], "apply to --engine tensorflow only"),
        (["--min_top5_overlap=2"], "expected a number between -1 and 1, got 2"),
        (["--input_root=ftp://host/images"], "use a local path or gs://bucket/path"),
        (["--model=resnet5"], "unknown model 'resnet5'"),
    ],
)
def test_bad_options_are_refused_with_what_is_expected(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_known_args([*REQUIRED, *argv] if argv else argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_prefix_of_a_job_option_is_left_for_beam():
    job, beam_args = parse_known_args([*REQUIRED, "--out=elsewhere"])
    assert job.output == "gs://bucket/day"
    assert beam_args == ["--out=elsewhere"]


def test_help_lists_every_job_option():
    shown = subprocess.run(
        [sys.executable, "-m", "beam_jobs.image_embeddings", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in JobOptions.__dataclass_fields__:
        assert f"--{flag}" in shown or f"--no_{flag}" in shown
    assert "Any other option goes to Apache Beam unchanged" in shown
