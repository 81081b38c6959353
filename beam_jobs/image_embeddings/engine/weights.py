"""Where a model's weights come from: Keras' ImageNet download, a seeded random start, or a file."""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_jobs.image_embeddings.storage import io as storage

IMAGENET = "imagenet"
RANDOM = "random"
RANDOM_SEED = 1729
# A download that receives nothing for this long is dead; without a limit urllib waits forever.
DOWNLOAD_STALL_SECS = 60.0

_COPY_CHUNK = 8 * 1024 * 1024

log = logging.getLogger(__name__)


def is_weights_uri(weights: str) -> bool:
    """True when `weights` names a file rather than `imagenet` or `random`."""
    return weights not in (IMAGENET, RANDOM)


def local_copy(uri: str, directory: str) -> str:
    """Copy the file at `uri` (local or `gs://`) into `directory` under its own name; return it."""
    if not storage.exists(uri):
        raise FileNotFoundError(f"no file at {uri}")
    target = os.path.join(directory, posixpath.basename(uri.rstrip("/")))
    with (
        FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as source,
        open(target, "wb") as copy,
    ):
        shutil.copyfileobj(source, copy, _COPY_CHUNK)
    return target


def load_weights_file(model: Any, uri: str) -> None:
    """Load a Keras weights file (`.weights.h5`, local or `gs://`) into `model` in place."""
    if not storage.exists(uri):
        raise FileNotFoundError(
            f"weights file {uri} not found: --weights takes imagenet, random or the URI of a "
            "Keras weights file saved with model.save_weights(...) (name ending .weights.h5)"
        )
    with tempfile.TemporaryDirectory(prefix="weights-") as directory:
        path = local_copy(uri, directory)
        try:
            model.load_weights(path)
        except ValueError as error:
            raise ValueError(
                f"weights file {uri} does not fit model {model.name}: {error}"
            ) from error


def seed_random_weights(model_name: str) -> None:
    """Seed every generator Keras initialises weights from, so random builds are reproducible.

    This reseeds the process's global Python, NumPy and TensorFlow generators.
    """
    import keras

    log.warning(
        "Model %s gets RANDOM weights (seed %d): its embeddings carry no meaning. "
        "Use this only for offline smoke runs; pass --weights imagenet or a weights file URI "
        "for real embeddings.",
        model_name,
        RANDOM_SEED,
    )
    keras.utils.set_random_seed(RANDOM_SEED)


@contextmanager
def stalled_downloads_fail(seconds: float = DOWNLOAD_STALL_SECS) -> Iterator[None]:
    """Make sockets opened inside the block give up after `seconds` without data."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def imagenet_unavailable(model_name: str, error: BaseException) -> RuntimeError:
    """The error to raise when Keras cannot download or read a model's ImageNet weights."""
    return RuntimeError(
        f"ImageNet weights for {model_name} could not be had: Keras neither found them in its "
        f"cache ($KERAS_HOME/models, by default ~/.keras/models) nor downloaded them ({error}). "
        "Without network access, pass --weights random (deterministic random weights, for smoke "
        "runs only: the embeddings carry no meaning) or --weights URI of a Keras weights file "
        "(.weights.h5, local or gs://)."
    )
