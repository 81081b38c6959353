"""Tests of the model table, model building, weights sources and the Keras RunInference handler."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import BeamAssertException, assert_that

from beam_jobs.image_embeddings.contract import MODEL_NAMES
from beam_jobs.image_embeddings.engine import models
from beam_jobs.image_embeddings.engine.models import (
    BUILTIN_MODELS,
    KerasModelHandler,
    build_model,
    input_size_from_config,
    padded_size,
    resolve_model,
    stack_images,
)
from beam_jobs.image_embeddings.storage import io as storage
from tests.beam_jobs.engine.opaque_model import python_pooling_model
from tests.gcs_emulator import free_port

REPO_ROOT = Path(__file__).resolve().parents[3]
TINY_SIZE = (16, 20)


def realish_images(count: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Photographs in miniature: smooth colour gradients, a few solid shapes, sensor noise."""
    rng = np.random.default_rng(seed)
    height, width = size
    rows = np.linspace(0.0, 1.0, height)[:, None, None]
    cols = np.linspace(0.0, 1.0, width)[None, :, None]
    images = []
    for _ in range(count):
        start, slope_y, slope_x = rng.uniform(0, 255, (3, 1, 1, 3))
        image = start + (slope_y - start) * rows + (slope_x - start) * cols / 2
        for _ in range(3):
            top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
            bottom, right = top + rng.integers(4, height // 2), left + rng.integers(4, width // 2)
            image[top:bottom, left:right] = rng.uniform(0, 255, 3)
        image = image + rng.normal(0, 6, image.shape)
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return np.stack(images)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def save_tiny_model(path: Path) -> Path:
    """A small conv net ending in feature maps, saved as a Keras v3 `.keras` file."""
    import keras

    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((*TINY_SIZE, 3)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(6, 3, activation="relu"),
            keras.layers.Conv2D(8, 3),
        ]
    )
    model.save(path)
    return path


@pytest.fixture(scope="module")
def handlers():
    """Loaded handler models by (model, precision): each is built and traced once per module."""
    loaded = {}

    def load(model: str, precision: str = "float32"):
        if (model, precision) not in loaded:
            handler = KerasModelHandler(model, "random", precision, max_batch_size=4)
            loaded[model, precision] = (handler, handler.load_model())
        return loaded[model, precision]

    return load


@pytest.fixture
def emulated_gcs(gcs_bucket):
    """The emulator's bucket, with Beam's filesystem set to reach it without a credential search."""
    storage.use_emulator_credentials()
    return gcs_bucket


# --- The model table, without TensorFlow -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "canonical", "size", "dim", "preprocess"),
    [
        ("resnet50", "resnet50", (224, 224), 2048, "resnet50"),
        ("ResNet50", "resnet50", (224, 224), 2048, "resnet50"),
        ("EfficientNetB0", "efficientnetb0", (224, 224), 1280, "efficientnet"),
        ("efficientnetb3", "efficientnetb3", (300, 300), 1536, "efficientnet"),
        ("MobileNetV3Small", "mobilenetv3small", (224, 224), 576, "mobilenet_v3"),
        ("InceptionV3", "inceptionv3", (299, 299), 2048, "inception_v3"),
    ],
)
def test_resolve_builtin_model(name, canonical, size, dim, preprocess):
    spec = resolve_model(name)
    assert (spec.name, spec.input_size, spec.dim, spec.preprocess) == (
        canonical,
        size,
        dim,
        preprocess,
    )
    assert not spec.is_custom


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'resnet5'") as raised:
        resolve_model("resnet5")
    assert all(name in str(raised.value) for name in BUILTIN_MODELS)
    assert ".keras" in str(raised.value)


def test_the_model_table_is_the_one_the_contract_names():
    assert tuple(BUILTIN_MODELS) == MODEL_NAMES


