"""A day's `report.html`: summary, failures, a thumbnail map, duplicates, outliers and drift."""

from __future__ import annotations

import base64
import heapq
import html
import io
import itertools
import logging
import pathlib
import posixpath
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np

from beam_jobs.image_embeddings.contract import (
    DRIFT_NAME,
    DUPLICATES_NAME,
    EMBEDDINGS_PREFIX,
    FAILURES_PREFIX,
    FINGERPRINT_KEY,
    PCA_NAME,
    PROJECTION_NAME,
    REPORT_HTML_NAME,
    SUCCESS_MARKER,
    drift_verdict,
    join,
    shard_glob,
)
from beam_jobs.image_embeddings.marker import fingerprint_change
from beam_jobs.image_embeddings.storage import files as storage

log = logging.getLogger(__name__)

MAP_POINTS = 2000
OUTLIERS = 12
FAILURE_EXAMPLES = 5
DUPLICATE_GROUPS = 20
DUPLICATE_GROUP_SIZE = 8
BATCH_ROWS = 4096
DUCKDB_MEMORY = "128MB"
GCS_BROWSER = "https://storage.cloud.google.com/"

# The map's hover and click, wired to Plotly's events: Plotly has no image hover label. A click
# shows the point's image as a link and follows it (a new tab, where the page may open one).
# `{plot_id}` is replaced by Plotly with the figure's element id.
MAP_SCRIPT = """
var plot = document.getElementById('{plot_id}');
var tip = document.getElementById('map-tip');
plot.on('plotly_hover', function (event) {
  var point = event.points[0], data = point.customdata, mouse = event.event;
  var image = tip.querySelector('img');
  image.hidden = !data[2];
  if (data[2]) { image.src = data[2]; }
  tip.querySelector('.uri').textContent = data[0];
  tip.style.left = Math.min(mouse.clientX + 16, window.innerWidth - 260) + 'px';
  tip.style.top = Math.min(mouse.clientY + 16, window.innerHeight - 180) + 'px';
  tip.hidden = false;
});
plot.on('plotly_unhover', function () { tip.hidden = true; });
plot.on('plotly_click', function (event) {
  // A plain link: no reach into the page around this one, which a report must never have.
  var data = event.points[0].customdata, picked = document.getElementById('map-picked');
  var link = picked.querySelector('a');
  link.textContent = data[0];
  picked.hidden = false;
  if (data[1]) { link.href = data[1]; link.click(); } else { link.removeAttribute('href'); }
});
"""

STYLE = """
:root { --ink: #1f2933; --muted: #616e7c; --line: #e4e7eb; --accent: #017cee; --bad: #d64545; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: var(--ink); background: #f5f7fa; }
header { padding: 16px 24px; background: #fff; border-bottom: 1px solid var(--line); }
header h1 { margin: 0; font-size: 20px; }
header p { margin: 4px 0 0; color: var(--muted); }
main { padding: 16px 24px; }
.top { display: grid; grid-template-columns: minmax(0, 1fr) 320px; gap: 16px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px;
  margin-bottom: 16px; }
.card h2 { margin: 0 0 8px; font-size: 15px; }
.hint { color: var(--muted); font-size: 12px; margin: 0 0 8px; }
dl.stats { display: grid; grid-template-columns: auto 1fr; gap: 4px 12px; margin: 0; }
dl.stats dt { color: var(--muted); }
dl.stats dd { margin: 0; font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line);
  vertical-align: top; overflow-wrap: anywhere; }
th { color: var(--muted); font-weight: 600; }
.warning { color: #b45309; font-weight: 600; }
.thumbs { display: flex; flex-wrap: wrap; gap: 8px; align-items: flex-start; }
.thumbs figure { margin: 0; width: 104px; }
.thumbs img, .thumbs .missing { width: 96px; height: 96px; object-fit: contain;
  background: #eef1f4; border-radius: 4px; display: block; }
.thumbs .missing { display: flex; align-items: center; justify-content: center;
  color: var(--muted); font-size: 11px; text-align: center; }
.thumbs figcaption { font-size: 11px; color: var(--muted); overflow-wrap: anywhere; }
.group { padding: 8px 0; border-bottom: 1px solid var(--line); }
.group:last-child { border-bottom: 0; }
.bad { color: var(--bad); }
a { color: var(--accent); }
#map-tip { position: fixed; z-index: 10; pointer-events: none; background: #fff;
  border: 1px solid var(--line); border-radius: 6px; padding: 6px; max-width: 250px;
  box-shadow: 0 4px 16px rgba(0, 0, 0, .15); }
#map-tip img { display: block; max-width: 96px; max-height: 96px; margin-bottom: 4px; }
#map-tip .uri { font-size: 11px; overflow-wrap: anywhere; }
"""


