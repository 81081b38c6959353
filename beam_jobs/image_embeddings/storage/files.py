"""Streaming file access for the day's analysis, on local paths and `gs://`, where Beam runs.

Beam's FileSystems serve every location, so the same code reads and writes the day in the
launcher, on the DirectRunner and on Dataflow workers, with the credentials Beam finds there.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO, Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_jobs.image_embeddings.storage.io import delete as delete_all
from beam_jobs.image_embeddings.storage.io import matching

GCS_SCHEME = "gs://"
# pyarrow reads Parquet through this one buffer: with its default pre-buffering a 2048-d shard
# took 2.5x the memory, whatever the batch size.
PARQUET_BUFFER = 4 * 1024 * 1024
COPY_CHUNK = 8 * 1024 * 1024


def is_gcs(uri: str) -> bool:
    return uri.startswith(GCS_SCHEME)


def split_gcs(uri: str) -> tuple[str, str]:
    """Split `gs://bucket/name` into `(bucket, name)`; raise ValueError for a bad URI."""
    bucket, _, name = uri.removeprefix(GCS_SCHEME).partition("/")
    if not is_gcs(uri) or not bucket:
        raise ValueError(f"expected a gs://BUCKET/... URI, got {uri!r}")
    return bucket, name


def absolute(uri: str) -> str:
    """A gs:// URI as is; a local path made absolute."""
    return uri if is_gcs(uri) else os.path.abspath(uri)


def parent(uri: str) -> str:
    """The folder that holds `uri`."""
    return posixpath.dirname(uri.rstrip("/"))


def glob(pattern: str) -> list[str]:
    """Sorted files of one folder whose names match a shell pattern (`folder/name-*.parquet`)."""
    folder = posixpath.dirname(pattern)
    return [uri for uri in matching(pattern) if posixpath.dirname(uri) == folder]


def exists(uri: str) -> bool:
    """True when a file (not a folder) exists at `uri`."""
    return os.path.isfile(uri) if not is_gcs(uri) else FileSystems.exists(uri)


def _reader(uri: str) -> IO[bytes]:
    try:
        return FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED)
    except Exception as error:
        if not exists(uri):
            raise FileNotFoundError(errno.ENOENT, "no such file", uri) from None
        raise error


@contextlib.contextmanager
def _staged_write(uri: str, mode: str) -> Iterator[IO[Any]]:
    """Write to a local temporary file, then publish it whole only if the block succeeds.

    An object store's upload is finalised when its writer closes, even after a failure half way:
    readers must never see a partial file. Local files are renamed into place, in their folder.
    """
    folder = None
    if not is_gcs(uri):
        folder = os.path.dirname(absolute(uri))
        os.makedirs(folder, exist_ok=True)
    descriptor, partial = tempfile.mkstemp(dir=folder, prefix=".partial-")
    try:
        encoding = None if "b" in mode else "utf-8"
        with open(descriptor, mode, encoding=encoding) as handle:
            yield handle
        if is_gcs(uri):
            with (
                open(partial, "rb") as source,
                FileSystems.create(uri, compression_type=CompressionTypes.UNCOMPRESSED) as target,
            ):
                shutil.copyfileobj(source, target, COPY_CHUNK)
        else:
            os.replace(partial, uri)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)


@contextlib.contextmanager
def open_file(uri: str, mode: str = "rb") -> Iterator[IO[Any]]:
    """Open a file for streaming: `rb`, `r` (UTF-8), `wb` or `w` (UTF-8).

    A write replaces the file only when the block ends without an error. A missing file raises
    FileNotFoundError naming it.
    """
    if mode not in ("rb", "r", "wb", "w"):
        raise ValueError(f"mode must be one of rb, r, wb, w; got {mode!r}")
    if mode.startswith("w"):
        with _staged_write(uri, mode) as handle:
            yield handle
        return
    with _reader(uri) as handle:
        yield io.TextIOWrapper(handle, encoding="utf-8") if mode == "r" else handle


def parquet_batches(uri: str, columns: list[str], batch_rows: int) -> Iterator[Any]:
    """Stream a Parquet file's `columns` as RecordBatches of `batch_rows` rows; ValueError when
    a column is absent."""
    import pyarrow.parquet as pq

    with _reader(uri) as handle:
        parquet = pq.ParquetFile(handle, pre_buffer=False, buffer_size=PARQUET_BUFFER)
        absent = [name for name in columns if name not in parquet.schema_arrow.names]
        if absent:
            raise ValueError(f"no column {', '.join(absent)}")
        yield from parquet.iter_batches(batch_size=batch_rows, columns=columns, use_threads=False)


def parquet_rows(uri: str) -> int:
    """The row count of a Parquet file, from its footer."""
    import pyarrow.parquet as pq

    with _reader(uri) as handle:
        return pq.ParquetFile(handle).metadata.num_rows


def read_bytes(uri: str) -> bytes:
    """The whole content of a small file."""
    with _reader(uri) as handle:
        return handle.read()


def read_json(uri: str) -> Any:
    """Parse a small JSON file."""
    return json.loads(read_bytes(uri).decode("utf-8"))


def write_bytes(uri: str, data: bytes) -> None:
    """Replace a file with `data`."""
    with open_file(uri, "wb") as handle:
        handle.write(data)


def write_json(uri: str, value: Any) -> None:
    """Replace a file with `value` as indented JSON."""
    write_bytes(uri, (json.dumps(value, indent=2) + "\n").encode("utf-8"))


def delete(uri: str) -> bool:
    """Delete one file; return whether it existed."""
    if not exists(uri):
        return False
    delete_all([uri])
    return True


def delete_folder(folder: str) -> None:
    """Delete a folder and everything in it; a missing folder deletes nothing."""
    if not is_gcs(folder):
        shutil.rmtree(folder, ignore_errors=True)
        return
    delete_all(matching(folder.rstrip("/") + "/**"))
