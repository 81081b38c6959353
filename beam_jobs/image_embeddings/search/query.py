"""`python -m beam_jobs.image_embeddings.search.query`: the images of a day (or days) nearest one.

The query is embedded with the day's own model: model, weights and precision come from the day's
`_SUCCESS`, and the model fingerprint rebuilt here must equal the one recorded there, so that the
query and the day's images are comparable; otherwise the search is refused, saying which part
differs. Each day's neighbours index (written by the DAG's reduce step) proposes candidates in
that day's PCA space; every candidate is then scored with its full embedding, as the centred cosine
under D's mean, so that the similarities of different days (each with its own PCA) are comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import date
from typing import Any, NoReturn

import numpy as np

from beam_jobs.image_embeddings.comparable import comparable_days, window
from beam_jobs.image_embeddings.contract import (
    EMBEDDINGS_PREFIX,
    FINGERPRINT_KEY,
    NEIGHBOURS_INDEX_NAME,
    PCA_NAME,
    SUCCESS_MARKER,
    join,
    shard_glob,
)
from beam_jobs.image_embeddings.marker import NoMarker, success_record
from beam_jobs.image_embeddings.pca import PcaAxes
from beam_jobs.image_embeddings.search.index import (
    SEARCH_PROBED_LISTS,
    nearest,
    read_index_from,
    unit_rows,
)
from beam_jobs.image_embeddings.search.stores import add_store_arguments
from beam_jobs.image_embeddings.storage import io as storage

OUTPUT_ROOT_VARIABLE = "IMAGE_EMBEDDINGS_OUTPUT_ROOT"
# Candidates a day's index proposes for each hit asked: the index ranks in the day's PCA space,
# the full embeddings may rank its candidates otherwise.
CANDIDATES_PER_HIT = 4


class SearchRefused(Exception):
    """The search cannot answer; the message says why and what to do."""


@dataclass(frozen=True)
class Hit:
    """One image near the query."""

    rank: int
    similarity: float
    day: str
    uri: str


def day_of(text: str) -> str:
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a day written YYYY-MM-DD, got {text!r}"
        ) from None


def positive(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return number


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m beam_jobs.image_embeddings.search.query",
        description="Print the K images nearest IMAGE over day DATE, or DATE and the days "
        "before it: one line each (rank, similarity, day, URI).",
    )
    parser.add_argument("--date", required=True, type=day_of, help="the day D (YYYY-MM-DD)")
    parser.add_argument(
        "--image", required=True, help="the query image: a local path or a gs:// URI"
    )
    parser.add_argument("--k", type=positive, default=10, help="images to print (default 10)")
    parser.add_argument(
        "--days",
        type=positive,
        default=1,
        help="search D and the DAYS-1 days before it that share D's model fingerprint "
        "(default 1: D only)",
    )
    parser.add_argument(
        "--output_root",
        default=os.environ.get(OUTPUT_ROOT_VARIABLE),
        help=f"root of the days' outputs (default ${OUTPUT_ROOT_VARIABLE})",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    add_store_arguments(parser)
    args = parser.parse_args(argv)
    if not args.output_root:
        parser.error(f"pass --output_root or set {OUTPUT_ROOT_VARIABLE}")
    return args


def read_marker(day_dir: str) -> dict[str, Any]:
    try:
        return success_record(day_dir, storage)
    except NoMarker as error:
        raise SearchRefused(f"{error}: that day has not been embedded") from None


def recorded_fingerprint(marker: dict[str, Any], day: str) -> str:
    """The model fingerprint the day's marker records; refuse a day without one."""
    recorded = marker.get(FINGERPRINT_KEY)
    if not recorded:
        raise SearchRefused(
            f"{day}'s {SUCCESS_MARKER} has no model fingerprint: embed that day again to search it"
        )
    return recorded


def refuse_other_fingerprint(
    query: str, parts: dict[str, Any], marker: dict[str, Any], day: str
) -> NoReturn:
    """Refuse a query embedded under fingerprint `query`, naming the parts that differ."""
    was = marker.get("fingerprint_parts", {})
    changed = [
        f"{key}: {was.get(key)!r} then, {value!r} now"
        for key, value in parts.items()
        if was.get(key) != value
    ]
    raise SearchRefused(
        f"the query would be embedded under model fingerprint {query}, but {day} was embedded "
        f"under {marker[FINGERPRINT_KEY]}: similarities would mean nothing. Differences: "
        + ("; ".join(changed) or "unknown (the marker lists no parts)")
    )


