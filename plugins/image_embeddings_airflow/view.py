"""The Image embeddings view of the Airflow UI: a FastAPI app listing the days and their reports.

Imported by the API server only, at the view's first request (`plugins/image_embeddings_view.py`).
"""

from __future__ import annotations

import html
import os

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.api_fastapi.core_api.security import bearer_scheme, get_user
from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import HTMLResponse

from image_embeddings_airflow import storage
from image_embeddings_airflow.days import DaySummary, list_days, report_uri
from image_embeddings_airflow.settings import load_settings

DAG_ID = "image_embeddings"
# Reading a day takes a few small files: the list stops at the newest days.
DAYS_SHOWN = 90

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


def _require_read_access(user) -> None:
    """Refuse (403) a user whom Airflow does not allow to read this DAG's runs."""
    allowed = get_auth_manager().is_authorized_dag(
        method="GET", access_entity=DagAccessEntity.RUN, details=DagDetails(id=DAG_ID), user=user
    )
    if not allowed:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"not allowed to read the {DAG_ID} runs")


async def signed_in_reader(request: Request):
    """The request's Airflow user, from its bearer token or the UI's session cookie, exactly as
    Airflow's REST API finds it: no token is 401, an invalid one 403, and so is a user who may
    not read this DAG's runs."""
    user = await get_user(request, None, await bearer_scheme(request))
    _require_read_access(user)
    return user


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
        f'<td class="text"><span class="status {status_class}">{html.escape(day.status)}</span>'
        f'</td><td class="text">{link}</td></tr>'
    )


def days_page(root: str, days: list[DaySummary]) -> str:
    """The list of days as a page (newest first)."""
    rows = "".join(_row(day) for day in days[:DAYS_SHOWN])
    body = (
        "<table><tr><th>day</th><th>images</th><th>embedded</th><th>failed</th>"
        f"<th>failure rate</th><th>drift</th><th>status</th><th></th></tr>{rows}</table>"
        if days
        else "<p>No days yet: trigger the image_embeddings DAG.</p>"
    )
    more = f" Newest {DAYS_SHOWN} of {len(days)} shown." if len(days) > DAYS_SHOWN else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Image embeddings</title><style>{STYLE}</style></head><body>"
        f'<h1>Image embeddings</h1><p class="hint">Days under {html.escape(root)}.{more}</p>'
        f"{body}</body></html>"
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
    def days() -> str:
        root = output_root()
        return days_page(root, list_days(root))

    @app.get("/days/{day}/report", response_class=HTMLResponse)
    def report(day: str) -> HTMLResponse:
        try:
            uri = report_uri(output_root(), day)
        except ValueError as error:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
        if not storage.exists(uri):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no report for {day} yet")
        return HTMLResponse(storage.read_bytes(uri))

    return app
