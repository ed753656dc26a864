"""beton on a production-shaped Dagster instance: PostgreSQL storage, `dagster-webserver` and
`dagster-daemon` as separate processes, the committed `dagster.postgres.yaml`.

One test, one story:
1. the daily ingest is launched through GraphQL, with no run config, and runs through the daemon's run
   queue with beton's default executor (in-process: `beton_pipeline/defs/execution.py`; Dagster's
   multiprocess default started one process per step, ~20, which made this test take 6-7 minutes);
2. `cohort_months_sensor` ticks on the new `account_outcomes`, adds the cohort-month partitions and
   requests one `cohort_counts_job` run over their range (the asset's single-run backfill policy); every
   warehouse writer of every run shares the pool of size 1, so no DuckDB lock error appears anywhere in
   the event log;
3. the automation sensor materialises `signals` (its eager condition) once every month is counted;
   the sensors this story does not follow (daily monitoring, playbooks) are stopped first, as their runs
   would queue on the warehouse pool ahead of `signals`;
4. `daily_ingest_schedule` ticks (a test settings file makes its cron every minute); its run is held in the
   queue (a tag concurrency limit of 0 in this instance) and cancelled there, so it never competes with the
   story's runs for the warehouse pool;
5. the runs, ticks and partitions are rows in PostgreSQL.
"""

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.e2e.servers import (
    PROJECT_ROOT,
    PostgresServer,
    ServerError,
    dagster_daemon,
    dagster_webserver,
    graphql,
    postgres_bin_dir,
    postgres_cluster,
    wait_until,
    wait_while_progressing,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow(seconds=330)]

DEMO_ACCOUNTS = 1000
DEMO_MONTHS = 4
"""Four months of data leave two or three cohort months with closed outcome windows: a range for the
sensor's one run, few enough to keep the test short."""

PG_PASSWORD = "s3cret:/@ with spaces"
"""A password that must be URL-quoted: TCP connections require it, so the instance really reads DAGSTER_PG_PASSWORD."""

# Waits end on progress, not on the clock (see `wait_while_progressing`): a run is waited for as long
# as its steps keep finishing, so a loaded machine slows the test down instead of failing it.
RUN_IDLE_TIMEOUT = 420
"""Seconds without a finished step before a run counts as stuck (dbt build is the longest step)."""
RUN_TOTAL_TIMEOUT = 1500
SENSOR_TIMEOUT = 300
AUTOMATION_TIMEOUT = 300
DAEMON_TIMEOUT = 180

FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}
LOCK_ERRORS = ("Could not set lock on file", "the warehouse is locked", "Conflicting lock")
AUTOMATION_SENSOR_TYPES = {"AUTO_MATERIALIZE", "AUTOMATION"}
STORY_SENSORS = {"cohort_months_sensor"}
"""The sensors (besides automation) this test follows; every other one is stopped at the start."""


