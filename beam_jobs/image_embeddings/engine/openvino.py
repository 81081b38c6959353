"""The OpenVINO engine: Keras model to IR, CPU compilation, batches split over infer requests."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from beam_jobs.image_embeddings.engine.models import (
    ImageEmbeddingHandler,
    ModelSpec,
    build_model,
    embedding_function,
    resolve_model,
)

DEVICE = "CPU"
# The name a tf.function's returned tensor keeps through `openvino.convert_model`.
FUNCTION_OUTPUT = "Identity:0"
# A request of fewer images than this leaves the CPU's threads underused: split no finer.
MIN_IMAGES_PER_REQUEST = 4

log = logging.getLogger(__name__)


class UnconvertibleModel(RuntimeError):
    """OpenVINO cannot convert or compile the model; the TensorFlow engine may still run it."""


def unconvertible(spec: ModelSpec, error: BaseException) -> UnconvertibleModel:
    reason = (str(error).strip().splitlines() or [""])[0]
    return UnconvertibleModel(
        f"OpenVINO cannot convert model {spec.name}: run it with --engine tensorflow "
        f"({type(error).__name__}: {reason})"
    )


def convert(spec: ModelSpec, weights: str) -> Any:
    """The float32 openvino.Model of a Keras model with its `preprocess_input` inside: uint8
    (batch, height, width, 3) RGB in, float32 (batch, dim) out."""
    import openvino as ov

    embed = embedding_function(build_model(spec, weights), spec)
    try:
        converted = ov.convert_model(embed)
    except Exception as error:
        raise unconvertible(spec, error) from error
    return embedding_only(converted, spec)


def embedding_only(converted: Any, spec: ModelSpec) -> Any:
    """The converted model with the function's (batch, dim) output alone.

    TensorFlow's custom gradients (EfficientNet's swish) surface as extra outputs of the
    conversion; the function's own output is the one named `Identity:0`.
    """
    import openvino as ov

    found = converted.outputs
    if len(found) > 1:
        found = [output for output in found if FUNCTION_OUTPUT in output.get_names()]
    if len(found) != 1 or found[0].get_partial_shape().rank.get_length() != 2:
        raise unconvertible(spec, ValueError("the converted model does not output (batch, dim)"))
    if len(converted.outputs) == 1:
        return converted
    return ov.Model(found, converted.get_parameters(), converted.friendly_name)


def cpu_capabilities() -> list[str]:
    import openvino as ov

    return list(ov.Core().get_property(DEVICE, "OPTIMIZATION_CAPABILITIES"))


def check_precision_supported(precision: str, capabilities: Sequence[str]) -> None:
    """Raise ValueError when this CPU cannot run `precision` natively."""
    if precision == "bfloat16" and "BF16" not in capabilities:
        raise ValueError(
            "--precision bfloat16 needs a CPU with bfloat16 instructions (AVX512_BF16 or AMX); "
            f"this one offers {', '.join(capabilities)}: use float32 or int8"
        )


def compile_model(model: Any, precision: str) -> Any:
    """`model` compiled for this CPU for throughput, computing in `precision`.

    float32 and int8 models compute in float32 outside their int8 operations: OpenVINO would
    otherwise pick bfloat16 on CPUs that have it, and float32 would stop equalling TensorFlow.
    """
    import openvino as ov

    check_precision_supported(precision, cpu_capabilities())
    hint = ov.properties.hint
    config = {
        hint.performance_mode: hint.PerformanceMode.THROUGHPUT,
        hint.inference_precision: ov.Type.bf16 if precision == "bfloat16" else ov.Type.f32,
    }
    return ov.Core().compile_model(model, DEVICE, config)


def request_slices(count: int, requests: int) -> list[slice]:
    """Contiguous slices of a batch of `count` images, one per request, none tiny or empty."""
    parts = max(1, min(requests, count // MIN_IMAGES_PER_REQUEST))
    bounds = np.linspace(0, count, parts + 1).round().astype(int)
    return [slice(int(start), int(stop)) for start, stop in zip(bounds, bounds[1:], strict=False)]


class OpenVINOEmbedder:
    """A compiled model and its queue of infer requests: uint8 batches in, float32 rows out.

    Each batch is split over the requests, which run at once on the CPU's cores (OpenVINO's
    streams); the calling thread waits while the image loaders keep decoding on theirs.
    """

    def __init__(self, compiled: Any) -> None:
        import openvino as ov

        self.compiled = compiled
        requests = compiled.get_property(ov.properties.optimal_number_of_infer_requests)
        self._queue = ov.AsyncInferQueue(compiled, requests)
        self._queue.set_callback(self._collect)
        self.requests = requests
        self.dim = int(compiled.output(0).get_partial_shape()[1].get_length())

    @staticmethod
    def _collect(request: Any, userdata: tuple[list, int]) -> None:
        results, index = userdata
        results[index] = request.get_output_tensor(0).data.copy()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        slices = request_slices(len(images), self.requests)
        results: list[np.ndarray | None] = [None] * len(slices)
        for index, part in enumerate(slices):
            self._queue.start_async(np.ascontiguousarray(images[part]), (results, index))
        self._queue.wait_all()
        return np.concatenate(results)


class OpenVINOModelHandler(ImageEmbeddingHandler):
    """RunInference handler loading a prepared model (OpenVINO IR from the model cache).

    Workers only read and compile the prepared files, after checking them against their model
    card: a worker never converts or calibrates.
    """

    def __init__(
        self,
        prepared_model: str,
        model: str,
        precision: str,
        min_batch_size: int = 1,
        max_batch_size: int = 32,
        max_batch_duration_secs: int | None = None,
    ) -> None:
        self.prepared_model = prepared_model
        self.spec = resolve_model(model)
        self.precision = precision
        super().__init__(
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            max_batch_duration_secs=max_batch_duration_secs,
        )

    def load_model(self) -> OpenVINOEmbedder:
        from beam_jobs.image_embeddings.engine.model_cache import read_prepared_model

        started = time.monotonic()
        model, card = read_prepared_model(self.prepared_model)
        embedder = OpenVINOEmbedder(compile_model(model, self.precision))
        embedder(np.zeros((1, *self.spec.input_size, 3), np.uint8))
        log.info(
            "Loaded model %s (prepared, %s, fingerprint %s, %d infer requests): %d-d embeddings "
            "in %.1f s",
            self.prepared_model,
            self.precision,
            card["fingerprint"],
            embedder.requests,
            embedder.dim,
            time.monotonic() - started,
        )
        return embedder
