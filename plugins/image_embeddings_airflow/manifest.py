"""Stage a day's manifest: every image under the day's input folder, one URI a line, sorted."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from beam_jobs.image_embeddings.contract import MANIFEST_NAME, is_image_name, join
from image_embeddings_airflow import storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ManifestInfo:
    """Where the manifest was written and how many image URIs it holds."""

    uri: str
    count: int


def unique_sorted(uris: Iterable[str]) -> Iterator[str]:
    """Drop repeats from an already sorted stream, holding one URI at a time."""
    previous = None
    for uri in uris:
        if uri != previous:
            yield uri
        previous = uri


def image_uris(input_dir: str) -> Iterator[str]:
    """Yield the image URIs under a folder, recursively, sorted and de-duplicated, lazily.

    Names holding a line break cannot be written one a line, so they are logged and left out.
    """
    for uri in unique_sorted(storage.list_files(input_dir)):
        if not is_image_name(uri):
            continue
        if "\n" in uri or "\r" in uri:
            log.warning("Left out of the manifest, its name holds a line break: %r", uri)
            continue
        yield uri


def _check_folders(input_dir: str, output_dir: str) -> None:
    """Refuse folder pairs where clearing the outputs would delete inputs or a whole root."""
    inputs, outputs = input_dir.rstrip("/") + "/", output_dir.rstrip("/") + "/"
    if outputs in ("/", "gs://") or (storage.is_gcs(outputs) and outputs.count("/") <= 3):
        raise ValueError(
            f"output folder must be a day's folder below a root, got {output_dir!r}: "
            "staging clears it"
        )
    if inputs.startswith(outputs):
        raise ValueError(
            f"input folder {input_dir!r} lies inside output folder {output_dir!r}, "
            "which staging clears: use separate roots"
        )


def stage_manifest(input_dir: str, output_dir: str) -> ManifestInfo:
    """Replace `output_dir` with a fresh manifest of the images under `input_dir`.

    The output folder belongs to one day's run, so everything a previous run left there is deleted
    first: a rerun never mixes stale shards or reports with new ones. A missing or empty input
    folder gives an empty manifest and a count of 0. Memory stays bounded: URIs stream from the
    listing to the file one at a time.
    """
    input_dir, output_dir = storage.absolute(input_dir), storage.absolute(output_dir)
    _check_folders(input_dir, output_dir)
    removed = storage.delete_prefix(output_dir)
    if removed:
        log.info("Removed %d files of a previous run from %s", removed, output_dir)
    uri = join(output_dir, MANIFEST_NAME)
    count = 0
    with storage.open_file(uri, "w") as handle:
        for image in image_uris(input_dir):
            handle.write(image + "\n")
            count += 1
    log.info("Staged %d image URIs from %s in %s", count, input_dir, uri)
    return ManifestInfo(uri=uri, count=count)