class Dagster:
    """The GraphQL API of one webserver, scoped to beton's (only) code location."""

    def __init__(self, url: str):
        self.url = url
        node = self.query(
            "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"
        )["repositoriesOrError"]["nodes"][0]
        self.repository = {"repositoryLocationName": node["location"]["name"], "repositoryName": node["name"]}

    def query(self, text: str, variables: dict | None = None) -> dict:
        return graphql(self.url, text, variables)

    def launch(self, job: str, tags: dict[str, str] | None = None, run_config: dict | None = None) -> str:
        params = {
            "selector": {**self.repository, "jobName": job},
            "runConfigData": run_config or {},
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]},
        }
        result = self.query(
            "mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename "
            "... on LaunchRunSuccess { run { runId } } ... on PythonError { message } "
            "... on InvalidSubsetError { message } ... on RunConfigValidationInvalid { errors { message } } } }",
            {"p": params},
        )["launchRun"]
        assert result["__typename"] == "LaunchRunSuccess", result
        return result["run"]["runId"]

    def runs(self) -> list[dict]:
        return self.query(
            "{ runsOrError(limit: 200) { ... on Runs { results { runId jobName status creationTime startTime endTime "
            "tags { key value } } } } }"
        )["runsOrError"]["results"]

    def runs_selecting(self, asset: str) -> list[dict]:
        """Runs whose asset selection includes `asset` (what a sensor or automation requested for it)."""
        runs = self.query(
            "{ runsOrError(limit: 200) { ... on Runs { results { runId status creationTime assetSelection { path } } } } }"
        )["runsOrError"]["results"]
        return [r for r in runs if [asset] in [key["path"] for key in r["assetSelection"] or []]]

    def failed_steps(self, run_id: str) -> list[str]:
        return [
            s["stepKey"]
            for s in self.query(
                "query($id: ID!) { runOrError(runId: $id) { ... on Run { stepStats { stepKey status } } } }",
                {"id": run_id},
            )["runOrError"]["stepStats"]
            if s["status"] == "FAILURE"
        ]

    def run_progress(self, run_id: str) -> tuple[str, int]:
        """(status, number of steps that have ended): what changes while a run is making progress."""
        run = self.query(
            "query($id: ID!) { runOrError(runId: $id) { ... on Run { status stepStats { stepKey endTime } } } }",
            {"id": run_id},
        )["runOrError"]
        return run["status"], sum(1 for s in run["stepStats"] if s["endTime"])

    def run_status(self, run_id: str) -> str:
        return self.query("query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", {"id": run_id})[
            "runOrError"
        ]["status"]

    def instigator_ticks(self, kind: str, name: str, limit: int = 20) -> tuple[str, list[dict]]:
        """(status, ticks newest first) of a schedule (`kind`="schedule") or sensor (`kind`="sensor")."""
        selector = {**self.repository, f"{kind}Name": name}
        state_field = "scheduleState" if kind == "schedule" else "sensorState"
        selector_type = "ScheduleSelector" if kind == "schedule" else "SensorSelector"
        data = self.query(
            f"query($s: {selector_type}!) {{ {kind}OrError({kind}Selector: $s) {{ __typename "
            f"... on {kind.capitalize()} {{ {state_field} {{ id status ticks(limit: {limit}) {{ status timestamp runIds runKeys "
            "skipReason error { message } } } } } }",
            {"s": selector},
        )[f"{kind}OrError"]
        assert state_field in data, data
        return data[state_field]["status"], data[state_field]["ticks"]

    def sensors(self) -> list[dict]:
        return self.query(
            "query($r: RepositorySelector!) { sensorsOrError(repositorySelector: $r) { ... on Sensors { results { name sensorType "
            "sensorState { id status } } } } }",
            {"r": self.repository},
        )["sensorsOrError"]["results"]

    def stop_sensor(self, state_id: str) -> None:
        self.query("mutation($id: String!) { stopSensor(id: $id) { __typename } }", {"id": state_id})

    def start_sensor(self, name: str) -> str:
        result = self.query(
            "mutation($s: SensorSelector!) { startSensor(sensorSelector: $s) { __typename ... on Sensor { sensorState { status } } "
            "... on PythonError { message } } }",
            {"s": {**self.repository, "sensorName": name}},
        )["startSensor"]
        assert result["__typename"] == "Sensor", result
        return result["sensorState"]["status"]

    def stop_schedule(self, name: str) -> str:
        state_id = self.query(
            "query($s: ScheduleSelector!) { scheduleOrError(scheduleSelector: $s) { ... on Schedule { scheduleState { id } } } }",
            {"s": {**self.repository, "scheduleName": name}},
        )["scheduleOrError"]["scheduleState"]["id"]
        result = self.query(
            "mutation($id: String!) { stopRunningSchedule(id: $id) { __typename ... on ScheduleStateResult { scheduleState { status } } "
            "... on PythonError { message } } }",
            {"id": state_id},
        )["stopRunningSchedule"]
        assert result["__typename"] == "ScheduleStateResult", result
        return result["scheduleState"]["status"]

    def terminate(self, run_id: str) -> str:
        result = self.query(
            "mutation($id: String!) { terminateRun(runId: $id) { __typename ... on PythonError { message } } }",
            {"id": run_id},
        )["terminateRun"]
        return result["__typename"]

    def latest_materialization(self, asset: str) -> dict | None:
        data = self.query(
            "query($k: AssetKeyInput!) { assetOrError(assetKey: $k) { ... on Asset { assetMaterializations(limit: 1) { runId timestamp } } } }",
            {"k": {"path": [asset]}},
        )["assetOrError"]
        mats = (data or {}).get("assetMaterializations") or []
        return mats[0] if mats else None

    def daemons_healthy(self) -> bool:
        statuses = self.query("{ instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } } }")[
            "instance"
        ]["daemonHealth"]["allDaemonStatuses"]
        return all(s["healthy"] for s in statuses if s["required"])


