"""One way to list, read, write and delete files on local paths and `gs://` alike."""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import functools
import itertools
import json
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO, Any

from beam_jobs.image_embeddings.contract import GCS_CONNECT_TIMEOUT_S, GCS_READ_TIMEOUT_S
from image_embeddings_airflow.settings import DEFAULT_GCP_CONN_ID, GCP_CONN_VARIABLE

GCS_SCHEME = "gs://"
EMULATOR_VARIABLE = "STORAGE_EMULATOR_HOST"
LIST_PAGE_SIZE = 1000
# Reads and writes of gs:// objects buffer this much: large enough for few requests, small enough
# that a task holding a reader and a writer stays far below its memory budget.
GCS_CHUNK_SIZE = 8 * 1024 * 1024
PARQUET_BUFFER = 4 * 1024 * 1024
# gs:// requests are bounded as the contract says: seconds to connect and to wait for the next
# bytes of an answer. gcsfs retries 408, 429, 5xx, timeouts and dropped connections: 6 attempts
# per request, back-off 1, 2, 4, 8, 16 s plus jitter. That policy is fixed in gcsfs (a decorator
# bound when its class is defined), so the contract's GCS_RETRY_* bound only the pipeline's
# requests. Uploads are retried too: each replaces a whole object, so a repeat leaves the same.
GCS_TIMEOUT_S = (GCS_CONNECT_TIMEOUT_S, GCS_READ_TIMEOUT_S)


def is_gcs(uri: str) -> bool:
    """True for `gs://` URIs, false for local paths."""
    return uri.startswith(GCS_SCHEME)


def split_gcs(uri: str) -> tuple[str, str]:
    """Split `gs://bucket/name` into `(bucket, name)`; raise ValueError for a bad URI."""
    if not is_gcs(uri):
        raise ValueError(f"expected a gs://BUCKET/... URI, got {uri!r}")
    bucket, _, name = uri[len(GCS_SCHEME) :].partition("/")
    if not bucket:
        raise ValueError(f"gs:// URI without a bucket: {uri!r}")
    return bucket, name


def parent(uri: str) -> str:
    """The folder holding a file or folder, for local paths and gs:// alike."""
    return posixpath.dirname(uri.rstrip("/"))


def absolute(uri: str) -> str:
    """A gs:// URI as is; a local path made absolute."""
    return uri if is_gcs(uri) else os.path.abspath(uri)


def _connection_id(gcp_conn_id: str | None = None) -> str:
    """`gcp_conn_id`, else `IMAGE_EMBEDDINGS_GCP_CONN_ID`, else the default connection."""
    return gcp_conn_id or os.environ.get(GCP_CONN_VARIABLE) or DEFAULT_GCP_CONN_ID


@functools.lru_cache(maxsize=4)
def _hook_client(gcp_conn_id: str):
    """One client per Airflow connection, built by the Google provider's hook."""
    from airflow.providers.google.cloud.hooks.gcs import GCSHook

    return GCSHook(gcp_conn_id=gcp_conn_id).get_conn()


@functools.lru_cache(maxsize=4)
def _anonymous_client(emulator_host: str):
    """One client per emulator address (the client reads the address from the environment)."""
    from google.cloud import storage

    return storage.Client.create_anonymous_client()


def gcs_client(gcp_conn_id: str | None = None):
    """A google-cloud-storage Client for gs:// URIs, for code that needs that library's own API
    (the day lease: writes with a generation precondition, which gcsfs does not offer): the
    Airflow connection's (as `filesystem` picks it), or an anonymous one for the emulator."""
    emulator = os.environ.get(EMULATOR_VARIABLE)
    if emulator:
        return _anonymous_client(emulator)
    return _hook_client(_connection_id(gcp_conn_id))


def _store(conn_id: str):
    """Airflow's object store of gs:// for a connection, with the emulator's filesystem if set."""
    from airflow.sdk.io import attach

    if not os.environ.get(EMULATOR_VARIABLE):
        # The Google provider's `gcs` filesystem: gcsfs with the connection's credentials.
        return attach("gs", conn_id=conn_id)
    # An emulator takes anonymous requests; the provider would look for real credentials (a key,
    # ADC, the metadata server) and stall on retries before any request. gcsfs's default class
    # (ExtendedGcsFileSystem) first asks for the bucket's layout over gRPC, which the emulator
    # does not serve: 60 s lost on every operation. The core class reads the emulator's address
    # from the environment at each request. Only an existing store of this alias wins over it:
    # a process that uses real GCS and the emulator under one connection is not supported.
    from gcsfs.core import GCSFileSystem

    return attach("gs", conn_id=conn_id, fs=GCSFileSystem(token="anon"))


def filesystem(uri: str, gcp_conn_id: str | None = None):
    """The fsspec filesystem (gcsfs) of a gs:// URI; see `object_path`."""
    return object_path(uri, gcp_conn_id).fs