def test_resolving_a_builtin_model_imports_no_tensorflow():
    code = (
        "import sys\n"
        "from beam_jobs.image_embeddings.engine.models import resolve_model\n"
        "resolve_model('efficientnetb0')\n"
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("layers", "problem"),
    [
        ([{"class_name": "InputLayer", "config": {"batch_shape": [None, None, None, 3]}}], "fixed"),
        ([{"class_name": "InputLayer", "config": {"batch_shape": [None, 32, 32, 1]}}], "RGB"),
        ([{"class_name": "Dense", "config": {"units": 3}}], "found 0"),
        ([{"class_name": "InputLayer", "config": {"batch_shape": [None, 8, 8, 3]}}] * 2, "found 2"),
    ],
)
def test_input_size_from_config_refuses_what_images_cannot_feed(layers, problem):
    with pytest.raises(ValueError, match=problem):
        input_size_from_config({"config": {"layers": layers}}, "m.keras")


def test_input_size_from_config_reads_keras2_names():
    layers = [{"class_name": "InputLayer", "config": {"batch_input_shape": [None, 64, 48, 3]}}]
    assert input_size_from_config({"config": {"layers": layers}}, "m.keras") == (64, 48)


def test_resolve_local_keras_file(tmp_path):
    path = save_tiny_model(tmp_path / "tiny.keras")
    spec = resolve_model(str(path))
    assert (spec.name, spec.input_size, spec.dim, spec.is_custom) == (
        str(path),
        TINY_SIZE,
        None,
        True,
    )


def test_resolve_keras_file_on_gcs(tmp_path, emulated_gcs):
    path = save_tiny_model(tmp_path / "tiny.keras")
    emulated_gcs.blob("models/tiny.keras").upload_from_filename(str(path))
    uri = f"gs://{emulated_gcs.name}/models/tiny.keras"
    assert resolve_model(uri).input_size == TINY_SIZE


def test_resolve_refuses_a_file_that_is_not_a_keras_model(tmp_path):
    path = tmp_path / "broken.keras"
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a Keras v3 model file"):
        resolve_model(str(path))


# --- Building models and their weights ---------------------------------------------------------


def test_random_weights_are_deterministic_and_announced(caplog):
    spec = resolve_model("mobilenetv3small")
    images = realish_images(2, spec.input_size).astype(np.float32)
    with caplog.at_level(logging.WARNING):
        first = build_model(spec, "random")
        second = build_model(spec, "random")
    assert all(
        np.array_equal(a, b) for a, b in zip(first.get_weights(), second.get_weights(), strict=True)
    )
    np.testing.assert_array_equal(first(images).numpy(), second(images).numpy())
    assert any(
        "RANDOM weights" in r.message and r.levelno == logging.WARNING for r in caplog.records
    )


def perturbed_weights_file(spec, path: Path) -> tuple[object, Path]:
    """Save the random model's weights, each scaled and shifted, as a Keras weights file."""
    model = build_model(spec, "random")
    rng = np.random.default_rng(1)
    model.set_weights([w * 1.05 + rng.normal(0, 0.01, w.shape) for w in model.get_weights()])
    model.save_weights(path)
    return model, path


@pytest.mark.parametrize("on_gcs", [False, True], ids=["local", "gcs"])
def test_weights_file_round_trip(tmp_path, request, on_gcs):
    spec = resolve_model("mobilenetv3small")
    saved, path = perturbed_weights_file(spec, tmp_path / "perturbed.weights.h5")
    uri = str(path)
    if on_gcs:
        bucket = request.getfixturevalue("emulated_gcs")
        bucket.blob("weights/perturbed.weights.h5").upload_from_filename(uri)
        uri = f"gs://{bucket.name}/weights/perturbed.weights.h5"
    loaded = build_model(spec, uri)
    images = realish_images(2, spec.input_size).astype(np.float32)
    np.testing.assert_array_equal(loaded(images).numpy(), saved(images).numpy())
    random_outputs = build_model(spec, "random")(images).numpy()
    assert not np.allclose(loaded(images).numpy(), random_outputs, rtol=1e-3, atol=0)


def test_missing_weights_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file .*missing.weights.h5 not found"):
        build_model(resolve_model("mobilenetv3small"), str(tmp_path / "missing.weights.h5"))


