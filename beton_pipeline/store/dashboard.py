"""What the revenue team's dashboard reads (`beton serve`, `/` and `/api/signals/dashboard/metrics`): the daily
revenue numbers of beton.revenue_metrics, the latest day's leads from beton.account_scores, and how that day's
scores are spread. Reads only; tables a run has not written yet read as empty."""

from __future__ import annotations

from datetime import date

import duckdb
import polars as pl

from beton_pipeline.warehouse import table_exists

TREND_DAYS = 180
"""Days of beton.revenue_metrics the dashboard's trend charts draw (the latest ones)."""
SCORE_BINS = 20
"""Bins of the score distribution: equal widths over 0–1."""


def read_revenue_metrics(con: duckdb.DuckDBPyConnection, days: int = TREND_DAYS) -> pl.DataFrame:
    """The latest `days` rows of beton.revenue_metrics, oldest first (leads surfaced, conversion rate, signal
    accuracy, pipeline influenced: `store.scoring.revenue_metrics` says how each is counted)."""
    if not table_exists(con, "beton", "revenue_metrics"):
        return pl.DataFrame()
    return con.sql(
        "select * from (select * from beton.revenue_metrics order by day desc limit ?) order by day", params=[days]
    ).pl()


def read_leads(con: duckdb.DuckDBPyConnection, day: date, limit: int) -> pl.DataFrame:
    """The `limit` best-ranked accounts scored on `day`: account, company, domain, score, rank, signals fired and
    the top contributions (each with its signal id, definition, when it fired and its contribution)."""
    return con.sql(
        "select account_id, company_name, domain, is_crm_company, score, score_rank, n_signals_fired, "
        "top_contributions from beton.account_scores where day = ? order by score_rank, account_id limit ?",
        params=[day, limit],
    ).pl()


def score_distribution(con: duckdb.DuckDBPyConnection, day: date, bins: int = SCORE_BINS) -> pl.DataFrame:
    """How the scores of `day` are spread: `bins` equal bins over 0–1 (`low`, `high`, `accounts`), every bin
    present (zero when empty); a score of exactly 1 counts in the last bin."""
    counts = con.sql(
        "select least(floor(score * ?)::bigint, ? - 1) as bin, count(*) as accounts from beton.account_scores "
        "where day = ? and score is not null group by 1",
        params=[bins, bins, day],
    ).pl()
    every = pl.DataFrame({"bin": range(bins)}, schema={"bin": pl.Int64})
    return (
        every.join(counts.cast({"bin": pl.Int64}), on="bin", how="left")
        .with_columns(
            (pl.col("bin") / bins).alias("low"),
            ((pl.col("bin") + 1) / bins).alias("high"),
            pl.col("accounts").fill_null(0).cast(pl.Int64),
        )
        .select("low", "high", "accounts")
    )
