"""The day lease: one run at a time writes a day's output folder, and only while it holds it."""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from beam_jobs.image_embeddings.contract import LEASE_NAME, join

LOGGER = logging.getLogger(__name__)

# As the DAG's dagrun_timeout: a run that holds a day longer has been failed by Airflow already.
DEFAULT_TTL = timedelta(hours=24)
# A holder renews its lease this many times per TTL while its job runs.
RENEWALS_PER_TTL = 4
# As google-cloud-storage's own requests.
GCS_TIMEOUT_S = 60


def host_now() -> datetime:
    """The time on this host's clock: a local lease's clock, and the times people read in a
    lease record."""
    return datetime.now(UTC)


class LeaseHeld(RuntimeError):
    """Another run holds the day: `record` says which, and until when."""

    def __init__(self, output: str, record: LeaseRecord) -> None:
        self.record = record
        super().__init__(
            f"day folder {output} is being written by {record.holder} (since {record.acquired_at}, "
            f"lease expires {record.expires_at}); this run does not touch it: wait for that run "
            f"to finish, or remove {join(output, LEASE_NAME)} if you know it is dead"
        )


class LeaseLost(RuntimeError):
    """A step that deletes or publishes in the day folder is refused: its run no longer holds it."""

    def __init__(self, output: str, action: str, reason: str) -> None:
        super().__init__(
            f"refusing to {action} in {output}: {reason}; another run may be writing the day, "
            "so this run stops here without touching it"
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
    # The fencing token: a counter, above the previous holder's, kept by renewals. It is written
    # under the store's create-or-replace precondition, so two holders never share one.
    token: int | None = None
    ttl_secs: float | None = None
    # Set when the holder gave the day back: the record stays, so the next holder's token is
    # above its token, and giving back is a write under the same precondition as the others.
    released_at: str | None = None

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self), indent=2) + "\n").encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> LeaseRecord:
        return cls(**json.loads(data.decode("utf-8")))


@dataclass(frozen=True)
class Lease:
    """A held lease: its record, the version it was written at, whether this call created it,
    and its fencing token."""

    output: str
    record: LeaseRecord
    version: Any
    created: bool
    token: int


@dataclass(frozen=True)
class _Stored:
    """A lease as read from its store: the record, its version, when the store wrote it (the
    storage service's own clock; None where the store has none of its own), and the store's
    time when it was read."""

    record: LeaseRecord
    version: Any
    written_at: datetime | None
    now: datetime

    @property
    def token(self) -> int | None:
        return self.record.token

    @property
    def released(self) -> bool:
        return self.record.released_at is not None

    def expires(self) -> datetime:
        """The write's time on the store plus the TTL: no writer's clock moves it."""
        if self.written_at is not None and self.record.ttl_secs is not None:
            return self.written_at + timedelta(seconds=self.record.ttl_secs)
        return datetime.fromisoformat(self.record.expires_at)

    def as_refused(self) -> LeaseRecord:
        """The record as a refusal names it: its expiry the store's, not its writer's estimate."""
        expires = self.expires().isoformat(timespec="seconds")
        return dataclasses.replace(self.record, expires_at=expires)

    def expired(self) -> bool:
        """Past its expiry on the store's clock, not the reading host's."""
        return self.expires() <= self.now

    def abandoned(self) -> bool:
        """Expired, or bound to a process of this host that no longer runs."""
        if self.expired():
            return True
        record = self.record
        on_this_host = record.host == socket.gethostname()
        return record.process_bound and on_this_host and not _alive(record.pid)


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

    The version is the record itself: a replace checks, under an exclusive `flock` of the day
    folder, that the file still holds what the caller read. Its clock is the host's (a local
    disk has no other): `host_now` and the record's `expires_at`.
    """

    def __init__(self, output: str) -> None:
        self._folder = output
        self._path = os.path.join(output, LEASE_NAME)

    def read(self) -> _Stored | None:
        try:
            with open(self._path, "rb") as handle:
                record = LeaseRecord.from_bytes(handle.read())
        except FileNotFoundError:
            return None
        return _Stored(record, record, None, host_now())

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

    @contextlib.contextmanager
    def _locked_as(self, version: Any) -> Iterator[None]:
        descriptor = os.open(self._folder, os.O_RDONLY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            current = self.read()
            if current is None or current.version != version:
                raise _Conflict
            yield
        finally:
            os.close(descriptor)


class _GcsStore:
    """A lease object on GCS: every write carries a generation precondition (0: must not exist).

    Its clock is the service's: the `updated` time of the last write starts the TTL, and the
    `Date` of the service's answer to a read is the time it is compared with. That header counts
    whole seconds, so a lease is seen expiring up to a second late, never early.
    """

    def __init__(self, output: str, client: Any) -> None:
        bucket, _, folder = output.removeprefix("gs://").partition("/")
        self._blob_name = join(folder, LEASE_NAME)
        self._bucket = client.bucket(bucket)

    def _blob(self):
        return self._bucket.blob(self._blob_name)

    def read(self) -> _Stored | None:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        metadata, now = self._metadata()
        if metadata is None:
            return None
        generation = int(metadata["generation"])
        try:
            data = self._blob().download_as_bytes(if_generation_match=generation)
        except (NotFound, PreconditionFailed):
            # Gone, or replaced between the two requests: read as free; a write then conflicts.
            return None
        updated = datetime.fromisoformat(metadata["updated"])
        return _Stored(LeaseRecord.from_bytes(data), generation, updated, now)

    def _metadata(self) -> tuple[dict[str, Any] | None, datetime]:
        """The lease object's generation and `updated` time (None when there is none), and the
        service's time of answering: one GET of the JSON API through the client's session."""
        from google.api_core.exceptions import from_http_response
        from google.cloud.storage.retry import DEFAULT_RETRY

        client = self._bucket.client
        url = client._connection.build_api_url(
            path=self._blob().path, query_params={"fields": "generation,updated"}
        )

        def get():
            response = client._http.get(url, timeout=GCS_TIMEOUT_S)
            if response.status_code != 404 and not response.ok:
                raise from_http_response(response)
            return response

        response = DEFAULT_RETRY(get)()
        now = _service_now(response.headers.get("Date"), url)
        return (None if response.status_code == 404 else response.json()), now

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


def _service_now(date: str | None, url: str) -> datetime:
    """The time a storage service answered at, from its `Date` header; the host's clock, with a
    warning, when it sent none that reads as a date."""
    try:
        answered = email.utils.parsedate_to_datetime(date)
    except (TypeError, ValueError):
        LOGGER.warning(
            "%s answered without a Date (%r): the lease uses this host's clock", url, date
        )
        return host_now()
    # HTTP dates are GMT; two Date headers joined (a proxy adding its own) parse without a zone.
    return answered if answered.tzinfo else answered.replace(tzinfo=UTC)


def storage_client(output: str) -> Any:
    """The storage client of the lease on a gs:// output (anonymous on an emulator); else None."""
    if not output.startswith("gs://"):
        return None
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return storage.Client.create_anonymous_client()
    return storage.Client()


