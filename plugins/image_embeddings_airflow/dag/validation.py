"""Check a day's outputs against its manifest and the contract, shard by shard, and report."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import posixpath
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beam_jobs.image_embeddings.contract import (
    EMBEDDINGS_PREFIX,
    FAILURES_PREFIX,
    MANIFEST_NAME,
    REUSE_KEYS,
    SHARD_NUMBER,
    STAGES,
    SUCCESS_KEYS,
    SUCCESS_MARKER,
    VALIDATION_NAME,
    join,
    manifest_entries,
    shard_glob,
)
from image_embeddings_airflow import storage
from image_embeddings_airflow.dag.skips import read_skips
from image_embeddings_airflow.settings import validate_failure_rate

log = logging.getLogger(__name__)

REPORT_NAME = VALIDATION_NAME
BATCH_ROWS = 2048
EXAMPLES = 5
MANIFEST_CHUNK = 16384
SHA256_HEX = r"^[0-9a-f]{64}$"


@dataclass
class Check:
    """One property of the outputs: how often it was violated, and the first few cases.

    With a `problem` phrase the summary reads "3 <problem>: a, b, c"; without one, each example
    is a whole sentence.
    """

    name: str
    problem: str | None = None
    count: int = 0
    examples: list[str] = field(default_factory=list)
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.count == 0

    def fail(self, example: str) -> None:
        self.fail_many(1, [example])

    def fail_many(self, count: int, examples: Iterable[str]) -> None:
        """Count `count` violations; keep examples (formatted lazily) up to EXAMPLES in all."""
        self.count += count
        self.examples += itertools.islice(examples, max(EXAMPLES - len(self.examples), 0))

    def summary(self) -> str:
        more = ", ..." if self.count > len(self.examples) else ""
        if self.problem is None:
            return "; ".join(self.examples) + more
        return f"{self.count} {self.problem}: {', '.join(self.examples)}{more}"

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, **asdict(self)}


def _new_checks() -> dict[str, Check]:
    checks = [
        Check("success_marker"),
        Check("manifest"),
        Check("shards"),
        Check("counts"),
        Check("missing", "manifest entries missing from the outputs"),
        Check("extra", "output URIs not in the manifest"),
        Check("duplicates", "URIs written more than once"),
        Check("embedded_and_failed", "URIs both embedded and failed"),
        Check("rows", "rows without a URI or an embedding"),
        Check("dimension", "embeddings of the wrong dimension"),
        Check("finite", "embeddings with NaN or infinity"),
        Check("nonzero", "all-zero embeddings"),
        Check("digests", "embeddings without the sha256 of their bytes"),
        Check("failure_reasons", "failures without a known stage or an error message"),
        Check("failure_rate"),
    ]
    return {check.name: check for check in checks}


@dataclass
class Report:
    """Everything validation found out about one day's outputs; written as validation.json."""

    output_dir: str
    counts: dict[str, Any]
    failure_rate: float
    max_failure_rate: float
    dim: int | None
    failure_stages: dict[str, int]
    checks: dict[str, Check]
    # What staging left out of the manifest (`skipped.json`); None for a day staged without one.
    skipped: dict[str, Any] | None = None

    @property
    def problems(self) -> list[str]:
        return [check.summary() for check in self.checks.values() if not check.passed]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "output_dir": self.output_dir,
            "ok": self.ok,
            "problems": self.problems,
            "counts": self.counts,
            "failure_rate": self.failure_rate,
            "max_failure_rate": self.max_failure_rate,
            "dim": self.dim,
            "failure_stages": self.failure_stages,
            "skipped": self.skipped,
            "checks": [check.to_dict() for check in self.checks.values()],
        }


class ValidationError(Exception):
    """The outputs break the contract; `report` says how."""

    def __init__(self, report: Report) -> None:
        self.report = report
        super().__init__(
            f"outputs in {report.output_dir} failed validation: " + "; ".join(report.problems)
        )


def uri_hashes(uris: Iterable[str]) -> np.ndarray:
    """64-bit digests of URIs: 8 bytes each, collisions about 1 in 10^7 for 10^6 URIs."""
    digests = b"".join(hashlib.blake2b(uri.encode(), digest_size=8).digest() for uri in uris)
    return np.frombuffer(digests, dtype="<u8")