def check_fingerprint(marker: dict[str, Any], day: str):
    """The day's model spec when this machine rebuilds the day's exact model; refuse otherwise."""
    from beam_jobs.image_embeddings.engine.fingerprint import fingerprint, fingerprint_parts
    from beam_jobs.image_embeddings.engine.models import resolve_model

    recorded = recorded_fingerprint(marker, day)
    spec = resolve_model(marker["model"])
    parts = fingerprint_parts(spec, marker["weights"], marker.get("precision", "float32"))
    if fingerprint(parts) != recorded:
        refuse_other_fingerprint(fingerprint(parts), parts, marker, day)
    return spec


def keras_embedder(spec, weights: str, precision: str) -> Callable[[np.ndarray], np.ndarray]:
    """The day's Keras model rebuilt here (its fingerprint checked by `check_fingerprint`)."""
    from beam_jobs.image_embeddings.engine.models import CompiledEmbedder, build_model

    return CompiledEmbedder(build_model(spec, weights, precision), spec, 1, jit_compile=False)


def prepared_embedder(marker: dict[str, Any], day: str) -> Callable[[np.ndarray], np.ndarray]:
    """The day's own prepared OpenVINO model, once its card shows the day's fingerprint."""
    from beam_jobs.image_embeddings.engine.model_cache import read_card
    from beam_jobs.image_embeddings.engine.openvino import OpenVINOModelHandler

    recorded = recorded_fingerprint(marker, day)
    uri = marker.get("prepared_model")
    if not uri:
        raise SearchRefused(f"{day}'s {SUCCESS_MARKER} names no prepared model: embed it again")
    try:
        card = read_card(uri)
    except (OSError, ValueError) as error:
        raise SearchRefused(
            f"{day}'s prepared model {uri} cannot be read ({error}): prepare it again "
            "(python -m beam_jobs.image_embeddings.engine.prepare) with the day's settings"
        ) from None
    if card.get("fingerprint") != recorded:
        refuse_other_fingerprint(card.get("fingerprint"), card["fingerprint_parts"], marker, day)
    handler = OpenVINOModelHandler(uri, marker["model"], marker["precision"], 1, 1)
    return handler.load_model()


