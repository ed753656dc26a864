"""Ingest asset checks, materialised in-process on small source directories: they pass on good data
(also when the entity tables trail the events by weeks), and a stale activity table, an entity table
over a limit set in beton.yaml, or an empty required table fails (with the lag, the limit and the
setting in the description and metadata) and stops what depends on it."""

import shutil
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from beton_pipeline.defs.ingest.assets import build_ingest_assets, freshness_checks
from beton_pipeline.defs.resources import SettingsResource, SourceResource, WarehouseResource
from beton_pipeline.settings import FreshnessSettings, Settings
from beton_pipeline.sources.contract import INGESTED_TABLES, TABLES, TABLES_BY_NAME
from beton_pipeline.sources.ingest import SourceFreshness, as_of_time, freshness_limits, measure_freshness

ingest_assets = build_ingest_assets({})

FIXTURE = Path(__file__).parent.parent / "fixtures" / "contract_dir"
LATEST_EVENT = datetime(2025, 2, 5, 11, 0)
"""The newest valid event of the contract fixture (e-009): the as-of of every run below."""

INVOICES_HEADER = "id,customer,subscription,status,amount_paid,currency,created,paid_at\n"


@dg.asset(deps=[dg.AssetKey("raw_billing_invoices"), dg.AssetKey("raw_crm_people")])
def downstream_of_billing_and_people() -> None:
    """Stands in for the dbt models: it must not run when a blocking ingest check fails."""


def _source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(FIXTURE, src)
    return src


def _fresh_check(table: str) -> dg.AssetChecksDefinition:
    return next(c for c in freshness_checks if next(iter(c.check_keys)).asset_key == dg.AssetKey(f"raw_{table}"))


NO_QUARANTINE_LIMIT = "ingest: {max_quarantine_share: 1}\n"
"""The fixture quarantines a third of its events on purpose (one row per kind of bad row): the tests of
other checks lift the quarantine limit unless they set `ingest:` themselves."""


def _materialize(tmp_path: Path, src: Path, config: str = "", selection=None) -> dg.ExecuteInProcessResult:
    (tmp_path / "beton.yaml").write_text(config if "ingest:" in config else NO_QUARANTINE_LIMIT + config)
    return dg.materialize(
        [*ingest_assets, *freshness_checks, downstream_of_billing_and_people],
        resources={
            "warehouse": WarehouseResource(path=str(tmp_path / "warehouse.duckdb")),
            "source": SourceResource(source_dir=str(src)),
            "settings": SettingsResource(config_path=str(tmp_path / "beton.yaml")),
        },
        selection=selection,
        raise_on_error=False,
    )


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {f"{e.asset_key.to_user_string()}:{e.check_name}": e for e in result.get_asset_check_evaluations()}


def _materialized(result: dg.ExecuteInProcessResult) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


def test_every_check_passes_on_good_data(tmp_path):
    result = _materialize(tmp_path, _source(tmp_path))
    assert result.success
    checks = _checks(result)
    assert len(checks) == 4 * len(INGESTED_TABLES)  # the tracked events' too (none tracked: an empty table)
    assert all(c.passed for c in checks.values()), [(k, c.description) for k, c in checks.items() if not c.passed]
    assert "downstream_of_billing_and_people" in _materialized(result)
    invoices = checks["raw_billing_invoices:fresh"].metadata
    # Newest valid invoice: in_1, created 1739609600 = 2025-02-15 08:53:20, 9.9 days after the as-of.
    assert invoices["newest"].value == "2025-02-15 08:53:20"
    assert invoices["as_of"].value == "2025-02-05 11:00:00"
    assert invoices["lag_days"].value == pytest.approx(
        -(datetime(2025, 2, 15, 8, 53, 20) - LATEST_EVENT) / timedelta(days=1), abs=1e-3
    )
    assert invoices["max_lag_days"].value == 35.0
    assert checks["raw_events:fresh"].metadata["lag_days"].value == 0.0
    assert (
        checks["raw_events:fresh"].metadata["max_age_days"].value == "off"
    )  # demo-era data never fails by the wall clock