@dataclass
class _Scan:
    """What one streaming pass over an output kind (or the manifest) gathered."""

    hash_chunks: list[np.ndarray] = field(default_factory=list)
    rows: int = 0
    reused: int = 0
    readable: bool = True
    stages: Counter = field(default_factory=Counter)

    def hashes(self) -> np.ndarray:
        """Every URI digest, sorted."""
        if not self.hash_chunks:
            return np.empty(0, dtype="<u8")
        return np.sort(np.concatenate(self.hash_chunks))


def _read_marker(output_dir: str, check: Check) -> dict[str, Any] | None:
    uri = join(output_dir, SUCCESS_MARKER)
    if not storage.exists(uri):
        check.fail(f"{SUCCESS_MARKER} missing: the job did not finish")
        return None
    try:
        marker = storage.read_json(uri)
    except ValueError as error:
        check.fail(f"{SUCCESS_MARKER} is not valid JSON: {error}")
        return None
    if not isinstance(marker, dict):
        check.fail(f"{SUCCESS_MARKER} is not a JSON object")
        return None
    absent = [key for key in SUCCESS_KEYS if key not in marker]
    if absent:
        check.fail(f"{SUCCESS_MARKER} lacks {', '.join(absent)}")
    counts = {key: marker.get(key) for key in ("images", "embedded", "failed")}
    if not all(isinstance(value, int) and value >= 0 for value in counts.values()):
        check.fail(f"{SUCCESS_MARKER} counts are not whole numbers: {counts}")
        return None
    if counts["embedded"] + counts["failed"] != counts["images"]:
        check.fail(
            f"{SUCCESS_MARKER} counts disagree: {counts['embedded']} embedded + "
            f"{counts['failed']} failed != {counts['images']} images"
        )
    check.detail = "{images} images: {embedded} embedded, {failed} failed".format(**counts)
    return marker


def _expected_dim(marker: dict[str, Any] | None, expected: int | None, check: Check) -> int | None:
    declared = marker.get("dim") if marker else None
    if declared is not None and (not isinstance(declared, int) or declared <= 0):
        check.fail(f"{SUCCESS_MARKER} dim is {declared!r}, not a positive whole number")
        declared = None
    if expected is not None and declared is not None and declared != expected:
        check.fail(f"{SUCCESS_MARKER} says dim {declared} but {expected} is expected")
    return expected if expected is not None else declared


def _scan_manifest(output_dir: str, check: Check) -> _Scan | None:
    uri = join(output_dir, MANIFEST_NAME)
    scan = _Scan()
    try:
        with storage.open_file(uri, "r") as handle:
            for chunk in _chunked(manifest_entries(handle), MANIFEST_CHUNK):
                scan.hash_chunks.append(uri_hashes(chunk))
                scan.rows += len(chunk)
    except FileNotFoundError:
        check.fail(f"{MANIFEST_NAME} missing: cannot tell which entries should be there")
        return None
    return scan


def _list_shards(output_dir: str, prefix: str, marker: dict[str, Any] | None, check: Check):
    """The shards of one output kind; a gap in their numbering or in the marker's list fails."""
    shards = storage.glob(shard_glob(output_dir, prefix))
    names = [posixpath.basename(uri) for uri in shards]
    totals = {int(m[2]) for m in map(SHARD_NUMBER.search, names) if m}
    for total in totals:
        numbered = {int(m[1]) for m in map(SHARD_NUMBER.search, names) if m and int(m[2]) == total}
        for index in sorted(set(range(total)) - numbered):
            check.fail(f"{prefix} shard {index} of {total} missing")
    if len(totals) > 1:
        check.fail(f"{prefix} shards of different runs side by side (of {sorted(totals)})")
    listed = (marker or {}).get(f"{prefix}_files")
    if isinstance(listed, list):
        for name in sorted(set(listed) - set(names)):
            check.fail(f"{name} listed in {SUCCESS_MARKER} is missing")
        for name in sorted(set(names) - set(listed)):
            check.fail(f"{name} is not listed in {SUCCESS_MARKER}")
    return shards


def _batches(uri: str, columns: list[str]) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(first row number, batch) of a Parquet file's columns, `BATCH_ROWS` rows at a time."""
    first = 0
    for batch in storage.parquet_batches(uri, columns, BATCH_ROWS):
        yield first, batch
        first += batch.num_rows


