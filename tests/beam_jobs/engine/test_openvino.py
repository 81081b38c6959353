"""The OpenVINO engine: exact float32, int8 with its guard, the prepared-model cache, real runs."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_jobs.image_embeddings.engine.accuracy import AccuracyRefused
from beam_jobs.image_embeddings.engine.model_cache import CacheEntryError, check_entry
from beam_jobs.image_embeddings.engine.models import CompiledEmbedder, build_model, resolve_model
from beam_jobs.image_embeddings.engine.openvino import (
    OpenVINOEmbedder,
    OpenVINOModelHandler,
    UnconvertibleModel,
    check_precision_supported,
    compile_model,
    convert,
    cpu_capabilities,
    request_slices,
    unconvertible,
)
from beam_jobs.image_embeddings.engine.prepare import main as prepare_main
from beam_jobs.image_embeddings.engine.prepare import prepare_model, quantization
from beam_jobs.image_embeddings.launcher import run
from beam_jobs.image_embeddings.options import JobOptions
from image_embeddings_airflow.dag.validation import validate_output
from tests.beam_jobs.engine.opaque_model import python_pooling_model
from tests.beam_jobs.engine.test_models import cosine, realish_images, save_tiny_model
from tests.image_factory import write_images

pytestmark = pytest.mark.slow

SMALL = "mobilenetv3small"
IMPOSSIBLE = {"min_centred_cosine_mean": 1.0, "min_centred_cosine": 1.0, "min_top5_overlap": 1.0}


def small_job(cache: Path | str, **options) -> JobOptions:
    chosen = {"manifest": None, "output": "", "model": SMALL, "weights": "random"}
    return JobOptions(**(chosen | {"model_cache": str(cache)} | options))


@pytest.fixture(scope="module")
def day(tmp_path_factory) -> Path:
    """A day of 24 photo-like JPEGs and its manifest."""
    root = tmp_path_factory.mktemp("day")
    paths = write_images(root / "images", 24, (96, 72), seed=40)
    manifest = root / "manifest.txt"
    manifest.write_text("".join(f"{path}\n" for path in paths))
    return manifest


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def float32_model(cache):
    return prepare_model(small_job(cache))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """A small saved conv net: random-weight applications quantize to all-zero embeddings (no
    real activation ranges to calibrate on), this one keeps its float32 neighbours in int8."""
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.keras"))


def tiny_int8_job(cache: Path | str, manifest: Path, model: str, **options) -> JobOptions:
    chosen = {"manifest": str(manifest), "output": "", "model": model, "precision": "int8"}
    return JobOptions(**(chosen | {"model_cache": str(cache)} | options))


@pytest.fixture(scope="module")
def int8_model(cache, day, tiny_model):
    return prepare_model(tiny_int8_job(cache, day, tiny_model))


@pytest.mark.parametrize("model", ["resnet50", "mobilenetv3small", "efficientnetb0"])
def test_float32_equals_tensorflow(model):
    spec = resolve_model(model)
    images = realish_images(6, spec.input_size, seed=7)
    tensorflow = CompiledEmbedder(build_model(spec, "random"), spec, 6, jit_compile=False)
    openvino = OpenVINOEmbedder(compile_model(convert(spec, "random"), "float32"))
    assert cosine(openvino(images), tensorflow(images)).min() >= 0.9999


def test_a_batch_is_split_over_the_requests_without_tiny_parts():
    assert request_slices(32, 2) == [slice(0, 16), slice(16, 32)]
    assert request_slices(5, 4) == [slice(0, 5)]
    assert request_slices(9, 2) == [slice(0, 4), slice(4, 9)]


def test_bfloat16_needs_the_cpu_to_have_it():
    check_precision_supported("bfloat16", ["FP32", "BF16"])
    check_precision_supported("int8", ["FP32", "INT8"])
    with pytest.raises(ValueError, match="bfloat16 needs a CPU with bfloat16 instructions"):
        check_precision_supported("bfloat16", ["FP32", "INT8"])


def test_a_model_openvino_cannot_convert_names_the_tensorflow_engine():
    error = unconvertible(resolve_model(SMALL), RuntimeError("op Foo\nstack..."))
    assert str(error) == (
        "OpenVINO cannot convert model mobilenetv3small: run it with --engine tensorflow "
        "(RuntimeError: op Foo)"
    )


def test_a_second_preparation_is_a_cache_hit(float32_model, cache):
    assert not float32_model.cache_hit
    again = prepare_model(small_job(cache))
    assert again.cache_hit and again.uri == float32_model.uri
    card = again.card
    assert card["fingerprint_parts"]["engine"].startswith("openvino-")
    assert card["accuracy"] is None and card["dim"] == 576 and card["prepared_at"]


def test_a_corrupt_entry_is_refused_by_workers_and_rebuilt_by_preparation(float32_model, tmp_path):
    cache = tmp_path / "cache"
    entry = cache / Path(float32_model.uri).name
    shutil.copytree(float32_model.uri, entry)
    (entry / "model.bin").write_bytes(b"\0" * 64)
    handler = OpenVINOModelHandler(str(entry), SMALL, "float32")
    with pytest.raises(CacheEntryError, match="model.bin is corrupt"):
        handler.load_model()
    rebuilt = prepare_model(small_job(cache))
    assert not rebuilt.cache_hit and rebuilt.uri == str(entry)
    check_entry(str(entry), float32_model.card["fingerprint"])
    assert handler.load_model().dim == 576


def test_int8_passes_the_guard_and_records_its_figures_and_calibration(int8_model, day):
    card = int8_model.card
    figures = card["accuracy"]
    assert figures["images"] >= 6
    assert figures["centred_cosine_mean"] >= 0.99 and figures["top5_overlap"] >= 0.9
    assert card["thresholds"] == {
        "min_centred_cosine_mean": 0.99,
        "min_centred_cosine": 0.97,
        "min_top5_overlap": 0.9,
    }
    assert set(figures) == {"images", "centred_cosine_mean", "centred_cosine_min", "top5_overlap"}
    assert card["calibration"]["manifest"] == str(day)
    assert card["calibration"]["digest"] == card["fingerprint_parts"]["calibration"]
    assert card["calibration"]["images"] + card["calibration"]["held_out"] == 24
    assert card["fingerprint_parts"]["quantization"] == quantization()
    assert quantization().endswith("activation ranges minmax")


def test_int8_below_the_thresholds_is_refused_with_its_figures(tmp_path, day, tiny_model):
    with pytest.raises(AccuracyRefused) as refused:
        prepare_model(tiny_int8_job(tmp_path, day, tiny_model, **IMPOSSIBLE))
    message = str(refused.value)
    assert "int8 model refused" in message and "centred_cosine_mean" in message
    assert "held-out images" in message
    assert not any(tmp_path.iterdir())


def test_a_cached_int8_model_meets_todays_thresholds(int8_model, cache, day, tiny_model):
    with pytest.raises(AccuracyRefused, match="int8 model refused"):
        prepare_model(tiny_int8_job(cache, day, tiny_model, **IMPOSSIBLE))


def test_int8_fingerprints_are_equal_across_two_days_with_different_images(
    tmp_path, day, tiny_model
):
    other_day = tmp_path / "manifest.txt"
    paths = write_images(tmp_path / "images", 24, (96, 72), seed=400)
    other_day.write_text("".join(f"{path}\n" for path in paths))
    first = prepare_model(tiny_int8_job(tmp_path / "cache", day, tiny_model))
    second = prepare_model(tiny_int8_job(tmp_path / "cache", other_day, tiny_model))
    assert second.cache_hit and second.card["fingerprint"] == first.card["fingerprint"]
    pin = json.loads(Path(first.card["calibration"]["pin"]).read_text())
    assert pin["manifest"] == str(day) and pin["digest"] == first.card["calibration"]["digest"]
    # The cache lost the model: it is rebuilt from the pinned images, not the day's.
    shutil.rmtree(first.uri)
    rebuilt = prepare_model(tiny_int8_job(tmp_path / "cache", other_day, tiny_model))
    assert not rebuilt.cache_hit and rebuilt.card["fingerprint"] == first.card["fingerprint"]
    assert rebuilt.card["calibration"]["manifest"] == str(day)


@pytest.mark.skipif("BF16" not in cpu_capabilities(), reason="no bfloat16 instructions here")
def test_bfloat16_is_checked_against_float32_and_records_its_figures(tmp_path, day, tiny_model):
    job = tiny_int8_job(tmp_path, day, tiny_model, precision="bfloat16")
    prepared = prepare_model(job)
    figures = prepared.card["accuracy"]
    assert figures["centred_cosine_mean"] >= 0.99 and figures["top5_overlap"] >= 0.9
    assert prepared.card["calibration"] is None
    assert prepared.card["fingerprint_parts"]["precision"] == "bfloat16"
    with pytest.raises(AccuracyRefused, match="bfloat16 model refused"):
        prepare_model(dataclasses.replace(job, **IMPOSSIBLE))


def test_the_cli_prints_the_prepared_model(float32_model, cache, capsys):
    code = prepare_main([f"--model={SMALL}", "--weights=random", f"--model_cache={cache}"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["prepared_model"] == float32_model.uri and printed["cache_hit"] is True


def run_day(manifest: Path, output: Path, model: list[str], dim: int, *options: str) -> dict:
    """Run the pipeline on the day as the DAG does (its manifest in the output folder); validate."""
    output.mkdir()
    shutil.copy(manifest, output / "manifest.txt")
    run(
        [
            f"--manifest={output / 'manifest.txt'}",
            f"--output={output}",
            "--batch_size=8",
            *model,
            *options,
        ]
    )
    report = validate_output(str(output), 0.0)
    assert report.counts["embedded"] == 24 and report.dim == dim
    return json.loads((output / "_SUCCESS").read_text())


SMALL_ARGS = [f"--model={SMALL}", "--weights=random"]


def test_a_float32_run_loads_the_prepared_model(float32_model, day, tmp_path):
    marker = run_day(
        day, tmp_path / "out", SMALL_ARGS, 576, f"--prepared_model={float32_model.uri}"
    )
    assert marker["model_fingerprint"] == float32_model.card["fingerprint"]
    assert (marker["engine"], marker["prepared_model"]) == ("openvino", float32_model.uri)


def test_an_int8_run_prepares_in_the_launcher_and_records_the_figures(
    int8_model, cache, day, tiny_model, tmp_path
):
    marker = run_day(
        day,
        tmp_path / "out",
        [f"--model={tiny_model}"],
        8,
        "--precision=int8",
        f"--model_cache={cache}",
    )
    assert marker["prepared_model"] == int8_model.uri
    assert marker["accuracy"] == int8_model.card["accuracy"]
    assert marker["fingerprint_parts"]["calibration"].startswith("sha256:")


def test_two_int8_days_of_different_images_share_one_fingerprint_and_say_so(
    day, tiny_model, tmp_path
):
    paths = write_images(tmp_path / "images", 24, (96, 72), seed=700)
    other_day = tmp_path / "other.txt"
    other_day.write_text("".join(f"{path}\n" for path in paths))
    days = tmp_path / "embeddings"
    days.mkdir()
    options = [f"--model={tiny_model}"], 8, "--precision=int8", f"--model_cache={tmp_path}/cache"
    first = run_day(day, days / "2026-12-01", *options)
    second = run_day(other_day, days / "2026-12-02", *options)
    assert first["previous_fingerprint"] is None
    assert second["previous_fingerprint"] == {
        "day": "2026-12-01",
        "fingerprint": first["model_fingerprint"],
        "changed": False,
    }
    assert second["model_fingerprint"] == first["model_fingerprint"]


def test_a_refused_int8_model_fails_the_run_before_anything_is_embedded(
    int8_model, cache, day, tiny_model, tmp_path
):
    strict = [f"--{name}={value}" for name, value in IMPOSSIBLE.items()]
    output = tmp_path / "out"
    with pytest.raises(AccuracyRefused, match="nothing was embedded"):
        run_day(
            day,
            output,
            [f"--model={tiny_model}"],
            8,
            "--precision=int8",
            f"--model_cache={cache}",
            *strict,
        )
    assert sorted(path.name for path in output.iterdir()) == ["manifest.txt"]


def test_a_prepared_model_for_another_precision_is_refused(float32_model, day, tmp_path):
    with pytest.raises(ValueError, match="was made for"):
        run_day(
            day,
            tmp_path / "out",
            SMALL_ARGS,
            576,
            "--precision=int8",
            f"--prepared_model={float32_model.uri}",
        )


def upload(folder: str, target: str) -> None:
    for path in Path(folder).iterdir():
        with (
            open(path, "rb") as source,
            FileSystems.create(
                f"{target}/{path.name}", compression_type=CompressionTypes.UNCOMPRESSED
            ) as copy,
        ):
            copy.write(source.read())


def test_the_dataflow_job_is_built_to_load_the_prepared_model(float32_model, gcs_bucket):
    prepared = f"gs://{gcs_bucket.name}/model_cache/{Path(float32_model.uri).name}"
    upload(float32_model.uri, prepared)
    bucket = f"gs://{gcs_bucket.name}"
    common = [
        f"--manifest={bucket}/2026-11-28/manifest.txt",
        f"--output={bucket}/2026-11-28",
        f"--model={SMALL}",
        "--weights=random",
        "--runner=DataflowRunner",
        "--project=image-embeddings-test",
        "--region=europe-west1",
        f"--temp_location={bucket}/tmp",
        "--dry_run=True",
    ]
    job = run([*common, f"--prepared_model={prepared}"]).job
    names = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
    assert "EmbedImages/RunInference" in names
    embedder = OpenVINOModelHandler(prepared, SMALL, "float32").load_model()
    images = realish_images(2, (224, 224))
    np.testing.assert_allclose(
        embedder(images),
        OpenVINOModelHandler(float32_model.uri, SMALL, "float32").load_model()(images),
        rtol=1e-5,
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="Dataflow workers cannot read it"):
        run([*common, f"--prepared_model={float32_model.uri}"])


def test_the_prepare_cli_has_help():
    shown = subprocess.run(
        [sys.executable, "-m", "beam_jobs.image_embeddings.engine.prepare", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in ("--model", "--precision", "--model_cache", "--calibration_manifest"):
        assert flag in shown
    assert "--min_top5_overlap" in shown and "JSON" in shown


def test_a_model_openvino_cannot_convert_fails_at_preparation_naming_tensorflow(monkeypatch):

    from beam_jobs.image_embeddings.engine import openvino as openvino_engine

    model = python_pooling_model()
    monkeypatch.setattr(openvino_engine, "build_model", lambda *args: model)
    with pytest.raises(UnconvertibleModel) as refused:
        convert(resolve_model(SMALL), "random")
    message = str(refused.value)
    assert message.startswith(
        "OpenVINO cannot convert model mobilenetv3small: run it with --engine tensorflow ("
    )
    assert "\n" not in message
