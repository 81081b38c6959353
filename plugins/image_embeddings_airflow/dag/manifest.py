"""Stage a day's manifest: every image under the day's input folder, one URI a line, sorted."""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from beam_jobs.image_embeddings.contract import MANIFEST_NAME, is_image_name, join
from beam_jobs.image_embeddings.storage import day_outputs
from image_embeddings_airflow import storage
from image_embeddings_airflow.dag.skips import LINE_BREAK, NOT_AN_IMAGE, Skips, skipped_uri

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ManifestInfo:
    """Where the manifest was written, how many image URIs it holds, what was left out."""

    uri: str
    count: int
    skipped: Skips = field(default_factory=Skips)


def unique_sorted(uris: Iterable[str]) -> Iterator[str]:
    """Drop repeats from an already sorted stream, holding one URI at a time."""
    previous = None
    for uri in uris:
        if uri != previous:
            yield uri
        previous = uri


def image_uris(input_dir: str, skips: Skips | None = None) -> Iterator[str]:
    """Yield the image URIs under a folder, recursively, sorted and de-duplicated, lazily.

    Every other file is counted in `skips`: a name without an image extension, or one holding a
    line break (a manifest holds one name a line).
    """
    skips = skips if skips is not None else Skips()
    for uri in unique_sorted(storage.list_files(input_dir)):
        if not is_image_name(uri):
            skips.add(NOT_AN_IMAGE, uri)
        elif "\n" in uri or "\r" in uri:
            log.warning("Left out of the manifest, its name holds a line break: %r", uri)
            skips.add(LINE_BREAK, uri)
        else:
            yield uri


def resolved(uri: str) -> str:
    """A folder as it is reached: local symbolic links and `..` resolved, `..` folded on gs://."""
    if storage.is_gcs(uri):
        bucket, name = storage.split_gcs(uri)
        return f"gs://{bucket}" + posixpath.normpath("/" + name).rstrip("/")
    return os.path.realpath(uri)


def _check_folders(input_dir: str, output_dir: str) -> None:
    """Refuse folder pairs where clearing the outputs would delete inputs or a whole root.

    Both folders are compared as they resolve, so neither a symbolic link nor `..` hides an
    overlap.
    """
    inputs = resolved(input_dir).rstrip("/") + "/"
    outputs = resolved(output_dir).rstrip("/") + "/"
    if outputs in ("/", "gs://") or (storage.is_gcs(outputs) and outputs.count("/") <= 3):
        raise ValueError(
            f"output folder must be a day's folder below a root, got {output_dir!r}: "
            "staging clears it"
        )
    if inputs.startswith(outputs):
        raise ValueError(
            f"input folder {input_dir!r} lies inside output folder {output_dir!r} "
            f"(resolved: {inputs} in {outputs}), which staging clears: use separate roots"
        )


def _delete_one(uri: str) -> None:
    if not storage.delete(uri):
        raise FileNotFoundError(f"vanished before it could be deleted: {uri}")


def stage_manifest(input_dir: str, output_dir: str) -> ManifestInfo:
    """Replace `output_dir` with a fresh manifest of the images under `input_dir`.

    The output folder belongs to one day's run (the caller holds its lease), so what a previous
    run left there is deleted first: its reports now, its marker and shards at launch, once they
    are set aside for reuse (at once when the day has no images); a file that cannot be deleted
    fails staging, named. A missing or empty
    input folder gives an empty manifest and a count of 0. Every other object is counted as
    skipped, by reason and extension, in `skipped.json` beside the manifest. Memory stays
    bounded: URIs stream from the listing to the file one at a time.
    """
    input_dir, output_dir = storage.absolute(input_dir), storage.absolute(output_dir)
    _check_folders(input_dir, output_dir)
    day_outputs.remove(
        output_dir, storage.list_files(output_dir), _delete_one, day_outputs.all_but_reusable_run
    )
    uri = join(output_dir, MANIFEST_NAME)
    count = 0
    skips = Skips()
    with storage.open_file(uri, "w") as handle:
        for image in image_uris(input_dir, skips):
            handle.write(image + "\n")
            count += 1
    storage.write_json(skipped_uri(output_dir), skips.to_dict())
    if count == 0:
        # Nothing will replace the earlier run: it must not stand for a day that has no images.
        day_outputs.remove(
            output_dir, storage.list_files(output_dir), _delete_one, day_outputs.is_reusable_run
        )
    log.info("Staged %d image URIs from %s in %s; %s", count, input_dir, uri, skips.summary())
    return ManifestInfo(uri=uri, count=count, skipped=skips)