@dataclass(frozen=True)
class MapSample:
    """Points of the map (a uniform sample of the projection) and the farthest from the centre."""

    uris: list[str]
    xy: np.ndarray
    distances: np.ndarray
    total: int
    outliers: list[tuple[float, str]]


@dataclass(frozen=True)
class FailureStage:
    """How many entries failed at one stage, and a few of them."""

    stage: str
    count: int
    examples: list[dict[str, str]]


@dataclass
class DayReport:
    """Everything `report.html` shows about one day; sections without data stay empty."""

    day: str
    marker: dict[str, Any]
    failures: list[FailureStage]
    sample: MapSample | None
    explained: list[float]
    duplicates: list[list[dict[str, Any]]]
    drift: dict[str, Any] | None
    thumbnails: dict[str, bytes] = field(default_factory=dict)
    dataflow_url: str | None = None


# --- reading the day ------------------------------------------------------------------------


def _column_names(uri: str) -> list[str]:
    """The columns of a Parquet file, from its footer."""
    import pyarrow.parquet as pq

    with storage.open_file(uri, "rb") as handle:
        return pq.read_schema(handle).names


def _uris_and_matrix(batch) -> tuple[list[str], np.ndarray]:
    coordinates = [name for name in batch.schema.names if name != "uri"]
    matrix = np.column_stack(
        [batch.column(name).to_numpy(zero_copy_only=False) for name in coordinates]
    )
    return batch.column("uri").to_pylist(), matrix.astype(np.float32)


def sample_projection(uri: str, points: int = MAP_POINTS, outliers: int = OUTLIERS, seed: int = 0):
    """One streaming pass over `projection.parquet`: a uniform sample of `points` rows (PC1, PC2)
    and the `outliers` rows farthest from the centre over every kept component."""
    total = storage.parquet_rows(uri)
    picks = np.sort(np.random.default_rng(seed).choice(total, min(points, total), replace=False))
    uris: list[str] = []
    xy, distances = [], []
    farthest: list[tuple[float, str]] = []
    first = 0
    for batch in storage.parquet_batches(uri, _column_names(uri), BATCH_ROWS):
        names, matrix = _uris_and_matrix(batch)
        # The PCA centres the data: a row's norm is its distance from the day's centre.
        norms = np.linalg.norm(matrix, axis=1)
        chosen = picks[(picks >= first) & (picks < first + len(names))] - first
        uris += [names[index] for index in chosen]
        # A single kept component is drawn on a flat PC2 of zeros.
        plane = np.pad(matrix[:, :2], ((0, 0), (0, 2 - min(2, matrix.shape[1]))))
        xy.append(plane[chosen])
        distances.append(norms[chosen])
        for index in np.argsort(norms)[::-1][:outliers]:
            heapq.heappush(farthest, (float(norms[index]), names[index]))
            if len(farthest) > outliers:
                heapq.heappop(farthest)
        first += len(names)
    return MapSample(
        uris=uris,
        xy=np.concatenate(xy) if xy else np.zeros((0, 2), np.float32),
        distances=np.concatenate(distances) if distances else np.zeros(0, np.float32),
        total=total,
        outliers=sorted(farthest, reverse=True),
    )