def test_stale_billing_fails_with_its_lag_and_blocks_downstream(tmp_path):
    src = _source(tmp_path)
    (src / "billing_invoices.csv").write_text(
        INVOICES_HEADER + "in_1,cus_1,sub_1,paid,4900,usd,2024-12-01T00:00:00Z,2024-12-01T00:00:00Z\n"
    )
    result = _materialize(tmp_path, src)
    assert not result.success
    check = _checks(result)["raw_billing_invoices:fresh"]
    lag = (LATEST_EVENT - datetime(2024, 12, 1)) / timedelta(days=1)  # 66.46 days
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert check.metadata["lag_days"].value == pytest.approx(lag, abs=1e-3)
    assert check.metadata["max_lag_days"].value == 35.0
    assert check.description == (
        "billing_invoices: newest created 2024-12-01 00:00 is 66.5 days behind the as-of 2025-02-05 11:00, "
        "over the limit of 35 days; if the export is not stale, set freshness.max_lag_days.billing_invoices "
        "in beton.yaml to more days (null: no check)"
    )
    assert check.metadata["table"].value == "billing_invoices"
    assert check.metadata["setting"].value == "freshness.max_lag_days.billing_invoices (beton.yaml)"
    # The other tables are fine; what depends on billing does not run on stale data.
    failed = {k for k, c in _checks(result).items() if not c.passed}
    assert failed == {"raw_billing_invoices:fresh"}
    assert "raw_billing_invoices" in _materialized(result)
    assert "downstream_of_billing_and_people" not in _materialized(result)


def test_empty_required_table_fails_has_rows_and_fresh(tmp_path):
    src = _source(tmp_path)
    (src / "crm_people.csv").write_text("record_id,email,company_record_id,created_at\n")  # header only
    result = _materialize(tmp_path, src)
    assert not result.success
    checks = _checks(result)
    has_rows = checks["raw_crm_people:has_rows"]
    assert not has_rows.passed and has_rows.severity == dg.AssetCheckSeverity.ERROR
    assert has_rows.description == "required table 'crm_people' loaded no row (0 read, 0 quarantined)"
    assert {k for k, c in checks.items() if not c.passed} == {"raw_crm_people:has_rows"}
    # The blocking check fails the step: nothing downstream runs, not even the freshness check...
    assert "raw_crm_people:fresh" not in checks
    assert "downstream_of_billing_and_people" not in _materialized(result)
    # ...which, run on its own (as from the UI), fails too.
    alone = _checks(_materialize(tmp_path, src, selection=dg.AssetSelection.checks(_fresh_check("crm_people"))))
    fresh = alone["raw_crm_people:fresh"]
    assert not fresh.passed and fresh.severity == dg.AssetCheckSeverity.ERROR
    assert fresh.description == "crm_people: no loaded row has a created_at"
    assert fresh.metadata["newest"].value == "n/a" and fresh.metadata["lag_days"].value == "n/a"


def test_absent_optional_table_passes_and_stale_optional_table_only_warns(tmp_path):
    src = _source(tmp_path)
    (src / "crm_deals.jsonl").unlink()
    (src / "intent_signals.csv").write_text(
        "company_domain,signal_type,occurred_at,source,payload\nacme.io,funding_round,2024-06-01T00:00:00Z,cb,\n"
    )
    result = _materialize(tmp_path, src)
    assert result.success  # warnings do not stop the run
    checks = _checks(result)
    assert checks["raw_crm_deals:fresh"].passed
    assert checks["raw_crm_deals:fresh"].description == "optional table 'crm_deals' has no rows"
    intent = checks["raw_intent_signals:fresh"]
    assert not intent.passed and intent.severity == dg.AssetCheckSeverity.WARN
    assert intent.metadata["lag_days"].value == pytest.approx(
        (LATEST_EVENT - datetime(2024, 6, 1)) / timedelta(days=1), abs=1e-3
    )


