"""Profiling an export before any run (`beton check`, `beton init`), without touching the warehouse.

Everything is measured by the pipeline's own parts, run into a temporary DuckDB file:

* each table is read by the ingest (`sources.ingest.ingest_table`: the same readers and row rules, the
  same quarantine reasons), so a row that `beton run` would quarantine is counted here, for the same
  reason;
* identity and outcomes come from the real dbt models, built up to `account_outcomes` (seeds and
  models only: the data tests are the run's business) with the windows of beton.yaml;
* whether discovery has enough data is `core.power.min_detectable_lift` on the accounts discovery would
  test (the eligible accounts of the discovery cohorts, `core.discovery.temporal_split`).

`profile_export` returns an `ExportProfile`: per table, its files, rows, time range, columns and bad rows
by reason; the identity coverage, accounts and conversions; `problems` (the run cannot work: each a short
paragraph with the numbers and what to change) and `warnings` (it can, but look).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np

from beton_pipeline.core.discovery import temporal_split
from beton_pipeline.core.power import REFERENCE_POWER, REFERENCE_SIGNAL_SHARE, min_detectable_lift
from beton_pipeline.dbt_project import CHECK_WAREHOUSE, beton_dbt_project, dbt_executable
from beton_pipeline.settings import Settings
from beton_pipeline.sources.contract import TABLES, TableSpec
from beton_pipeline.sources.files import table_files
from beton_pipeline.sources.ingest import SourceError, ingest_table, table_freshness
from beton_pipeline.warehouse import connect

CHECK_MODELS = "+account_outcomes"
"""The dbt selection `beton check` builds: `account_outcomes` and everything it is built from (identity
resolution, conversions, the seeds). The feature marts are not needed to count accounts and outcomes."""

DBT_TIMEOUT_SECONDS = 1800
"""Upper bound on the dbt build of `beton check` (it takes seconds on small exports)."""

STRONG_LIFT = 2.0
"""The lift of a strong signal (it doubles conversion). When even that is not detectable with the
accounts discovery would test, `beton check` warns that discovery has too little data."""

MOSTLY_UNRESOLVED = 0.5
"""`beton check` warns when more than this share of events belongs to no account: most behaviour would
then be invisible to discovery."""

HIGH_QUARANTINE_SHARE = 0.05
"""`beton check` warns when more than this share of a table's rows would be quarantined."""


@dataclass
class TableProfile:
    """One contract table as the ingest reads it. `error` is set when the ingest cannot read it at all
    (a required table or column missing, an unreadable file); the counts are then zero."""

    table: str
    required: bool
    files: list[str] = field(default_factory=list)
    skipped_files: list[str] = field(default_factory=list)
    """`path: reason` for every file in the table's location that a run would not read (`files.table_files`)."""
    rows_read: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    exact_duplicates: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    time_column: str | None = None
    first: str | None = None
    last: str | None = None
    freshness: str | None = None
    columns_found: list[str] = field(default_factory=list)
    columns_absent_or_empty: list[str] = field(default_factory=list)
    columns_extra: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class ExportProfile:
    """What `beton check` measured. Counts of accounts are None when the dbt models could not be built."""

    source_dir: str
    tables: list[TableProfile]
    as_of: str | None = None
    events_by_identity_rule: dict[str, int] = field(default_factory=dict)
    unresolved_share: float | None = None
    accounts: int | None = None
    accounts_with_events: int | None = None
    eligible_accounts: int | None = None
    eligible_converted: int | None = None
    converted_accounts: int | None = None
    discovery_accounts: int | None = None
    discovery_conversion_rate: float | None = None
    min_detectable_lift: float | None = None
    power: dict[str, float] = field(default_factory=dict)
    windows: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ConversionTiming:
    """For `beton init`: each converted account's days from its start to its first payment, every
    account's start, and the as-of (numpy arrays, `core.starter.suggest_windows`' inputs)."""

    days_to_convert: np.ndarray
    started_at: np.ndarray
    as_of: np.datetime64 | None


