"""Embedding models: the known ones, how to build them, their Keras 3 RunInference handler."""

from __future__ import annotations

import importlib
import json
import logging
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler

from beam_jobs.image_embeddings.contract import KERAS_FILE_SUFFIX, METRICS_NAMESPACE
from beam_jobs.image_embeddings.engine.weights import (
    IMAGENET,
    RANDOM,
    imagenet_unavailable,
    is_weights_uri,
    load_weights_file,
    local_copy,
    seed_random_weights,
    stalled_downloads_fail,
)

# The precisions the tensorflow engine runs -> Keras dtype policy. Mixed bfloat16 keeps
# variables in float32 and computes in bfloat16, which CPUs with AVX512_BF16 run much faster.
DTYPE_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16"}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """What the pipeline needs to know about a model before building it."""

    name: str  # lower-case keras.applications name ("resnet50") or the URI of a .keras file
    input_size: tuple[int, int]  # (height, width) the images are resized to
    dim: int | None  # embedding dimension when known without building the model
    application: str | None = None  # constructor in keras.applications; None for a .keras file
    preprocess: str | None = None  # keras.applications module whose preprocess_input applies

    @property
    def is_custom(self) -> bool:
        return self.application is None


def _builtin(application: str, preprocess: str, size: int, dim: int) -> ModelSpec:
    return ModelSpec(application.lower(), (size, size), dim, application, preprocess)


# Input sizes are the ones each model's ImageNet weights were trained at; dims are the channels of
# the last feature map, which average pooling turns into the embedding.
BUILTIN_MODELS: Mapping[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _builtin("ResNet50", "resnet50", 224, 2048),
        _builtin("ResNet101", "resnet", 224, 2048),
        _builtin("ResNet152", "resnet", 224, 2048),
        _builtin("ResNet50V2", "resnet_v2", 224, 2048),
        _builtin("EfficientNetB0", "efficientnet", 224, 1280),
        _builtin("EfficientNetB1", "efficientnet", 240, 1280),
        _builtin("EfficientNetB2", "efficientnet", 260, 1408),
        _builtin("EfficientNetB3", "efficientnet", 300, 1536),
        _builtin("EfficientNetV2B0", "efficientnet_v2", 224, 1280),
        _builtin("MobileNetV2", "mobilenet_v2", 224, 1280),
        _builtin("MobileNetV3Small", "mobilenet_v3", 224, 576),
        _builtin("MobileNetV3Large", "mobilenet_v3", 224, 960),
        _builtin("DenseNet121", "densenet", 224, 1024),
        _builtin("InceptionV3", "inception_v3", 299, 2048),
        _builtin("Xception", "xception", 299, 2048),
        _builtin("ConvNeXtTiny", "convnext", 224, 768),
        _builtin("VGG16", "vgg16", 224, 512),
    )
}


def resolve_model(model: str) -> ModelSpec:
    """The spec of a built-in model name (any case) or of a `.keras` file URI; no TensorFlow."""
    if model.lower().endswith(KERAS_FILE_SUFFIX):
        return ModelSpec(name=model, input_size=keras_file_input_size(model), dim=None)
    spec = BUILTIN_MODELS.get(model.strip().lower())
    if spec is None:
        raise ValueError(
            f"unknown model {model!r}: use one of {', '.join(BUILTIN_MODELS)} "
            f"or the URI of a Keras model file ending in {KERAS_FILE_SUFFIX}"
        )
    return spec


def keras_file_input_size(uri: str) -> tuple[int, int]:
    """(height, width) of the image input of a Keras v3 `.keras` file, read from its config.json."""
    try:
        with (
            FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as handle,
            zipfile.ZipFile(handle) as archive,
        ):
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError) as error:
        raise ValueError(
            f"{uri} is not a Keras v3 model file (a zip holding config.json): {error}"
        ) from error
    return input_size_from_config(config, uri)


def input_size_from_config(config: Mapping[str, Any], uri: str) -> tuple[int, int]:
    """(height, width) of a saved model config whose one input is (batch, height, width, 3)."""
    shapes = list(_input_shapes(config))
    if len(shapes) != 1:
        raise ValueError(f"model {uri} must have exactly one image input, found {len(shapes)}")
    shape = shapes[0]
    if len(shape) != 4 or shape[3] != 3 or not all(isinstance(n, int) for n in shape[1:3]):
        raise ValueError(
            f"model {uri} takes inputs of shape {shape}: it must take (batch, height, width, 3) "
            "RGB images with a fixed height and width, e.g. keras.Input((224, 224, 3))"
        )
    return shape[1], shape[2]


def _input_shapes(config: Mapping[str, Any]) -> Iterator[list[Any]]:
    """The batch shapes of every InputLayer of a saved model config (Keras 3 or 2 key names)."""
    for layer in config.get("config", {}).get("layers", []):
        if layer.get("class_name") == "InputLayer":
            layer_config = layer.get("config", {})
            shape = layer_config.get("batch_shape") or layer_config.get("batch_input_shape")
            if shape is not None:
                yield list(shape)


def check_weights(spec: ModelSpec, weights: str) -> None:
    """Raise ValueError when `weights` cannot apply to the model of `spec`."""
    if not weights:
        raise ValueError("weights must be imagenet, random or the URI of a Keras weights file")
    if spec.is_custom and weights == RANDOM:
        raise ValueError(
            f"--weights random only applies to built-in models; {spec.name} carries its own "
            "weights (keep the default, or pass the URI of a weights file to load over them)"
        )


def check_precision(precision: str) -> None:
    if precision not in DTYPE_POLICIES:
        raise ValueError(
            f"precision must be one of {', '.join(DTYPE_POLICIES)}, not {precision!r} "
            "(int8 runs on --engine openvino)"
        )


def build_model(spec: ModelSpec, weights: str, precision: str = "float32") -> Any:
    """A keras.Model mapping preprocessed (batch, height, width, 3) images to (batch, dim) vectors.

    Built-in models get `weights` imagenet, random or a weights file URI. A `.keras` model keeps
    the weights it was saved with (`weights` left at its default, imagenet) unless a weights file
    URI is given.
    """
    check_weights(spec, weights)
    check_precision(precision)
    model = _load_keras_file(spec, weights) if spec.is_custom else _build_application(spec, weights)
    if precision != "float32":
        for layer in _layers(model):
            layer.dtype_policy = DTYPE_POLICIES[precision]
    return model


def _build_application(spec: ModelSpec, weights: str) -> Any:
    import keras

    constructor = getattr(keras.applications, spec.application)
    options = {"include_top": False, "pooling": "avg", "input_shape": (*spec.input_size, 3)}
    if weights == IMAGENET:
        try:
            with stalled_downloads_fail():
                return constructor(weights=IMAGENET, **options)
        # Keras reports a failed download as a bare Exception.
        except Exception as error:
            raise imagenet_unavailable(spec.application, error) from error
    if weights == RANDOM:
        seed_random_weights(spec.application)
        return constructor(weights=None, **options)
    model = constructor(weights=None, **options)
    load_weights_file(model, weights)
    return model


def _load_keras_file(spec: ModelSpec, weights: str) -> Any:
    import keras

    with tempfile.TemporaryDirectory(prefix="model-") as directory:
        model = keras.saving.load_model(local_copy(spec.name, directory), compile=False)
    if is_weights_uri(weights):
        load_weights_file(model, weights)
    return _pooled(model, spec.name)


def _pooled(model: Any, name: str) -> Any:
    """`model` itself when it outputs vectors; with global average pooling when feature maps."""
    import keras

    if len(model.outputs) != 1:
        raise ValueError(f"model {name} must have exactly one output, found {len(model.outputs)}")
    output = model.outputs[0]
    if len(output.shape) == 2:
        return model
    if len(output.shape) == 4:
        pooled = keras.layers.GlobalAveragePooling2D(name="embedding_pool")(output)
        return keras.Model(model.inputs[0], pooled, name=f"{model.name}_pooled")
    raise ValueError(
        f"model {name} outputs shape {tuple(output.shape)}: expected vectors (batch, dim) or "
        "feature maps (batch, height, width, channels)"
    )


def _layers(layer: Any) -> Iterator[Any]:
    """`layer` and every layer nested in it."""
    yield layer
    for inner in getattr(layer, "layers", ()):
        yield from _layers(inner)


def preprocess_function(spec: ModelSpec) -> Callable[[Any], Any] | None:
    """The model's own `preprocess_input`, or None for a `.keras` model (it preprocesses itself)."""
    if spec.preprocess is None:
        return None
    return importlib.import_module(f"keras.applications.{spec.preprocess}").preprocess_input