def tag(run: dict, key: str) -> str | None:
    return next((t["value"] for t in run["tags"] if t["key"] == key), None)


class Timeline:
    """Seconds since the test started, per milestone (printed at the end; pytest -s shows it)."""

    def __init__(self):
        self.start = time.monotonic()
        self.marks: dict[str, float] = {}

    def mark(self, name: str) -> None:
        self.marks[name] = round(time.monotonic() - self.start, 1)

    def __str__(self) -> str:
        return ", ".join(f"{k} {v:.0f}s" for k, v in self.marks.items())


def poll(check: Callable[[], object], timeout: float, what: str, interval: float = 2.0) -> object:
    """wait_until with a test-friendly interval."""
    return wait_until(check, timeout, what, interval=interval)


def wait_for_runs(dagster: Dagster, check: Callable[[], object], run_ids: list[str], what: str) -> object:
    """Wait for `check` while the runs `run_ids` make progress (a step ends or a status changes)."""
    return wait_while_progressing(
        check,
        lambda: tuple(dagster.run_progress(run_id) for run_id in run_ids),
        what,
        idle_timeout=RUN_IDLE_TIMEOUT,
        total_timeout=RUN_TOTAL_TIMEOUT,
    )


@pytest.fixture(scope="module")
def postgres() -> PostgresServer:
    if postgres_bin_dir() is None:
        pytest.fail(
            "PostgreSQL server binaries are missing: `apt-get install -y postgresql` (.ci/run does it), or deselect with -m 'not postgres'"
        )
    with postgres_cluster(password=PG_PASSWORD) as server:
        yield server


@pytest.fixture(scope="module")
def instance_env(postgres, tmp_path_factory) -> dict[str, str]:
    """DAGSTER_HOME holding dagster.postgres.yaml (its schedule runs held in the queue), a small demo source, a
    fresh warehouse, and settings whose only change is the schedule's cron (every minute, so the daemon ticks
    during the test)."""
    from beton_pipeline.settings import config_path
    from beton_pipeline.sources.demo import generate_demo

    base = tmp_path_factory.mktemp("postgres_instance")
    home = base / "dagster_home"
    home.mkdir()
    # The committed instance file, plus one queue rule: the schedule's runs stay queued (tag limit 0). The test
    # checks that the tick made its run and cancels it; started, a second ingest would hold the warehouse pool
    # for minutes ahead of the story's runs (a tick landing as the first ingest ended did, at load 8).
    instance_yaml = yaml.safe_load((PROJECT_ROOT / "dagster.postgres.yaml").read_text())
    instance_yaml.setdefault("concurrency", {})["runs"] = {
        "tag_concurrency_limits": [{"key": "dagster/schedule_name", "value": "daily_ingest_schedule", "limit": 0}]
    }
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml))
    generate_demo(base / "source", n_accounts=DEMO_ACCOUNTS, seed=23, months=DEMO_MONTHS)
    settings = yaml.safe_load(config_path().read_text()) if config_path().exists() else {}
    settings = settings or {}
    settings["schedule"] = {**(settings.get("schedule") or {}), "cron": "* * * * *"}
    (base / "beton.yaml").write_text(yaml.safe_dump(settings))
    return {
        **os.environ,
        **postgres.dagster_env(),
        "DAGSTER_HOME": str(home),
        "BETON_SOURCE_DIR": str(base / "source"),
        "BETON_WAREHOUSE": str(base / "warehouse" / "warehouse.duckdb"),
        "BETON_CONFIG": str(base / "beton.yaml"),
        "LOG_DIR": str(base / "logs"),
    }