def test_windows_as_of_is_the_reference_and_the_events_may_trail_it_three_days(tmp_path):
    result = _materialize(tmp_path, _source(tmp_path), "windows:\n  as_of: '2025-02-10T00:00:00Z'\n")
    checks = _checks(result)
    events = checks["raw_events:fresh"]
    assert not events.passed and not result.success  # the events end 4.5 days before the as-of
    assert events.metadata["as_of"].value == "2025-02-10 00:00:00"
    assert events.metadata["lag_days"].value == pytest.approx(
        (datetime(2025, 2, 10) - LATEST_EVENT) / timedelta(days=1), abs=1e-3
    )
    assert events.metadata["max_lag_days"].value == 3.0
    # The other freshness checks depend on the events (their as-of), so a failed events check skips them;
    # a table that refers to another (invoices → customers) waits for that table's blocking checks.
    assert "raw_crm_companies:fresh" not in checks and "raw_crm_companies:has_rows" in checks
    assert "raw_billing_invoices:has_rows" not in checks


ENTITY_LAG = timedelta(days=50)
"""How far the entity tables trail the newest event below: the 44–50 days of real exports whose newest
billing customer was that much older than the newest event."""


def _entity_tables_behind_the_events(src: Path) -> datetime:
    """Rewrite the fixture's billing customers, subscriptions and CRM companies so that the newest of each
    was created `ENTITY_LAG` before the newest event (a quiet month and a half of sign-ups); returns that time."""
    created = LATEST_EVENT - ENTITY_LAG
    epoch = int((created - datetime(1970, 1, 1)) / timedelta(seconds=1))
    (src / "billing_customers.jsonl").write_text(
        f'{{"id": "cus_1", "email": "ada@acme.io", "created": {epoch - 86400}, "metadata": {{"company_domain": "acme.io"}}}}\n'
        f'{{"id": "cus_2", "email": "cat@hooli.xyz", "created": {epoch}, "metadata": {{}}}}\n'
    )
    (src / "billing_subscriptions.csv").write_text(
        "id,customer,status,created,trial_end,canceled_at,plan_amount,plan_interval,currency\n"
        f"sub_1,cus_1,active,{epoch - 86400},1739609600,,4900,month,usd\n"
        f"sub_2,cus_2,canceled,{epoch},1739609600,1740000000,49000,year,usd\n"
    )
    iso = f"{created:%Y-%m-%dT%H:%M:%SZ}"
    (src / "crm_companies.csv").write_text(
        "record_id,name,domain,employee_count,industry,created_at\n"
        "rec-acme,Acme,ACME.io,120,Fintech,2024-12-01T00:00:00Z\n"
        "rec-globex,Globex,globex.com,45,Retail,2024-11-15\n"
        f"rec-hooli,Hooli,hooli.xyz,,Software,{iso}\n"
    )
    return created


def test_entity_tables_weeks_behind_the_events_pass_by_default(tmp_path):
    """Customers, subscriptions and companies are dated by their creation: 50 days without a new one is a
    quiet stretch, not a stale export, so by default it fails nothing and the run goes on."""
    src = _source(tmp_path)
    created = _entity_tables_behind_the_events(src)
    result = _materialize(tmp_path, src)
    checks = _checks(result)
    assert result.success, [(k, c.description) for k, c in checks.items() if not c.passed]
    assert all(c.passed for c in checks.values())
    assert "downstream_of_billing_and_people" in _materialized(result)
    for table in ("billing_customers", "billing_subscriptions", "crm_companies"):
        fresh = checks[f"raw_{table}:fresh"]
        assert fresh.metadata["newest"].value == created.isoformat(sep=" ")
        assert fresh.metadata["lag_days"].value == pytest.approx(50.0, abs=1e-3)
        assert fresh.metadata["max_lag_days"].value == "off", table
        assert fresh.description.endswith("50.0 days behind the as-of")


