"""The Compare page in headless Chromium, opened from a shared link as the first request to a fresh server
(see test_browser.py for the setup): a direct URL must reach the router, never Streamlit's legacy ``pages/``
runner, which would run the page on its own."""

from __future__ import annotations

import time

from test_browser import assert_no_exception, browser, expect, open_page, plotly_count, pytestmark, server, shot, \
    wait_idle  # noqa: F401  (fixtures and marks)


def test_a_shared_compare_link_draws_the_barrier_and_the_method_table(server, browser):
    page = open_page(browser)
    page.goto(f"{server}/Compare?pair=mlp-same&points=5&cmp_epochs=0&ground_metric=weights")
    expect(page.get_by_text("Settings from the Alignment and Fusion pages")).to_be_visible()
    wait_idle(page)
    assert "pair=mlp-same" in page.url and "ground_metric=weights" in page.url     # the link is kept as it was shared
    assert page.get_by_text("uses the default demo pair").count() == 0

    start = time.perf_counter()
    page.get_by_role("button", name="Draw the loss barrier").click()
    expect(page.get_by_role("button", name="Download barrier.json")).to_be_visible()
    wait_idle(page)
    barrier_s = time.perf_counter() - start
    assert plotly_count(page, 1) >= 1
    expect(page.locator(".js-plotly-plot .gtitle").first).to_contain_text("along the straight path")

    page.get_by_role("button", name="Compare the methods").click()
    expect(page.get_by_role("button", name="Download compare.json")).to_be_visible()
    wait_idle(page)
    assert plotly_count(page, 3) >= 3                     # barrier, methods bars, the curves together
    assert page.locator('[data-testid="stDataFrame"]').count() >= 2
    assert_no_exception(page, "Compare")
    shot(page, "8_compare")
    print(f"barrier (5 points, in the browser): {barrier_s:.2f} s")
    page.close()
