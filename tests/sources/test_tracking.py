"""The tracking spool (`sources.tracking`): a record is kept once per (experiment, user, event type) from any
number of threads and processes, an export is a sealed file that a crash never loses nor repeats, bad values are
refused with a paragraph; and tracked events reach the warehouse through the contract's rules, the exposure model
and the experiment readout's counts, the next export read incrementally."""

import json
import shutil
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from beton_pipeline.core.playbooks import Experiment
from beton_pipeline.sources import tracking
from beton_pipeline.sources.tracking import (
    EXPOSURE_EVENT,
    MAX_VALUE_CHARS,
    SpoolMismatchError,
    TrackedEvent,
    TrackingSpool,
    export_beside,
    tracking_paths,
)
from beton_pipeline.store.readouts import experiment_counts

FIXTURE = Path(__file__).parent.parent / "fixtures" / "contract_dir"
AT = datetime(2025, 2, 3, 12, 0, tzinfo=UTC)


def exposure(user: str, variant: str = "test", experiment: str = "new-onboarding", at: datetime = AT) -> TrackedEvent:
    return TrackedEvent(experiment, variant, user, "exposure", EXPOSURE_EVENT, at)


def conversion(user: str, variant: str = "test", experiment: str = "new-onboarding", at: datetime = AT) -> TrackedEvent:
    return TrackedEvent(experiment, variant, user, "conversion", "upgraded_plan", at)


def spool_rows(path: Path) -> list[tuple]:
    import sqlite3

    with sqlite3.connect(path) as con:
        return con.execute(
            "select id, experiment, user_key, event_type, variant from tracked_events order by id"
        ).fetchall()


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- Recording ---------------------------------------------------------------------------------------


def test_a_duplicate_keeps_the_first_event_and_returns_its_uuid(tmp_path):
    spool = TrackingSpool(tmp_path / "spool" / "tracking.sqlite")
    first, dup = spool.record(exposure("u1", "test"))
    assert dup is False
    assert first == str(exposure("u1").uuid) and first == exposure("u1", "control").uuid  # the keys, not the variant
    again, dup = spool.record(exposure("u1", "control", at=AT + timedelta(days=1)))
    assert (again, dup) == (first, True)
    converted, dup = spool.record(conversion("u1"))  # another event type of the same user is its own event
    assert dup is False and converted != first
    other, dup = spool.record(exposure("u1", experiment="pricing-page"))
    assert dup is False and other not in (first, converted)
    assert spool_rows(spool.path) == [
        (1, "new-onboarding", "u1", "exposure", "test"),  # the first variant stays
        (2, "new-onboarding", "u1", "conversion", "test"),
        (3, "pricing-page", "u1", "exposure", "test"),
    ]


def test_eight_threads_recording_repeats_keep_each_key_once(tmp_path):
    spool = TrackingSpool(tmp_path / "tracking.sqlite")
    results: list[list[tuple[str, bool]]] = [[] for _ in range(8)]

    def work(t: int) -> None:
        shared = TrackingSpool(spool.path) if t % 2 else spool  # one instance shared, and instances of their own
        for i in range(50):
            results[t].append(shared.record(exposure(f"u{(t * 13 + i) % 60}")))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    keys = {f"u{(t * 13 + i) % 60}" for t in range(8) for i in range(50)}
    assert len(keys) == 60
    flat = [r for rs in results for r in rs]
    assert len(flat) == 400
    assert sum(1 for _, dup in flat if not dup) == 60  # exactly one first record per key
    assert sum(1 for _, dup in flat if dup) == 340
    assert {u for u, _ in flat} == {exposure(k).uuid for k in keys}
    assert len(spool_rows(spool.path)) == 60


