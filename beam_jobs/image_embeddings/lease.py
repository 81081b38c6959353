"""The day lease: one run at a time writes a day's output folder; a dead run's lease expires."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from beam_jobs.image_embeddings.contract import LEASE_NAME, join

LOGGER = logging.getLogger(__name__)

# As the DAG's dagrun_timeout: a run that holds a day longer has been failed by Airflow already.
DEFAULT_TTL = timedelta(hours=24)


class LeaseHeld(RuntimeError):
    """Another run holds the day: `record` says which, and until when."""

    def __init__(self, output: str, record: LeaseRecord) -> None:
        self.record = record
        super().__init__(
            f"day folder {output} is being written by {record.holder} (since {record.acquired_at}, "
            f"lease expires {record.expires_at}); this run does not touch it: wait for that run "
            f"to finish, or remove {join(output, LEASE_NAME)} if you know it is dead"
        )


class _Conflict(Exception):
    """The lease changed between reading and writing it: someone else moved first."""


@dataclass(frozen=True)
class LeaseRecord:
    """What the lease file holds: who holds the day, where it runs, until when."""

    holder: str
    host: str
    pid: int
    acquired_at: str
    expires_at: str
    # True when the lease lives only as long as its process (a command-line run holding the day
    # itself): once that process is gone from its host, the lease is abandoned at once.
    process_bound: bool = False

    def expired(self, now: datetime) -> bool:
        return datetime.fromisoformat(self.expires_at) <= now

    def abandoned(self, now: datetime) -> bool:
        """Expired, or bound to a process of this host that no longer runs."""
        if self.expired(now):
            return True
        return self.process_bound and self.host == socket.gethostname() and not _alive(self.pid)

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self), indent=2) + "\n").encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> LeaseRecord:
        return cls(**json.loads(data.decode("utf-8")))


@dataclass(frozen=True)
class Lease:
    """A held lease: its record, the version it was written at, whether this call created it."""

    output: str
    record: LeaseRecord
    version: Any
    created: bool


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cli_holder() -> str:
    """The holder name of a command-line run: `cli:<host>:<pid>`."""
    return f"cli:{socket.gethostname()}:{os.getpid()}"


class _LocalStore:
    """A lease file on a local disk: created whole or not at all; replaced under a folder lock.

    The version is the record itself: a replace or delete checks, under an exclusive `flock` of
    the day folder, that the file still holds what the caller read.
    """

    def __init__(self, output: str) -> None:
        self._folder = output
        self._path = os.path.join(output, LEASE_NAME)

    def read(self) -> tuple[LeaseRecord, Any] | None:
        try:
            with open(self._path, "rb") as handle:
                record = LeaseRecord.from_bytes(handle.read())
        except FileNotFoundError:
            return None
        return record, record

    def create(self, record: LeaseRecord) -> Any:
        os.makedirs(self._folder, exist_ok=True)
        partial = self._write_partial(record)
        try:
            # A hard link appears whole, or fails when the name exists: O_EXCL with the content.
            os.link(partial, self._path)
        except FileExistsError:
            raise _Conflict from None
        finally:
            os.remove(partial)
        return record

    def replace(self, record: LeaseRecord, version: Any) -> Any:
        with self._locked_as(version):
            os.replace(self._write_partial(record), self._path)
        return record

    def _write_partial(self, record: LeaseRecord) -> str:
        partial = f"{self._path}.{uuid.uuid4().hex}.partial"
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with open(descriptor, "wb") as handle:
            handle.write(record.to_bytes())
        return partial

    def delete(self, version: Any) -> None:
        with self._locked_as(version):
            os.remove(self._path)

    @contextlib.contextmanager
    def _locked_as(self, version: Any) -> Iterator[None]:
        descriptor = os.open(self._folder, os.O_RDONLY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            current = self.read()
            if current is None or current[1] != version:
                raise _Conflict
            yield
        finally:
            os.close(descriptor)


class _GcsStore:
    """A lease object on GCS: every write carries a generation precondition (0: must not exist)."""

    def __init__(self, output: str, client: Any) -> None:
        bucket, _, folder = output.removeprefix("gs://").partition("/")
        self._blob_name = join(folder, LEASE_NAME)
        self._bucket = client.bucket(bucket)

    def _blob(self):
        return self._bucket.blob(self._blob_name)

    def read(self) -> tuple[LeaseRecord, Any] | None:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        blob = self._blob()
        try:
            blob.reload()
            data = blob.download_as_bytes(if_generation_match=blob.generation)
        except (NotFound, PreconditionFailed):
            # Gone, or replaced between the two requests: read as free; a write then conflicts.
            return None
        return LeaseRecord.from_bytes(data), blob.generation

    def create(self, record: LeaseRecord) -> Any:
        return self.replace(record, 0)

    def replace(self, record: LeaseRecord, version: Any) -> Any:
        from google.api_core.exceptions import PreconditionFailed

        blob = self._blob()
        try:
            blob.upload_from_string(
                record.to_bytes(), content_type="application/json", if_generation_match=version
            )
        except PreconditionFailed:
            raise _Conflict from None
        return blob.generation

    def delete(self, version: Any) -> None:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        try:
            self._blob().delete(if_generation_match=version)
        except (PreconditionFailed, NotFound):
            raise _Conflict from None


def _store(output: str, gcs_client: Any):
    if output.startswith("gs://"):
        if gcs_client is None:
            raise ValueError(f"a gs:// day folder needs a storage client: {output}")
        return _GcsStore(output, gcs_client)
    return _LocalStore(output)


def acquire(
    output: str,
    holder: str,
    ttl: timedelta = DEFAULT_TTL,
    gcs_client: Any = None,
    process_bound: bool = False,
) -> Lease:
    """Take the day folder `output` for `holder`, for `ttl` from now.

    The holder's own lease is renewed (a retried task, or the pipeline launched by the DAG run
    that holds the day); an abandoned one (expired, or its process gone) is taken over, with a
    warning naming its holder. A lease held by anyone else raises LeaseHeld, naming that holder.
    Two callers racing for one lease: one wins, the other gets LeaseHeld.
    """
    store = _store(output, gcs_client)
    now = datetime.now(UTC)
    record = LeaseRecord(
        holder=holder,
        host=socket.gethostname(),
        pid=os.getpid(),
        acquired_at=now.isoformat(timespec="seconds"),
        expires_at=(now + ttl).isoformat(timespec="seconds"),
        process_bound=process_bound,
    )
    current = store.read()
    try:
        if current is None:
            return Lease(output, record, store.create(record), created=True)
        held, version = current
        if held.holder == holder:
            return Lease(output, record, store.replace(record, version), created=False)
        if not held.abandoned(now):
            raise LeaseHeld(output, held)
        LOGGER.warning(
            "taking over %s: the lease of %s (pid %d on %s) was abandoned or expired at %s",
            output,
            held.holder,
            held.pid,
            held.host,
            held.expires_at,
        )
        return Lease(output, record, store.replace(record, version), created=True)
    except _Conflict:
        winner = store.read()
        if winner is None:
            raise LeaseHeld(output, current[0]) from None
        raise LeaseHeld(output, winner[0]) from None


def check_held(output: str, holder: str, gcs_client: Any = None) -> None:
    """Raise LeaseHeld unless `holder` holds an unexpired lease on `output`."""
    current = _store(output, gcs_client).read()
    if current is None:
        raise RuntimeError(f"{holder} does not hold {output}: no lease; take the day first")
    record = current[0]
    if record.holder != holder:
        raise LeaseHeld(output, record)
    if record.expired(datetime.now(UTC)):
        raise RuntimeError(f"the lease of {holder} on {output} expired at {record.expires_at}")


def release(lease: Lease, gcs_client: Any = None) -> bool:
    """Give the day back; False (with a warning) when the lease is no longer this one."""
    try:
        _store(lease.output, gcs_client).delete(lease.version)
    except _Conflict:
        LOGGER.warning(
            "the lease of %s was no longer %s's: left as is", lease.output, lease.record.holder
        )
        return False
    return True


def release_held(output: str, holder: str, gcs_client: Any = None) -> bool:
    """Give the day back if `holder` holds it (an end-of-run cleanup); True when released."""
    current = _store(output, gcs_client).read()
    if current is None or current[0].holder != holder:
        return False
    record, version = current
    return release(Lease(output, record, version, created=False), gcs_client)