def default_jit_compile(precision: str) -> bool:
    """XLA for float32. Not for bfloat16, whose speed comes from oneDNN's bfloat16 kernels in
    TensorFlow's graph executor: XLA on CPU computes bfloat16 convolutions in float32."""
    return precision == "float32"


def padded_size(count: int, batch_size: int) -> int:
    """The batch size a call of `count` images runs at with XLA: the next power of two, or
    `batch_size` when that is smaller and the images fit.

    XLA compiles once per input shape; rounding up bounds the compilations to a handful while
    a short last batch wastes at most half of its call.
    """
    power = 1 << max(count - 1, 0).bit_length()
    return min(power, batch_size) if count <= batch_size else power


def embedding_function(model: Any, spec: ModelSpec, jit_compile: bool = False) -> Any:
    """A `tf.function` of the model with its `preprocess_input` inside: uint8 (batch, height,
    width, 3) RGB in, float32 (batch, dim) out. The TensorFlow engine calls it; the OpenVINO
    engine converts it."""
    import tensorflow as tf

    preprocess = preprocess_function(spec)
    height, width = spec.input_size

    # One signature: every batch size reuses a single trace (XLA compiles per shape below it).
    @tf.function(
        input_signature=[tf.TensorSpec([None, height, width, 3], tf.uint8)],
        jit_compile=jit_compile,
    )
    def embed(images):
        pixels = tf.cast(images, tf.float32)
        if preprocess is not None:
            pixels = preprocess(pixels)
        return tf.cast(model(pixels, training=False), tf.float32)

    return embed


