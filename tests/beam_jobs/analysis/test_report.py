"""The day's report.html: every section it has data for, thumbnails on the map, offline."""

from __future__ import annotations

import base64
import html
import io
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from beam_jobs.image_embeddings.analysis.reduction import reduce_dimensions
from beam_jobs.image_embeddings.analysis.report import (
    drift_series,
    image_href,
    read_day,
    render_html,
    write_report,
)
from beam_jobs.image_embeddings.contract import (
    DRIFT_NAME,
    DUPLICATES_NAME,
    REPORT_HTML_NAME,
    SUCCESS_MARKER,
    drift_verdict,
    embeddings_schema,
)
from beam_jobs.image_embeddings.storage import files as storage
from tests.hostile_report import Markup, harmless, injections, unsafe_links, write_hostile_day
from tests.plugins.dag.test_validation import embeddings_table, random_vectors, write_outputs

SCRIPT_SOURCES = re.compile(r"<(?:script|link)[^>]+(?:src|href)=\"(?!data:)", re.IGNORECASE)


def jpeg(seed: int) -> bytes:
    colour = tuple(int(value) for value in np.random.default_rng(seed).integers(0, 255, 3))
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def with_thumbnails(day: str) -> dict[str, bytes]:
    """Rewrite the day's embeddings shards with a distinct JPEG thumbnail per image."""
    thumbnails = {}
    for shard in storage.glob(f"{day}/embeddings-*.parquet"):
        with storage.open_file(shard, "rb") as handle:
            table = pq.read_table(handle)
        uris = table["uri"].to_pylist()
        vectors = np.stack(table["embedding"].to_numpy(zero_copy_only=False))
        images = [jpeg(hash(uri) % 10_000) for uri in uris]
        thumbnails.update(zip(uris, images, strict=True))
        rewritten = embeddings_table(uris, vectors, embeddings_schema(), thumbnails=images)
        with storage.open_file(shard, "wb") as handle:
            pq.write_table(rewritten, handle)
    return thumbnails


def write_duplicates(day: str, uris: list[str]) -> None:
    rows = [
        {
            "uri": uris[1],
            "duplicate_of": uris[0],
            "kind": "exact",
            "similarity": 1.0,
            "day_of_other": None,
        },
        {
            "uri": uris[2],
            "duplicate_of": uris[0],
            "kind": "near",
            "similarity": 0.97,
            "day_of_other": None,
        },
        {
            "uri": uris[3],
            "duplicate_of": "gs://bucket/images/2026-11-27/old.jpg",
            "kind": "near",
            "similarity": 0.95,
            "day_of_other": "2026-11-27",
        },
    ]
    with storage.open_file(f"{day}/{DUPLICATES_NAME}", "wb") as handle:
        pq.write_table(pa.Table.from_pylist(rows), handle)


