"""The prepared-model cache: per fingerprint, OpenVINO IR and the model card vouching for it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_jobs.image_embeddings.contract import join
from beam_jobs.image_embeddings.engine.fingerprint import CHUNK_BYTES, file_digest, fingerprint
from beam_jobs.image_embeddings.storage import io as storage

CACHE_VARIABLE = "IMAGE_EMBEDDINGS_MODEL_CACHE"
CARD_NAME = "model_card.json"
# The IR: the graph, then its weights. The card is written after both and names their digests.
IR_FILES = ("model.xml", "model.bin")


class CacheEntryError(Exception):
    """A cache entry that must not be used: incomplete, corrupt, or for another model."""


def default_model_cache() -> str:
    """`$IMAGE_EMBEDDINGS_MODEL_CACHE`, else a folder in the user's cache."""
    configured = os.environ.get(CACHE_VARIABLE, "").strip()
    return configured or os.path.expanduser("~/.cache/image_embeddings/models")


def entry_uri(cache: str, model_fingerprint: str) -> str:
    """The folder of one prepared model: `CACHE/FINGERPRINT`."""
    return join(cache, model_fingerprint)


def _copy(source_uri: str, target_uri: str) -> str:
    """Copy one file between any two Beam filesystems; return the sha256 of its bytes."""
    digest = hashlib.sha256()
    with (
        FileSystems.open(source_uri, compression_type=CompressionTypes.UNCOMPRESSED) as source,
        FileSystems.create(target_uri, compression_type=CompressionTypes.UNCOMPRESSED) as target,
    ):
        while chunk := source.read(CHUNK_BYTES):
            digest.update(chunk)
            target.write(chunk)
    return digest.hexdigest()


def write_entry(entry: str, ir_directory: str, card: Mapping[str, Any]) -> dict[str, Any]:
    """Upload the IR files of `ir_directory` to `entry`, then the card with their digests.

    The card goes last: an entry whose writing stopped half way has no card and is rebuilt.
    """
    if storage.exists(join(entry, CARD_NAME)):
        storage.delete([join(entry, CARD_NAME)])
    digests = {
        name: _copy(os.path.join(ir_directory, name), join(entry, name)) for name in IR_FILES
    }
    written = {**card, "files": digests}
    storage.write_text(
        join(entry, CARD_NAME), json.dumps(written, indent=2, sort_keys=True), "application/json"
    )
    return written


def read_card(entry: str) -> dict[str, Any]:
    """The model card of an entry; CacheEntryError when it is missing or unreadable."""
    uri = join(entry, CARD_NAME)
    if not storage.exists(uri):
        raise CacheEntryError(f"{entry} holds no {CARD_NAME}: not a complete prepared model")
    try:
        card = json.loads(storage.read_text(uri))
        parts, files = card["fingerprint_parts"], card["files"]
        stated = card["fingerprint"]
    except (ValueError, KeyError, TypeError) as error:
        raise CacheEntryError(f"{uri} is not a readable model card ({error!r})") from error
    if fingerprint(parts) != stated:
        raise CacheEntryError(
            f"{uri} states fingerprint {stated} but its parts give {fingerprint(parts)}"
        )
    if sorted(files) != sorted(IR_FILES):
        raise CacheEntryError(f"{uri} names files {sorted(files)}, expected {list(IR_FILES)}")
    return card


def check_entry(entry: str, expected_fingerprint: str) -> dict[str, Any]:
    """The card of an entry whose card and files are intact and made for `expected_fingerprint`."""
    card = read_card(entry)
    if card["fingerprint"] != expected_fingerprint:
        raise CacheEntryError(
            f"{entry} holds a model with fingerprint {card['fingerprint']}, "
            f"not {expected_fingerprint}"
        )
    for name, expected in card["files"].items():
        uri = join(entry, name)
        actual = file_digest(uri) if storage.exists(uri) else "missing"
        if actual != expected:
            raise CacheEntryError(f"{uri} is corrupt: sha256 {actual}, its card says {expected}")
    return card


def local_verified_copy(entry: str, card: Mapping[str, Any], directory: str) -> str:
    """Copy the entry's IR into `directory`, checking each file against the card; the .xml path."""
    for name, expected in card["files"].items():
        uri = join(entry, name)
        if not storage.exists(uri):
            raise CacheEntryError(f"{uri} is missing: prepare the model again")
        actual = _copy(uri, os.path.join(directory, name))
        if actual != expected:
            raise CacheEntryError(
                f"{uri} is corrupt (sha256 {actual}, its card says {expected}): refusing it; "
                "prepare the model again"
            )
    return os.path.join(directory, IR_FILES[0])


def read_prepared_model(entry: str) -> tuple[Any, dict[str, Any]]:
    """(openvino.Model, model card) of a prepared model, its files checked against the card."""
    import openvino as ov

    card = read_card(entry)
    directory = tempfile.mkdtemp(prefix="prepared-model-")
    try:
        core = ov.Core()
        # Weights read into memory, not mapped: the local copy is removed right after.
        core.set_property({"ENABLE_MMAP": False})
        model = core.read_model(local_verified_copy(entry, card, directory))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return model, card


def remove_entry(entry: str) -> None:
    """Delete an entry with everything in it."""
    storage.delete_folders([entry])
