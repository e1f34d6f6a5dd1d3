"""The app in a real headless Chromium (Playwright for Python driving Debian's /usr/bin/chromium).

Starts ``streamlit run app.py`` on a free local port, goes through Home → 1 · Alignment → 2 · Fusion →
3 · Finetune on the default demo pair (running the fusion and a 1-epoch finetune), checks that the plotly
figures render and that no exception reaches the page, opens every page at its URL path in a fresh session, saves
screenshots to ``tests/artifacts/`` and measures

* ``metric_switch_s`` — from choosing another cost metric to the redrawn heatmap (and
  ``metric_switch_back_cached_s`` for switching back to a metric computed before);
* ``full_demo_run_s`` — from opening Home to the finetuned result, walking through every page as above
  (metric switches, a cell click, the metric comparison, the fusion and a 1-epoch finetune; the time
  spent taking screenshots is left out);

written to ``tests/artifacts/browser_timings.json`` and printed. Never runs ``playwright install``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from app_support import labels

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1440, "height": 1600}
STEP_TIMEOUT_MS = 240_000   # the first demo run on a fresh machine trains the pair (~1 min on 2 CPUs)

try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(sync_playwright is None, reason="playwright for Python is not installed (pip install playwright)"),
    pytest.mark.skipif(not os.path.exists(CHROMIUM),
                       reason=f"{CHROMIUM} is missing (Debian: apt-get install chromium)"),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """``python3 -m streamlit run app.py`` on 127.0.0.1:<free port>; terminated in a finally."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    log = open(ARTIFACTS / "streamlit_server.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not start; see {ARTIFACTS / 'streamlit_server.log'}")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


# ------------------------------------------------------------------------------------------- helpers

def open_page(browser) -> Page:
    """A new page whose actions and ``expect`` checks wait up to :data:`STEP_TIMEOUT_MS`."""
    expect.set_options(timeout=STEP_TIMEOUT_MS)
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(STEP_TIMEOUT_MS)
    return page


def wait_idle(page: Page, timeout_ms: int = STEP_TIMEOUT_MS) -> None:
    """Until the script run has finished (the app's script state reads "notRunning" for a moment)."""
    deadline = time.monotonic() + timeout_ms / 1000
    quiet_since = None
    while time.monotonic() < deadline:
        script_state = page.evaluate(
            "document.querySelector('[data-test-script-state]')?.getAttribute('data-test-script-state')")
        if script_state == "notRunning":
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 0.5:
                return
        else:
            quiet_since = None
        page.wait_for_timeout(100)
    raise AssertionError("the app kept running")


def assert_no_exception(page: Page, where: str) -> None:
    exceptions = page.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, f"{where}: {exceptions.first.inner_text()}"


def plotly_count(page: Page, at_least: int = 1, timeout_s: float = 60) -> int:
    """The number of rendered plotly figures, once there are ``at_least`` (plotly.js loads lazily)."""
    deadline = time.monotonic() + timeout_s
    while page.locator(".js-plotly-plot").count() < at_least and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    return page.locator(".js-plotly-plot").count()


def go_to(page: Page, label: str) -> None:
    """Navigate inside the app (the sidebar links keep the session, a new URL would not)."""
    page.locator('[data-testid="stSidebar"]').get_by_role("link", name=label).click()
    wait_idle(page)


def choose(page: Page, label: str, option: str) -> None:
    page.get_by_role("combobox", name=label).click()
    page.get_by_role("option", name=option, exact=True).click()


def heatmap_title(page: Page) -> str:
    return page.locator(".js-plotly-plot .gtitle").first.inner_text()


def click_cell(page: Page, row: int, col: int) -> None:
    """Click the centre of cost-matrix cell (row, col) of the first plotly figure (the heatmap)."""
    plot = page.locator(".js-plotly-plot").first
    x, y = plot.evaluate("""(gd, [row, col]) => {
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
        return [xa._offset + xa.l2p(col), ya._offset + ya.l2p(row)];
    }""", [row, col])
    box = plot.bounding_box()
    page.mouse.click(box["x"] + x, box["y"] + y)


SCREENSHOT_S = [0.0]  # time spent taking screenshots, left out of the measured run


def shot(page: Page, name: str) -> None:
    """The whole page: Streamlit scrolls inside its main container, so grow the viewport to fit it."""
    began = time.perf_counter()
    height = page.evaluate("Math.max(...[...document.querySelectorAll('[data-testid=stMain], "
                           "[data-testid=stMainBlockContainer]')].map(e => e.scrollHeight))")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": max(VIEWPORT["height"], int(height) + 80)})
    page.wait_for_timeout(800)  # plotly relayouts on resize
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    page.set_viewport_size(VIEWPORT)
    SCREENSHOT_S[0] += time.perf_counter() - began