def test_daemon_runs_the_pipeline_on_a_postgres_instance(postgres, instance_env):
    timeline = Timeline()
    log_dir = Path(instance_env["LOG_DIR"])
    with dagster_webserver(instance_env, log_dir) as web, dagster_daemon(instance_env, log_dir) as daemon:
        timeline.mark("webserver up")
        dagster = Dagster(web.url)
        try:
            _story(dagster, postgres, timeline)
        except (AssertionError, ServerError) as exc:
            raise AssertionError(
                f"{exc}\n\ntimeline: {timeline}\n--- daemon log (tail) ---\n{daemon.log_tail(6000)}"
            ) from exc
        finally:
            _quiesce(dagster)
            timeline.mark("quiet")
            print(f"\ntimeline: {timeline}")


def _story(dagster: Dagster, postgres: PostgresServer, timeline: Timeline) -> None:
    # Sensors are set and the ingest is queued while the daemon starts (GraphQL writes to Postgres; the daemon
    # picks the queued run up once it runs); the daemon's health is checked before anything waits on it.
    # Dagster 1.13 creates `default_automation_condition_sensor` STOPPED: turn on every automation sensor
    # that is off, as an operator does once at deploy time (RUNBOOK.md). Its first evaluation requests
    # nothing (eager conditions only react to updates after that), so it is safe on an empty warehouse.
    started_automation = [
        s["name"]
        for s in dagster.sensors()
        if s["sensorType"] in AUTOMATION_SENSOR_TYPES and s["sensorState"]["status"] != "RUNNING"
    ]
    for name in started_automation:
        assert dagster.start_sensor(name) == "RUNNING"

    # The sensors this story does not follow (daily monitoring, playbooks, signal partitions) are stopped:
    # left on, the daily monitoring run they request after the ingest queues ahead of `signals` on the
    # warehouse pool (its year of daily health and scores took 3 of this test's minutes on a loaded machine).
    stopped = []
    for sensor in dagster.sensors():
        off_story = sensor["sensorType"] not in AUTOMATION_SENSOR_TYPES and sensor["name"] not in STORY_SENSORS
        if off_story and sensor["sensorState"]["status"] == "RUNNING":
            dagster.stop_sensor(sensor["sensorState"]["id"])
            stopped.append(sensor["name"])
    timeline.mark("sensors set")

    # 1. The daily ingest, launched as a user launches it from the UI: queued, then started by the daemon.
    ingest_run = dagster.launch("daily_ingest_job", tags={"launched_by": "test_postgres_instance"})
    poll(dagster.daemons_healthy, DAEMON_TIMEOUT, "every required daemon to report healthy (heartbeats in Postgres)")
    timeline.mark("daemons healthy")

    # 4 (meanwhile). The schedule ticks at the first minute boundary; its run would repeat the ingest,
    # so once the tick is recorded the schedule is stopped and its run cancelled. Every wait below
    # calls schedule_ticked(), so this happens within seconds of the tick.
    scheduled: dict[str, object] = {}

    def schedule_ticked() -> bool:
        if "tick" not in scheduled:
            _, ticks = dagster.instigator_ticks("schedule", "daily_ingest_schedule")
            done = [t for t in ticks if t["status"] in ("SUCCESS", "FAILURE", "SKIPPED")]
            if done:
                scheduled["tick"] = done[-1]
                scheduled["stopped"] = dagster.stop_schedule("daily_ingest_schedule")
                for run_id in done[-1]["runIds"]:
                    scheduled.setdefault("terminated", []).append((run_id, dagster.terminate(run_id)))
                timeline.mark("schedule ticked")
        return "tick" in scheduled

    def ingest_finished() -> str | None:
        schedule_ticked()
        status = dagster.run_status(ingest_run)
        return status if status in FINISHED else None

    status = wait_for_runs(dagster, ingest_finished, [ingest_run], f"daily_ingest_job run {ingest_run} to finish")
    timeline.mark("ingest finished")
    assert status == "SUCCESS", f"daily_ingest_job run {ingest_run} ended {status}"

    # 2. The cohort sensor sees the new account_outcomes: partitions + one run over the eligible months.
    # 3. (below) signals follows by its eager automation condition once every month is counted.
    def cohort_tick() -> dict | None:
        schedule_ticked()
        _, ticks = dagster.instigator_ticks("sensor", "cohort_months_sensor")
        errors = [t["error"]["message"] for t in ticks if t["status"] == "FAILURE" and t["error"]]
        assert not errors, f"cohort_months_sensor tick failed: {errors[0][:2000]}"
        return next((t for t in ticks if t["status"] == "SUCCESS" and t["runIds"]), None)

    tick = poll(cohort_tick, SENSOR_TIMEOUT, "cohort_months_sensor to request cohort_counts_job runs")
    timeline.mark("cohort sensor ticked")
    with postgres.connect() as con, con.cursor() as cur:
        cur.execute("select partition from dynamic_partitions where partitions_def_name = 'cohort_months' order by 1")
        months = [r[0] for r in cur.fetchall()]
    assert months and len(tick["runIds"]) == 1, (months, tick)

    def cohort_runs_finished() -> list[dict] | None:
        schedule_ticked()
        runs = [r for r in dagster.runs() if r["runId"] in tick["runIds"]]
        return runs if len(runs) == len(tick["runIds"]) and all(r["status"] in FINISHED for r in runs) else None

    cohort_runs = wait_for_runs(dagster, cohort_runs_finished, tick["runIds"], "the cohort_counts_job runs to finish")
    timeline.mark("cohort runs finished")
    assert {(r["jobName"], r["status"]) for r in cohort_runs} == {("cohort_counts_job", "SUCCESS")}, cohort_runs
    (cohort_run,) = cohort_runs
    assert (
        tag(cohort_run, "dagster/asset_partition_range_start"),
        tag(cohort_run, "dagster/asset_partition_range_end"),
    ) == (months[0], months[-1])

    # Automation reacts to the cohort run's materializations, which land before the run records its end.
    last_cohort_start = max(r["startTime"] for r in cohort_runs)

    def signals_requested() -> str | None:
        """The run the automation sensor requested for `signals` once the cohort run had started (it may wait
        in the queue behind another warehouse writer: that wait is a run's, below, not the automation's)."""
        schedule_ticked()
        requested = [r for r in dagster.runs_selecting("signals") if r["creationTime"] >= last_cohort_start]
        return min(requested, key=lambda r: r["creationTime"])["runId"] if requested else None

    discovery_fallback = False
    try:
        signals_run_id = poll(signals_requested, AUTOMATION_TIMEOUT, "the automation sensor to request signals")
    except ServerError:
        discovery_fallback = True
        signals_run_id = dagster.launch("discovery_job", tags={"launched_by": "test_postgres_instance"})
    wait_for_runs(
        dagster,
        lambda: dagster.run_status(signals_run_id) in FINISHED,
        [signals_run_id],
        f"the run {signals_run_id} that materialises signals to finish",
    )
    mat = dagster.latest_materialization("signals")
    assert mat and mat["runId"] == signals_run_id, (mat, signals_run_id)
    timeline.mark("signals materialised")
    signals_run = next(r for r in dagster.runs() if r["runId"] == mat["runId"])
    assert signals_run["status"] == "SUCCESS", signals_run

    # 4. The schedule ticked (normally long before this point).
    poll(schedule_ticked, 180, "daily_ingest_schedule to tick")
    tick_data = scheduled["tick"]
    assert tick_data["status"] == "SUCCESS" and len(tick_data["runIds"]) == 1, tick_data
    assert scheduled["stopped"] == "STOPPED"
    scheduled_run = tick_data["runIds"][0]
    poll(lambda: dagster.run_status(scheduled_run) in FINISHED, 240, f"scheduled run {scheduled_run} to be cancelled")
    scheduled_run_info = next(r for r in dagster.runs() if r["runId"] == scheduled_run)
    assert tag(scheduled_run_info, "dagster/schedule_name") == "daily_ingest_schedule"
    assert scheduled_run_info["status"] == "CANCELED", scheduled_run_info

    # 5. It is all in PostgreSQL, and no step anywhere hit a DuckDB lock.
    with postgres.connect() as con, con.cursor() as cur:
        cur.execute("select run_id, pipeline_name, status from runs")
        stored = {run_id: (job, status) for run_id, job, status in cur.fetchall()}
        cur.execute(
            "select count(*) from event_logs where " + " or ".join(["event like %s"] * len(LOCK_ERRORS)),
            [f"%{text}%" for text in LOCK_ERRORS],
        )
        lock_events = cur.fetchone()[0]
        # The multiprocess executor announces each step process it starts; beton's in-process one starts none.
        cur.execute("select count(*) from event_logs where dagster_event_type like 'STEP_WORKER_START%%'")
        step_processes = cur.fetchone()[0]
        cur.execute("select type, status, count(*) from job_ticks group by 1, 2 order by 1, 2")
        tick_counts = cur.fetchall()
        stored_ticks = sum(n for _, _, n in tick_counts)
    assert stored[ingest_run] == ("daily_ingest_job", "SUCCESS")
    assert all(stored[r["runId"]] == ("cohort_counts_job", "SUCCESS") for r in cohort_runs)
    assert stored[signals_run["runId"]][1] == "SUCCESS"
    assert stored_ticks >= 2
    assert lock_events == 0, f"{lock_events} event(s) mention a DuckDB lock"
    assert step_processes == 0, f"{step_processes} step process(es) started: the runs did not use beton's executor"
    timeline.mark("checked")
    print(
        f"\nruns: {sorted(stored.values())}\nschedule tick: {tick_data['status']} run {scheduled_run} "
        f"-> {scheduled_run_info['status']}; started automation sensors: {started_automation}; stopped: {stopped}\nticks (type, status, n): {tick_counts}"
    )

    # Last, so that a broken automation still lets every other check above run.
    failed = [
        (r["jobName"], r["runId"], dagster.failed_steps(r["runId"])) for r in dagster.runs() if r["status"] == "FAILURE"
    ]
    assert not failed, (
        f"the daily cycle on a fresh instance must not fail any run: {failed} (see their event logs in the daemon log)"
    )
    assert not discovery_fallback, (
        f"no run for signals was requested by automation within {AUTOMATION_TIMEOUT} s of the last cohort run "
        f"(automation sensors started: {started_automation}); discovery_job launched by hand did it: {signals_run['runId']}. "
        "Look at the `signals` evaluations under Automation: a dependency that nothing materialises keeps an eager asset waiting."
    )
    assert tag(signals_run, "dagster/auto_materialize") == "true" or tag(signals_run, "dagster/sensor_name"), (
        signals_run["tags"]
    )


def _quiesce(dagster: Dagster, timeout: float = 90) -> None:
    """Before the servers are stopped: stop every sensor and schedule (no new runs), cancel what is still
    queued or running (other sensors' follow-up runs), and wait (bounded) until every run has ended, so
    no run worker outlives the daemon. Best effort: the processes are stopped by pid right after."""
    try:
        for sensor in dagster.sensors():
            if sensor["sensorState"]["status"] == "RUNNING":
                dagster.stop_sensor(sensor["sensorState"]["id"])
        if dagster.instigator_ticks("schedule", "daily_ingest_schedule")[0] == "RUNNING":
            dagster.stop_schedule("daily_ingest_schedule")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            unfinished = [r for r in dagster.runs() if r["status"] not in FINISHED]
            if not unfinished:
                return
            for run in unfinished:
                if run["status"] in ("QUEUED", "NOT_STARTED", "STARTING", "STARTED"):
                    dagster.terminate(run["runId"])
            time.sleep(3)
    except Exception as exc:  # noqa: BLE001 - shutdown must not hide the test's own failure
        print(f"quiesce: {exc}")