def _row_flags(values: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of flattened vectors: holds NaN or infinity; is all zeros (empty rows: neither)."""
    nonfinite = np.zeros(len(lengths), dtype=bool)
    zero = np.zeros(len(lengths), dtype=bool)
    filled = lengths > 0
    if filled.any():
        starts = (np.cumsum(lengths) - lengths)[filled]
        nonfinite[filled] = np.logical_or.reduceat(~np.isfinite(values), starts)
        zero[filled] = ~np.logical_or.reduceat(values != 0, starts)
    return nonfinite, zero


def _describe_nonfinite(row: np.ndarray) -> str:
    return "NaN" if np.isnan(row).any() else "infinity"


def _check_vectors(batch: pa.RecordBatch, where: str, first: int, dim: int, checks) -> None:
    embeddings = batch.column("embedding")
    valid = np.asarray(pc.is_valid(embeddings))
    absent = np.flatnonzero(~valid)
    checks["rows"].fail_many(
        len(absent), (f"row {first + row} of {where} has no embedding" for row in absent)
    )
    rows = np.flatnonzero(valid)
    present = embeddings.filter(pa.array(valid))
    lengths = np.asarray(pc.list_value_length(present), dtype=np.int64)
    values = np.asarray(present.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    starts = np.cumsum(lengths) - lengths
    wrong = np.flatnonzero(lengths != dim)
    checks["dimension"].fail_many(
        len(wrong), (f"row {first + rows[i]} of {where} has {lengths[i]} values" for i in wrong)
    )
    nonfinite, zero = _row_flags(values, lengths)
    bad = np.flatnonzero(nonfinite)
    checks["finite"].fail_many(
        len(bad),
        (
            f"row {first + rows[i]} of {where} has "
            + _describe_nonfinite(values[starts[i] : starts[i] + lengths[i]])
            for i in bad
        ),
    )
    zeros = np.flatnonzero(zero)
    checks["nonzero"].fail_many(
        len(zeros), (f"row {first + rows[i]} of {where} is all zeros" for i in zeros)
    )


def _uri_hashes_of(batch: pa.RecordBatch, where: str, first: int, checks) -> np.ndarray:
    uris = batch.column("uri")
    absent = np.flatnonzero(np.asarray(pc.is_null(uris)))
    checks["rows"].fail_many(
        len(absent), (f"row {first + row} of {where} has no uri" for row in absent)
    )
    return uri_hashes(uri for uri in uris.to_pylist() if uri is not None)


def _check_reasons(batch: pa.RecordBatch, where: str, first: int, scan: _Scan, checks) -> None:
    stages = batch.column("stage").to_pylist()
    errors = batch.column("error").to_pylist()
    scan.stages.update(str(stage) for stage in stages)
    for row, (stage, error) in enumerate(zip(stages, errors, strict=True)):
        if stage not in STAGES:
            checks["failure_reasons"].fail(f"row {first + row} of {where} has stage {stage!r}")
        elif not (error or "").strip():
            checks["failure_reasons"].fail(f"row {first + row} of {where} has no error message")


def carries_digests(marker: dict[str, Any] | None) -> bool:
    """True when the marker says its rows carry `sha256` and `reused_from`."""
    return marker is not None and all(key in marker for key in REUSE_KEYS)


def _check_digests(batch: pa.RecordBatch, where: str, first: int, scan: _Scan, checks) -> None:
    """Each row's sha256 is 64 hex digits; count the rows copied from earlier runs."""
    valid = pc.fill_null(pc.match_substring_regex(batch.column("sha256"), SHA256_HEX), False)
    bad = np.flatnonzero(~np.asarray(valid))
    checks["digests"].fail_many(
        len(bad), (f"row {first + row} of {where} has no valid sha256" for row in bad)
    )
    scan.reused += batch.num_rows - batch.column("reused_from").null_count


def _scan_shards(
    shards: list[str], kind: str, dim: int | None, checks, digests: bool = False
) -> _Scan:
    """Stream every shard of one kind: URI digests, and the per-row checks of that kind;
    with `digests`, the content digests and reuse of embeddings rows too."""
    scan = _Scan()
    columns = ["uri", "embedding"] if kind == EMBEDDINGS_PREFIX else ["uri", "stage", "error"]
    with_digests = digests and kind == EMBEDDINGS_PREFIX
    if with_digests:
        columns += ["sha256", "reused_from"]
    for shard in shards:
        where = posixpath.basename(shard)
        try:
            for first, batch in _batches(shard, columns):
                scan.hash_chunks.append(_uri_hashes_of(batch, where, first, checks))
                scan.rows += batch.num_rows
                if kind == FAILURES_PREFIX:
                    _check_reasons(batch, where, first, scan, checks)
                elif dim is not None:
                    _check_vectors(batch, where, first, dim, checks)
                if with_digests:
                    _check_digests(batch, where, first, scan, checks)
        except (pa.ArrowException, OSError, ValueError) as error:
            scan.readable = False
            checks["shards"].fail(f"{where} cannot be read: {error}")
    return scan


def _first_embedding_dim(shards: list[str]) -> int | None:
    """The length of the first stored embedding, when nothing else declares the dimension."""
    for shard in shards:
        try:
            for _, batch in _batches(shard, ["embedding"]):
                lengths = pc.drop_null(pc.list_value_length(batch.column("embedding")))
                if len(lengths):
                    return int(lengths[0].as_py())
        except (pa.ArrowException, OSError, ValueError):
            continue
    return None


def _repeated(sorted_hashes: np.ndarray) -> np.ndarray:
    """Digests that occur more than once in a sorted array, each once."""
    return np.unique(sorted_hashes[1:][sorted_hashes[1:] == sorted_hashes[:-1]])


def _chunked(items: Iterable[str], size: int) -> Iterator[list[str]]:
    """Lists of up to `size` consecutive items."""
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _uris_with(hashes: np.ndarray, uris: Iterable[str]) -> list[str]:
    """The first URIs (up to EXAMPLES, in stream order) whose digest is in sorted `hashes`."""
    found: list[str] = []
    for chunk in _chunked(uris, MANIFEST_CHUNK):
        digests = uri_hashes(chunk)
        positions = np.searchsorted(hashes, digests).clip(max=len(hashes) - 1)
        for index in np.flatnonzero(hashes[positions] == digests):
            if chunk[index] not in found:
                found.append(chunk[index])
            if len(found) == EXAMPLES:
                return found
    return found


def _shard_uris(shards: list[str]) -> Iterator[str]:
    for shard in shards:
        # A shard that cannot be read is already reported; examples come from the others.
        with contextlib.suppress(pa.ArrowException, OSError, ValueError):
            for _, batch in _batches(shard, ["uri"]):
                yield from (uri for uri in batch.column("uri").to_pylist() if uri is not None)


def _manifest_uris(output_dir: str) -> Iterator[str]:
    with storage.open_file(join(output_dir, MANIFEST_NAME), "r") as handle:
        yield from manifest_entries(handle)


def _report_set(check: Check, hashes: np.ndarray, uris: Iterable[str], suffix: str = "") -> None:
    """Fail `check` once per digest, with the URIs of the first few as examples."""
    if not len(hashes):
        return
    if len(check.examples) >= EXAMPLES:
        check.fail_many(len(hashes), [])
    else:
        check.fail_many(len(hashes), (uri + suffix for uri in _uris_with(hashes, uris)))


def _check_coverage(output_dir: str, expected: np.ndarray, shards: dict, scans: dict, checks):
    """Manifest entries == embedded + failed, exactly: compares sorted 64-bit digests."""
    embedded, failed = scans[EMBEDDINGS_PREFIX].hashes(), scans[FAILURES_PREFIX].hashes()
    all_shards = shards[EMBEDDINGS_PREFIX] + shards[FAILURES_PREFIX]
    for kind, found in ((EMBEDDINGS_PREFIX, embedded), (FAILURES_PREFIX, failed)):
        repeated = _repeated(found)
        extra_rows = len(found) - len(np.unique(found))
        if extra_rows:
            _report_set(checks["duplicates"], repeated, _shard_uris(shards[kind]), f" in {kind}")
            checks["duplicates"].count += extra_rows - len(repeated)
    both = np.intersect1d(embedded, failed)
    _report_set(checks["embedded_and_failed"], both, _shard_uris(shards[EMBEDDINGS_PREFIX]))
    written = np.union1d(embedded, failed)
    _report_set(checks["missing"], np.setdiff1d(expected, written), _manifest_uris(output_dir))
    _report_set(checks["extra"], np.setdiff1d(written, expected), _shard_uris(all_shards))


def _check_counts(marker, manifest: _Scan | None, distinct: int | None, scans, check) -> None:
    if marker is None or not all(isinstance(marker.get(k), int) for k in ("embedded", "failed")):
        return
    for key, kind in (("embedded", EMBEDDINGS_PREFIX), ("failed", FAILURES_PREFIX)):
        if scans[kind].readable and marker[key] != scans[kind].rows:
            check.fail(
                f"{SUCCESS_MARKER} says {marker[key]} {key} but the {kind} shards hold "
                f"{scans[kind].rows} rows"
            )
    if distinct is not None and marker.get("images") != distinct:
        check.fail(
            f"{SUCCESS_MARKER} says {marker.get('images')} images but {MANIFEST_NAME} holds "
            f"{distinct} distinct entries"
        )
    reused = scans[EMBEDDINGS_PREFIX]
    if carries_digests(marker) and reused.readable and marker["reused"] != reused.reused:
        check.fail(
            f"{SUCCESS_MARKER} says {marker['reused']} reused but the {EMBEDDINGS_PREFIX} shards "
            f"hold {reused.reused} rows with reused_from"
        )
    duplicates = marker.get("duplicates")
    if distinct is None or not isinstance(duplicates, int):
        return
    if duplicates != manifest.rows - distinct:
        check.fail(
            f"{SUCCESS_MARKER} says {duplicates} duplicate manifest lines but {MANIFEST_NAME} "
            f"holds {manifest.rows - distinct}"
        )


def _check_failure_rate(images: int, failed: int, maximum: float, check: Check) -> float:
    rate = failed / images if images else 0.0
    text = f"{rate:.1%} ({failed} of {images}), maximum {maximum:.1%}"
    if rate > maximum:
        check.fail(f"failure rate {text} exceeded")
    else:
        check.detail = text
    return rate


def validate_output(
    output_dir: str, max_failure_rate: float, expected_dim: int | None = None
) -> Report:
    """Check one day's outputs; write `validation.json`; raise ValidationError on any problem.

    Shards stream in batches of `BATCH_ROWS` rows, so vectors never take more than one batch of
    memory. The exact set comparison keeps one 8-byte digest per manifest entry and per output
    row: about 24 MB per million entries, with sorting temporaries.
    """
    output_dir = storage.absolute(output_dir)
    maximum = validate_failure_rate(max_failure_rate)
    checks = _new_checks()
    marker = _read_marker(output_dir, checks["success_marker"])
    manifest = _scan_manifest(output_dir, checks["manifest"])
    shards = {
        kind: _list_shards(output_dir, kind, marker, checks["shards"])
        for kind in (EMBEDDINGS_PREFIX, FAILURES_PREFIX)
    }
    dim = _expected_dim(marker, expected_dim, checks["success_marker"])
    if dim is None:
        dim = _first_embedding_dim(shards[EMBEDDINGS_PREFIX])
    digests = carries_digests(marker)
    scans = {kind: _scan_shards(shards[kind], kind, dim, checks, digests) for kind in shards}
    distinct = None
    if manifest is not None:
        expected = np.unique(manifest.hashes())
        distinct = len(expected)
        _check_coverage(output_dir, expected, shards, scans, checks)
    _check_counts(marker, manifest, distinct, scans, checks["counts"])
    failed = scans[FAILURES_PREFIX].rows
    images = distinct if distinct is not None else scans[EMBEDDINGS_PREFIX].rows + failed
    report = Report(
        output_dir=output_dir,
        counts={
            "manifest_lines": manifest.rows if manifest else None,
            "images": images,
            "embedded": scans[EMBEDDINGS_PREFIX].rows,
            "failed": failed,
            "reused": scans[EMBEDDINGS_PREFIX].reused if digests else None,
            "embeddings_shards": len(shards[EMBEDDINGS_PREFIX]),
            "failures_shards": len(shards[FAILURES_PREFIX]),
            "marker": {key: marker.get(key) for key in SUCCESS_KEYS} if marker else None,
        },
        failure_rate=_check_failure_rate(images, failed, maximum, checks["failure_rate"]),
        max_failure_rate=maximum,
        dim=dim,
        failure_stages=dict(sorted(scans[FAILURES_PREFIX].stages.items())),
        checks=checks,
        skipped=read_skips(output_dir),
    )
    storage.write_json(join(output_dir, REPORT_NAME), report.to_dict())
    if not report.ok:
        raise ValidationError(report)
    skipped = report.skipped["total"] if report.skipped else 0
    log.info(
        "Validated %s: %s; %d objects skipped", output_dir, checks["failure_rate"].detail, skipped
    )
    return report