def test_unavailable_imagenet_weights_fail_fast_with_advice(tmp_path):
    # A fresh interpreter, so Keras reads the empty KERAS_HOME (it reads it once, at import); the
    # proxy is a closed local port, so the download is refused at once, network or not.
    closed = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "all_proxy")}
    env.update(KERAS_HOME=str(tmp_path), HTTPS_PROXY=closed, HTTP_PROXY=closed)
    env.update(https_proxy=closed, http_proxy=closed)
    code = (
        "from beam_jobs.image_embeddings.engine.models import build_model, resolve_model\n"
        "build_model(resolve_model('mobilenetv3small'), 'imagenet')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode != 0
    assert "RuntimeError: ImageNet weights for MobileNetV3Small could not be had" in result.stderr
    assert "--weights random" in result.stderr and "--weights URI" in result.stderr
    assert not list((tmp_path / "models").glob("*.h5"))


def test_keras_file_model_is_pooled_and_keeps_its_weights(tmp_path):
    import keras

    path = save_tiny_model(tmp_path / "tiny.keras")
    model = build_model(resolve_model(str(path)), "imagenet")
    pixels = realish_images(3, TINY_SIZE).astype(np.float32)
    feature_maps = keras.saving.load_model(path)(pixels).numpy()
    np.testing.assert_allclose(model(pixels).numpy(), feature_maps.mean(axis=(1, 2)), rtol=1e-5)


def test_keras_file_model_takes_a_weights_file_but_not_random(tmp_path):
    import keras

    path = save_tiny_model(tmp_path / "tiny.keras")
    other = keras.saving.load_model(path)
    other.set_weights([w + 0.1 for w in other.get_weights()])
    other.save_weights(tmp_path / "other.weights.h5")
    spec = resolve_model(str(path))
    model = build_model(spec, str(tmp_path / "other.weights.h5"))
    pixels = realish_images(2, TINY_SIZE).astype(np.float32)
    expected = other(pixels).numpy().mean(axis=(1, 2))
    np.testing.assert_allclose(model(pixels).numpy(), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="random only applies to built-in models"):
        build_model(spec, "random")


# --- The RunInference handler ------------------------------------------------------------------


PREPROCESS_MODULES = {
    "resnet50": "resnet50",
    "efficientnetb0": "efficientnet",
    "mobilenetv3small": "mobilenet_v3",
}


@pytest.mark.parametrize("model", list(PREPROCESS_MODULES))
def test_handler_matches_the_model_on_preprocessed_pixels_image_by_image(handlers, model):
    import importlib

    handler, embedder = handlers(model)
    spec = resolve_model(model)
    preprocess = importlib.import_module(
        f"keras.applications.{PREPROCESS_MODULES[model]}"
    ).preprocess_input
    images = realish_images(3, spec.input_size, seed=5)

    outputs = list(handler.run_inference(list(images), embedder))

    assert len(outputs) == 3
    for image, output in zip(images, outputs, strict=True):
        assert output.dtype == np.float32 and output.shape == (spec.dim,)
        pixels = preprocess(image[None].astype(np.float32))
        direct = embedder.model(pixels, training=False).numpy()[0]
        np.testing.assert_allclose(output, direct, rtol=1e-4, atol=1e-4 * np.abs(direct).max())
    if model == "resnet50":
        raw = embedder.model(images.astype(np.float32), training=False).numpy()
        assert not np.allclose(np.stack(outputs), raw, rtol=1e-3), "caffe preprocessing missing"


def test_handler_keeps_batch_order(handlers):
    handler, embedder = handlers("resnet50")
    images = list(realish_images(4, (224, 224), seed=9))
    forward = np.stack(handler.run_inference(images, embedder))
    backward = np.stack(handler.run_inference(images[::-1], embedder))
    np.testing.assert_allclose(backward, forward[::-1], rtol=1e-4, atol=1e-4)
    assert not np.allclose(forward[0], forward[1], rtol=1e-3, atol=0)


def test_bfloat16_embeddings_stay_close_to_float32(handlers):
    _, fp32 = handlers("resnet50")
    handler, bf16 = handlers("resnet50", "bfloat16")
    images = list(realish_images(4, (224, 224), seed=11))
    exact = np.stack(fp32(np.stack(images)))
    fast = np.stack(handler.run_inference(images, bf16))
    assert fast.dtype == np.float32
    assert not np.array_equal(fast, exact), "bfloat16 did not change the arithmetic"
    assert cosine(fast, exact).min() >= 0.99


@pytest.mark.parametrize(
    ("count", "batch_size", "padded"),
    [(1, 32, 1), (3, 32, 4), (16, 32, 16), (17, 32, 32), (32, 32, 32), (17, 24, 24), (40, 32, 64)],
)
def test_xla_batches_are_padded_to_a_power_of_two_or_the_batch_size(count, batch_size, padded):
    assert padded_size(count, batch_size) == padded


def test_xla_and_the_graph_executor_agree(handlers):
    handler, xla = handlers("mobilenetv3small")
    graph_handler = KerasModelHandler(
        "mobilenetv3small", "random", max_batch_size=4, jit_compile=False
    )
    graph = graph_handler.load_model()
    images = list(realish_images(3, (224, 224), seed=13))  # XLA pads these to 4

    assert xla.jit_compile and not graph.jit_compile
    assert not KerasModelHandler("mobilenetv3small", "random", "bfloat16").jit_compile
    compiled = np.stack(handler.run_inference(images, xla))
    plain = np.stack(graph_handler.run_inference(images, graph))
    np.testing.assert_allclose(compiled, plain, rtol=1e-4, atol=1e-5 * np.abs(plain).max())


def test_a_model_xla_cannot_compile_fails_with_advice_and_runs_without_xla(monkeypatch):
    model = python_pooling_model()
    monkeypatch.setattr(models, "build_model", lambda *args: model)
    handler = KerasModelHandler("resnet50", "random", max_batch_size=2)

    with pytest.raises(RuntimeError, match="XLA cannot compile model resnet50.*--no_jit_compile"):
        handler.load_model()
    handler = KerasModelHandler("resnet50", "random", max_batch_size=2, jit_compile=False)
    assert handler.load_model().dim == 4


def test_handler_settings():
    handler = KerasModelHandler("EfficientNetB0", "random", min_batch_size=2, max_batch_size=8)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 2, "max_batch_size": 8}
    assert handler.get_metrics_namespace() == "image_embeddings"
    assert handler.share_model_across_processes() is False
    images = list(realish_images(2, (224, 224)))
    assert handler.get_num_bytes(images) == 2 * 224 * 224 * 3
    with pytest.raises(ValueError, match="min"):
        KerasModelHandler(min_batch_size=8, max_batch_size=4)
    with pytest.raises(ValueError, match="precision must be one of float32, bfloat16"):
        KerasModelHandler(precision="float16")
    with pytest.raises(ValueError, match="unknown model"):
        KerasModelHandler("alexnet")