def test_a_limit_set_on_an_entity_table_blocks(tmp_path):
    src = _source(tmp_path)
    _entity_tables_behind_the_events(src)
    result = _materialize(tmp_path, src, "freshness:\n  max_lag_days: {billing_customers: 30}\n")
    assert not result.success
    checks = _checks(result)
    assert {k for k, c in checks.items() if not c.passed} == {"raw_billing_customers:fresh"}
    check = checks["raw_billing_customers:fresh"]
    assert check.severity == dg.AssetCheckSeverity.ERROR and check.blocking
    assert check.metadata["max_lag_days"].value == 30.0
    assert check.description == (
        "billing_customers: newest created 2024-12-17 11:00 is 50.0 days behind the as-of 2025-02-05 11:00, "
        "over the limit of 30 days; if the export is not stale, set freshness.max_lag_days.billing_customers "
        "in beton.yaml to more days (null: no check)"
    )


def test_stale_events_fail_naming_the_table_lag_limit_and_setting(tmp_path):
    src = _source(tmp_path)
    _entity_tables_behind_the_events(src)  # do not hide the events' failure
    result = _materialize(tmp_path, src, "windows:\n  as_of: '2025-02-15T11:00:00Z'\n")
    assert not result.success
    events = _checks(result)["raw_events:fresh"]
    assert not events.passed and events.severity == dg.AssetCheckSeverity.ERROR
    assert events.description == (
        "events: newest timestamp 2025-02-05 11:00 is 10.0 days behind the as-of 2025-02-15 11:00, over the "
        "limit of 3 days; if the export is not stale, set freshness.max_lag_days.events in beton.yaml to more "
        "days (null: no check)"
    )
    assert events.metadata["table"].value == "events"
    assert events.metadata["lag_days"].value == pytest.approx(10.0)
    assert events.metadata["max_lag_days"].value == 3.0
    assert events.metadata["setting"].value == "freshness.max_lag_days.events (beton.yaml)"


def test_as_of_setting_follows_the_contract_timestamp_rules():
    con = duckdb.connect()
    con.execute("set TimeZone = 'UTC'")
    assert as_of_time(con, None) is None  # no events table yet
    assert as_of_time(con, "2025-02-10T01:00:00+01:00") == datetime(2025, 2, 10)
    assert as_of_time(con, "1739145600") == datetime(2025, 2, 10)
    with pytest.raises(ValueError, match="not a timestamp: 'next tuesday'"):
        as_of_time(con, "next tuesday")


# --- The limits and the measurement, without Dagster ------------------------------------------------


ENTITY_TABLES = {"billing_customers", "billing_subscriptions", "crm_companies", "crm_people", "crm_deals"}


def test_activity_tables_have_a_default_lag_limit_and_entity_tables_none():
    roles = {spec.name: spec.role for spec in TABLES}
    assert {name for name, role in roles.items() if role == "entity"} == ENTITY_TABLES
    defaults = {spec.name: freshness_limits(Settings().freshness, spec)[0] for spec in INGESTED_TABLES}
    assert defaults == {
        "events": 3.0,
        "billing_invoices": 35.0,
        "crm_deal_stage_changes": 35.0,
        "intent_signals": 35.0,
        **dict.fromkeys(ENTITY_TABLES),
        "tracked_events": None,  # beton serve's experiment events: quiet while no experiment runs
    }


def test_limits_default_to_the_contract_and_settings_override_per_table():
    events, invoices, deals = TABLES_BY_NAME["events"], TABLES_BY_NAME["billing_invoices"], TABLES_BY_NAME["crm_deals"]
    customers = TABLES_BY_NAME["billing_customers"]
    assert freshness_limits(Settings().freshness, events) == (3.0, None)
    assert freshness_limits(Settings().freshness, invoices) == (35.0, None)
    assert freshness_limits(Settings().freshness, customers) == (None, None)
    assert freshness_limits(FreshnessSettings(max_lag_days={"billing_customers": 60}), customers) == (60.0, None)
    custom = FreshnessSettings(max_lag_days={"billing_invoices": 10, "crm_deals": None}, max_age_days=2)
    assert freshness_limits(custom, invoices) == (10.0, None)
    assert freshness_limits(custom, deals) == (None, None)  # null turns the lag check off
    assert freshness_limits(custom, events) == (3.0, 2.0)  # the wall-clock age is checked on the events only