def failures_by_stage(output_dir: str, examples: int = FAILURE_EXAMPLES) -> list[FailureStage]:
    """Failed entries counted by stage, most frequent first, with a few examples each."""
    counts: Counter[str] = Counter()
    kept: dict[str, list[dict[str, str]]] = defaultdict(list)
    for shard in storage.glob(shard_glob(output_dir, FAILURES_PREFIX)):
        for batch in storage.parquet_batches(shard, ["uri", "stage", "error"], BATCH_ROWS):
            for row in batch.to_pylist():
                counts[row["stage"]] += 1
                if len(kept[row["stage"]]) < examples:
                    kept[row["stage"]].append(row)
    return [FailureStage(stage, count, kept[stage]) for stage, count in counts.most_common()]


LARGEST_GROUPS = """
SELECT d.* EXCLUDE (position, place) FROM (
  SELECT *, row_number() OVER (PARTITION BY duplicate_of ORDER BY position) AS place FROM rows
) d JOIN (
  SELECT duplicate_of, count(*) AS members FROM rows GROUP BY duplicate_of
  ORDER BY members DESC, duplicate_of LIMIT $groups
) g USING (duplicate_of)
WHERE place < $size ORDER BY g.members DESC, d.duplicate_of, place
"""


def duplicate_groups(
    uri: str, groups: int = DUPLICATE_GROUPS, size: int = DUPLICATE_GROUP_SIZE
) -> list[list[dict[str, Any]]]:
    """Rows of `duplicates.parquet` grouped by the image they repeat, largest groups first.

    Each group starts with the repeated image (`duplicate_of`); its members carry `kind`,
    `similarity` and `day_of_other` when the file has them. DuckDB groups the file, streamed in
    under a memory cap: only the shown groups become Python rows.
    """
    import duckdb
    import pyarrow as pa

    def numbered(batches):
        first = 0
        for batch in batches:
            position = pa.array(range(first, first + batch.num_rows), pa.int64())
            yield batch.append_column("position", position)
            first += batch.num_rows

    names = _column_names(uri)
    batches = storage.parquet_batches(uri, names, BATCH_ROWS)
    first = next(batches, None)
    if first is None:
        return []
    schema = first.schema.append(pa.field("position", pa.int64()))
    stream = pa.RecordBatchReader.from_batches(schema, numbered(itertools.chain([first], batches)))
    with duckdb.connect(config={"memory_limit": DUCKDB_MEMORY}) as connection:
        connection.register("incoming", stream)
        connection.execute("CREATE TABLE rows AS SELECT * FROM incoming")
        query = connection.sql(LARGEST_GROUPS, params={"groups": groups, "size": size})
        shown = query.to_arrow_table()
    members: dict[str, list[dict[str, Any]]] = {}
    for row in shown.to_pylist():
        members.setdefault(row["duplicate_of"], []).append(row)
    return [
        [{"uri": original, "day_of_other": rows[0].get("day_of_other")}, *rows]
        for original, rows in members.items()
    ]


def read_thumbnails(output_dir: str, wanted: Iterable[str]) -> dict[str, bytes]:
    """The stored thumbnails of the `wanted` URIs; none for a day written without them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    wanted_uris = pa.array(sorted(set(wanted)), pa.string())
    found: dict[str, bytes] = {}
    for shard in storage.glob(shard_glob(output_dir, EMBEDDINGS_PREFIX)):
        if "thumbnail" not in _column_names(shard):
            log.info("%s has no thumbnails (written before they were added)", shard)
            continue
        for batch in storage.parquet_batches(shard, ["uri", "thumbnail"], BATCH_ROWS):
            kept = batch.filter(pc.is_in(batch.column("uri"), value_set=wanted_uris))
            for row in kept.to_pylist():
                if row["thumbnail"]:
                    found[row["uri"]] = row["thumbnail"]
    return found


def _explained_variance(output_dir: str) -> list[float]:
    uri = join(output_dir, PCA_NAME)
    if not storage.exists(uri):
        return []
    with np.load(io.BytesIO(storage.read_bytes(uri)), allow_pickle=False) as pca:
        return [float(value) for value in pca["explained_variance_ratio"]]


def read_day(output_dir: str, dataflow_url: str | None = None) -> DayReport:
    """Everything the report shows, read from the day's outputs (never the images)."""
    output_dir = storage.absolute(output_dir)
    projection = join(output_dir, PROJECTION_NAME)
    duplicates = join(output_dir, DUPLICATES_NAME)
    drift = join(output_dir, DRIFT_NAME)
    report = DayReport(
        day=posixpath.basename(output_dir),
        marker=storage.read_json(join(output_dir, SUCCESS_MARKER)),
        failures=failures_by_stage(output_dir),
        sample=sample_projection(projection) if storage.exists(projection) else None,
        explained=_explained_variance(output_dir),
        duplicates=duplicate_groups(duplicates) if storage.exists(duplicates) else [],
        drift=storage.read_json(drift) if storage.exists(drift) else None,
        dataflow_url=dataflow_url,
    )
    shown = [member["uri"] for group in report.duplicates for member in group]
    if report.sample:
        shown += report.sample.uris + [uri for _, uri in report.sample.outliers]
    report.thumbnails = read_thumbnails(output_dir, shown)
    report.thumbnails.update(earlier_thumbnails(storage.parent(output_dir), report.duplicates))
    return report