class CompiledEmbedder:
    """A built model and its compiled call: uint8 (batch, height, width, 3) in, float32 out.

    With `jit_compile` the call is compiled by XLA, which runs ResNet50 about a fifth faster on
    CPUs than TensorFlow's graph executor; batches are then padded to `padded_size`.
    """

    def __init__(self, model: Any, spec: ModelSpec, batch_size: int, jit_compile: bool = True):
        self.model = model
        self.spec = spec
        self.batch_size = batch_size
        self.jit_compile = jit_compile
        self._embed = embedding_function(model, spec, jit_compile)
        self.dim = int(self._embed.get_concrete_function().structured_outputs.shape[-1])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        count = len(images)
        padded = padded_size(count, self.batch_size) if self.jit_compile else count
        if padded == count:
            return self._embed(images).numpy()
        padding = np.zeros((padded - count, *images.shape[1:]), images.dtype)
        return self._embed(np.concatenate([images, padding])).numpy()[:count]


def stack_images(batch: Sequence[np.ndarray], input_size: tuple[int, int]) -> np.ndarray:
    """The images of a batch as one uint8 array, after checking each has the model's input shape."""
    expected = (*input_size, 3)
    for index, image in enumerate(batch):
        if image.shape != expected or image.dtype != np.uint8:
            raise ValueError(
                f"image {index} of the batch is {image.dtype} {image.shape}; the model takes "
                f"uint8 {expected} (height, width, RGB)"
            )
    return np.stack(batch)


class ImageEmbeddingHandler(ModelHandler[np.ndarray, np.ndarray, Any]):
    """What every engine's RunInference handler shares: uint8 images of `spec`'s input size in,
    one float32 embedding each out, from a model called on the whole batch."""

    spec: ModelSpec

    def run_inference(
        self,
        batch: Sequence[np.ndarray],
        model: Callable[[np.ndarray], np.ndarray],
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[np.ndarray]:
        return list(model(stack_images(batch, self.spec.input_size)))

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(image.nbytes for image in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE

    def validate_inference_args(self, inference_args: dict[str, Any] | None) -> None:
        if inference_args:
            raise ValueError(f"{type(self).__name__} takes no inference_args: {inference_args}")

    def share_model_across_processes(self) -> bool:
        # RunInference already keeps one model per process, which keeps the cores busy (XLA's
        # threads, OpenVINO's streams); sharing one across processes would pickle every batch
        # through a proxy.
        return False


class KerasModelHandler(ImageEmbeddingHandler):
    """RunInference handler for Keras 3 image models: one compiled model per worker process.

    Examples are uint8 RGB arrays of the model's input size; each prediction is the image's
    float32 embedding. Built-in models apply their own `preprocess_input` inside the compiled
    call; a `.keras` model receives float32 RGB pixels in 0..255 and must preprocess itself.
    `jit_compile` None compiles with XLA where `default_jit_compile` says so.
    """

    def __init__(
        self,
        model: str = "resnet50",
        weights: str = IMAGENET,
        precision: str = "float32",
        min_batch_size: int = 1,
        max_batch_size: int = 32,
        max_batch_duration_secs: int | None = None,
        jit_compile: bool | None = None,
    ):
        if not 1 <= min_batch_size <= max_batch_size:
            raise ValueError(
                f"batch sizes must satisfy 1 <= min ({min_batch_size}) <= max ({max_batch_size})"
            )
        check_precision(precision)
        self.spec = resolve_model(model)
        check_weights(self.spec, weights)
        self.weights = weights
        self.precision = precision
        self.max_batch_size = max_batch_size
        self.jit_compile = default_jit_compile(precision) if jit_compile is None else jit_compile
        super().__init__(
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            max_batch_duration_secs=max_batch_duration_secs,
        )

    def load_model(self) -> CompiledEmbedder:
        started = time.monotonic()
        model = build_model(self.spec, self.weights, self.precision)
        embedder = CompiledEmbedder(model, self.spec, self.max_batch_size, self.jit_compile)
        # Trace (and with XLA compile the full batch's shape) now, so the first real batch does
        # not pay for it and a model XLA cannot compile stops here, not image by image.
        warmup = self.max_batch_size if self.jit_compile else 1
        try:
            embedder(np.zeros((warmup, *self.spec.input_size, 3), np.uint8))
        except Exception as error:
            if not self.jit_compile:
                raise
            # TensorFlow's message goes on with the Python stack of each op; the first line says it.
            reason = (str(error).strip().splitlines() or [""])[0]
            raise RuntimeError(
                f"XLA cannot compile model {self.spec.name}: run it without XLA with "
                f"--no_jit_compile ({type(error).__name__}: {reason})"
            ) from error
        log.info(
            "Loaded model %s (weights %s, %s%s): %d-d embeddings in %.1f s",
            self.spec.name,
            self.weights,
            self.precision,
            ", XLA" if self.jit_compile else "",
            embedder.dim,
            time.monotonic() - started,
        )
        return embedder