# --------------------------------------------------------------------------------------------- tests

def test_every_page_on_the_demo_pair_in_a_real_browser(server, browser):
    timings: dict[str, float] = {}
    page = open_page(browser)
    start = time.perf_counter()

    # Home: the demo pair side by side
    page.goto(server)
    expect(page.get_by_text("The networks in use")).to_be_visible()
    expect(page.get_by_text("Test accuracy").first).to_be_visible()
    wait_idle(page)
    assert plotly_count(page, 1) >= 1
    timings["home_first_load_s"] = round(time.perf_counter() - start, 3)
    assert_no_exception(page, "Home")
    shot(page, "1_home")

    # 1 · Alignment: heatmap, a metric switch (timed), the comparison
    go_to(page, "1 · Alignment")
    expect(page.locator(".js-plotly-plot .gtitle").first).to_contain_text("linear CKA")
    assert_no_exception(page, "Alignment")
    shot(page, "2_alignment")
    switch = time.perf_counter()
    choose(page, "Cost metric", "|width difference| ÷ max width")
    expect(page.locator(".js-plotly-plot .gtitle").first).to_contain_text("width difference", timeout=30_000)
    timings["metric_switch_s"] = round(time.perf_counter() - switch, 3)
    wait_idle(page)
    switch = time.perf_counter()
    choose(page, "Cost metric", "1 − linear CKA")   # computed before: straight from the cache
    expect(page.locator(".js-plotly-plot .gtitle").first).to_contain_text("linear CKA", timeout=30_000)
    timings["metric_switch_back_cached_s"] = round(time.perf_counter() - switch, 3)
    wait_idle(page)
    click_cell(page, 2, 1)  # A hidden.2 <-> B hidden.1: the what-if takes it
    expect(page.get_by_text("Your matching", exact=True)).to_be_visible(timeout=30_000)
    wait_idle(page)
    expect(page.get_by_role("combobox", name="partner of B hidden.1")).to_have_value("hidden.2")
    assert_no_exception(page, "Alignment, cell clicked")
    shot(page, "3_alignment_cell_clicked")
    page.get_by_role("button", name="Back to the DP alignment").click()
    wait_idle(page)
    compare = time.perf_counter()
    page.get_by_text("Show every metric side by side").click()
    expect(page.get_by_text("Cost metrics compared")).to_be_visible()
    wait_idle(page)
    timings["compare_all_metrics_s"] = round(time.perf_counter() - compare, 3)
    assert plotly_count(page, 2) >= 2
    assert_no_exception(page, "Alignment, metrics compared")
    shot(page, "4_alignment_compare")

    # 2 · Fusion: run it
    go_to(page, "2 · Fusion")
    fusion_start = time.perf_counter()
    page.get_by_role("button", name="Run fusion").click()
    expect(page.get_by_text("The balanced architecture")).to_be_visible()
    wait_idle(page)
    timings["fusion_s"] = round(time.perf_counter() - fusion_start, 3)
    assert plotly_count(page, 4) >= 4
    assert_no_exception(page, "Fusion")
    shot(page, "5_fusion")

    # 3 · Finetune: one epoch
    go_to(page, "3 · Finetune")
    epochs = page.get_by_label("Epochs", exact=True)
    epochs.fill("1")
    epochs.press("Enter")
    wait_idle(page)
    finetune_start = time.perf_counter()
    page.get_by_role("button", name="Finetune", exact=True).click()
    expect(page.get_by_text("the best validation epoch is kept")).to_be_visible()
    wait_idle(page)
    timings["finetune_1_epoch_s"] = round(time.perf_counter() - finetune_start, 3)
    timings["full_demo_run_s"] = round(time.perf_counter() - start - SCREENSHOT_S[0], 3)
    timings["screenshots_s"] = round(SCREENSHOT_S[0], 3)
    assert plotly_count(page, 2) >= 2
    expect(page.get_by_role("button", name="result.json")).to_be_visible()
    assert_no_exception(page, "Finetune")
    shot(page, "6_finetune")
    page.close()

    # every page opened directly at its URL path in a fresh session falls back to the default pair and says so
    for key, info in labels.PAGES.items():
        if not info.url_path:
            continue
        fresh = open_page(browser)
        fresh.goto(f"{server}/{info.url_path}")
        expect(fresh.get_by_role("heading", name=info.title)).to_be_visible()
        expect(fresh.get_by_text("uses the default demo pair")).to_be_visible()
        wait_idle(fresh)
        assert_no_exception(fresh, f"{info.title} opened directly")
        if key == "fusion":
            shot(fresh, "7_fusion_opened_directly")
        fresh.close()

    (ARTIFACTS / "browser_timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    print("browser timings:", json.dumps(timings))
