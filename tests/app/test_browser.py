"""The pages in a real browser: headless Chromium (Debian's package) driven by Playwright. Each page renders with
data and its charts drawn, the filters and sorting work, links lead to a signal's page, and the page raises no
error in the browser console (a Content-Security-Policy violation would show there)."""

from __future__ import annotations

from beton_pipeline.core.formatting import fmt
from tests.app.conftest import get_json


def drawn(page, chart_id: str) -> None:
    page.wait_for_selector(f"#{chart_id}[data-drawn='true'] .main-svg", timeout=30_000)


def test_the_signal_list_renders_its_table_and_forest_plot(page, app_url):
    page.goto(f"{app_url}/signals")
    drawn(page, "forest")
    rows = get_json(f"{app_url}/api/signals/list")
    assert page.locator("#signals tbody tr").count() == len(rows)
    first = page.locator("#signals tbody tr").first
    assert first.get_attribute("data-signal-id") == rows[0]["signal_id"]
    assert first.locator("td[data-col='lift']").inner_text().startswith(fmt(rows[0]["lift"], ".2f"))
    # One marker per drawn lift in the plot's first trace.
    assert page.locator("#forest .scatterlayer .trace").first.locator(".point").count() == min(len(rows), 40)


def test_filtering_and_sorting_from_the_form(page, app_url):
    page.goto(f"{app_url}/signals")
    page.select_option("select[name='recommendation']", "enable")
    page.select_option("select[name='sort']", "lift")
    page.select_option("select[name='order']", "asc")
    page.click("#filters button[type='submit']")
    page.wait_for_url("**/signals?*recommendation=enable*")
    drawn(page, "forest")
    expected = get_json(f"{app_url}/api/signals/list?recommendation=enable&sort=lift&order=asc")
    ids = page.locator("#signals tbody tr").evaluate_all("rows => rows.map(r => r.dataset.signalId)")
    assert ids == [r["signal_id"] for r in expected] and ids
    badges = page.locator("#signals tbody .badge").all_inner_texts()
    assert set(badges) == {"enable"}


def test_a_signal_page_shows_its_statistics_backtest_and_health(page, app_url):
    signal = get_json(f"{app_url}/api/signals/list?recommendation=enable")[0]
    page.goto(f"{app_url}/signals")
    page.click(f"#signals tr[data-signal-id='{signal['signal_id']}'] a")
    page.wait_for_url(f"**/signals/{signal['signal_id']}")
    drawn(page, "backtest")
    drawn(page, "health")
    detail = get_json(f"{app_url}/api/signals/{signal['signal_id']}")
    assert page.locator("h1").inner_text() == detail["name"]
    assert page.locator("#stats dd[data-col='lift']").inner_text().startswith(fmt(signal["lift"], ".2f"))
    assert page.locator("#backtest-table tbody tr").count() == len(detail["backtest"])
    assert page.locator("#backtest .point").count() >= len(detail["backtest"])


def test_an_empty_filter_and_an_unknown_signal_say_so(page, app_url):
    page.goto(f"{app_url}/signals?q=no-such-behaviour-anywhere")
    assert "No signal matches" in page.locator("#empty").inner_text()
    response = page.goto(f"{app_url}/signals/sig_000000000000")
    assert response.status == 404
    assert "no such signal" in page.locator("#message").inner_text()


def test_the_dashboard_shows_the_latest_numbers_its_charts_and_leads(page, app_url):
    page.goto(f"{app_url}/")
    for chart in ("accuracy", "leads", "scores"):
        drawn(page, chart)
    answer = get_json(f"{app_url}/api/signals/dashboard/metrics")
    latest = answer["latest"]
    assert page.locator("[data-metric='leads_surfaced']").inner_text() == f"{latest['leads_surfaced']:,}"
    assert page.locator("[data-metric='signal_accuracy_30d']").inner_text() == fmt(latest["signal_accuracy_30d"], ".1%")
    ids = page.locator("#recent-leads tbody tr").evaluate_all("rows => rows.map(r => r.dataset.accountId)")
    assert ids == [a["account_id"] for a in answer["recent_leads"]]
    page.locator("#recent-leads tbody td a[href^='/accounts/']").first.click()
    page.wait_for_url(f"**/accounts/{ids[0]}")
    for chart in ("history", "contributions"):
        drawn(page, chart)
    account = get_json(f"{app_url}/api/accounts/{ids[0]}")["account"]
    assert page.locator("[data-col='score']").inner_text() == fmt(account["score"], ".0%")
    fired = page.locator("#signals-fired tbody tr").evaluate_all("rows => rows.map(r => r.dataset.signalId)")
    assert fired == [s["signal_id"] for s in account["signals_fired"]]
    page.locator("#signals-fired tbody a").first.click()
    page.wait_for_url("**/signals/sig_*")
    drawn(page, "backtest")


def test_the_account_search_lists_the_matching_accounts(page, app_url):
    found = get_json(f"{app_url}/api/accounts?limit=1000")["accounts"]
    domain = found[len(found) // 2]["domain"]
    page.goto(f"{app_url}/accounts")
    page.fill("#search input[name='q']", domain.upper())
    page.click("#search button")
    page.wait_for_url("**/accounts?q=*")
    ids = page.locator("#accounts tbody tr").evaluate_all("rows => rows.map(r => r.dataset.accountId)")
    assert ids == [a["account_id"] for a in found if domain in (a["domain"] or "") or domain in a["account_id"]]


def test_the_sources_and_playbooks_pages_show_what_the_api_says(page, app_url):
    page.goto(f"{app_url}/sources")
    status = get_json(f"{app_url}/api/sources/status")
    assert page.locator("#sources tbody tr").count() == len(status)
    events = next(t for t in status if t["table"] == "events")
    assert (
        page.locator("#sources tr[data-table='events'] td[data-col='loaded']").inner_text() == f"{events['loaded']:,}"
    )
    page.click("nav a[href='/playbooks']")
    page.wait_for_url("**/playbooks")
    playbooks = get_json(f"{app_url}/api/playbooks/list")
    assert page.locator("section.playbook").count() == len(playbooks) > 0
    first = playbooks[0]
    for status_name, n in first["actions"].items():
        badge = page.locator(f"section[data-playbook='{first['name']}'] [data-status='{status_name}']")
        assert badge.inner_text() == f"{status_name} {n:,}"
