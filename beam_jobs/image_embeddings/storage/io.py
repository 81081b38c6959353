"""Storage through Beam's FileSystems: local paths and `gs://` alike, GCS emulator aware."""

from __future__ import annotations

import glob
import os
import posixpath

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_jobs.image_embeddings.contract import join
from beam_jobs.image_embeddings.storage.gcs import bound_beam_gcs_requests


def use_emulator_credentials() -> None:
    """Mark Beam's GCP credentials as resolved-anonymous when a GCS emulator is configured.

    Without this, Beam's GCS filesystem spends ~26 s retrying to find credentials before it falls
    back to an anonymous client; anonymous is what the emulator wants, so skip the search. Called
    at import, so the launcher and every worker process that unpickles the pipeline get it.
    """
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from apache_beam.internal.gcp import auth

        auth._Credentials._credentials_init = True


use_emulator_credentials()
bound_beam_gcs_requests()


def check_supported(uri: str) -> str:
    """Return `uri` when Beam has a filesystem for its scheme; raise ValueError otherwise."""
    try:
        FileSystems.get_filesystem(uri)
    except ValueError as error:
        raise ValueError(
            f"unsupported location {uri!r}: use a local path or gs://bucket/path"
        ) from error
    return uri


def read_text(uri: str) -> str:
    """The whole content of a UTF-8 text file."""
    with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return handle.read().decode("utf-8")


def read_bytes(uri: str) -> bytes:
    """The whole content of a small file."""
    with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return handle.read()


def open_binary(uri: str):
    """A seekable binary reader of `uri`, for formats read in parts (Parquet row groups)."""
    return FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED)


def write_text(uri: str, text: str, mime_type: str = "text/plain") -> None:
    """Write `text` (UTF-8) to `uri`, replacing any existing file."""
    with FileSystems.create(
        uri, mime_type=mime_type, compression_type=CompressionTypes.UNCOMPRESSED
    ) as handle:
        handle.write(text.encode("utf-8"))


def exists(uri: str) -> bool:
    return FileSystems.exists(uri)


def delete(uris: list[str]) -> None:
    """Delete files (or local directories, recursively); nothing to do for an empty list."""
    if uris:
        FileSystems.delete(uris)


def matching(pattern: str) -> list[str]:
    """Paths of the files matching a glob (`*` stays within one folder, `**` crosses folders)."""
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def _first_level_folders(root: str, paths: list[str]) -> list[str]:
    """The distinct first-level folders of `root` that hold `paths` (files below `root`)."""
    prefix = root.rstrip("/") + "/"
    firsts = {
        path[len(prefix) :].split("/", 1)[0]
        for path in paths
        if path.startswith(prefix) and "/" in path[len(prefix) :]
    }
    return sorted(posixpath.join(prefix, first) for first in firsts)


def is_local(uri: str) -> bool:
    return FileSystems.get_scheme(uri) in (None, "file")


def folders_matching(root: str, pattern: str) -> list[str]:
    """Folders directly under `root` whose name matches the glob `pattern`, empty ones included.

    An object store knows a folder only as the prefix of its objects; a local disk also keeps
    empty folders, which Beam's match does not list, so those come from the disk itself.
    """
    if is_local(root):
        local_root = root.removeprefix("file://")
        found = glob.glob(os.path.join(glob.escape(local_root), pattern))
        return sorted(path for path in found if os.path.isdir(path))
    return _first_level_folders(root, matching(join(root, pattern, "**")))


def delete_folders(folders: list[str]) -> None:
    """Delete folders with everything in them, local or on an object store."""
    # Beam deletes a local folder recursively by its path, an object-store one by its prefix.
    delete([folder if is_local(folder) else folder.rstrip("/") + "/" for folder in folders])


def copy(sources: list[str], destinations: list[str]) -> None:
    """Copy files one to one, replacing what is there; local destination folders are created."""
    for destination in destinations:
        if is_local(destination):
            os.makedirs(os.path.dirname(destination.removeprefix("file://")), exist_ok=True)
    if sources:
        FileSystems.copy(sources, destinations)