def is_calendar_day(text: str) -> bool:
    """Whether `text` is a calendar day written YYYY-MM-DD (a day folder's name)."""
    try:
        return date.fromisoformat(text).isoformat() == text
    except ValueError:
        return False


def earlier_thumbnails(
    output_root: str, groups: Iterable[list[dict[str, Any]]]
) -> dict[str, bytes]:
    """Thumbnails of the images of earlier days that the day's images repeat, from those days'
    own outputs (under the same root: a day name that is no calendar day is skipped)."""
    wanted: dict[str, set[str]] = defaultdict(set)
    for original, *_ in groups:
        if original.get("day_of_other"):
            wanted[original["day_of_other"]].add(original["uri"])
    found: dict[str, bytes] = {}
    for day, uris in sorted(wanted.items()):
        if not is_calendar_day(day):
            log.warning("duplicates name %r as a day: no calendar day, no thumbnails", day)
            continue
        found.update(read_thumbnails(join(output_root, day), uris))
    return found


# --- rendering ------------------------------------------------------------------------------


def image_href(uri: str) -> str | None:
    """Where a browser opens the image: the Cloud console's object URL, or a file:// URL; None
    for anything else (a relative path, another scheme such as `javascript:`), shown unlinked."""
    if storage.is_gcs(uri):
        bucket, name = storage.split_gcs(uri)
        return f"{GCS_BROWSER}{bucket}/{urllib.parse.quote(name)}"
    if not posixpath.isabs(uri):
        return None
    return pathlib.PurePosixPath(uri).as_uri()


def data_url(jpeg: bytes | None) -> str:
    return f"data:image/jpeg;base64,{base64.b64encode(jpeg).decode('ascii')}" if jpeg else ""


def drift_series(drift: Mapping[str, Any]) -> dict[str, tuple[list[str], list[float]]]:
    """Numeric series by day found in the drift file: lists of records with a `day` or `date`,
    or mappings of YYYY-MM-DD to numbers; each numeric field becomes one series."""
    series: dict[str, tuple[list[str], list[float]]] = {}
    for key, value in drift.items():
        if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            for item in value:
                day = item.get("day", item.get("date"))
                for name, number in item.items():
                    if day is not None and _is_number(number):
                        days, numbers = series.setdefault(f"{key}: {name}", ([], []))
                        days.append(str(day))
                        numbers.append(float(number))
        elif isinstance(value, dict) and value and all(_is_number(v) for v in value.values()):
            series[key] = ([str(day) for day in value], [float(v) for v in value.values()])
    return series


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _map_figure(report: DayReport):
    import plotly.graph_objects as go

    sample = report.sample
    customdata = [
        [uri, image_href(uri) or "", data_url(report.thumbnails.get(uri))] for uri in sample.uris
    ]
    figure = go.Figure(
        go.Scatter(
            x=sample.xy[:, 0],
            y=sample.xy[:, 1],
            mode="markers",
            customdata=customdata,
            hoverinfo="none",
            marker={
                "size": 7,
                "color": sample.distances,
                "colorscale": "Viridis",
                "opacity": 0.8,
                "colorbar": {
                    "title": {"text": "distance from centre", "side": "right"},
                    "thickness": 12,
                },
            },
        )
    )
    ratio = report.explained + [0.0, 0.0]
    figure.update_layout(
        margin={"l": 50, "r": 10, "t": 10, "b": 45},
        height=560,
        plot_bgcolor="#fafbfc",
        xaxis_title=f"PC1 ({ratio[0]:.1%} of variance)",
        yaxis_title=f"PC2 ({ratio[1]:.1%} of variance)",
        dragmode="pan",
    )
    return figure