def test_two_processes_recording_the_same_keys_keep_each_once(tmp_path):
    path = tmp_path / "tracking.sqlite"
    code = (
        "import sys\n"
        "from datetime import datetime, UTC\n"
        "from beton_pipeline.sources.tracking import TrackingSpool, TrackedEvent\n"
        "spool = TrackingSpool(sys.argv[1])\n"
        "new = sum(not spool.record(TrackedEvent('exp', 'a', f'u{i % 70}', 'exposure', '$feature_flag_called',"
        " datetime(2025, 2, 3, tzinfo=UTC)))[1] for i in range(100))\n"
        "print(new)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True) for _ in "ab"]
    firsts = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(firsts) == 70
    assert len(spool_rows(path)) == 70


def test_times_are_kept_in_utc(tmp_path):
    spool = TrackingSpool(tmp_path / "tracking.sqlite")
    spool.record(exposure("u1", at=datetime(2025, 2, 3, 14, 0, tzinfo=timezone(timedelta(hours=2)))))
    spool.record(exposure("u2", at=datetime(2025, 2, 3, 12, 0)))  # naive: UTC
    spool.export(tmp_path / "out")
    (file,) = (tmp_path / "out" / "tracked_events").iterdir()
    assert [r["timestamp"] for r in lines(file)] == ["2025-02-03T12:00:00.000000+00:00"] * 2


@pytest.mark.parametrize(
    ("event", "says"),
    [
        (exposure("u" * (MAX_VALUE_CHARS + 1)), f"user_key is 257 characters, over the limit of {MAX_VALUE_CHARS}"),
        (exposure("u1", experiment="  "), "experiment is empty; send a non-empty text"),
        (exposure("u1", variant="a\nb"), "variant holds a control character"),
        (TrackedEvent("exp", "a", "u1", "exposure", "signup", AT), "an exposure is recorded as the event"),
        (
            TrackedEvent("exp", "a", "u1", "conversion", EXPOSURE_EVENT, AT),
            "a conversion's event is the experiment's goal",
        ),
        (
            TrackedEvent("exp", "a", "u1", "click", "signup", AT),
            "event_type is 'click'; expected one of exposure, conversion",
        ),
        (TrackedEvent("exp", "a", "u1", "exposure", EXPOSURE_EVENT, "2025-02-03"), "occurred_at is str"),
        (exposure("u1", at=datetime.min.replace(tzinfo=timezone(timedelta(hours=2)))), "is out of range in UTC"),
        (exposure(7), "user_key is int; expected text"),
    ],
)
def test_bad_values_are_refused_with_a_paragraph(tmp_path, event, says):
    spool = TrackingSpool(tmp_path / "tracking.sqlite")
    with pytest.raises(ValueError, match="^The tracked event was not recorded: ") as refused:
        spool.record(event)
    assert says in str(refused.value)
    assert not spool.path.exists()  # refused before the file is touched


def test_every_problem_is_named_at_once(tmp_path):
    with pytest.raises(ValueError) as refused:
        TrackingSpool(tmp_path / "s.sqlite").record(TrackedEvent("", "", "u1", "exposure", "x" * 300, AT))
    text = str(refused.value)
    assert "experiment is empty" in text and "variant is empty" in text and "event_name is 300 characters" in text


# --- Exporting -----------------------------------------------------------------------------------------


def test_an_export_is_one_sealed_file_and_the_next_takes_only_new_rows(tmp_path):
    spool, out = TrackingSpool(tmp_path / "tracking.sqlite"), tmp_path / "tracked"
    for user in ("u1", "u2"):
        spool.record(exposure(user))
    spool.record(conversion("u1"))
    first = spool.export(out)
    table = (out / "tracked_events").resolve()
    assert (first.files, first.rows, first.exported_through) == ((table / "000000000001-000000000003.jsonl",), 3, 3)
    assert lines(first.files[0]) == [
        {
            "uuid": exposure("u1").uuid,
            "event": "$feature_flag_called",
            "timestamp": "2025-02-03T12:00:00.000000+00:00",
            "distinct_id": "u1",
            "properties": {
                "$feature_flag": "new-onboarding",
                "$feature_flag_response": "test",
                "beton_tracked": "exposure",
            },
        },
        {
            "uuid": exposure("u2").uuid,
            "event": "$feature_flag_called",
            "timestamp": "2025-02-03T12:00:00.000000+00:00",
            "distinct_id": "u2",
            "properties": {
                "$feature_flag": "new-onboarding",
                "$feature_flag_response": "test",
                "beton_tracked": "exposure",
            },
        },
        {
            "uuid": conversion("u1").uuid,
            "event": "upgraded_plan",
            "timestamp": "2025-02-03T12:00:00.000000+00:00",
            "distinct_id": "u1",
            "properties": {
                "$feature_flag": "new-onboarding",
                "$feature_flag_response": "test",
                "beton_tracked": "conversion",
            },
        },
    ]
    again = spool.export(out)
    assert (again.files, again.rows, again.exported_through) == ((), 0, 3)
    spool.record(exposure("u3"))
    spool.record(exposure("u1"))  # a duplicate adds no row
    nxt = spool.export(out)
    assert (nxt.files, nxt.rows) == ((table / "000000000004-000000000004.jsonl",), 1)
    assert sorted(p.name for p in table.iterdir()) == [
        "000000000001-000000000003.jsonl",
        "000000000004-000000000004.jsonl",
    ]
    assert spool.export(tmp_path / "elsewhere").rows == 4  # each folder has its own watermark


def test_a_large_backlog_is_exported_in_bounded_files_in_id_order(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "EXPORT_BATCH_ROWS", 2)
    spool = TrackingSpool(tmp_path / "tracking.sqlite")
    for i in range(5):
        spool.record(exposure(f"u{i}"))
    result = spool.export(tmp_path / "out")
    assert [p.name for p in result.files] == [
        "000000000001-000000000002.jsonl",
        "000000000003-000000000004.jsonl",
        "000000000005-000000000005.jsonl",
    ]
    assert [r["distinct_id"] for p in result.files for r in lines(p)] == ["u0", "u1", "u2", "u3", "u4"]


def test_a_crash_after_the_file_and_before_the_watermark_neither_loses_nor_repeats_a_row(tmp_path, monkeypatch):
    spool, out = TrackingSpool(tmp_path / "tracking.sqlite"), tmp_path / "tracked"
    for user in ("u1", "u2"):
        spool.record(exposure(user))
    real_seal = tracking._seal

    def seal_then_crash(path, batch, spool_path):
        real_seal(path, batch, spool_path)
        raise OSError("power lost")

    monkeypatch.setattr(tracking, "_seal", seal_then_crash)
    with pytest.raises(OSError, match="power lost"):
        spool.export(out)
    monkeypatch.setattr(tracking, "_seal", real_seal)
    file = out / "tracked_events" / "000000000001-000000000002.jsonl"
    written = file.read_bytes()
    assert file.stat().st_size > 0
    (out / "tracked_events" / ".000000000001-000000000009.jsonl.tmp").write_text('{"half": ')  # an unsealed leftover
    spool.record(exposure("u3"))  # recorded before the next export
    retry = spool.export(out)
    assert [p.name for p in retry.files] == ["000000000001-000000000002.jsonl", "000000000003-000000000003.jsonl"]
    assert retry.rows == 3 and retry.exported_through == 3
    assert file.read_bytes() == written  # adopted as it was: its stamp unchanged, so an ingest that read it goes on
    assert sorted(p.name for p in (out / "tracked_events").iterdir()) == [
        "000000000001-000000000002.jsonl",
        "000000000003-000000000003.jsonl",
    ]
    rows = [r["distinct_id"] for p in sorted((out / "tracked_events").iterdir()) for r in lines(p)]
    assert rows == ["u1", "u2", "u3"]


def test_a_folder_written_from_another_spool_stops_the_export_with_a_paragraph(tmp_path):
    out = tmp_path / "tracked"
    old = TrackingSpool(tmp_path / "old.sqlite")
    old.record(exposure("u1"))
    old.export(out)
    new = TrackingSpool(tmp_path / "new.sqlite")
    new.record(exposure("someone-else"))
    with pytest.raises(SpoolMismatchError) as stopped:
        new.export(out)
    text = str(stopped.value)
    assert "000000000001-000000000001.jsonl is in the export folder but does not hold the spool's rows" in text
    assert "Move the folder" in text and "Traceback" not in text
    assert lines(out / "tracked_events" / "000000000001-000000000001.jsonl")[0]["distinct_id"] == "u1"  # untouched


def test_paths_beside_the_warehouse_and_no_spool_exports_nothing(tmp_path):
    warehouse = tmp_path / "data" / "warehouse.duckdb"
    assert tracking_paths(warehouse) == (tmp_path / "data" / "tracking.sqlite", tmp_path / "data" / "tracked")
    result = export_beside(warehouse)
    assert (result.files, result.rows, result.exported_through) == ((), 0, 0)
    assert not (tmp_path / "data").exists()


# --- Through the warehouse ----------------------------------------------------------------------------


def _materialize(keys: list[str]) -> dg.ExecuteInProcessResult:
    """The assets `keys` and everything upstream of them, as `beton run` builds them (the code location's
    definitions and resources, pointed at the test's files by the BETON_* variables)."""
    from beton_pipeline.definitions import defs  # parses the dbt project first when a model changed

    selection = dg.AssetSelection.assets(*keys).upstream().resolve(defs.resolve_asset_graph())
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), asset_selection=sorted(selection), raise_on_error=False
    )