def object_path(uri: str, gcp_conn_id: str | None = None):
    """An Airflow ObjectStoragePath for a gs:// URI, through the Airflow connection.

    The connection is `gcp_conn_id`, else `IMAGE_EMBEDDINGS_GCP_CONN_ID`, else the default one;
    with `STORAGE_EMULATOR_HOST` set, requests go anonymously to the emulator. Local paths do not
    come here: plain file calls serve them without importing Airflow (a minute and 140 MB more for a
    validation outside Airflow, measured on a 40k-row day).
    """
    from airflow.sdk import ObjectStoragePath

    split_gcs(uri)
    conn_id = _connection_id(gcp_conn_id)
    fs = _store(conn_id).fs
    # gcsfs takes one timeout for every request of a filesystem, and Airflow builds the filesystem
    # from the connection alone: the bounds are set on it, from GCS_TIMEOUT_S as it is now.
    fs.requests_timeout = _request_timeout()
    return ObjectStoragePath(uri, conn_id=conn_id)


def _request_timeout():
    import aiohttp

    connect, read = GCS_TIMEOUT_S
    return aiohttp.ClientTimeout(sock_connect=connect, sock_read=read)


def _gcs_prefix(name: str) -> str:
    """A listing prefix that matches the objects *inside* a folder, not its siblings."""
    return name.rstrip("/") + "/" if name.strip("/") else ""


def _gcs_pages(prefix: str, delimiter: str | None, fields: str) -> Iterator[dict[str, Any]]:
    """The JSON API's listing pages of the objects under a folder, one page at a time."""
    # gcsfs lists a whole folder into memory (and its listing cache) before returning; pages of
    # the JSON API, through gcsfs's authenticated and retried requests, stream instead.
    bucket, name = split_gcs(prefix)
    fs = filesystem(prefix)
    query = {
        "prefix": _gcs_prefix(name),
        "delimiter": delimiter,
        "maxResults": LIST_PAGE_SIZE,
        "fields": f"{fields},nextPageToken",
    }
    token = None
    while True:
        page = fs.call("GET", "b/{}/o", bucket, json_out=True, pageToken=token, **query)
        yield page
        token = page.get("nextPageToken")
        if not token:
            return


def _list_gcs(prefix: str, recursive: bool) -> Iterator[str]:
    bucket, _ = split_gcs(prefix)
    for page in _gcs_pages(prefix, None if recursive else "/", "items(name)"):
        for item in page.get("items", ()):
            if not item["name"].endswith("/"):
                yield f"{GCS_SCHEME}{bucket}/{item['name']}"


def _sort_key(entry: os.DirEntry) -> str:
    # A folder sorts as "name/": every path below it then falls exactly where a string sort of the
    # full paths puts it, so the walk below yields paths in global lexicographic order.
    return entry.name + "/" if entry.is_dir(follow_symlinks=False) else entry.name


def _list_local(folder: str, recursive: bool) -> Iterator[str]:
    try:
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=_sort_key)
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        # Symbolic links to folders are not followed: a link cycle would never end the walk.
        if entry.is_dir(follow_symlinks=False):
            if recursive:
                yield from _list_local(entry.path, recursive)
        else:
            # Every other entry too (links, dangling or not, FIFOs): whoever lists a day's folder
            # accounts for each of them, and the image loader refuses what is not a regular file.
            yield entry.path


def list_files(prefix: str, recursive: bool = True) -> Iterator[str]:
    """Yield the files under a folder, lazily, in lexicographic order of their URIs.

    gs:// streams pages of `LIST_PAGE_SIZE` objects. A local walk holds the entries of one folder
    per level of depth at a time, so its memory is bounded by the widest folder, not the tree.
    A missing folder yields nothing.
    """
    if is_gcs(prefix):
        return _list_gcs(prefix, recursive)
    return _list_local(absolute(prefix), recursive)


def subfolders(prefix: str) -> list[str]:
    """Sorted names of the folders directly under `prefix` (gs://: common prefixes)."""
    if is_gcs(prefix):
        pages = _gcs_pages(prefix, "/", "prefixes")
        found = {
            name.rstrip("/").rsplit("/", 1)[-1]
            for page in pages
            for name in page.get("prefixes", ())
        }
        return sorted(found)
    try:
        with os.scandir(absolute(prefix)) as scan:
            return sorted(entry.name for entry in scan if entry.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []


def glob(pattern: str) -> list[str]:
    """Sorted files of one folder whose names match a shell pattern (`folder/name-*.parquet`)."""
    folder, name_pattern = posixpath.split(pattern)
    return [
        uri
        for uri in list_files(folder, recursive=False)
        if fnmatch.fnmatchcase(posixpath.basename(uri), name_pattern)
    ]


def exists(uri: str) -> bool:
    """True when a file (not a folder) exists at `uri`."""
    if is_gcs(uri):
        return object_path(uri).is_file()
    return os.path.isfile(uri)


def _encoding(mode: str) -> str | None:
    return None if "b" in mode else "utf-8"


@contextlib.contextmanager
def _staged_write(uri: str, mode: str) -> Iterator[IO[Any]]:
    """Write to a local temporary file, then publish it whole only if the block succeeds.

    gs:// objects are uploaded from it: a file opened for writing through fsspec is finalised when
    it is closed, even when the writing code fails half way. Local files are renamed into place,
    in the same folder.
    """
    folder = None
    if not is_gcs(uri):
        folder = os.path.dirname(absolute(uri))
        os.makedirs(folder, exist_ok=True)
    descriptor, partial = tempfile.mkstemp(dir=folder, prefix=".partial-")
    try:
        with open(descriptor, mode, encoding=_encoding(mode)) as handle:
            yield handle
        if is_gcs(uri):
            target = object_path(uri)
            target.fs.put_file(partial, target.path, chunksize=GCS_CHUNK_SIZE)
        else:
            os.replace(partial, uri)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)


