"""Time and peak memory of `refresh_account_scores` over every monitoring day of a warehouse, the way the
`account_scores` asset runs a full backfill (`beton_pipeline/defs/monitoring/assets.py`; the days are
`monitoring_day_keys`, as in `defs/monitoring/partitions.py`).

    .venv/bin/python -m benchmarks.scores --warehouse COPY.duckdb --config beton.yaml
    .venv/bin/python -m benchmarks.scores --warehouse COPY.duckdb --config beton.yaml --max-rows-per-batch 250000

It WRITES beton.account_scores, beton.revenue_metrics and beton.score_calibration: run it on a copy of a
warehouse, never on one you care about. Run it under `/usr/bin/time -v` for the process's peak RSS; the
script prints its own (`ru_maxrss`) too, with the seconds spent in `refresh_account_scores` alone.
`--memory-limit` sets `BETON_DUCKDB_MEMORY_LIMIT` for the run (DuckDB keeps the pages it wrote cached up to that
limit, 2GB by default: `beton_pipeline.warehouse.MEMORY_LIMIT`): the peak is the batch's (`--max-rows-per-batch`)
plus that limit.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from datetime import date

from beton_pipeline.settings import load_settings
from beton_pipeline.store.daily import data_days, monitoring_day_keys
from beton_pipeline.store.scoring import refresh_account_scores
from beton_pipeline.warehouse import connect


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", required=True, help="a COPY of a warehouse (it is written)")
    parser.add_argument("--config", required=True, help="the beton.yaml the warehouse was built with")
    parser.add_argument("--max-rows-per-batch", type=int, default=None, help="override scoring.max_rows_per_batch")
    parser.add_argument("--memory-limit", default=None, help="BETON_DUCKDB_MEMORY_LIMIT for the run, e.g. 512MB")
    args = parser.parse_args(argv)

    settings = load_settings(args.config)
    if args.max_rows_per_batch is not None:
        scoring = settings.scoring.model_copy(update={"max_rows_per_batch": args.max_rows_per_batch})
        settings = settings.model_copy(update={"scoring": scoring})
    if args.memory_limit:  # through the warehouse's own setting (validated there), as a user sets it
        os.environ["BETON_DUCKDB_MEMORY_LIMIT"] = args.memory_limit
    with connect(args.warehouse) as con:
        limit = con.sql("select current_setting('memory_limit')").fetchall()[0][0]
        keys = monitoring_day_keys(data_days(con), date.fromisoformat(settings.monitoring.start_date))
        started = time.perf_counter()
        result = refresh_account_scores(con, settings, keys)
        seconds = time.perf_counter() - started
        rows = con.sql("select count(*) from beton.account_scores").fetchall()[0][0]
    report = {
        "days": len(result.days),
        "account_scores_rows": rows,
        "max_rows_per_batch": getattr(settings.scoring, "max_rows_per_batch", None),
        "memory_limit": limit,
        "seconds": round(seconds, 1),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