def test_every_table_has_a_timestamp_freshness_column():
    for spec in INGESTED_TABLES:
        kinds = {c.name: c.kind for c in spec.columns}
        assert kinds.get(spec.freshness_column) == "timestamp", spec.name


def _fresh(newest, as_of, now=datetime(2030, 1, 1), lag=35.0, age=None, required=True) -> SourceFreshness:
    return SourceFreshness("billing_invoices", "created", required, newest, as_of, now, lag, age)


def test_freshness_rule_at_the_boundaries():
    as_of = datetime(2025, 3, 1)
    assert _fresh(as_of - timedelta(days=35), as_of).fresh  # exactly at the limit
    assert not _fresh(as_of - timedelta(days=35, seconds=1), as_of).fresh
    assert _fresh(as_of + timedelta(days=3), as_of).lag_days == -3.0  # newer than the as-of is fine
    assert _fresh(as_of - timedelta(days=400), as_of, lag=None).fresh  # no limit, no lag check
    assert _fresh(None, as_of, required=False).fresh and not _fresh(None, as_of).fresh
    old = _fresh(as_of, as_of, now=as_of + timedelta(days=10), age=7)
    assert old.problems == (
        "billing_invoices: newest created 2025-03-01 00:00 is 10.0 days old by the wall clock, over the limit of "
        "7 days; if the export is not stale, set freshness.max_age_days in beton.yaml to more days (null: no check)",
    )
    assert _fresh(as_of, None).problems == (
        "billing_invoices: lag cannot be measured: no events loaded and windows.as_of is not set",
    )


def test_measure_freshness_reads_the_loaded_rows():
    con = duckdb.connect()
    spec = TABLES_BY_NAME["billing_invoices"]
    assert measure_freshness(con, spec, None, 35.0).newest is None  # no raw table yet
    con.execute("create schema raw; create table raw.raw_billing_invoices (created timestamp)")
    con.execute("insert into raw.raw_billing_invoices values ('2025-01-01'), ('2025-01-20 12:00'), (null)")
    got = measure_freshness(con, spec, datetime(2025, 2, 1), 35.0, now=datetime(2025, 2, 2))
    assert got.newest == datetime(2025, 1, 20, 12) and got.lag_days == 11.5 and got.age_days == 12.5 and got.fresh


def test_freshness_settings_from_beton_yaml(tmp_path):
    src = _source(tmp_path)
    (src / "billing_invoices.csv").write_text(
        INVOICES_HEADER + "in_1,cus_1,sub_1,paid,4900,usd,2024-12-01T00:00:00Z,2024-12-01T00:00:00Z\n"
    )
    result = _materialize(tmp_path, src, "freshness:\n  max_lag_days: {billing_invoices: 70}\n  max_age_days: 36500\n")
    checks = _checks(result)
    assert result.success and checks["raw_billing_invoices:fresh"].passed
    assert checks["raw_billing_invoices:fresh"].metadata["max_lag_days"].value == 70.0
    assert checks["raw_events:fresh"].metadata["max_age_days"].value == 36500.0


