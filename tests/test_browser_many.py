"""Three networks in headless Chromium (see test_browser.py for the setup): a demo set from a shared link,
fused onto its target on the Fusion page, and the Alignment page's heatmap against a chosen network."""

from __future__ import annotations

from test_browser import assert_no_exception, browser, choose, expect, go_to, open_page, plotly_count, \
    pytestmark, server, shot, wait_idle  # noqa: F401  (fixtures and marks)


def test_three_networks_fuse_and_show_pairwise_views(server, browser):
    page = open_page(browser)
    page.goto(f"{server}/?src=set&set=mlp-mixed")
    expect(page.get_by_text("The networks in use")).to_be_visible()
    wait_idle(page)
    assert page.get_by_text("Widths per layer").count() == 3
    assert_no_exception(page, "Home, three networks")
    shot(page, "9_home_three_networks")

    go_to(page, "2 · Fusion")
    expect(page.get_by_text("3 networks: the target and the weights")).to_be_visible()
    page.get_by_role("button", name="Run fusion").click()
    expect(page.get_by_text("The balanced architecture")).to_be_visible()
    wait_idle(page)
    assert plotly_count(page, 4) >= 4
    expect(page.get_by_text("Best parent", exact=True)).to_be_visible()
    assert_no_exception(page, "Fusion, three networks")
    shot(page, "10_fusion_three_networks")

    go_to(page, "1 · Alignment")
    expect(page.locator(".js-plotly-plot .gtitle").first).to_contain_text("linear CKA")
    choose(page, "Network shown against the target", "Network 3 — MLPs of three depths — 3 (mlp:400-200-100)")
    wait_idle(page)
    expect(page.locator(".js-plotly-plot .ytick").first).to_be_visible()
    assert_no_exception(page, "Alignment, network 3 against the target")
    shot(page, "11_alignment_three_networks")
    page.close()
