"""A day whose outputs carry script injections in every field the report shows, and its report."""

from __future__ import annotations

from html.parser import HTMLParser

import numpy as np
import pyarrow.parquet as pq

from beam_jobs.image_embeddings.analysis.reduction import reduce_dimensions
from beam_jobs.image_embeddings.analysis.report import write_report
from beam_jobs.image_embeddings.contract import (
    DRIFT_NAME,
    DUPLICATES_NAME,
    STAGE_DECODE,
    SUCCESS_MARKER,
    embeddings_schema,
    failures_schema,
)
from beam_jobs.image_embeddings.storage import files as storage
from tests.plugins.dag.test_validation import FAILURES, embeddings_table, write_table

IMAGES = 24
# Where a link may lead: the Cloud console, a local file, an inline thumbnail.
SAFE_URLS = ("https://", "file:///", "data:image/jpeg;base64,")


def injections(canary: str) -> list[str]:
    """Strings that make a request to `canary/N` if a browser runs any of them, in the forms an
    attacker would try: tags, attributes, `javascript:` URIs, quotes that end a string."""
    run = [f"new Image().src='{canary}/{index}'" for index in range(8)]
    return [
        f'"><script>{run[0]}</script>',
        f'<img src=x onerror="{run[1]}">',
        f"javascript:{run[2]}",
        f"'-{run[3]}-'\"",
        f"</script><script>{run[4]}</script><!--",
        f"<svg onload={run[5]}>",
        f'<a href="javascript:{run[6]}">open</a>',
        f'<iframe srcdoc="<script>{run[7]}</script>"></iframe>',
    ]


def harmless(count: int = 8) -> list[str]:
    """Plain strings in the places of `injections`: the report's own shape, for comparison."""
    return [f"plain-{index}" for index in range(count)]


def write_hostile_day(day: str, texts: list[str], dataflow_url: str | None = None) -> str:
    """A finished, reduced day under `day` whose file names, failures, duplicates, drift and run
    details carry `texts`; return its report's URI (written by the project's report code)."""
    uris = [f"gs://photos/{day[-10:]}/{texts[i % len(texts)]}-{i}.jpg" for i in range(IMAGES)]
    vectors = np.random.default_rng(7).normal(size=(IMAGES, 16)).astype(np.float32)
    with storage.open_file(f"{day}/embeddings-00000-of-00001.parquet", "wb") as handle:
        pq.write_table(embeddings_table(uris, vectors, embeddings_schema()), handle)
    failures = [
        {"uri": text, "stage": STAGE_DECODE, "error": f"cannot identify {text}", "model": text}
        for text in texts
    ]
    write_table(f"{day}/{FAILURES}", failures, failures_schema())
    storage.write_json(
        f"{day}/{SUCCESS_MARKER}",
        {
            "images": IMAGES + len(texts),
            "embedded": IMAGES,
            "failed": len(texts),
            "model": texts[0],
            "dim": 16,
            "weights": texts[1],
            "runner": texts[2],
            "finished_at": texts[3],
        },
    )
    duplicates = [
        {
            "uri": uris[i],
            "duplicate_of": text,
            "kind": text,
            "similarity": 0.99,
            "day_of_other": text,
        }
        for i, text in enumerate(texts)
    ]
    write_table(f"{day}/{DUPLICATES_NAME}", duplicates, None)
    drift = {text: text for text in texts} | {
        "verdict": texts[4],
        "history": [{"day": text, texts[5]: 0.1} for text in texts],
    }
    storage.write_json(f"{day}/{DRIFT_NAME}", drift)
    reduce_dimensions(day, n_components=2, sample_size=IMAGES)
    return write_report(day, dataflow_url=dataflow_url)


class Markup(HTMLParser):
    """The elements and attributes of a page, and the links it holds."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.shape: list[tuple[str, tuple[str, ...]]] = []
        self.links: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.shape.append((tag, tuple(sorted(name for name, _ in attrs))))
        self.links += [value or "" for name, value in attrs if name in ("href", "src")]


def unsafe_links(page: str) -> list[str]:
    """The page's links that lead anywhere but the Cloud console, a file or a thumbnail."""
    return [link for link in Markup(page).links if not link.startswith(SAFE_URLS)]