def test_a_required_table_over_the_quarantine_limit_fails_the_run_with_the_numbers(tmp_path):
    src = _source(tmp_path)
    # The fixture quarantines 4 of 12 events (33.3 %) and 2 of 4 invoices (50 %).
    result = _materialize(tmp_path, src, "ingest: {max_quarantine_share: 0.4}\n")
    assert not result.success
    checks = _checks(result)
    assert {k for k, c in checks.items() if not c.passed} == {"raw_billing_invoices:quarantined_share"}
    check = checks["raw_billing_invoices:quarantined_share"]
    assert check.severity == dg.AssetCheckSeverity.ERROR
    head, reasons = check.description.split("; top reasons: ")
    assert head == (
        "billing_invoices: 2 of 4 rows read were quarantined (50.0%), over the limit of 40.0% "
        "(ingest.max_quarantine_share)"
    )
    assert reasons.endswith(
        ". Fix the export (the rows and reasons are in beton.quarantine), or raise ingest.max_quarantine_share "
        "in beton.yaml if these rows may be left out"
    )
    assert "amount_paid: below 0 (1)" in reasons and "amount_paid: not an integer (1)" in reasons
    meta = {k: v.value for k, v in check.metadata.items()}
    assert meta == {
        "rows_read": 4,
        "rows_quarantined": 2,
        "quarantined_share": 0.5,
        "max_quarantine_share": 0.4,
        "setting": "ingest.max_quarantine_share",
    }
    assert "downstream_of_billing_and_people" not in _materialized(result)
    assert checks["raw_events:quarantined_share"].passed  # 33.3 % is within 40 %


def test_the_default_limit_is_five_percent_and_an_optional_table_over_it_only_warns(tmp_path):
    src = _source(tmp_path)
    for name in ("events/part-0001.jsonl", "billing_invoices.csv"):
        (src / name).unlink()
    (src / "events/part-0001.jsonl").write_text(
        '{"uuid": "e1", "event": "signup", "timestamp": "2025-02-05T11:00:00Z", "distinct_id": "u1"}\n'
    )
    (src / "billing_invoices.csv").write_text(
        INVOICES_HEADER + "in_1,cus_1,sub_1,paid,4900,usd,1738400000,1738400000\n"
    )
    with (src / "crm_deals.jsonl").open("a") as fh:  # an optional table: 1 of 2 deals quarantined
        fh.write('{"record_id": "d9", "status": "maybe"}\n')
    result = _materialize(tmp_path, src, "ingest: {}\n")
    checks = _checks(result)
    deals = checks["raw_crm_deals:quarantined_share"]
    assert not deals.passed and deals.severity == dg.AssetCheckSeverity.WARN
    assert deals.metadata["max_quarantine_share"].value == 0.05
    assert result.success, [(k, c.description) for k, c in checks.items() if not c.passed]


def test_the_ingest_assets_say_how_each_table_was_ingested(tmp_path):
    """`ingest.incremental` (on by default) reaches the assets: the first materialisation reads every file,
    the second, with no new file, reads none and says so in `ingest_mode` and `files_read`, with the same
    counts; with the setting off every file is read again."""
    src = _source(tmp_path)

    def events_metadata(config: str = "") -> dict:
        result = _materialize(tmp_path, src, config)
        assert result.success
        (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey("raw_events")]
        return event.materialization.metadata

    first = events_metadata()
    assert first["ingest_mode"].value.startswith("full: no earlier load kept its state")
    assert first["files_read"].value == len(first["files"].value) > 0
    again = events_metadata()
    assert again["ingest_mode"].value.startswith("unchanged: no new file")
    assert again["files_read"].value == 0
    assert [again[k].value for k in ("rows_read", "rows_loaded", "rows_quarantined")] == [
        first[k].value for k in ("rows_read", "rows_loaded", "rows_quarantined")
    ]
    off = events_metadata("ingest: {incremental: false, max_quarantine_share: 1}\n")
    assert off["ingest_mode"].value == "full: ingest.incremental is off"


def test_the_definitions_hold_every_ingest_asset_and_its_checks():
    """The code location's definitions (not only this module's lists): each contract table's ingest asset with its
    three checks and its `fresh` check. A module with a `dg.definitions` function contributes only what that
    function returns, which once dropped the `fresh` checks silently."""
    from beton_pipeline.definitions import defs

    checks = defs.resolve_asset_graph().asset_check_keys
    for spec in INGESTED_TABLES:
        key = dg.AssetKey(f"raw_{spec.name}")
        names = {c.name for c in checks if c.asset_key == key}
        assert names == {"rows_accounted_for", "has_rows", "quarantined_share", "fresh"}, (spec.name, names)
