"""What an account's page reads (`beton serve`, `/accounts/{id}` and `/api/accounts/{id}`): its score by day from
beton.account_scores with the latest day's contributions, and its outcome from marts.account_outcomes; and the
account search of `/accounts`. Reads only; tables a run has not written yet read as empty.

beton.account_scores has no index by account: a history is a scan of the table filtered by account, every day read
(bounding the days by the account's outcome today could hide days scored under an earlier outcome). `make
bench-pages` times it: 0.34 s on the 10M-event benchmark warehouse (4.4M score rows), over 1 s at 100M (44M)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import duckdb
import polars as pl

from beton_pipeline.warehouse import table_exists

HISTORY_COLUMNS = ("day", "score", "score_rank", "n_signals_fired")
"""The columns of an account's score history (one row per scored day)."""
PROFILE_COLUMNS = (
    "day",
    "account_id",
    "company_name",
    "domain",
    "is_crm_company",
    "score",
    "raw_score",
    "score_rank",
    "n_signals_fired",
    "top_contributions",
    "intent_contributions",
    "signals_fired",
)
"""The latest scored day's row of an account, as the page shows it."""
OUTCOME_COLUMNS = ("started_at", "cohort_month", "converted", "converted_at", "arr", "outcome_known", "is_eligible")
"""What marts.account_outcomes says of the account: when it started, whether (and when, for how much) it
converted, and whether its outcome window has closed."""


class UnknownAccountError(LookupError):
    """No scored day for this account id (`args[0]` says so and what to check)."""


@dataclass(frozen=True)
class AccountHistory:
    """One account: `latest` (its latest beton.account_scores row), `history` (every scored day, oldest first:
    `HISTORY_COLUMNS`), `outcome` (marts.account_outcomes' `OUTCOME_COLUMNS`, None when the mart has no row) and
    `scored_day` (the latest day any account was scored: when it is after `latest["day"]`, the account is no longer
    in play)."""

    latest: dict
    history: pl.DataFrame
    outcome: dict | None
    scored_day: date | None


def read_account(con: duckdb.DuckDBPyConnection, account_id: str) -> AccountHistory:
    """The account's score history and latest contributions; UnknownAccountError when it was never scored."""
    if not table_exists(con, "beton", "account_scores"):
        raise UnknownAccountError("No account has been scored yet: run `beton run`, then come back.")
    rows = con.sql(
        f"select {', '.join(PROFILE_COLUMNS)} from beton.account_scores where account_id = ? order by day",
        params=[account_id],
    ).pl()
    if rows.is_empty():
        raise UnknownAccountError(
            f"No scored day for account {account_id!r}: an account is scored from its start until its outcome is "
            "known; check the id (the dashboard and /accounts list the scored ones)."
        )
    outcome = None
    if table_exists(con, "marts", "account_outcomes"):
        found = con.sql(
            f"select {', '.join(OUTCOME_COLUMNS)} from marts.account_outcomes where account_id = ?", params=[account_id]
        ).pl()
        outcome = found.row(0, named=True) if found.height else None
    scored_day = con.sql("select max(day) from beton.account_scores").fetchall()[0][0]
    return AccountHistory(rows.row(-1, named=True), rows.select(HISTORY_COLUMNS), outcome, scored_day)


def search_accounts(con: duckdb.DuckDBPyConnection, text: str | None, day: date, limit: int) -> pl.DataFrame:
    """The accounts scored on `day` whose name, domain or id contains `text` (case-insensitive; None: all), best
    ranked first, at most `limit`."""
    where, params = "day = ?", [day]
    if text:
        where += (
            " and (contains(lower(company_name), ?) or contains(lower(domain), ?) or contains(lower(account_id), ?))"
        )
        params += [text.lower()] * 3
    return con.sql(
        "select account_id, company_name, domain, is_crm_company, score, score_rank, n_signals_fired "
        f"from beton.account_scores where {where} order by score_rank, account_id limit ?",
        params=[*params, limit],
    ).pl()