def _store(output: str, gcs_client: Any):
    if output.startswith("gs://"):
        if gcs_client is None:
            raise ValueError(f"a gs:// day folder needs a storage client: {output}")
        return _GcsStore(output, gcs_client)
    return _LocalStore(output)


def _record(holder: str, ttl: timedelta, process_bound: bool, token: int | None) -> LeaseRecord:
    now = host_now()
    return LeaseRecord(
        holder=holder,
        host=socket.gethostname(),
        pid=os.getpid(),
        acquired_at=now.isoformat(timespec="seconds"),
        expires_at=(now + ttl).isoformat(timespec="milliseconds"),
        process_bound=process_bound,
        token=token,
        ttl_secs=ttl.total_seconds(),
    )


def _written(output: str, record: LeaseRecord, version: Any, created: bool) -> Lease:
    return Lease(output, record, version, created, record.token)


def _claim(store, record: LeaseRecord, current: _Stored | None) -> Any:
    """Write `record` where no lease is stored, or over the one read as `current`."""
    return store.create(record) if current is None else store.replace(record, current.version)


def _new_token(previous: _Stored | None) -> int:
    """A counter that outlives released leases: nanoseconds, above the previous holder's."""
    return max(time.time_ns(), (previous.token or 0) + 1 if previous else 0)


def acquire(
    output: str,
    holder: str,
    ttl: timedelta = DEFAULT_TTL,
    gcs_client: Any = None,
    process_bound: bool = False,
) -> Lease:
    """Take the day folder `output` for `holder`, for `ttl` from now.

    A free day (no lease, or a released one) is taken under a new token. The holder's own lease
    is renewed, keeping its token (a retried task); an abandoned one (expired, or its process
    gone) is taken over, with a warning naming its holder, under a new token. A lease held by
    anyone else raises LeaseHeld, naming that holder. Two callers racing for one lease: one
    wins, the other gets LeaseHeld.
    """
    store = _store(output, gcs_client)
    current = store.read()
    try:
        if current is None or current.released:
            record = _record(holder, ttl, process_bound, _new_token(current))
            return _written(output, record, _claim(store, record, current), created=True)
        if current.record.holder == holder:
            record = _record(holder, ttl, process_bound, current.token)
            return _written(output, record, store.replace(record, current.version), created=False)
        if not current.abandoned():
            raise LeaseHeld(output, current.as_refused())
        LOGGER.warning(
            "taking over %s: the lease of %s (pid %d on %s) was abandoned or expired at %s",
            output,
            current.record.holder,
            current.record.pid,
            current.record.host,
            current.expires().isoformat(timespec="seconds"),
        )
        record = _record(holder, ttl, process_bound, _new_token(current))
        return _written(output, record, store.replace(record, current.version), created=True)
    except _Conflict:
        winner = store.read()
        raise LeaseHeld(output, (winner or current).record) from None


