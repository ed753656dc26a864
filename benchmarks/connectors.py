"""The connectors' pulls, timed against the local fakes of PostHog, Attio and Stripe (`tests/fakes/`), which
serve a demo export through the APIs' real shapes (`tests/fakes/vendors.py`): rows landed, calls made and time per
source, for a first pull and for the next one after a day of new events and a few changed records.

    .venv/bin/python benchmarks/connectors.py --accounts 1000     # ~100k events; ~1 minute

The fakes answer on 127.0.0.1 without network latency or rate limits, so the figures are beton's side of a pull
(paging, mapping, dlt's normalise and Parquet writing), not what a vendor's API takes: against the real APIs,
add their answer times and rate limits (README, "Connectors"). The fakes run in this process: "seconds" includes
their work (a query sorts the fake's whole event list), "beton's CPU seconds" is the pulling thread's alone
(paging, mapping, dlt's extract, normalise and Parquet writing).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from beton_pipeline.settings import Settings  # noqa: E402
from beton_pipeline.sources.connectors.common import pull  # noqa: E402
from beton_pipeline.sources.connectors.registry import connector_source  # noqa: E402
from beton_pipeline.sources.demo import generate_demo  # noqa: E402
from tests.fakes.s3 import FakeS3  # noqa: E402
from tests.fakes.vendors import read_export, serve_posthog, serve_s3_export, serving_vendors  # noqa: E402

KEYS = {"BETON_POSTHOG_API_KEY": "phx_bench", "BETON_ATTIO_API_KEY": "attio-bench", "BETON_STRIPE_API_KEY": "sk_test_b"}


def _landed(landing: Path, source: str) -> dict[str, int]:
    import pyarrow.parquet as pq

    return {
        table.name: sum(pq.ParquetFile(f).metadata.num_rows for f in table.glob("*.parquet"))
        for table in sorted((landing / source).iterdir())
        if table.is_dir() and not table.name.startswith("_")
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--page-size", type=int, default=10_000, help="PostHog's page (events per query)")
    args = parser.parse_args(argv)
    os.environ.update(KEYS)
    work = Path(tempfile.mkdtemp(prefix="beton-connectors-"))
    generate_demo(work / "export", n_accounts=args.accounts, seed=7, months=args.months)
    export = read_export(work / "export", work / "scratch.duckdb")
    lines = [
        f"# Connector pulls against the local fakes ({args.accounts:,} accounts, {len(export['events']):,} events)",
        "",
        "| pull | source | rows landed | calls | seconds | beton's CPU seconds |",
        "|---|---|---|---|---|---|",
    ]
    posthog_options = {"page_size": args.page_size, "start": "2024-01-01T00:00:00Z"}
    with serving_vendors(export, KEYS, 3600, **posthog_options) as (fakes, sources):
        posthog, attio, stripe = fakes["posthog"], fakes["attio"], fakes["stripe"]
        settings = Settings.model_validate({"sources": sources})
        for label in ("first", "next"):
            if label == "next":  # a day later: new events, a canceled subscription, a deal won
                latest = max(r["timestamp"] for r in export["events"])
                serve_posthog(
                    posthog,
                    [{**r, "uuid": f"{r['uuid'][:-4]}ffff", "timestamp": latest} for r in export["events"][-500:]],
                )
                sub = next(r["id"] for r in export["billing_subscriptions"] if r["status"] == "active")
                stripe.update("subscription", sub, event_type="customer.subscription.deleted", status="canceled")
                deal = next(r["record_id"] for r in export["crm_deals"] if r["status"] == "open")
                attio.move_deal(deal, "won", "2026-01-01T00:00:00.000000000Z")
            for name, fake in fakes.items():
                before = len(fake.requests)
                started, cpu = time.perf_counter(), time.thread_time()
                pull(connector_source(name, settings.connector_config(name), work / "pulled"), work / "pulled")
                seconds, cpu = time.perf_counter() - started, time.thread_time() - cpu
                rows = _landed(work / "pulled", name)
                landed = ", ".join(f"{t} {n:,}" for t, n in rows.items())
                lines.append(
                    f"| {label} | {name} | {landed} | {len(fake.requests) - before:,} | {seconds:.1f} | {cpu:.1f} |"
                )
    lines += ["", *_batch_export(export["events"], work)]
    print("\n".join(lines))
    return 0


def _batch_export(events: list[dict], work: Path) -> list[str]:
    """The same events from a daily PostHog batch export in the S3 fake (moto's server, in this process): the
    first pull reads every object, the next one the one object of a new day."""
    lines = [
        "PostHog from a batch export on S3 (one Parquet object per day of events, moto's S3 server):",
        "",
        "| pull | objects written | events landed | seconds | beton's CPU seconds |",
        "|---|---|---|---|---|",
    ]
    landing = work / "pulled-export"
    with FakeS3() as s3:
        os.environ["BETON_POSTHOG_S3_ACCESS_KEY_ID"], os.environ["BETON_POSTHOG_S3_SECRET_ACCESS_KEY"] = (
            s3.access_key,
            s3.secret_key,
        )
        settings = Settings.model_validate(
            {
                "sources": {
                    "posthog": {
                        "enabled": True,
                        "batch_export": {
                            "bucket": s3.bucket,
                            "prefix": "posthog/",
                            "endpoint_url": s3.url,
                            "max_objects": 10_000,
                        },
                    }
                }
            }
        )
        for label in ("first", "next"):
            if label == "first":
                written = serve_s3_export(s3, events)
            else:  # the next day's object
                latest = max(r["timestamp"] for r in events)
                day = [
                    {**r, "uuid": f"{r['uuid'][:-4]}eeee", "timestamp": latest + timedelta(days=1)}
                    for r in events[-500:]
                ]
                written = serve_s3_export(s3, day)
            started, cpu = time.perf_counter(), time.thread_time()
            pull(connector_source("posthog", settings.connector_config("posthog"), landing), landing)
            seconds, cpu = time.perf_counter() - started, time.thread_time() - cpu
            landed = _landed(landing, "posthog").get("events", 0)
            lines.append(f"| {label} | {written:,} | {landed:,} (all pulls) | {seconds:.1f} | {cpu:.1f} |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
