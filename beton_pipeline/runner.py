"""`beton run`: materialise the whole asset graph in-process, in dependency order, and summarise.

Unpartitioned assets first (ingest, dbt), then one run counting every eligible cohort month's
`signal_cohort_counts` partition (registered as dynamic partitions), then `signals`. The runs are recorded in the Dagster
instance, so they show in the UI like scheduled ones.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg

from beton_pipeline.defs.monitoring.jobs import DAILY_ASSETS
from beton_pipeline.defs.monitoring.partitions import register_monitoring_days
from beton_pipeline.defs.partitions import cohort_months, new_and_ordered, range_tags
from beton_pipeline.settings import load_settings, warehouse_path
from beton_pipeline.store.custom_signals import read_problems
from beton_pipeline.store.daily import data_days
from beton_pipeline.store.tables import eligible_cohort_months
from beton_pipeline.warehouse import connect, table_exists

SUMMARY_TABLES = (
    "raw.raw_events",
    "raw.raw_crm_companies",
    "raw.raw_billing_invoices",
    "beton.quarantine",
    "intermediate.int_events_resolved",
    "marts.account_outcomes",
    "marts.account_features",
    "marts.account_event_features",
    "beton.signal_cohort_counts",
    "beton.signals",
    "beton.signal_backtests",
    "beton.model_backtest",
    "beton.signal_health",
    "beton.account_scores",
    "beton.revenue_metrics",
    "beton.playbook_actions",
    "beton.playbook_readouts",
    "beton.experiment_readouts",
)


@dataclass
class RunSummary:
    """What a `beton run` did: stage times, row counts and the headline numbers."""

    stage_seconds: dict[str, float] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    cohort_months: list[str] = field(default_factory=list)
    monitoring_days: tuple[str, str] | None = None
    health: dict[str, int] = field(default_factory=dict)
    leads: dict[str, float] = field(default_factory=dict)
    actions: dict[str, int] = field(default_factory=dict)
    experiments: list[str] = field(default_factory=list)
    identity: dict[str, int] = field(default_factory=dict)
    accounts: dict[str, int] = field(default_factory=dict)
    enabled_signals: list[tuple[str, str, float]] = field(default_factory=list)
    custom_signals: int = 0
    signal_problems: list[str] = field(default_factory=list)
    """Custom signal files left out (file, line, reason), from beton.custom_signal_problems."""


QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
"""Console logging for in-process runs: warnings only (the event log keeps everything)."""


@dg.logger(
    config_schema={"log_level": dg.Field(str, is_required=False, default_value="WARNING")},
    description="`beton run`'s terminal: warnings (e.g. quarantined rows), never errors or stack traces.",
)
def terminal_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    """Dagster's console logger prints each failed step with its stack trace and an error line per skipped
    step; `beton run` instead ends with one `RunFailedError` paragraph, so records of level ERROR and above
    stay in the event log only. Warnings are printed as Dagster prints them."""
    level = logging.getLevelName(init_context.logger_config["log_level"].upper())
    logger = logging.Logger("dagster", level=level if isinstance(level, int) else logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s - dagster - %(levelname)s - %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler.addFilter(lambda record: record.levelno < logging.ERROR)
    logger.addHandler(handler)
    return logger


class RunFailedError(Exception):
    """A run of `beton run` failed. The message is for people: a short paragraph saying what failed, with
    its numbers and what to change (a failed check's description says that); the Dagster event log of the
    run keeps the detail and any stack trace."""


MAX_ERROR_LINES = 12
"""Lines of a failed step's error message shown in a `RunFailedError` (the event log has all of it)."""


def failure_paragraph(job_name: str, result: dg.ExecuteInProcessResult) -> str:
    """Why a run failed, for people: each failed blocking check (the asset, the check and its description,
    which for the ingest checks names the table, the numbers, the limit and the setting), else each failed
    step's error, and where the detail is."""
    failed_checks = [
        e
        for e in result.get_asset_check_evaluations()
        if not e.passed and e.blocking and e.severity == dg.AssetCheckSeverity.ERROR
    ]
    where = f"(the Dagster event log of run {result.run_id} has the detail)"
    if failed_checks:
        noun = "check" if len(failed_checks) == 1 else f"{len(failed_checks)} checks"
        lines = [f"{job_name}: a blocking {noun} failed, so nothing that depends on it ran {where}:"]
        lines += [
            f"- check '{e.check_name}' on {e.asset_key.to_user_string()}: {_check_text(e)}" for e in failed_checks
        ]
        return "\n".join(lines)
    lines = []
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error if event.step_failure_data else None
        while error is not None and error.cause is not None and (error.cls_name or "").startswith("Dagster"):
            error = error.cause  # a framework wrapper around the user code's error: show the user's
        text = re.sub(r"^[\w.]+\.(\w+): ", r"\1: ", (error.message if error else "").strip()) or "failed (no message)"
        text = re.sub(r"^Failure: ", "", text)  # a dg.Failure is beton's own message: no class name before it
        head, *rest = text.splitlines()
        rest = [line for line in rest if line.strip()]
        body = [head, *rest[: MAX_ERROR_LINES - 1]]
        if len(rest) > MAX_ERROR_LINES - 1:
            body.append(f"… and {len(rest) - MAX_ERROR_LINES + 1} more line(s) in the event log")
        lines.append(f"- step {event.step_key}: " + "\n  ".join(body))
    if not lines:
        run_failure = result.get_run_failure_event()
        lines.append(f"- {run_failure.message if run_failure else 'the run did not succeed'}")
    return "\n".join([f"{job_name} failed {where}:", *lines])


def _check_text(evaluation: dg.AssetCheckEvaluation) -> str:
    """A failed check's description, else its first few metadata values (e.g. a dbt test's failed rows)."""
    if evaluation.description:
        return evaluation.description
    values = [f"{k} {getattr(v, 'value', v)}" for k, v in list(evaluation.metadata.items())[:4]]
    return "failed" + (f" ({', '.join(values)})" if values else "")


def _execute(job: dg.JobDefinition, instance: dg.DagsterInstance, **kwargs) -> None:
    """One in-process run; a failure raises `RunFailedError` with a paragraph for people, never a trace."""
    job = job.with_logger_defs({"console": terminal_logger})
    result = job.execute_in_process(instance=instance, raise_on_error=False, run_config=QUIET, **kwargs)
    if not result.success:
        raise RunFailedError(failure_paragraph(job.name, result))


def run_pipeline(
    instance: dg.DagsterInstance, defs: dg.Definitions | None = None, on_stage: Callable[[str], None] | None = None
) -> RunSummary:
    """Materialise everything; `on_stage(name)` is called as each stage starts (for progress bars)."""
    if defs is None:
        from beton_pipeline.definitions import defs
    summary = RunSummary()
    release_stale_pool_slots(instance)  # a killed earlier run must not block this one forever

    def ingest_and_transform() -> None:
        _execute(defs.resolve_job_def("daily_ingest_job"), instance)

    def cohort_counts() -> None:
        with connect(warehouse_path(), read_only=True) as con:
            months = eligible_cohort_months(con)
        summary.cohort_months = months
        new, months = new_and_ordered(instance.get_dynamic_partitions(cohort_months.name), months)
        instance.add_dynamic_partitions(cohort_months.name, new)
        if months:  # a single-run backfill policy: one run counts every month (and any registered between)
            _execute(
                defs.resolve_implicit_global_asset_job_def(),
                instance,
                asset_selection=[dg.AssetKey("signal_cohort_counts")],
                tags=range_tags(months),
            )

    def discovery() -> None:
        _execute(defs.resolve_job_def("discovery_job"), instance)

    def backtests() -> None:
        from beton_pipeline.defs.backtests.partitions import register_signal_partitions, signal_partitions

        with connect(warehouse_path(), read_only=True) as con:
            register_signal_partitions(instance, con)
        keys = instance.get_dynamic_partitions(signal_partitions.name)
        if keys:  # a single-run backfill policy: one run covers every signal's partition
            _execute(
                defs.resolve_implicit_global_asset_job_def(),
                instance,
                asset_selection=[dg.AssetKey("signal_backtests")],
                tags=range_tags(keys),
            )

    def monitoring() -> None:
        with connect(warehouse_path(), read_only=True) as con:
            bounds = data_days(con)
        # The daily partitions end at the data's as-of day, not the wall clock.
        keys = register_monitoring_days(instance, bounds, load_settings().monitoring.start_date)
        if not keys:
            return
        summary.monitoring_days = (keys[0], keys[-1])
        _execute(
            defs.resolve_implicit_global_asset_job_def(),
            instance,
            asset_selection=[dg.AssetKey(k) for k in DAILY_ASSETS],
            tags=range_tags(keys),
        )

    def playbooks() -> None:
        _execute(defs.resolve_job_def("playbook_delivery_job"), instance)
        _execute(defs.resolve_job_def("playbook_readouts_job"), instance)

    stages = [
        ("ingest + dbt", ingest_and_transform),
        ("cohort counts", cohort_counts),
        ("discovery", discovery),
        ("backtests", backtests),
        ("health + scores", monitoring),
        ("playbooks + readouts", playbooks),
    ]
    for name, step in stages:
        if on_stage:
            on_stage(name)
        started = time.perf_counter()
        step()
        summary.stage_seconds[name] = round(time.perf_counter() - started, 2)
    _fill_summary(summary)
    return summary


def _fill_summary(summary: RunSummary) -> None:
    with connect(warehouse_path(), read_only=True) as con:
        for table in SUMMARY_TABLES:
            schema, name = table.split(".")
            if table_exists(con, schema, name):
                summary.rows[table] = con.sql(f"select count(*) from {table}").fetchall()[0][0]
        summary.identity = dict(
            con.sql(
                "select coalesce(resolution_method, 'unresolved'), count(*) from intermediate.int_events_resolved group by 1 order by 1"
            ).fetchall()
        )
        row = con.sql(
            "select count(*), count(*) filter (where has_events), count(*) filter (where is_eligible), "
            "count(*) filter (where is_eligible and converted) from marts.account_outcomes"
        ).fetchall()[0]
        summary.accounts = dict(zip(("accounts", "with_events", "eligible", "eligible_converted"), row, strict=True))
        if table_exists(con, "beton", "signal_health"):
            summary.health = dict(
                con.sql(
                    "select health, count(*) from beton.signal_health where day = (select max(day) from beton.signal_health) group by 1"
                ).fetchall()
            )
        if table_exists(con, "beton", "revenue_metrics"):
            rows = con.sql("select * from beton.revenue_metrics order by day desc limit 1").pl()
            summary.leads = {k: v for k, v in rows.row(0, named=True).items() if k != "day"} if rows.height else {}
        if table_exists(con, "beton", "playbook_actions"):
            summary.actions = dict(
                con.sql("select status, count(*) from beton.playbook_actions group by 1 order by 1").fetchall()
            )
        if table_exists(con, "beton", "experiment_readouts"):
            summary.experiments = [
                r[0]
                for r in con.sql(
                    "select distinct summary from beton.experiment_readouts where summary is not null order by 1"
                ).fetchall()
            ]
        summary.signal_problems = read_problems(con)
        if table_exists(con, "beton", "signals"):
            summary.custom_signals = con.sql("select count(*) from beton.signals where source = 'custom'").fetchall()[
                0
            ][0]
            summary.enabled_signals = con.sql(
                "select signal_id, definition, lift from beton.signals where enabled order by q_value, lift desc"
            ).fetchall()


def release_stale_pool_slots(instance: dg.DagsterInstance) -> list[str]:
    """Free the warehouse-pool slots still held by runs whose process is gone (killed or crashed).

    A run killed mid-step never returns its slot, and with a pool of size 1 every later writer would
    wait for it forever. A run's process id is in its engine events; a run whose process no longer
    exists is marked failed and its slots are freed. Returns the run ids released.
    """
    released = []
    storage = instance.event_log_storage
    for run_id in storage.get_concurrency_run_ids():
        run = instance.get_run_by_id(run_id)
        if run is not None and not run.is_finished and _process_alive(_run_pid(instance, run_id)):
            continue
        if run is not None and not run.is_finished:
            instance.report_run_failed(run)
        storage.free_concurrency_slots_for_run(run_id)
        released.append(run_id)
    return released


def _run_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The process id a run's engine events report, if any."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=20).records
    for record in records:
        event = record.event_log_entry.dagster_event
        pid = getattr(event, "pid", None) if event else None
        if pid:
            return int(pid)
    return None


def _process_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
