"""A teacher's manual run: the Prefect UI in headless Chromium starts grade-assessment.

The browser opens the server's UI, finds the deployment, opens Run → Custom run, fills the
parameter form rendered from the flow's signature, submits, follows the run to Completed and
saves screenshots (the last one also to benchmarks/out/ui-run.png).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from qbq.sample import truth_of, write_sample
from tests.e2e.conftest import REPO, PrefectStack

pytestmark = [pytest.mark.server, pytest.mark.postgres, pytest.mark.ui]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
UI_SHOT = REPO / "benchmarks" / "out" / "ui-run.png"


def _require_browser() -> Any:
    """Playwright's sync API, with Debian's chromium; fails under CI, skips elsewhere."""
    missing = []
    try:
        from playwright import sync_api
    except ImportError:
        missing.append("the playwright package (pip install -e '.[dev]')")
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install -y chromium)")
    if missing:
        message = "browser test needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return sync_api


def test_ui_custom_run_grades_and_delivers(prefect_stack: PrefectStack, tmp_path: Path) -> None:
    sync_api = _require_browser()
    request = write_sample(tmp_path / "ui", students=4, pages=1, questions=2, seed=201)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    base = prefect_stack.ui_url

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)
            # loopback only: the UI's analytics and fonts never leave the machine
            page.route("**/*", lambda route: route.continue_()
                       if route.request.url.startswith(base) else route.abort())
            page.goto(f"{base}/")
            page.get_by_role("link", name="Deployments").first.click()
            page.get_by_role("link", name="grade-assessment", exact=True).first.click()
            page.get_by_role("button", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Custom run").click()

            field = page.locator("label", has_text="request_path").locator(
                "xpath=ancestor::div[.//*[@role='tab']][1]")
            field.get_by_role("tab", name="str").click()
            field.get_by_role("textbox").fill(str(request))
            run_name = page.get_by_label("Run Name").input_value()
            page.screenshot(path=shots / "1-custom-run-form.png", full_page=True)
            page.get_by_role("button", name="Submit").click()

            page.get_by_text("View run").first.click()
            page.wait_for_url("**/runs/flow-run/**")
            run_id = page.url.split("/flow-run/", 1)[1].split("?", 1)[0]
            run = prefect_stack.wait_for_run(run_id)
            page.reload()
            sync_api.expect(page.get_by_text("Completed", exact=True).first).to_be_visible(
                timeout=30_000)
            # the run's own log line (from the worker's flow run), shown in the Logs tab
            sync_api.expect(page.get_by_text("students graded").first).to_be_visible(
                timeout=30_000)
            page.wait_for_load_state("networkidle")
            page.screenshot(path=shots / "2-run-completed.png", full_page=True)
        finally:
            browser.close()

    UI_SHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shots / "2-run-completed.png", UI_SHOT)
    assert run["state"]["type"] == "COMPLETED", prefect_stack.diagnostics()
    # the run is the one the form described, and it delivered its payload once
    assert run["name"] == run_name
    assert run["deployment_id"] == prefect_stack.deployments["grade-assessment"]
    params = run["parameters"]
    assert params.pop("request_path") == str(request)
    assert all(value is None for value in params.values()), params
    assessment_id = json.loads(request.read_text())["assessment_id"]
    payloads = prefect_stack.payloads(assessment_id=assessment_id)
    assert len(payloads) == 1
    marks = {s["ref"]: {a["question_number"]: a["mark"] for a in s["answers"]}
             for s in payloads[0]["students"]}
    assert marks == truth_of(request)