def test_stack_images_names_the_image_that_does_not_fit():
    good = np.zeros((8, 6, 3), np.uint8)
    assert stack_images([good, good], (8, 6)).shape == (2, 8, 6, 3)
    with pytest.raises(ValueError, match=r"image 1 of the batch is uint8 \(6, 8, 3\)"):
        stack_images([good, np.zeros((6, 8, 3), np.uint8)], (8, 6))
    with pytest.raises(ValueError, match="image 0 of the batch is float32"):
        stack_images([good.astype(np.float32)], (8, 6))


def embeddings_close_to(expected: dict[str, np.ndarray]):
    """Matcher: each key's embedding equals the expected one, and every key appears once."""

    def check(actual):
        keys = sorted(key for key, _ in actual)
        if keys != sorted(expected):
            raise BeamAssertException(f"keys {keys} != {sorted(expected)}")
        for key, embedding in actual:
            if not np.allclose(embedding, expected[key], rtol=1e-4, atol=1e-6):
                raise BeamAssertException(f"{key}: {embedding} != {expected[key]}")

    return check


def test_run_inference_in_a_beam_pipeline(tmp_path):
    import keras

    path = save_tiny_model(tmp_path / "tiny.keras")
    images = realish_images(7, TINY_SIZE, seed=4)
    feature_maps = keras.saving.load_model(path)(images.astype(np.float32)).numpy()
    expected = {f"img-{i}": maps.mean(axis=(0, 1)) for i, maps in enumerate(feature_maps)}
    handler = KeyedModelHandler(KerasModelHandler(str(path), max_batch_size=3))

    with test_pipeline.TestPipeline() as pipeline:
        embedded = (
            pipeline
            | beam.Create([(f"img-{i}", image) for i, image in enumerate(images)])
            | RunInference(handler)
        )
        assert_that(embedded, embeddings_close_to(expected))