def thumbnails_on_the_map(page: str) -> set[str]:
    # Plotly writes "/" in its figure's JSON as \u002f.
    unescaped = page.replace("\\u002f", "/")
    return set(re.findall(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)", unescaped))


def test_a_day_with_failures_and_duplicates_renders_every_section_it_has(day):
    uris = write_outputs(day, random_vectors(60), failed=4)
    thumbnails = with_thumbnails(day)
    reduce_dimensions(day, n_components=4, sample_size=60)
    write_duplicates(day, uris)

    written = write_report(day, dataflow_url="https://console.cloud.google.com/dataflow/jobs/x")

    assert written == f"{day}/{REPORT_HTML_NAME}"
    page = storage.read_bytes(written).decode("utf-8")
    report = read_day(day)
    assert len(report.sample.uris) == 60
    shown = thumbnails_on_the_map(page)
    assert {base64.b64encode(thumbnails[uri]).decode() for uri in report.sample.uris} <= shown
    for heading in ("Map of the day", "Run", "Failures by stage", "Near-duplicate groups"):
        assert f"<h2>{heading}</h2>" in page
    assert "Farthest from the day's centre" in page
    assert "Drift" not in page
    assert "read</td><td>2" in page and "decode</td><td>2" in page
    assert html.escape(uris[60]) in page  # a failure's example
    assert "2026-11-27" in page  # the duplicate of an earlier day's image
    assert 'href="https://console.cloud.google.com/dataflow/jobs/x"' in page
    assert "60 of 60 images" in page
    marker = storage.read_json(f"{day}/_SUCCESS")
    storage.write_json(f"{day}/_SUCCESS", marker | {"weights": "random"})
    assert "Random weights: a smoke run" in render_html(read_day(day))


def test_a_duplicate_of_an_earlier_day_shows_that_days_thumbnail(day):
    uris = write_outputs(day, random_vectors(8))
    with_thumbnails(day)
    reduce_dimensions(day, n_components=2, sample_size=8)
    write_duplicates(day, uris)
    earlier = f"{storage.parent(day)}/2026-11-27"
    old = "gs://bucket/images/2026-11-27/old.jpg"
    table = embeddings_table([old], random_vectors(1), embeddings_schema(), thumbnails=[jpeg(7)])
    with storage.open_file(f"{earlier}/embeddings-00000-of-00001.parquet", "wb") as handle:
        pq.write_table(table, handle)

    report = read_day(day)
    assert report.thumbnails[old] == jpeg(7)
    assert base64.b64encode(jpeg(7)).decode() in render_html(report)


def test_the_report_is_self_contained(tmp_path):
    day = str(tmp_path / "2026-11-28")
    write_outputs(day, random_vectors(20))
    with_thumbnails(day)
    reduce_dimensions(day, n_components=3, sample_size=20)

    page = render_html(read_day(day))

    assert not SCRIPT_SOURCES.search(page), "the report loads something from elsewhere"
    assert "Plotly.newPlot" in page and "plotly_hover" in page


def test_a_bare_day_renders_without_optional_sections(tmp_path):
    day = str(tmp_path / "2026-11-28")
    write_outputs(day, random_vectors(5))

    page = render_html(read_day(day))

    assert "the reduction has not run" in page
    assert '<h2>Failures</h2><p class="hint">None.</p>' in page
    for absent in ("Near-duplicate groups", "Farthest", "Drift", "no thumbnail", "Random weights"):
        assert absent not in page


def test_a_changed_model_fingerprint_is_shown_never_silent(tmp_path):
    day = str(tmp_path / "2026-11-28")
    write_outputs(day, random_vectors(5))
    assert "model changed" not in render_html(read_day(day))
    marker = storage.read_json(f"{day}/{SUCCESS_MARKER}")
    marker["previous_fingerprint"] = {"day": "2026-11-27", "fingerprint": "f0", "changed": True}
    storage.write_json(f"{day}/{SUCCESS_MARKER}", marker)

    page = render_html(read_day(day))

    assert (
        '<dt>model changed</dt><dd><span class="warning">changed since 2026-11-27 (was f0)' in page
    )


def test_drift_shows_what_the_file_has(tmp_path):
    day = str(tmp_path / "2026-11-28")
    write_outputs(day, random_vectors(12))
    reduce_dimensions(day, n_components=2, sample_size=12)
    drift = {
        "verdict": "stable",
        "centroid_shift": 0.04,
        "history": [
            {"day": "2026-11-26", "centroid_shift": 0.02, "note": "first"},
            {"day": "2026-11-27", "centroid_shift": 0.03},
        ],
        "by_day": {"2026-11-26": 1.0, "2026-11-27": 2.0},
        "unrelated": [1, 2],
    }
    storage.write_json(f"{day}/{DRIFT_NAME}", drift)

    page = render_html(read_day(day))

    assert "<h2>Drift against earlier days</h2>" in page
    assert "<dt>verdict</dt><dd>stable</dd>" in page
    assert drift_series(drift) == {
        "history: centroid_shift": (["2026-11-26", "2026-11-27"], [0.02, 0.03]),
        "by_day": (["2026-11-26", "2026-11-27"], [1.0, 2.0]),
    }
    assert drift_verdict(drift) == "stable" and drift_verdict({"psi": 0.1}) is None


def test_an_image_opens_from_its_storage():
    assert image_href("gs://bucket/images/a b.jpg") == (
        "https://storage.cloud.google.com/bucket/images/a%20b.jpg"
    )
    assert image_href("/data/images/a.jpg") == "file:///data/images/a.jpg"
    assert image_href('/data/images/"><b>.jpg') == "file:///data/images/%22%3E%3Cb%3E.jpg"


def test_a_uri_that_is_no_image_location_is_never_a_link():
    for uri in ("javascript:alert(1)", " JavaScript:alert(1)", "data:text/html,x", "images/a.jpg"):
        assert image_href(uri) is None


def test_injected_markup_in_a_day_stays_text_and_makes_no_link(tmp_path):
    hostile = write_hostile_day(
        str(tmp_path / "hostile" / "2026-11-28"),
        injections("http://127.0.0.1:9"),
        dataflow_url="javascript:alert(1)",
    )
    plain = write_hostile_day(str(tmp_path / "plain" / "2026-11-28"), harmless())

    hostile_page = storage.read_bytes(hostile).decode("utf-8")
    plain_page = storage.read_bytes(plain).decode("utf-8")

    # Every element and attribute of the page is the report's own, whatever the data says.
    assert Markup(hostile_page).shape == Markup(plain_page).shape
    assert unsafe_links(hostile_page) == []
    assert "javascript:" not in "".join(Markup(hostile_page).links).lower()
    assert "Dataflow job" not in hostile_page


def test_a_day_written_before_thumbnails_still_gets_its_map(tmp_path):
    day = str(tmp_path / "2026-11-28")
    write_outputs(day, random_vectors(8))
    for shard in storage.glob(f"{day}/embeddings-*.parquet"):
        pq.write_table(pq.read_table(shard).drop_columns(["thumbnail"]), shard)
    reduce_dimensions(day, n_components=2, sample_size=8)

    report = read_day(day)

    assert report.thumbnails == {} and len(report.sample.uris) == 8
    assert "<h2>Map of the day</h2>" in render_html(report)