@contextlib.contextmanager
def open_file(uri: str, mode: str = "rb") -> Iterator[IO[Any]]:
    """Open a file for streaming: `rb`, `r` (UTF-8), `wb` or `w` (UTF-8).

    A write replaces the file only when the block ends without an error, so readers never see a
    partial file. A missing file raises FileNotFoundError naming it.
    """
    if mode not in ("rb", "r", "wb", "w"):
        raise ValueError(f"mode must be one of rb, r, wb, w; got {mode!r}")
    if mode.startswith("w"):
        with _staged_write(uri, mode) as handle:
            yield handle
        return
    with _reader(uri, mode) as handle:
        yield handle


def _reader(uri: str, mode: str, cache_type: str = "readahead") -> IO[Any]:
    """A streaming reader; gs:// reads fetch `GCS_CHUNK_SIZE` at a time into an fsspec cache."""
    if not is_gcs(uri):
        return open(uri, mode, encoding=_encoding(mode))
    try:
        return object_path(uri).open(
            mode, encoding=_encoding(mode), block_size=GCS_CHUNK_SIZE, cache_type=cache_type
        )
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no such file", uri) from None


def parquet_batches(uri: str, columns: list[str], batch_rows: int) -> Iterator[Any]:
    """Stream a Parquet file's `columns` as RecordBatches of `batch_rows` rows.

    Raises ValueError when a column is absent. Pre-buffering is off and reads go through a small
    buffer: with pyarrow's defaults a 2048-d shard took 2.5x the memory (530 MB against 220 MB
    peak for 64 MB row groups), whatever the batch size. pyarrow's buffer is the only one: with
    gcsfs's read-ahead cache on top, a 128 MB shard on gs:// peaked 50 to 80 MB higher.
    """
    import pyarrow.parquet as pq

    with _reader(uri, "rb", cache_type="none") as handle:
        parquet = pq.ParquetFile(handle, pre_buffer=False, buffer_size=PARQUET_BUFFER)
        absent = [name for name in columns if name not in parquet.schema_arrow.names]
        if absent:
            raise ValueError(f"no column {', '.join(absent)}")
        yield from parquet.iter_batches(batch_size=batch_rows, columns=columns, use_threads=False)


def parquet_rows(uri: str) -> int:
    """The row count of a Parquet file, from its footer."""
    import pyarrow.parquet as pq

    with _reader(uri, "rb", cache_type="none") as handle:
        return pq.ParquetFile(handle).metadata.num_rows


def read_bytes(uri: str) -> bytes:
    """The whole content of a small file."""
    if not is_gcs(uri):
        with open_file(uri, "rb") as handle:
            return handle.read()
    # One request; opening a gs:// file first fetches its metadata, with two requests.
    target = object_path(uri)
    try:
        return target.fs.cat_file(target.path)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no such file", uri) from None


def read_json(uri: str) -> Any:
    """Parse a small JSON file."""
    return json.loads(read_bytes(uri).decode("utf-8"))


def write_bytes(uri: str, data: bytes) -> None:
    """Replace a file with `data`."""
    with open_file(uri, "wb") as handle:
        handle.write(data)


def write_json(uri: str, value: Any) -> None:
    """Replace a file with `value` as indented JSON."""
    write_bytes(uri, (json.dumps(value, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def delete(uri: str) -> bool:
    """Delete one file; return whether it existed. Any other failure raises."""
    try:
        if is_gcs(uri):
            target = object_path(uri)
            target.fs.rm_file(target.path)
        else:
            os.remove(uri)
    except FileNotFoundError:
        return False
    return True


def delete_prefix(prefix: str) -> int:
    """Delete a folder and every file below it; return how many files were deleted.

    A missing folder deletes nothing; a file that cannot be deleted raises.
    """
    if not is_gcs(prefix):
        count = sum(1 for _ in list_files(prefix))
        if os.path.isdir(prefix):
            shutil.rmtree(prefix)
        return count
    fs = filesystem(prefix)
    uris = list_files(prefix)
    deleted = 0
    # One listed page at a time; gcsfs deletes it in batch requests of 100 objects on GCS.
    while chunk := [uri.removeprefix(GCS_SCHEME) for uri in itertools.islice(uris, LIST_PAGE_SIZE)]:
        fs.rm(chunk)
        deleted += len(chunk)
    return deleted
