"""Signal discovery assets: per-cohort-month sufficient statistics, then `beton.signals`."""


import dagster as dg
import numpy as np
import polars as pl

from beton_pipeline.core.candidates import build_candidate_matrix, candidate_hits, sufficient_statistics
from beton_pipeline.core.discovery import HoldoutSplit, discover_from_cohort_counts, matrix_pair_source
from beton_pipeline.defs.partitions import cohort_months
from beton_pipeline.defs.resources import WAREHOUSE_POOL, SettingsResource, WarehouseResource
from beton_pipeline.settings import Settings
from beton_pipeline.store.signals import write_discovered_signals
from beton_pipeline.store.tables import eligible_cohort_months, read_feature_frames, replace_rows
from beton_pipeline.warehouse import table_exists

CUSTOM_COUNTS_TABLE = "beton.custom_signal_cohort_counts"  # written by the custom_signals asset

COHORT_COUNTS_TABLE = "beton.signal_cohort_counts"


@dg.asset(
    partitions_def=cohort_months,
    group_name="signals",
    kinds={"python", "polars", "duckdb"},
    pool=WAREHOUSE_POOL,
    deps=["account_features", "account_event_features", "account_property_features", "account_intent_features", "account_outcomes"],
    description=(
        "Sufficient statistics for every candidate signal in one cohort month (accounts whose first product "
        "event fell in that month and whose outcome window has closed): accounts with the candidate, their "
        "conversions and ARR, and the cohort's totals. Counted with one sparse matrix product. "
        "Table `beton.signal_cohort_counts`; re-materialising a month replaces exactly that month's rows."
    ),
)
def signal_cohort_counts(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, settings: SettingsResource
) -> dg.MaterializeResult:
    cfg = settings.load()
    month = context.partition_key
    with warehouse.connect() as con:
        frames = read_feature_frames(con, cfg.feature_windows, cohort_month=month)
        matrix = build_candidate_matrix(frames, candidate_hits(frames, cfg.feature_spec()))
        accounts = frames.accounts
        counts = sufficient_statistics(
            matrix,
            accounts.get_column("converted").to_numpy(),
            accounts.get_column("arr").fill_null(0).to_numpy(),
        ).with_columns(pl.lit(month).alias("cohort_month"))
        replace_rows(con, COHORT_COUNTS_TABLE, counts, "cohort_month = ?", [month])
    return dg.MaterializeResult(
        metadata={
            "cohort_month": month,
            "eligible_accounts": accounts.height,
            "conversions": int(accounts.get_column("converted").sum()) if accounts.height else 0,
            "candidates_seen": matrix.n_candidates,
        }
    )


def signals_markdown(signals: pl.DataFrame, limit: int = 15) -> str:
    """A markdown table of the best signals (one per family), best first."""
    if signals.is_empty():
        return "No signal tested: no account has a known outcome yet."
    top = signals.filter(pl.col("is_family_best")).sort(["recommendation_order", "q_value", "lift"], descending=[False, False, True]).head(limit)
    lines = ["| signal | recommendation | lift (95% CI) | n with | q | holdout lift |", "|---|---|---|---|---|---|"]
    for r in top.iter_rows(named=True):
        hl = "—" if r["holdout_lift"] is None or np.isnan(r["holdout_lift"]) else f"{r['holdout_lift']:.2f}"
        lines.append(
            f"| {r['definition']} | {r['recommendation']} | {r['lift']:.2f} ({r['lift_ci_low']:.2f}–{r['lift_ci_high']:.2f}) "
            f"| {r['n_with']} | {r['q_value']:.2g} | {hl} |"
        )
    return "\n".join(lines)


