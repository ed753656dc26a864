"""How long the revenue team's pages take (`beton serve`), on warehouses of a given size: each page and API
endpoint asked `--repetitions` times over HTTP on 127.0.0.1, the time from request to the last byte, against the
goal of 1 second per page (issue "The revenue team's beton").

    .venv/bin/python benchmarks/pages.py --warehouse 1M=/path/1M/warehouse.duckdb --warehouse 10M=/path/...

With no `--warehouse`, `data/warehouse.duckdb` (what `make run` built). The time includes opening the DuckDB file
read-only, the queries, the templates and the charts' JSON; not the browser drawing them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import duckdb

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from beton_pipeline.settings import warehouse_path  # noqa: E402
from tests.app.conftest import get_json, serving  # noqa: E402

GOAL_SECONDS = 1.0


def _seconds(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as response:
        response.read()
        assert response.status == 200, url
    return time.perf_counter() - started


def measure(warehouse: Path, repetitions: int) -> list[tuple[str, float, float]]:
    """(path, median seconds, slowest seconds) for every page and endpoint over `warehouse`."""
    with serving(warehouse) as url:
        signal = (get_json(f"{url}/api/signals/list?recommendation=enable") or get_json(f"{url}/api/signals/list"))[0]
        with duckdb.connect(str(warehouse), read_only=True) as con:  # the longest score history: the slowest
            account = con.sql(
                "select account_id from beton.account_scores group by 1 order by count(*) desc limit 1"
            ).fetchall()[0][0]
        paths = [
            "/",
            "/signals",
            "/signals?sort=lift&order=asc&all=true",
            f"/signals/{signal['signal_id']}",
            "/sources",
            "/playbooks",
            "/api/signals/dashboard/metrics",
            "/api/signals/list",
            f"/api/signals/{signal['signal_id']}",
            "/api/sources/status",
            "/api/playbooks/list",
            f"/accounts/{account}",
            f"/api/accounts/{account}",
            "/accounts?q=co",
        ]
        rows = []
        for path in paths:
            _seconds(url + path)  # the first answer warms DuckDB's and the OS's caches
            times = [_seconds(url + path) for _ in range(repetitions)]
            shown = path.replace(signal["signal_id"], "{id}").replace(account, "{account}")
            rows.append((shown, statistics.median(times), max(times)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warehouse", action="append", default=[], metavar="LABEL=PATH")
    parser.add_argument("--repetitions", type=int, default=5)
    args = parser.parse_args(argv)
    warehouses = [w.split("=", 1) for w in args.warehouse] or [["make run", str(warehouse_path())]]
    lines = [
        f"| warehouse | page or endpoint | median s | slowest s | within {GOAL_SECONDS:g} s |",
        "|---|---|---|---|---|",
    ]
    for label, path in warehouses:
        for page, median, slowest in measure(Path(path), args.repetitions):
            met = "yes" if slowest <= GOAL_SECONDS else "no"
            lines.append(f"| {label} | `{page}` | {median:.3f} | {slowest:.3f} | {met} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
