"""The Image embeddings view of the Airflow UI: a FastAPI app listing the days and their reports.

Imported by the API server only, at the view's first request (`plugins/image_embeddings_view.py`).
"""

from __future__ import annotations

import html
import os

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import requires_access_dag
from fastapi import Depends, FastAPI, HTTPException, Query, status
from fastapi.responses import HTMLResponse

from image_embeddings_airflow import storage
from image_embeddings_airflow.settings import load_settings
from image_embeddings_airflow.ui.days import DaySummary, day_names, report_uri, summarize_day

DAG_ID = "image_embeddings"
# Reading a day takes a few small files: a page summarises this many days, newest first.
DAYS_SHOWN = 90
# A report is data written by the pipeline's workers: in its own browser sandbox (an opaque
# origin), its script cannot read the UI, its cookies or the API as the signed-in user.
REPORT_HEADERS = {
    "Content-Security-Policy": "sandbox allow-scripts allow-popups",
    "X-Content-Type-Options": "nosniff",
}

STYLE = """
body { margin: 0; padding: 16px 24px; font: 14px/1.45 system-ui, -apple-system, "Segoe UI",
  sans-serif; color: #1f2933; background: #fff; }
h1 { font-size: 20px; margin: 0 0 4px; }
p.hint { color: #616e7c; margin: 0 0 16px; overflow-wrap: anywhere; }
table { border-collapse: collapse; min-width: 640px; }
th, td { padding: 6px 12px; border-bottom: 1px solid #e4e7eb; text-align: right;
  font-variant-numeric: tabular-nums; }
th { color: #616e7c; font-weight: 600; }
th:first-child, td:first-child, td.text { text-align: left; }
.status { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
  background: #eef1f4; }
.status.reported, .status.validated { background: #e3f9e5; color: #207227; }
.status.validation-failed { background: #ffe3e3; color: #a61b1b; }
a { color: #017cee; }
"""


# Airflow's own check, as its REST API makes it: the user from the bearer token or the UI's session
# cookie (none: 401, an invalid one: 403), allowed to read this DAG's runs, team included (403).
signed_in_reader = requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=DAG_ID)


def output_root() -> str:
    """OUTPUT_ROOT as the DAG resolves it, read at request time."""
    return load_settings(os.environ).output_root


def _rate(day: DaySummary) -> str:
    return "—" if day.failure_rate is None else f"{day.failure_rate:.1%}"


def _count(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _row(day: DaySummary) -> str:
    name = html.escape(day.day)
    # Inside the UI's sandboxed frame a new window cannot open: the report replaces the list.
    link = f'<a href="days/{name}/report">report</a>' if day.has_report else ""
    status_class = day.status.replace(" ", "-")
    return (
        f"<tr><td>{name}</td><td>{_count(day.images)}</td><td>{_count(day.embedded)}</td>"
        f"<td>{_count(day.failed)}</td><td>{_rate(day)}</td>"
        f'<td class="text">{html.escape(day.drift or "—")}</td>'
        f'<td class="text">{html.escape(day.model_change or "—")}</td>'
        f'<td class="text"><span class="status {status_class}">{html.escape(day.status)}</span>'
        f'</td><td class="text">{link}</td></tr>'
    )


def _pages(page: int, total: int) -> str:
    """Where the page stands among all days, with links to the newer and older pages."""
    first, last = (page - 1) * DAYS_SHOWN + 1, min(page * DAYS_SHOWN, total)
    where = f"Days {first:,}-{last:,} of {total:,}, newest first." if first <= last else ""
    newer = f'<a href="?page={page - 1}">newer days</a>' if page > 1 else ""
    older = f'<a href="?page={page + 1}">older days</a>' if last < total else ""
    links = " · ".join(link for link in (newer, older) if link)
    return f'<p class="hint">{where} {links}</p>' if total > DAYS_SHOWN or page > 1 else ""


def days_page(root: str, days: list[DaySummary], page: int = 1, total: int | None = None) -> str:
    """One page of the list of days (newest first): `days` are that page's, of `total`."""
    total = len(days) if total is None else total
    rows = "".join(_row(day) for day in days)
    if days:
        body = (
            "<table><tr><th>day</th><th>images</th><th>embedded</th><th>failed</th>"
            "<th>failure rate</th><th>drift</th><th>model</th><th>status</th><th></th></tr>"
            f"{rows}</table>"
        )
    elif total:
        body = f"<p>No days on page {page}.</p>"
    else:
        body = "<p>No days yet: trigger the image_embeddings DAG.</p>"
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Image embeddings</title><style>{STYLE}</style></head><body>"
        f'<h1>Image embeddings</h1><p class="hint">Days under {html.escape(root)}.</p>'
        f"{body}{_pages(page, total)}</body></html>"
    )


def create_app() -> FastAPI:
    """The view's app (links are relative to its root); every route needs a signed-in reader."""
    app = FastAPI(
        title="Image embeddings",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(signed_in_reader)],
    )

    @app.get("/", response_class=HTMLResponse)
    def days(page: int = Query(1, ge=1, description="page of days, 1 for the newest")) -> str:
        root = output_root()
        names = day_names(root)
        shown = names[(page - 1) * DAYS_SHOWN : page * DAYS_SHOWN]
        return days_page(root, [summarize_day(root, day) for day in shown], page, len(names))

    @app.get("/days/{day}/report", response_class=HTMLResponse)
    def report(day: str) -> HTMLResponse:
        try:
            uri = report_uri(output_root(), day)
        except ValueError as error:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
        if not storage.exists(uri):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no report for {day} yet")
        return HTMLResponse(storage.read_bytes(uri), headers=REPORT_HEADERS)

    return app