@dg.asset(
    group_name="signals",
    kinds={"python", "polars", "duckdb"},
    pool=WAREHOUSE_POOL,
    deps=[signal_cohort_counts, "custom_signals"],
    description=(
        "beton.signals: every candidate tested in this run — discovered candidates and the custom signals of "
        "signals/ (source = custom) — with counts, rates, lift and its CI (Katz log), "
        "a two-sided p-value (pooled z-test, Fisher exact below expected count 5), Benjamini–Hochberg q-values "
        "over all candidates, the lift on the later holdout cohorts, projected ARR and a recommendation "
        "(enable/review/reject). `enabled` follows the recommendation unless a user override says otherwise."
    ),
    # custom_signals is rebuilt by the daily job with the marts; cohort counts by the cohort sensor.
    automation_condition=dg.AutomationCondition.eager().ignore(dg.AssetSelection.assets("custom_signals")),
    check_specs=[dg.AssetCheckSpec("all_cohorts_counted", asset="signals", description="every eligible cohort month has its counts partition")],
)
def signals(context: dg.AssetExecutionContext, warehouse: WarehouseResource, settings: SettingsResource) -> dg.MaterializeResult:
    cfg = settings.load()
    config = cfg.discovery_config()
    with warehouse.connect() as con:
        expected = set(eligible_cohort_months(con))
        counts = con.sql(f"select * from {COHORT_COUNTS_TABLE}").pl() if table_exists(con, *COHORT_COUNTS_TABLE.split(".")) else pl.DataFrame()
        present = set(counts.get_column("cohort_month").unique().to_list()) if counts.height else set()
        missing = sorted(expected - present)
        if missing:
            raise dg.Failure(
                description=f"signal_cohort_counts is missing cohort month(s) {', '.join(missing)}: materialise those partitions first",
                metadata={"missing_months": missing},
            )
        counts = counts.filter(pl.col("cohort_month").is_in(sorted(expected))) if counts.height else counts
        custom = con.sql(f"select * from {CUSTOM_COUNTS_TABLE}").pl() if table_exists(con, *CUSTOM_COUNTS_TABLE.split(".")) else pl.DataFrame()
        notes = custom.select("key", "note").unique("key") if custom.height else pl.DataFrame(schema={"key": pl.String, "note": pl.String})
        if custom.height and counts.height:
            counts = pl.concat([counts, custom.filter(pl.col("cohort_month").is_in(sorted(expected))).select(counts.columns)], how="vertical_relaxed")
        if counts.is_empty():
            context.log.warning("No eligible account (outcome window closed) yet: beton.signals has no discovered rows")
            result, split = pl.DataFrame(), HoldoutSplit((), (), 0, 0)
        else:
            run = discover_from_cohort_counts(counts, _warehouse_pair_source(con, cfg), config, cfg.windows.holdout_fraction)
            result, split = run.signals, run.split
            result = result.join(notes, on="key", how="left")
        as_of = con.sql("select max(as_of_at) from marts.account_outcomes").fetchall()[0][0]
        written = write_discovered_signals(con, result, cfg, as_of=as_of, split=split)
    enabled = written.filter(pl.col("enabled"))
    return dg.MaterializeResult(
        metadata={
            "candidates_tested": dg.MetadataValue.int(result.height),
            "enabled": dg.MetadataValue.int(enabled.height),
            "review": dg.MetadataValue.int(written.filter(pl.col("recommendation") == "review").height),
            "discovery_accounts": dg.MetadataValue.int(split.n_discovery),
            "holdout_accounts": dg.MetadataValue.int(split.n_holdout),
            "holdout_months": dg.MetadataValue.json(list(split.holdout_months)),
            "top_signals": dg.MetadataValue.md(signals_markdown(written)),
        },
        check_results=[dg.AssetCheckResult(check_name="all_cohorts_counted", passed=True, metadata={"cohort_months": len(expected)})],
    )


def _warehouse_pair_source(con, cfg: Settings):
    """Pair counts for the chosen singles, from account-level features read back from the marts."""

    def source(top: list[str], split: HoldoutSplit) -> tuple[pl.DataFrame, pl.DataFrame]:
        frames = read_feature_frames(con, cfg.feature_windows)
        hits = candidate_hits(frames, cfg.feature_spec()).filter(pl.col("key").is_in(top))
        matrix = build_candidate_matrix(frames, hits)
        accounts = frames.accounts
        return matrix_pair_source(
            matrix,
            accounts.get_column("cohort_month").dt.strftime("%Y-%m").to_numpy(),
            accounts.get_column("converted").to_numpy(),
            accounts.get_column("arr").fill_null(0).to_numpy(),
        )(top, split)

    return source