def _stamp(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(sep=" ", timespec="seconds")


def _profile_table(con, source_dir: Path, spec: TableSpec) -> TableProfile:
    """Ingest one table into the temporary warehouse and describe it."""
    profile = TableProfile(spec.name, spec.required, time_column=spec.freshness_column)
    profile.skipped_files = [
        f"{os.path.relpath(path, source_dir)}: {reason}" for path, reason in table_files(source_dir, spec.name).skipped
    ]
    try:
        result = ingest_table(con, source_dir, spec)
    except SourceError as exc:
        profile.error = str(exc)
        return profile
    except duckdb.Error as exc:  # `beton run` would stop on it too: say where, in one line
        detail = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        profile.error = f"{source_dir}: table '{spec.name}' cannot be read: {detail}"
        return profile
    profile.files = [os.path.relpath(f, source_dir) for f in result.files]
    profile.rows_read, profile.rows_loaded = result.rows_read, result.rows_loaded
    profile.rows_quarantined, profile.exact_duplicates = result.rows_quarantined, result.exact_duplicates_dropped
    profile.quarantine_reasons = dict(result.quarantine_reasons)
    profile.columns_extra = list(result.ignored_columns)
    counts = ", ".join(f'count("{c}")' for c in spec.column_names)
    time_range = f', min("{spec.freshness_column}"), max("{spec.freshness_column}")'
    row = con.sql(f"select {counts}{time_range} from {spec.raw_table}").fetchall()[0]
    non_null, (first, last) = row[: len(spec.column_names)], row[len(spec.column_names) :]
    profile.first, profile.last = _stamp(first), _stamp(last)
    # A required column is in every file (the ingest refuses a file without it); an optional one is
    # absent, or present with no value, when no loaded row has a value in it.
    for column, n in zip(spec.columns, non_null, strict=True):
        found = column.required or n > 0
        (profile.columns_found if found else profile.columns_absent_or_empty).append(column.name)
    return profile


def _table_findings(profile: TableProfile, spec: TableSpec, problems: list[str], warnings: list[str], fresh) -> None:
    """Problems and warnings about one table, as short paragraphs."""
    if profile.skipped_files:
        warnings.append(
            f"{spec.name}: {len(profile.skipped_files):,} file(s) in its location will not be read "
            f"({'; '.join(profile.skipped_files[:3])}); rename or convert them if they hold rows"
        )
    if profile.error:
        problems.append(profile.error)
        return
    if spec.required and profile.rows_loaded == 0:
        reasons = ", ".join(f"{r} ({n:,})" for r, n in list(profile.quarantine_reasons.items())[:3])
        problems.append(
            f"{spec.name}: no row would be loaded ({profile.rows_read:,} read, {profile.rows_quarantined:,} "
            f"quarantined{': ' + reasons if reasons else ''}); the table is required, so fix its rows or export it again"
        )
    elif profile.rows_read and profile.rows_quarantined / profile.rows_read > HIGH_QUARANTINE_SHARE:
        top = next(iter(profile.quarantine_reasons.items()), None)
        warnings.append(
            f"{spec.name}: {profile.rows_quarantined:,} of {profile.rows_read:,} rows "
            f"({profile.rows_quarantined / profile.rows_read:.0%}) would be quarantined"
            + (f", most often for '{top[0]}' ({top[1]:,})" if top else "")
        )
    if fresh is not None and fresh.problems:
        (problems if spec.required else warnings).extend(fresh.problems)


def build_outcome_models(warehouse: Path, work_dir: Path, settings: Settings) -> str | None:
    """Build the dbt seeds and models up to `account_outcomes` (`CHECK_MODELS`, no tests) on `warehouse`,
    with beton.yaml's windows. Returns None, or why the build failed (dbt's error lines)."""
    project = Path(beton_dbt_project.project_dir)
    command = [
        dbt_executable(),
        "build",
        "--select",
        CHECK_MODELS,
        "--exclude-resource-type",
        "test",
        "--exclude-resource-type",
        "unit_test",
        "--vars",
        json.dumps(settings.dbt_vars()),
        "--project-dir",
        str(project),
        "--profiles-dir",
        str(project),
        "--target-path",
        str(work_dir / "target"),
        "--log-path",
        str(work_dir / "logs"),
        "--quiet",
    ]
    env = os.environ | {"BETON_WAREHOUSE": str(warehouse), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=DBT_TIMEOUT_SECONDS, check=False
        )
    except subprocess.TimeoutExpired:
        return f"the dbt models did not finish within {DBT_TIMEOUT_SECONDS} s"
    if done.returncode == 0:
        return None
    lines = [ln.strip() for ln in (done.stdout + "\n" + done.stderr).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()] or lines
    return "the dbt models up to account_outcomes failed: " + " ".join(errors[:4])


def _outcomes(con, profile: ExportProfile, settings: Settings) -> ConversionTiming:
    """Identity coverage, accounts, conversions and the power figure, from the built models."""
    profile.events_by_identity_rule = dict(
        con.sql(
            "select coalesce(resolution_method, 'unresolved'), count(*) from intermediate.int_events_resolved "
            "group by 1 order by 2 desc"
        ).fetchall()
    )
    total = sum(profile.events_by_identity_rule.values())
    profile.unresolved_share = profile.events_by_identity_rule.get("unresolved", 0) / total if total else None
    (
        profile.accounts,
        profile.accounts_with_events,
        profile.eligible_accounts,
        profile.eligible_converted,
        profile.converted_accounts,
        as_of,
    ) = con.sql(
        "select count(*), count(*) filter (where has_events), count(*) filter (where is_eligible), "
        "count(*) filter (where is_eligible and converted), count(*) filter (where converted_at is not null), "
        "max(as_of_at) from marts.account_outcomes"
    ).fetchall()[0]
    profile.as_of = _stamp(as_of)
    eligible = con.sql(
        "select strftime(cohort_month, '%Y-%m') as month, converted from marts.account_outcomes where is_eligible"
    ).pl()
    if eligible.height:
        split = temporal_split(eligible.get_column("month").to_numpy(), settings.windows.holdout_fraction)
        in_discovery = eligible.filter(eligible.get_column("month").is_in(list(split.discovery_months)))
        profile.discovery_accounts = in_discovery.height
        profile.discovery_conversion_rate = float(in_discovery.get_column("converted").mean())
        alpha = settings.thresholds.fdr_alpha
        profile.power = {"alpha": alpha, "power": REFERENCE_POWER, "signal_share": REFERENCE_SIGNAL_SHARE}
        profile.min_detectable_lift = min_detectable_lift(
            in_discovery.height, profile.discovery_conversion_rate, alpha, REFERENCE_POWER, REFERENCE_SIGNAL_SHARE
        )
    timing = con.sql(
        "select started_at, epoch(converted_at - started_at) / 86400.0 as days from marts.account_outcomes "
        "where has_events"
    ).pl()
    return ConversionTiming(
        days_to_convert=timing.get_column("days").drop_nulls().to_numpy(),
        started_at=timing.get_column("started_at").to_numpy(),
        as_of=None if as_of is None else np.datetime64(as_of, "s"),
    )


def _outcome_findings(profile: ExportProfile, settings: Settings) -> None:
    """Problems (the run cannot work) and warnings about identity, outcomes and power."""
    problems, warnings = profile.problems, profile.warnings
    events = sum(profile.events_by_identity_rule.values())
    resolved = events - profile.events_by_identity_rule.get("unresolved", 0)
    w = settings.windows
    if events and resolved == 0:
        problems.append(
            f"identity: none of the {events:,} events resolved to an account: no $groups.company, no e-mail "
            "domain of a CRM company, no e-mail in crm_people matched. Check that crm_companies.domain and "
            "crm_people.email match the events' person_properties.email or $groups.company"
        )
    elif profile.unresolved_share is not None and profile.unresolved_share > MOSTLY_UNRESOLVED:
        warnings.append(
            f"identity: {profile.unresolved_share:.0%} of the {events:,} events resolved to no account; "
            "they are invisible to discovery"
        )
    if not profile.accounts_with_events:
        pass  # no event resolved (or none loaded): said above, and nothing more can be measured
    elif not profile.eligible_accounts:
        problems.append(
            f"outcomes: no eligible account (of {profile.accounts_with_events:,} with events): none has a "
            f"closed outcome window of windows.conversion_window_days = {w.conversion_window_days} days by the "
            f"as-of {profile.as_of}. Lower windows.conversion_window_days (`beton init` suggests one from the data) "
            "or export a longer history"
        )
    elif not profile.eligible_converted:
        problems.append(
            f"outcomes: none of the {profile.eligible_accounts:,} eligible accounts converted within "
            f"{w.conversion_window_days} days ({profile.converted_accounts or 0:,} accounts converted at any time). "
            "A conversion is a paid invoice with amount_paid > 0 whose customer's e-mail domain (or "
            "metadata.company_domain) is an account's domain, or a won CRM deal; check those links, or raise "
            "windows.conversion_window_days"
        )
    elif profile.eligible_converted == profile.eligible_accounts:
        problems.append(
            f"outcomes: all {profile.eligible_accounts:,} eligible accounts converted, so no behaviour can "
            "separate converters from the rest; export accounts that did not pay too"
        )
    elif profile.min_detectable_lift is None or profile.min_detectable_lift > STRONG_LIFT:
        mdl = (
            "no lift at all"
            if profile.min_detectable_lift is None
            else f"only a lift of {profile.min_detectable_lift:.2f} or more"
        )
        warnings.append(
            f"power: with {profile.discovery_accounts:,} eligible accounts in the discovery cohorts "
            f"({profile.discovery_conversion_rate:.1%} converted), a signal held by "
            f"{REFERENCE_SIGNAL_SHARE:.0%} of them is detectable ({REFERENCE_POWER:.0%} power, alpha "
            f"{settings.thresholds.fdr_alpha:g}) at {mdl}; discovery will likely find little. Export more "
            "accounts or a longer history"
        )


def profile_export(source_dir: Path, settings: Settings, work_dir: Path) -> tuple[ExportProfile, ConversionTiming]:
    """Profile `source_dir` into a DuckDB file under `work_dir` (a folder the caller owns and clears:
    `dbt_project.check_work_dir`, or any empty folder).

    Every table is read; the dbt models are built only when every table could be read (otherwise the
    problems say which file to fix first)."""
    source_dir = source_dir.resolve()
    warehouse = work_dir / CHECK_WAREHOUSE
    profile = ExportProfile(source_dir=str(source_dir), tables=[])
    profile.windows = {
        "observation_days": settings.windows.observation_days,
        "conversion_window_days": settings.windows.conversion_window_days,
        "holdout_fraction": settings.windows.holdout_fraction,
    }
    empty = work_dir / "empty"
    empty.mkdir(exist_ok=True)
    with connect(warehouse) as con:
        for spec in TABLES:
            table = _profile_table(con, source_dir, spec)
            profile.tables.append(table)
            if table.error and not spec.required:
                ingest_table(con, empty, spec)  # an empty table, as if absent, so the models still build
        for table, spec in zip(profile.tables, TABLES, strict=True):  # after the events: they set the as-of
            fresh = None
            if table.files and not table.error:
                fresh = table_freshness(con, spec, settings.freshness, settings.windows.as_of)
                table.freshness = fresh.summary
            _table_findings(table, spec, profile.problems, profile.warnings, fresh)
    timing = ConversionTiming(np.array([]), np.array([], dtype="datetime64[s]"), None)
    if any(t.error for t in profile.tables if t.required):
        return profile, timing
    failure = build_outcome_models(warehouse, work_dir, settings)
    if failure:
        profile.problems.append(failure)
        return profile, timing
    with connect(warehouse, read_only=True) as con:
        timing = _outcomes(con, profile, settings)
    _outcome_findings(profile, settings)
    return profile, timing