def _held(store, output: str, holder: str, token: int, action: str) -> _Stored:
    """The stored lease, if `holder` holds it under `token` and it has not expired."""
    current = store.read()
    if current is None:
        raise LeaseLost(output, action, f"{holder} holds no lease there (no lease)")
    if current.released:
        raise LeaseLost(
            output,
            action,
            f"{holder} holds no lease there (released by {current.record.holder} at "
            f"{current.record.released_at})",
        )
    if current.record.holder != holder or current.token != token:
        raise LeaseLost(
            output,
            action,
            f"the lease is {current.record.holder}'s under token {current.token}, not "
            f"{holder}'s under token {token}",
        )
    if current.expired():
        raise LeaseLost(
            output, action, f"the lease of {holder} expired at {current.expires().isoformat()}"
        )
    return current


def check_held(output: str, holder: str, token: int, action: str, gcs_client: Any = None) -> None:
    """Fencing: raise LeaseLost unless `holder` holds an unexpired lease on `output` under
    `token`. Called before every step that deletes or publishes in the day folder."""
    _held(_store(output, gcs_client), output, holder, token, action)


def renew(
    output: str, holder: str, token: int, ttl: timedelta = DEFAULT_TTL, gcs_client: Any = None
) -> Lease:
    """Extend `holder`'s lease under `token` by `ttl` from now; LeaseLost when it is no longer
    held so (taken over after expiring, or released)."""
    store = _store(output, gcs_client)
    current = _held(store, output, holder, token, "renew the lease")
    record = _record(holder, ttl, current.record.process_bound, token)
    try:
        return _written(output, record, store.replace(record, current.version), created=False)
    except _Conflict:
        raise LeaseLost(output, "renew the lease", "it changed while renewing") from None


@contextlib.contextmanager
def renewing(
    output: str, holder: str, token: int, ttl: timedelta, gcs_client: Any = None
) -> Iterator[None]:
    """Renew the lease in the background, RENEWALS_PER_TTL times per `ttl`, while the block runs.

    A lost lease is logged and renewing stops: the run's fenced steps refuse on their own.
    """
    stop = threading.Event()

    def keep() -> None:
        while not stop.wait(ttl.total_seconds() / RENEWALS_PER_TTL):
            try:
                renew(output, holder, token, ttl, gcs_client)
            except LeaseLost as lost:
                LOGGER.error("%s", lost)
                return
            except Exception:  # A storage hiccup: the next renewal tries again.
                LOGGER.warning("renewing the lease of %s failed", output, exc_info=True)

    thread = threading.Thread(target=keep, name="lease-renewal", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def release(lease: Lease, gcs_client: Any = None) -> bool:
    """Give the day back; False (with a warning) when the lease is no longer this one.

    The lease is replaced by its released record, under the precondition that it is still the
    one written: a precondition GCS honours on writes everywhere, on deletes not in every
    server (fake-gcs-server ignores it).
    """
    released = dataclasses.replace(
        lease.record, released_at=host_now().isoformat(timespec="seconds")
    )
    try:
        _store(lease.output, gcs_client).replace(released, lease.version)
    except _Conflict:
        LOGGER.warning(
            "the lease of %s was no longer %s's: left as is", lease.output, lease.record.holder
        )
        return False
    return True


def release_held(output: str, holder: str, token: int, gcs_client: Any = None) -> bool:
    """Give the day back if `holder` holds it under `token` (an end-of-run cleanup); True when
    released."""
    current = _store(output, gcs_client).read()
    held = current is not None and not current.released
    if not held or current.record.holder != holder or current.token != token:
        return False
    return release(_written(output, current.record, current.version, created=False), gcs_client)


@dataclass(frozen=True)
class Fence:
    """What a pipeline step needs to check, anywhere it runs, that its run still holds the day."""

    output: str
    holder: str
    token: int

    def check(self, action: str) -> None:
        """Raise LeaseLost unless the run still holds the day: before `action`."""
        check_held(self.output, self.holder, self.token, action, storage_client(self.output))
