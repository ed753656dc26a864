"""The README's screenshots of the pages: `make screenshots` (after `make run`) serves the warehouse and saves one
PNG per page in docs/screenshots/, taken by headless Chromium (Debian's package) through Playwright."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

from beton_pipeline.settings import PROJECT_ROOT, config_path, load_settings, warehouse_path
from tests.app.conftest import BROWSER_NAMES, backtest_from_builder, get_json, serving

OUT = PROJECT_ROOT / "docs" / "screenshots"
VIEWPORT_ONLY = {"settings.png"}
"""Pages pictured as the window shows them, not whole (the settings page lists every setting: ~10,000 px)."""


def pages(url: str) -> dict[str, tuple[str, list[str]]]:
    """File name → (page URL, the charts to wait for): the dashboard, the enabled signals, the best of them, the
    sources, the playbooks, the best-ranked account, the experiment with the most exposures, the destinations and
    the settings."""
    enabled = get_json(f"{url}/api/signals/list?recommendation=enable") or get_json(f"{url}/api/signals/list")
    lead = get_json(f"{url}/api/signals/dashboard/metrics")["recent_leads"][0]
    experiment = max(get_json(f"{url}/api/experiments"), key=lambda e: e["exposures"] or 0)
    return {
        "dashboard.png": (f"{url}/", ["accuracy", "leads", "scores"]),
        "signals.png": (f"{url}/signals?recommendation=enable", ["forest"]),
        "signal.png": (f"{url}/signals/{enabled[0]['signal_id']}", ["backtest", "health"]),
        "sources.png": (f"{url}/sources", []),
        "playbooks.png": (f"{url}/playbooks", []),
        "account.png": (f"{url}/accounts/{lead['account_id']}", ["history", "contributions"]),
        "experiment.png": (f"{url}/experiments/{experiment['name']}", ["rates"] if experiment["exposures"] else []),
        "destinations.png": (f"{url}/destinations", []),
        "settings.png": (f"{url}/settings", []),
    }


def backtest_result(page, url: str, path: Path) -> None:
    """The backtest page after the builder's signal "invited a teammate 3+ times in the first 14 days" ran."""
    backtest_from_builder(page, url, "Team invites early", "invited_teammate", 3, 14)
    page.wait_for_selector("#backtest[data-drawn='true'] .main-svg", timeout=120_000)
    page.screenshot(path=path, full_page=True)
    print(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--warehouse", type=Path, default=warehouse_path())
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    chromium = next((p for p in map(shutil.which, BROWSER_NAMES) if p), None)
    if chromium is None:
        sys.stderr.write("error: no Chromium on this machine: apt-get install -y chromium\n")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    with serving(args.warehouse, settings=load_settings(), config_path=config_path()) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        for name, (address, chart_ids) in pages(url).items():
            page.goto(address)
            for chart in chart_ids:
                page.wait_for_selector(f"#{chart}[data-drawn='true'] .main-svg", timeout=60_000)
            page.screenshot(path=args.out / name, full_page=name not in VIEWPORT_ONLY)
            print(f"{args.out / name}")
        backtest_result(page, url, args.out / "backtest.png")
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
