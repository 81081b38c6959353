"""The Airflow UI in headless Chromium: log in, trigger a day from the form, see the run green."""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from image_embeddings_airflow.dag.params import dag_params
from image_embeddings_airflow.settings import RUNNERS
from tests.browser import CHROMIUM, chromium_page, click_first_point, hover_first_point
from tests.e2e.conftest import REPO, SMALL_MODEL, AirflowApi, wait_for, write_day
from tests.e2e.outputs import check_day_outputs

ARTIFACTS = REPO / "test-artifacts" / "ui"
UI_DAY = "2026-11-20"
RUN_TIMEOUT_S = 900
DAG_API = "/api/v2/dags/image_embeddings"

# Skips are decided here, before the session's Airflow is started for nothing.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason=f"no Chromium at {CHROMIUM} (scripts/install_browser.sh installs Debian's)",
    ),
]
try:
    from playwright import sync_api
except ImportError as error:
    pytest.skip(f"playwright cannot be imported: {error}", allow_module_level=True)
expect = sync_api.expect
# The UI renders slowly on a busy two-core machine.
expect.set_options(timeout=20_000)


@pytest.fixture
def page(tmp_path):
    """A page of headless Chromium on a fresh profile."""
    with chromium_page(tmp_path / "profile") as opened:
        yield opened


def _screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")
    return path


@contextmanager
def _screenshot_on_failure(page):
    (ARTIFACTS / "failure.png").unlink(missing_ok=True)
    try:
        yield
    except BaseException:
        with suppress(sync_api.Error):
            _screenshot(page, "failure.png")
        raise


def _log_in(page, url: str, password: str) -> None:
    page.goto(f"{url}/auth/login")
    page.locator("input[name=username]").fill("admin")
    page.locator("input[name=password]").fill(password)
    page.locator("button[type=submit]").click()
    page.wait_for_url(lambda address: "/auth/login" not in address)


def _open_trigger_form(page, url: str):
    page.goto(f"{url}/dags")
    page.get_by_role("link", name="image_embeddings", exact=True).first.click()
    # A click on Trigger before the DAG's header has rendered is lost (seen 3 times in 4).
    expect(page.get_by_role("heading", name="image_embeddings")).to_be_visible()
    page.get_by_test_id("trigger-dag-button").click()
    form = page.get_by_role("dialog").filter(has_text="Trigger Dag - image_embeddings")
    expect(form.locator("#element_date")).to_be_visible()
    return form


def _check_params_shown(form) -> None:
    params = dag_params()
    shown = form.locator("[name^='element_']").evaluate_all("els => els.map(e => e.name)")
    assert sorted(shown) == sorted(f"element_{name}" for name in params)
    for name, param in params.items():
        field = form.get_by_role("group").filter(has=form.page.locator(f"[name=element_{name}]"))
        expect(field.locator("label")).to_have_text(param.schema["title"])
        expect(field.locator("[data-part=helper-text]")).to_have_text(param.description)


def _choose_runner(page, form, runner: str) -> None:
    form.locator("#element_runner").click()
    chosen = page.get_by_role("option", name=runner, exact=True)
    expect(chosen).to_be_visible()
    assert set(RUNNERS) <= set(page.get_by_role("option").all_inner_texts())
    chosen.click()
    expect(form.locator("input[name=element_runner]")).to_have_value(runner)


def _run_of_day(api: AirflowApi, day: str) -> dict | None:
    runs = api.request("GET", f"{DAG_API}/dagRuns?limit=100")["dag_runs"]
    return next((run for run in runs if (run["conf"] or {}).get("date") == day), None)


def _check_green(page, url: str, run_id: str, states: dict[str, str], logs: Path) -> None:
    """The run's page: each task's row in the table shows its state, and as many cells of the
    grid are green as tasks succeeded."""
    page.goto(f"{url}/dags/image_embeddings/runs/{urllib.parse.quote(run_id, safe='')}")
    rows = page.get_by_role("row").filter(has=page.get_by_test_id("table-cell-state"))
    expect(rows).to_have_count(len(states))
    for task_id, state in states.items():
        name = page.get_by_test_id("table-cell-task_display_name").get_by_text(task_id, exact=True)
        expect(rows.filter(has=name).get_by_test_id("state-badge")).to_have_text(state.title())
    succeeded = [task_id for task_id, state in states.items() if state == "success"]
    first = page.get_by_test_id("table-cell-task_display_name").get_by_text(
        succeeded[0], exact=True
    )
    success = rows.filter(has=first).get_by_test_id("state-badge")
    green = success.evaluate("badge => getComputedStyle(badge).backgroundColor")
    # The grid shows a task group (publish) as one cell.
    cells = page.locator(f'a[data-testid^="grid-{run_id}-"] [data-testid=task-state-badge]')
    colour = "badge => getComputedStyle(badge).backgroundColor"
    wait_for(
        "the grid's succeeded tasks to show green",
        lambda: (
            [cell.evaluate(colour) for cell in cells.all()].count(green) == len(succeeded) or None
        ),
        20,
        logs,
    )


def _finished(api: AirflowApi, run_id: str) -> dict | None:
    run = api.request("GET", f"{DAG_API}/dagRuns/{urllib.parse.quote(run_id, safe='')}")
    return run if run["state"] in ("success", "failed") else None