def _tracked_metadata(result: dg.ExecuteInProcessResult) -> dict:
    (event,) = [
        e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey("raw_tracked_events")
    ]
    return event.materialization.metadata


def test_tracked_events_flow_through_the_contract_into_the_exposures_and_the_readout(tmp_path, monkeypatch):
    warehouse = tmp_path / "data" / "warehouse.duckdb"
    for name, value in {
        "BETON_WAREHOUSE": warehouse,
        "BETON_SOURCE_DIR": tmp_path / "src",
        "BETON_CONFIG": tmp_path / "beton.yaml",
        "DBT_TARGET_PATH": tmp_path / "dbt_target",
    }.items():
        monkeypatch.setenv(name, str(value))
    (tmp_path / "beton.yaml").write_text("ingest: {max_quarantine_share: 1}\n")  # the fixture quarantines on purpose
    shutil.copytree(FIXTURE, tmp_path / "src")
    exported = [  # an exposure PostHog exported, beside ours; and one with a tracked event's uuid (the export wins)
        {"uuid": "e-100", "distinct_id": "u-ada", "timestamp": "2025-02-02T09:00:00Z", "variant": "control"},
        {
            "uuid": exposure("u-dan").uuid,
            "distinct_id": "u-dan",
            "timestamp": "2025-02-03T12:00:00Z",
            "variant": "test",
        },
    ]
    (tmp_path / "src" / "events" / "part-0002.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "uuid": e["uuid"],
                    "event": "$feature_flag_called",
                    "timestamp": e["timestamp"],
                    "distinct_id": e["distinct_id"],
                    "properties": {"$feature_flag": "new-onboarding", "$feature_flag_response": e["variant"]},
                }
            )
            + "\n"
            for e in exported
        )
    )
    spool_path, out = tracking_paths(warehouse)
    spool = TrackingSpool(spool_path)
    spool.record(exposure("u-bob", "test"))
    spool.record(exposure("u-cat", "control"))
    spool.record(exposure("u-dan", "test"))
    assert spool.record(exposure("u-bob", "control"))[1] is True  # u-bob stays in test
    converted = [conversion("u-bob", at=AT + timedelta(days=1)), conversion("u-cat", at=AT - timedelta(days=1))]
    for event in converted:  # u-bob's after the exposure: a conversion; u-cat's before it: not one
        spool.record(event)
    future = datetime.now(UTC) + timedelta(days=30)
    spool.record(exposure("u-eve", at=future))  # the contract quarantines a time over a day ahead of the clock

    first = _materialize(["int_experiment_exposures", "int_accounts"])  # int_accounts: a test of the events reads it
    assert first.success
    meta = _tracked_metadata(first)
    assert (meta["rows_read"].value, meta["rows_loaded"].value, meta["rows_quarantined"].value) == (6, 5, 1)
    with duckdb.connect(str(warehouse), read_only=True) as con:
        raw = con.sql("select distinct_id, event from raw.raw_tracked_events order by all").fetchall()
        assert raw == [
            ("u-bob", "$feature_flag_called"),
            ("u-bob", "upgraded_plan"),
            ("u-cat", "$feature_flag_called"),
            ("u-cat", "upgraded_plan"),
            ("u-dan", "$feature_flag_called"),
        ]
        quarantined = con.sql(
            "select reason, raw_row from beton.quarantine where source_table = 'tracked_events'"
        ).fetchall()
        assert len(quarantined) == 1 and quarantined[0][0] == "timestamp: in the future"
        assert json.loads(quarantined[0][1])["distinct_id"] == "u-eve"
        exposures = con.sql(
            "select event_id, distinct_id, variant, is_first_exposure from intermediate.int_experiment_exposures "
            "where feature_flag = 'new-onboarding' order by distinct_id"
        ).fetchall()
        assert exposures == [
            ("e-100", "u-ada", "control", True),
            (exposure("u-bob").uuid, "u-bob", "test", True),
            (exposure("u-cat").uuid, "u-cat", "control", True),
            (exposure("u-dan").uuid, "u-dan", "test", True),
        ]
        tracked = con.sql("select event_id from staging.stg_posthog__events where is_tracked").fetchall()
        assert sorted(tracked) == sorted((e.uuid,) for e in (exposure("u-bob"), exposure("u-cat"), *converted))
        experiment = Experiment(name="new-onboarding", flag="new-onboarding", goal_event="upgraded_plan")
        counts, _ = experiment_counts(con, experiment)
        assert counts.rows() == [("control", 2, 0), ("test", 2, 1)]

    spool.record(exposure("u-fay", "control"))
    spool.record(exposure("u-gus", "test"))
    second = _materialize(["raw_tracked_events"])
    assert second.success
    meta = _tracked_metadata(second)
    assert meta["ingest_mode"].value == "incremental: 1 new file(s) after the 1 read before"
    assert meta["files_read"].value == 1
    assert (meta["rows_read"].value, meta["rows_loaded"].value, meta["rows_quarantined"].value) == (8, 7, 1)
    assert sorted(p.name for p in (out / "tracked_events").iterdir()) == [
        "000000000001-000000000006.jsonl",
        "000000000007-000000000008.jsonl",
    ]
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert con.sql("select count(*) from raw.raw_tracked_events").fetchall() == [(7,)]