def embed_query(image: str, spec, embed: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The query image's embedding, loaded as the pipeline loads the day's images."""
    from beam_jobs.image_embeddings.images import (
        DEFAULT_MAX_IMAGE_BYTES,
        ImageLoadError,
        load_image,
        read_bounded,
    )

    try:
        pixels = load_image(read_bounded(image, DEFAULT_MAX_IMAGE_BYTES), spec.input_size).pixels
    except ImageLoadError as error:
        raise SearchRefused(f"cannot use {image} as the query ({error.stage}): {error}") from None
    return embed(pixels[np.newaxis])[0]


def searched_days(root: str, day: str, count: int, fingerprint: str) -> tuple[list[str], dict]:
    """D and the days before it (of `count` in all) with D's fingerprint and an index."""
    found = comparable_days(
        root,
        [day, *window(day, count - 1)],
        fingerprint,
        (NEIGHBOURS_INDEX_NAME,),
        storage.exists,
        lambda uri: json.loads(storage.read_text(uri)),
    )
    return list(found.days), found.skipped


def read_axes(folder: str) -> PcaAxes:
    return PcaAxes.from_npz(storage.read_bytes(join(folder, PCA_NAME)))


def day_candidates(folder: str, vector: np.ndarray, count: int) -> np.ndarray:
    """Row numbers of the day's `count` nearest images to `vector` in its index, best first."""
    with storage.open_binary(join(folder, NEIGHBOURS_INDEX_NAME)) as handle:
        index = read_index_from(handle)
    coordinates = read_axes(folder).project(vector[np.newaxis])
    rows = nearest(index, coordinates, count, probes=SEARCH_PROBED_LISTS)[1][0]
    return rows[rows >= 0]


def embeddings_at(folder: str, rows: np.ndarray) -> tuple[list[str], np.ndarray]:
    """URIs and full embeddings of the day's rows `rows` (numbered as its index numbers them).

    Reads only the row groups that hold them.
    """
    import pyarrow.parquet as pq

    wanted = {int(row): place for place, row in enumerate(rows)}
    uris, vectors = [""] * len(rows), [None] * len(rows)
    first = 0
    for shard in storage.matching(shard_glob(folder, EMBEDDINGS_PREFIX)):
        with storage.open_binary(shard) as handle:
            parquet = pq.ParquetFile(handle)
            for group in range(parquet.num_row_groups):
                size = parquet.metadata.row_group(group).num_rows
                inside = [row for row in wanted if first <= row < first + size]
                if inside:
                    table = parquet.read_row_group(group, columns=["uri", "embedding"])
                    for row in inside:
                        place = wanted[row]
                        uris[place] = table.column("uri")[row - first].as_py()
                        vectors[place] = table.column("embedding")[row - first].as_py()
                first += size
    if any(vector is None for vector in vectors):
        raise SearchRefused(
            f"{folder}'s index names rows its embeddings do not hold: run the day's "
            "analysis again (clear the DAG's `analyse` for that day)"
        )
    return uris, np.asarray(vectors, dtype=np.float32)


def centred_cosines(vectors: np.ndarray, query: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Cosine of each row of `vectors` with `query`, both centred on `centre`."""
    return unit_rows(vectors - centre) @ unit_rows((query - centre)[np.newaxis])[0]


def day_hits(folder: str, day: str, vector: np.ndarray, centre: np.ndarray, k: int) -> list[Hit]:
    """The `k` nearest images of one day, unranked, scored on the full embeddings."""
    rows = day_candidates(folder, vector, k * CANDIDATES_PER_HIT)
    uris, embeddings = embeddings_at(folder, rows)
    similarities = centred_cosines(embeddings, vector, centre)
    best = np.argsort(-similarities, kind="stable")[:k]
    return [Hit(0, float(similarities[place]), day, uris[place]) for place in best]


def nearest_over_days(
    root: str, day: str, days: list[str], vector: np.ndarray, k: int
) -> list[Hit]:
    """The `k` nearest images over `days`, ranked; D's mean centres every day's scores."""
    centre = read_axes(join(root, day)).mean
    hits = [hit for one in days for hit in day_hits(join(root, one), one, vector, centre, k)]
    best = sorted(hits, key=lambda hit: (-hit.similarity, hit.day, hit.uri))[:k]
    return [Hit(rank + 1, hit.similarity, hit.day, hit.uri) for rank, hit in enumerate(best)]


def day_embedder(
    marker: dict[str, Any], day: str
) -> tuple[Any, Callable[[np.ndarray], np.ndarray]]:
    """The model spec and the embedding function of the run whose `_SUCCESS` is `marker`: its
    prepared OpenVINO model, or its Keras model rebuilt here."""
    from beam_jobs.image_embeddings.engine.models import resolve_model

    if marker.get("engine") == "openvino":
        return resolve_model(marker["model"]), prepared_embedder(marker, day)
    spec = check_fingerprint(marker, day)
    return spec, keras_embedder(spec, marker["weights"], marker.get("precision", "float32"))


def search(root: str, day: str, image: str, k: int, days: int) -> tuple[list[Hit], dict]:
    """The `k` nearest images over the searched days, best first, and the days skipped."""
    marker = read_marker(join(root, day))
    spec, embed = day_embedder(marker, day)
    searched, skipped = searched_days(root, day, days, marker[FINGERPRINT_KEY])
    if day not in searched:
        raise SearchRefused(f"{day}: {skipped[day]}; run the day's analysis (the DAG's `analyse`)")
    vector = embed_query(image, spec, embed)
    return nearest_over_days(root, day, searched, vector, k), skipped


def format_hit(hit: Hit, as_json: bool) -> str:
    if as_json:
        return json.dumps(asdict(hit))
    return f"{hit.rank:>3}  {hit.similarity:.4f}  {hit.day}  {hit.uri}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.store != "files":
        from beam_jobs.image_embeddings.search.stores import search_store

        return search_store(args)
    try:
        hits, skipped = search(args.output_root, args.date, args.image, args.k, args.days)
    except SearchRefused as error:
        print(f"search refused: {error}", file=sys.stderr)
        return 2
    for day, reason in skipped.items():
        print(f"{day} not searched: {reason}", file=sys.stderr)
    for hit in hits:
        print(format_hit(hit, args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