def _drift_figure(series: Mapping[str, tuple[list[str], list[float]]]):
    import plotly.graph_objects as go

    figure = go.Figure(
        [
            go.Scatter(x=days, y=values, mode="lines+markers", name=name)
            for name, (days, values) in series.items()
        ]
    )
    figure.update_layout(
        margin={"l": 50, "r": 10, "t": 10, "b": 40},
        height=280,
        plot_bgcolor="#fafbfc",
        xaxis={"type": "category", "title": "day"},
        legend={"orientation": "h", "y": -0.25},
    )
    return figure


def _text(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _thumb(report: DayReport, uri: str, caption: str) -> str:
    jpeg = report.thumbnails.get(uri)
    picture = (
        f'<img src="{data_url(jpeg)}" alt="{_text(uri)}" loading="lazy">'
        if jpeg
        else '<div class="missing">no thumbnail</div>'
    )
    href = image_href(uri)
    if href:
        picture = (
            f'<a href="{_text(href)}" target="_blank" rel="noopener noreferrer" '
            f'title="{_text(uri)}">{picture}</a>'
        )
    return f"<figure>{picture}<figcaption>{_text(caption)}</figcaption></figure>"


def _summary(report: DayReport) -> str:
    marker = report.marker
    duration = marker.get("duration_s")
    rate = marker["embedded"] / duration if duration else None
    failed_share = marker["failed"] / marker["images"] if marker["images"] else 0.0
    rows = [
        ("images", _number(marker["images"])),
        ("embedded", _number(marker["embedded"])),
        ("failed", f"{_number(marker['failed'])} ({failed_share:.1%})"),
        ("duration", "—" if duration is None else f"{duration:,.1f} s"),
        ("images / s", _number(rate, 2)),
        ("model", _text(f"{marker['model']} ({marker['dim']}-d)")),
        ("weights", _text(marker.get("weights", "—"))),
        ("model fingerprint", _text(marker.get(FINGERPRINT_KEY, "—"))),
        ("runner", _text(marker.get("runner", "—"))),
        ("finished", _text(marker.get("finished_at", "—"))),
    ]
    if report.dataflow_url and report.dataflow_url.startswith("https://"):
        link = f'<a href="{_text(report.dataflow_url)}" target="_blank" rel="noopener">console</a>'
        rows.append(("Dataflow job", link))
    change = fingerprint_change(marker)
    if change:
        rows.append(("model changed", f'<span class="warning">{_text(change)}</span>'))
    verdict = drift_verdict(report.drift)
    if verdict:
        rows.append(("drift", _text(verdict)))
    items = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in rows)
    return f'<section class="card"><h2>Run</h2><dl class="stats">{items}</dl></section>'


def _map_section(report: DayReport) -> str:
    sample = report.sample
    if sample is None or not sample.uris:
        body = '<p class="hint">No projection for this day: the reduction has not run.</p>'
        return f'<section class="card" id="map-card"><h2>Map</h2>{body}</section>'
    plot = _map_figure(report).to_html(
        full_html=False,
        include_plotlyjs=True,
        div_id="map",
        post_script=MAP_SCRIPT,
        config={"displaylogo": False, "scrollZoom": True},
    )
    hint = (
        f"{len(sample.uris):,} of {sample.total:,} images, sampled uniformly, on the first two "
        "principal axes. Hover a point for its thumbnail; click to open the image."
    )
    picked = (
        '<p class="hint" id="map-picked" hidden>Image: '
        '<a target="_blank" rel="noopener noreferrer"></a></p>'
    )
    return (
        f'<section class="card" id="map-card"><h2>Map of the day</h2>'
        f'<p class="hint">{_text(hint)}</p>{plot}{picked}</section>'
    )


