"""`beton check` and `beton init` as a user runs them: the installed console script in a subprocess, on
small exports (a generated demo of a few hundred accounts, and broken copies of it or of the contract
fixture). Each profile builds the dbt models on a scratch warehouse, so the tests are few."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from beton_pipeline.core.power import min_detectable_lift
from beton_pipeline.settings import load_settings

BIN = Path(sys.executable).parent
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "contract_dir"
SMALL_EXPORT_ACCOUNTS = 400
"""A few hundred accounts: enough for eligible accounts and conversions in several cohort months."""

DEMO_EVENT_NAMES = ("invited_teammate", "api_key_created", "new-onboarding", "ai-assistant")


@pytest.fixture(scope="module")
def small_export(tmp_path_factory) -> Path:
    from beton_pipeline.sources.demo import generate_demo

    out = tmp_path_factory.mktemp("check_export")
    generate_demo(out, n_accounts=SMALL_EXPORT_ACCOUNTS, seed=5)
    return out


@pytest.fixture(scope="module")
def dbt_target_root(tmp_path_factory) -> Path:
    """dbt's target root for this module's checks (DBT_TARGET_PATH): its `check` folder is theirs alone."""
    return tmp_path_factory.mktemp("dbt_target")


def beton(
    tmp_path: Path, *args: str, timeout: int = 900, target_root: Path | None = None
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        **({"DBT_TARGET_PATH": str(target_root)} if target_root else {}),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "BETON_WAREHOUSE": str(tmp_path / "user_warehouse.duckdb"),
        "BETON_CONFIG": str(tmp_path / "no_config.yaml"),
    }
    env.pop("BETON_SOURCE_DIR", None)
    (tmp_path / "no_config.yaml").write_text("{}\n")
    return subprocess.run(
        [str(BIN / "beton"), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path
    )


def test_check_json_describes_a_healthy_export_and_leaves_the_warehouse_alone(tmp_path, small_export, dbt_target_root):
    done = beton(tmp_path, "check", str(small_export), "--json", target_root=dbt_target_root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (tmp_path / "user_warehouse.duckdb").exists()  # profiled in a scratch warehouse
    # ... in the check's folder, deleted afterwards; dbt's parse stays there for the next check
    work = dbt_target_root / "check"
    assert not list(work.glob("check.duckdb*")) and (work / "target" / "partial_parse.msgpack").is_file()
    profile = json.loads(done.stdout)
    assert profile["ok"] is True and profile["problems"] == []
    tables = {t["table"]: t for t in profile["tables"]}
    with duckdb.connect() as con:  # the row counts are the files' own
        events = con.sql(f"select count(*) from read_parquet('{small_export}/events/*.parquet')").fetchall()[0][0]
    assert tables["events"]["rows_read"] == events
    for t in tables.values():
        assert t["error"] is None and t["files"]
        assert t["rows_read"] == t["rows_loaded"] + t["rows_quarantined"] + t["exact_duplicates"]
        assert t["first"] <= t["last"]
    assert sum(tables["events"]["quarantine_reasons"].values()) >= tables["events"]["rows_quarantined"] > 0
    rules = profile["events_by_identity_rule"]
    assert sum(rules.values()) == tables["events"]["rows_loaded"] and rules.get("unresolved", 0) > 0
    assert profile["unresolved_share"] == pytest.approx(rules["unresolved"] / sum(rules.values()), rel=1e-12)
    assert 0 < profile["discovery_accounts"] <= profile["eligible_accounts"] <= profile["accounts_with_events"]
    assert 0 < profile["eligible_converted"] < profile["eligible_accounts"]
    # The figure is core.power's, on the discovery cohorts' counts, at the configured alpha (default 0.05).
    expected = min_detectable_lift(profile["discovery_accounts"], profile["discovery_conversion_rate"], 0.05, 0.8, 0.1)
    assert profile["min_detectable_lift"] == pytest.approx(expected, rel=1e-12)
    assert profile["power"] == {"alpha": 0.05, "power": 0.8, "signal_share": 0.1}


def test_check_lists_no_conversions_as_a_problem_in_plain_text(tmp_path, small_export):
    broken = tmp_path / "export"
    shutil.copytree(small_export, broken)
    for name in ("crm_deals.jsonl.gz", "crm_deal_stage_changes.csv"):  # won deals convert too
        (broken / name).unlink()
    invoices = broken / "billing_invoices.parquet"
    with duckdb.connect() as con:
        con.execute(
            f"copy (select * replace ('open' as status) from read_parquet('{small_export}/billing_invoices.parquet')) "
            f"to '{invoices}' (format parquet)"
        )
    done = beton(tmp_path, "check", str(broken))
    assert done.returncode == 1, done.stdout + done.stderr
    text = done.stdout
    assert "\x1b[" not in text and "Traceback" not in done.stderr  # plain when not on a terminal
    assert "crm_deals (optional): no file" in text
    assert "billing_invoices (required): " in text and "identity: " in text
    assert "converted at any time" in text and "smallest detectable lift none" in text
    assert "ok: " not in text
    assert "error: beton check: 1 problem would stop `beton run`" in done.stderr
    assert "- outcomes: none of the" in done.stderr and "0 accounts converted at any time" in done.stderr


def test_check_stops_on_a_missing_required_table_without_building_models(tmp_path):
    broken = tmp_path / "export"
    shutil.copytree(FIXTURE, broken)
    (broken / "billing_invoices.csv").unlink()
    done = beton(tmp_path, "check", str(broken), "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    profile = json.loads(done.stdout)
    invoices = next(t for t in profile["tables"] if t["table"] == "billing_invoices")
    assert "required table 'billing_invoices' not found" in invoices["error"]
    assert profile["accounts"] is None  # no model was built on a partial export
    assert "required table 'billing_invoices' not found" in done.stderr


def test_check_refuses_a_folder_that_does_not_exist(tmp_path):
    done = beton(tmp_path, "check", str(tmp_path / "nowhere"))
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and "no such directory" in done.stderr


def test_init_writes_a_starter_that_loads_and_never_overwrites_without_force(tmp_path, small_export):
    target = tmp_path / "starter.yaml"
    done = beton(tmp_path, "init", str(small_export), "--output", str(target))
    assert done.returncode == 0, done.stdout + done.stderr
    text = target.read_text()
    settings = load_settings(target)  # beton's own loader
    w = settings.windows
    assert 1 <= w.observation_days <= w.conversion_window_days // 2
    assert w.conversion_window_days % 7 == 0
    assert "# 90% of " in text and "conversions after the account's start paid within" in text
    assert "cohort months with a known outcome" in text
    assert settings.playbooks == () and settings.experiments == ()
    assert not any(name in text for name in DEMO_EVENT_NAMES)

    target.write_text("# mine\n")
    again = beton(tmp_path, "init", str(small_export), "--output", str(target))
    assert again.returncode == 1 and "already exists; pass --force" in again.stderr
    assert target.read_text() == "# mine\n"
