"""The `beton` command, run as a user runs it (the installed console script, in a subprocess)."""

import json
import subprocess
import sys
from datetime import date, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pytest

BETON = str(Path(sys.executable).parent / "beton")


def beton(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [BETON, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def test_help_lists_the_commands():
    done = beton("--help")
    assert done.returncode == 0
    for command in ("demo", "run", "signals"):
        assert command in done.stdout


def test_demo_writes_a_contract_directory(tmp_path):
    done = beton("demo", "--accounts", "500", "--seed", "3", "--out", str(tmp_path / "src"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "src" / "TRUTH.json").exists()
    assert any((tmp_path / "src" / "events").glob("*.parquet"))


def test_signals_json_lists_enabled_first(warehouse_env):
    done = beton("signals", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert rows and rows[0]["enabled"] is True
    flags = [r["enabled"] for r in rows]
    assert flags == sorted(flags, reverse=True)
    assert all(r["is_family_best"] for r in rows)
    assert len(json.loads(beton("signals", "--json", "--all").stdout)) > len(rows)


def test_signals_without_a_warehouse_is_a_one_line_error(tmp_path):
    done = beton("signals", env={"BETON_WAREHOUSE": str(tmp_path / "none.duckdb")})
    assert done.returncode == 1
    assert "no warehouse yet" in done.stderr and done.stderr.count("\n") <= 2


def test_invalid_settings_name_the_file_and_field(tmp_path):
    bad = tmp_path / "beton.yaml"
    bad.write_text("thresholds:\n  fdr_alpha: 2\n")
    done = beton("run", env={"BETON_CONFIG": str(bad), "BETON_WAREHOUSE": str(tmp_path / "w.duckdb")})
    assert done.returncode == 1
    assert str(bad) in done.stderr and "thresholds.fdr_alpha" in done.stderr


def test_disable_survives_rediscovery_and_enable_restores(warehouse_env):
    run = warehouse_env
    with duckdb.connect(str(run.warehouse), read_only=True) as con:
        signal_id = con.sql("select signal_id from beton.signals where enabled order by q_value limit 1").fetchall()[0][
            0
        ]
    done = beton("signals", "disable", signal_id, "--reason", "sales says it is seasonal", "--by", "ana")
    assert done.returncode == 0, done.stderr

    from beton_pipeline.definitions import defs

    defs.resolve_job_def("discovery_job").execute_in_process(instance=run.instance)
    with duckdb.connect(str(run.warehouse), read_only=True) as con:
        enabled, override = con.sql(
            "select enabled, enabled_override from beton.signals where signal_id = ?", params=[signal_id]
        ).fetchall()[0]
        who = con.sql(
            "select changed_by, reason from beton.signal_overrides where signal_id = ?", params=[signal_id]
        ).fetchall()
    assert (enabled, override) == (False, False)
    assert who == [("ana", "sales says it is seasonal")]
    assert beton("signals", "enable", signal_id).returncode == 0
    with duckdb.connect(str(run.warehouse), read_only=True) as con:
        assert con.sql("select enabled from beton.signals where signal_id = ?", params=[signal_id]).fetchall() == [
            (True,)
        ]
    assert beton("signals", "enable", "sig_doesnotexist").returncode == 1


def test_rematerialising_a_cohort_partition_is_idempotent(warehouse_env):
    run = warehouse_env
    from beton_pipeline.definitions import defs

    month = run.summary.cohort_months[0]
    job = defs.resolve_implicit_global_asset_job_def()

    def snapshot():
        with duckdb.connect(str(run.warehouse), read_only=True) as con:
            return con.sql("select * from beton.signal_cohort_counts order by cohort_month, key").fetchall()

    before = snapshot()
    for _ in range(3):
        job.execute_in_process(
            instance=run.instance, partition_key=month, asset_selection=[dg.AssetKey("signal_cohort_counts")]
        )
    assert snapshot() == before


# ------------------------------------------------------------------------------------------------
# `beton signals`, `show`, `reset` on a small warehouse written here (a real DuckDB file): fast, and
# shaped unlike the demo (a pair, a custom signal whose name has a colon, a property with a URL).
# ------------------------------------------------------------------------------------------------
EVENT_ID, ATTR_ID, PAIR_ID, CUSTOM_ID = "sig_aaaaaaaaaaa1", "sig_bbbbbbbbbbb2", "sig_ccccccccccc3", "sig_ddddddddddd4"


def _signal(signal_id: str, **values) -> dict:
    from beton_pipeline.store.signals import SIGNALS_SCHEMA

    row = dict.fromkeys(SIGNALS_SCHEMA)
    row.update(
        signal_id=signal_id,
        source="discovered",
        n_with=120,
        conversions_with=30,
        n_without=880,
        conversions_without=88,
        rate_with=0.25,
        rate_without=0.1,
        lift=2.5,
        lift_ci_low=1.8,
        lift_ci_high=3.4,
        p_value=1e-6,
        q_value=1e-4,
        holdout_lift=2.1,
        holdout_lift_ci_low=1.2,
        holdout_lift_ci_high=3.6,
        holdout_p_value=0.01,
        holdout_n_with=40,
        holdout_n_total=300,
        projected_arr=125000.0,
        recommendation="enable",
        recommendation_reason="q below 0.05 and replicated in the holdout",
        enabled=True,
        method="two-proportion z-test",
        is_family_best=True,
        alternatives='[{"threshold": 2, "lift": 1.9}, {"threshold": 5, "lift": 2.8}]',
        confidence_level=0.95,
        as_of=datetime(2026, 3, 31),
    )
    row.update(values)
    return row


@pytest.fixture
def small_warehouse(tmp_path):
    import polars as pl

    from beton_pipeline.store.signals import SIGNALS_SCHEMA

    rows = [
        _signal(
            EVENT_ID,
            kind="event_count",
            family="event:Invited Teammate",
            event="Invited Teammate",
            window_days=14,
            threshold=3,
            candidate_key="event:Invited Teammate:first_14d:>=3",
            definition="`Invited Teammate` >= 3 in the first 14 days (observation window)",
        ),
        _signal(
            ATTR_ID,
            kind="attribute",
            family="attribute:industry=Fintech",
            property="industry",
            value="Fintech",
            candidate_key="attribute:industry=Fintech",
            definition="industry = Fintech",
            recommendation="review",
            enabled=False,
            lift=1.3,
        ),
        _signal(
            PAIR_ID,
            kind="pair",
            family="pair:x",
            candidate_key="pair:attribute:industry=Fintech&event:Invited Teammate:first_14d:>=3",
            definition="`Invited Teammate` >= 3 in the first 14 days (observation window) AND industry = Fintech",
            part_a_id=ATTR_ID,
            part_b_id=EVENT_ID,
            recommendation="reject",
            enabled=False,
            alternatives="[]",
        ),
        _signal(
            CUSTOM_ID,
            source="custom",
            kind="sql",
            family=f"custom:{CUSTOM_ID}",
            candidate_key="custom:sql:SELECT account_id FROM marts.account_features",
            definition="Ops: big teams: SQL SELECT account_id FROM marts.account_features",
            alternatives="[]",
        ),
    ]
    path = tmp_path / "warehouse.duckdb"
    frame = pl.DataFrame(rows, schema=SIGNALS_SCHEMA)
    backtest = pl.DataFrame(
        {
            "signal_id": [EVENT_ID] * 3,
            "cohort_month": ["2026-01", "2026-02", "2026-03"],
            "split": ["discovery", "discovery", "holdout"],
            "cohort_accounts": [400, 380, 300],
            "fired": [50, 45, 40],
            "converted": [12, 11, 9],
            "lift": [2.4, 2.6, 2.1],
            "lift_ci_low": [1.5, 1.6, 1.2],
            "lift_ci_high": [3.8, 4.1, 3.6],
            "p_value": [0.001, 0.0005, 0.01],
            "enough_data": [True, True, True],
            "verdict": ["stable"] * 3,
            "verdict_reason": ["lift above 1 in 3 of 3 months"] * 3,
        }
    )
    health = pl.DataFrame(
        {
            "day": [date(2026, 3, 1) + timedelta(days=i) for i in range(20)],
            "signal_id": [EVENT_ID] * 20,
            "health": ["healthy"] * 19 + ["degrading"],
            "lift": [2.0] * 19 + [1.1],
            "lift_ci_low": [1.4] * 19 + [0.7],
            "lift_ci_high": [2.9] * 19 + [1.7],
        }
    )
    with duckdb.connect(str(path)) as con:
        con.execute("create schema beton")
        for name, data in (("signals", frame), ("signal_backtests", backtest), ("signal_health", health)):
            con.register("data", data.to_arrow())
            con.execute(f"create table beton.{name} as select * from data")
            con.unregister("data")
    return {"BETON_WAREHOUSE": str(path)}


def test_signals_piped_is_plain_text_one_line_per_signal_and_json_has_arrays(small_warehouse):
    done = beton("signals", env=small_warehouse)  # stdout is a pipe here, as in `beton signals > file`
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("# beton.signals (4 shown)") and lines[1].split()[:2] == ["signal_id", "enabled"]
    assert [line.split()[0] for line in lines[2:]] == [EVENT_ID, CUSTOM_ID, ATTR_ID, PAIR_ID]  # one line each
    event_line = next(line for line in lines if line.startswith(EVENT_ID))
    assert "Invited teammate 3+ times in their first 14 days" in event_line and event_line.endswith(
        "(observation window)"
    )
    assert lines[1].index("name") == event_line.index("Invited teammate")  # aligned, not wrapped
    assert "Industry: Fintech, and invited teammate 3+ times" in done.stdout and "  Ops: big teams  " in done.stdout

    rows = {r["signal_id"]: r for r in json.loads(beton("signals", "--json", env=small_warehouse).stdout)}
    assert rows[EVENT_ID]["alternatives"] == [{"threshold": 2, "lift": 1.9}, {"threshold": 5, "lift": 2.8}]
    assert rows[PAIR_ID]["alternatives"] == [] and rows[CUSTOM_ID]["name"] == "Ops: big teams"


def test_signals_show_then_reset_an_override(small_warehouse):
    env = {**small_warehouse, "USER": "ana"}
    assert beton("signals", "disable", EVENT_ID, "--reason", "seasonal", env=env).returncode == 0
    done = beton("signals", "show", EVENT_ID, env=env)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.startswith(f"{EVENT_ID}: Invited teammate 3+ times in their first 14 days")
    for expected in (
        "`Invited Teammate` >= 3 in the first 14 days",  # the exact condition
        "2.50 (95% CI 1.80–3.40)",  # lift with CI
        "120 accounts with it (30 converted, 25.0%)",  # support
        "holdout         lift 2.10 (CI 1.20–3.60), p 0.01, 40 of 300",  # replication
        "2026-02  discovery",  # backtest by cohort month
        "health: degrading on 2026-03-20 (last 14 days)",
        "disabled  ana  seasonal",  # the override: who and why
        "enabled         no (by override)",
    ):
        assert expected in text, expected

    reset = beton("signals", "reset", EVENT_ID, "--reason", "back to the data", "--by", "bo", env=env)
    assert reset.returncode == 0, reset.stderr
    assert "override cleared: enabled as recommended" in reset.stdout
    with duckdb.connect(small_warehouse["BETON_WAREHOUSE"], read_only=True) as con:
        assert con.sql(
            "select enabled, enabled_override from beton.signals where signal_id = ?", params=[EVENT_ID]
        ).fetchall() == [(True, None)]
        history = con.sql(
            "select enabled, changed_by, reason from beton.signal_overrides order by changed_at"
        ).fetchall()
    assert history == [(False, "ana", "seasonal"), (None, "bo", "back to the data")]
    shown = json.loads(beton("signals", "show", EVENT_ID, "--json", env=env).stdout)
    assert [o["enabled"] for o in shown["overrides"]] == [False, None] and len(shown["health"]) == 14
    assert shown["signal"]["enabled"] is True and [b["cohort_month"] for b in shown["backtest"]][0] == "2026-01"


def test_an_unknown_signal_id_is_one_line_with_did_you_mean(small_warehouse):
    for command in ("show", "reset"):
        done = beton("signals", command, "sig_aaaaaaaaaaa7", env=small_warehouse)
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
        assert f"did you mean {EVENT_ID}?" in done.stderr and "4 in beton.signals" in done.stderr
    by_text = beton("signals", "show", "Invited Teammate", env=small_warehouse)
    assert by_text.returncode == 1 and EVENT_ID in by_text.stderr and PAIR_ID in by_text.stderr