def _failures_section(report: DayReport) -> str:
    if not report.failures:
        return '<section class="card"><h2>Failures</h2><p class="hint">None.</p></section>'
    rows = "".join(
        f'<tr><td class="bad">{_text(stage.stage)}</td><td>{stage.count:,}</td><td>'
        + "<br>".join(
            f"{_text(example['uri'])}: {_text(example['error'])}" for example in stage.examples
        )
        + "</td></tr>"
        for stage in report.failures
    )
    return (
        '<section class="card"><h2>Failures by stage</h2><table><tr><th>stage</th>'
        f"<th>entries</th><th>examples</th></tr>{rows}</table></section>"
    )


def _duplicate_caption(member: Mapping[str, Any], first: bool) -> str:
    name = posixpath.basename(member["uri"])
    if first:
        other = member.get("day_of_other")
        return f"{name} (original, {other})" if other else f"{name} (original)"
    details = [str(member[key]) for key in ("kind",) if member.get(key)]
    if _is_number(member.get("similarity")):
        details.append(f"{member['similarity']:.3f}")
    return f"{name} ({', '.join(details)})" if details else name


def _duplicates_section(report: DayReport) -> str:
    if not report.duplicates:
        return ""
    groups = "".join(
        '<div class="group thumbs">'
        + "".join(
            _thumb(report, member["uri"], _duplicate_caption(member, index == 0))
            for index, member in enumerate(group)
        )
        + "</div>"
        for group in report.duplicates
    )
    return f'<section class="card"><h2>Near-duplicate groups</h2>{groups}</section>'


def _outliers_section(report: DayReport) -> str:
    if report.sample is None or not report.sample.outliers:
        return ""
    thumbs = "".join(
        _thumb(report, uri, f"{posixpath.basename(uri)} ({distance:.3g})")
        for distance, uri in report.sample.outliers
    )
    hint = "Distance from the day's mean embedding, over the kept principal components."
    return (
        '<section class="card"><h2>Farthest from the day\'s centre</h2>'
        f'<p class="hint">{hint}</p><div class="thumbs">{thumbs}</div></section>'
    )


def _drift_section(report: DayReport) -> str:
    if not report.drift:
        return ""
    series = drift_series(report.drift)
    chart = (
        _drift_figure(series).to_html(full_html=False, include_plotlyjs=False, div_id="drift")
        if series
        else ""
    )
    scalars = "".join(
        f"<dt>{_text(key)}</dt><dd>{_text(value)}</dd>"
        for key, value in report.drift.items()
        if isinstance(value, str | int | float | bool)
    )
    facts = f'<dl class="stats">{scalars}</dl>' if scalars else ""
    return f'<section class="card"><h2>Drift against earlier days</h2>{facts}{chart}</section>'


def _weights_warning(report: DayReport) -> str:
    if report.marker.get("weights") != "random":
        return ""
    return '<p class="bad">Random weights: a smoke run, these embeddings carry no meaning.</p>'


def render_html(report: DayReport) -> str:
    """The whole page: offline, every script, style and image inline."""
    title = f"Image embeddings of {report.day}"
    subtitle = f"{report.marker['embedded']:,} images embedded with {report.marker['model']}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_text(title)}</title><style>{STYLE}</style></head>
<body><div id="map-tip" hidden><img alt=""><div class="uri"></div></div>
<header><h1>{_text(title)}</h1><p>{_text(subtitle)}</p>{_weights_warning(report)}</header>
<main><div class="top"><div>{_map_section(report)}</div>
<aside>{_summary(report)}</aside></div>
{_failures_section(report)}{_duplicates_section(report)}{_outliers_section(report)}{_drift_section(report)}
</main></body></html>
"""


def write_report(output_dir: str, dataflow_url: str | None = None) -> str:
    """Write `report.html` into the day's folder from its outputs; return its URI."""
    output_dir = storage.absolute(output_dir)
    uri = join(output_dir, REPORT_HTML_NAME)
    storage.write_bytes(uri, render_html(read_day(output_dir, dataflow_url)).encode("utf-8"))
    log.info("Report of %s: %s", posixpath.basename(output_dir), uri)
    return uri