def _task_states(api: AirflowApi, run_id: str) -> dict[str, str]:
    path = f"{DAG_API}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances"
    return {ti["task_id"]: ti["state"] for ti in api.request("GET", path)["task_instances"]}


def test_a_day_triggered_from_the_form_runs_green(airflow, page):
    api, _, data, home = airflow
    password = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())
    good, _ = write_day(str(data / "images"), UI_DAY, good=4)
    task_ids = sorted(task["task_id"] for task in api.request("GET", f"{DAG_API}/tasks")["tasks"])

    with _screenshot_on_failure(page):
        _log_in(page, api.url, password["admin"])
        form = _open_trigger_form(page, api.url)
        _check_params_shown(form)
        expect(form.locator("#element_date")).to_have_attribute("type", "date")
        form.locator("#element_date").fill(UI_DAY)
        _choose_runner(page, form, "DirectRunner")
        _screenshot(page, "trigger-form.png")
        form.get_by_role("button", name="Trigger", exact=True).click()
        expect(form).to_be_hidden()

        run = wait_for("the run of the form", lambda: _run_of_day(api, UI_DAY), 60, home)
        assert run["conf"]["runner"] == "DirectRunner"
        run_id = run["dag_run_id"]
        run = wait_for("the run to finish", lambda: _finished(api, run_id), RUN_TIMEOUT_S, home)
        states = _task_states(api, run_id)
        assert run["state"] == "success", states
        # Publishing is off unless IMAGE_EMBEDDINGS_PUBLISH names a target.
        publish = [task_id for task_id in task_ids if task_id.startswith("publish.")]
        assert states == dict.fromkeys(task_ids, "success") | dict.fromkeys(publish, "skipped")
        _check_green(page, api.url, run_id, states, home)
        _screenshot(page, "run-succeeded.png")

    check_day_outputs(str(data / "embeddings" / UI_DAY), good, [], *SMALL_MODEL)


VIEW_DAY = "2026-11-21"
VIEW_URL = "/image-embeddings/"


def _click_a_point_opens_its_image(page, report, good: list[str]) -> None:
    """A click on a point shows its image as a link, and follows it.

    A browser opens no file:// URL from a page served over HTTP (and Airflow's frame opens no
    tab): the link is what shows that the click asked for the image.
    """
    picked = click_first_point(page, report)
    shown = picked.inner_text()
    assert shown in good
    expect(picked).to_have_attribute("href", Path(shown).as_uri())


def _check_thumbnail_shown(report, good: list[str]) -> None:
    tip = report.locator("#map-tip")
    expect(tip).to_be_visible()
    expect(tip.locator("img")).to_have_attribute("src", re.compile("^data:image/jpeg;base64,"))
    assert tip.locator(".uri").inner_text() in good


def _refused(url: str, headers: dict[str, str] | None = None) -> int:
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30)
    return refused.value.code


def test_the_image_embeddings_view_lists_the_day_and_its_report_shows_thumbnails(airflow, page):
    api, _, data, home = airflow
    password = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())
    good, bad = write_day(str(data / "images"), VIEW_DAY, good=8, bad=1)
    api.request("PATCH", DAG_API, {"is_paused": False})
    run = api.request(
        "POST", f"{DAG_API}/dagRuns", {"logical_date": None, "conf": {"date": VIEW_DAY}}
    )
    run = wait_for("the day's run", lambda: _finished(api, run["dag_run_id"]), RUN_TIMEOUT_S, home)
    assert run["state"] == "success", _task_states(api, run["dag_run_id"])
    check_day_outputs(str(data / "embeddings" / VIEW_DAY), good, bad, *SMALL_MODEL)

    assert _refused(api.url + VIEW_URL) == 401
    assert _refused(api.url + VIEW_URL, {"Authorization": "Bearer forged"}) == 403
    token = {"Authorization": f"Bearer {api.token}"}
    assert _refused(f"{api.url}{VIEW_URL}days/..%2e/report", token) == 404
    with urllib.request.urlopen(urllib.request.Request(api.url + VIEW_URL, headers=token)) as ok:
        assert VIEW_DAY in ok.read().decode()

    with _screenshot_on_failure(page):
        _log_in(page, api.url, password["admin"])
        page.goto(f"{api.url}/dags")
        page.get_by_role("link", name="Image embeddings").click()
        view = page.frame_locator("iframe")
        row = view.get_by_role("row").filter(has_text=VIEW_DAY)
        expect(row).to_contain_text("reported")
        expect(row).to_contain_text("11.1%")  # 1 failed of 9
        _screenshot(page, "image-embeddings-view.png")

        row.get_by_role("link", name="report").click()
        report = page.frame_locator("iframe")
        heading = report.get_by_role("heading", name=f"Image embeddings of {VIEW_DAY}")
        expect(heading).to_be_visible()
        hover_first_point(page, report)
        _check_thumbnail_shown(report, good)
        _screenshot(page, "report-in-airflow.png")
        _click_a_point_opens_its_image(page, report, good)

        page.goto(f"{api.url}{VIEW_URL}days/{VIEW_DAY}/report")
        hover_first_point(page, page)
        _check_thumbnail_shown(page, good)
        _screenshot(page, "report-hover.png")
        # Before the full-page screenshot, which resizes the page and makes Plotly redraw the map.
        _click_a_point_opens_its_image(page, page, good)
        page.screenshot(path=str(ARTIFACTS / "report-full.png"), full_page=True)
