"""Playbook sensors: decide cheaply (read-only, short lock wait), request runs; the runs send.

* `playbook_scores_sensor`: after each `account_scores` materialization (cursor = its storage id, so
  every backfilled day is seen once; the first tick starts after the newest `playbook_actions`
  materialization, so the days `beton run` already delivered are not requested again), evaluate the account playbooks on that day's scores and request
  one `playbook_delivery_job` run per playbook and day with matches (run key = `playbook:day`).
* `signal_health_sensor`: health changes in `beton.signal_health` after the cursor's day (cursor =
  that day plus the last seen health per signal; the first tick after a delivery only records the state); one run per health playbook and day with a change
  to one of its states.
* `playbook_retry_sensor`: when `retrying` (or blocked `pending`) actions are due, one send-only run.

Whatever a sensor does, the outbox's idempotency keys make a duplicate run harmless.
"""

import json
from datetime import UTC, date, datetime

import dagster as dg
import duckdb

from beton_pipeline.core.playbooks import PlaybookConfig, PlaybookConfigError, is_stale
from beton_pipeline.defs.partitions import latest_storage_id
from beton_pipeline.defs.playbooks.assets import PlaybookRunConfig
from beton_pipeline.defs.playbooks.jobs import playbook_delivery_job
from beton_pipeline.defs.resources import SettingsResource, WarehouseResource
from beton_pipeline.store import outbox, playbooks

SCORES_KEY = dg.AssetKey("account_scores")
ACTIONS_KEY = dg.AssetKey("playbook_actions")
MAX_EVENTS_PER_TICK = 50


def _run_request(playbook: str, day: date, **extra_tags: str) -> dg.RunRequest:
    tags = {
        "beton/playbook": playbook,
        "beton/day": day.isoformat(),
        **{f"beton/{k}": v for k, v in extra_tags.items()},
    }
    return dg.RunRequest(
        run_key=f"{playbook}:{day.isoformat()}",
        run_config=dg.RunConfig(
            ops={"playbook_actions": PlaybookRunConfig(playbooks=[playbook], days=[day.isoformat()])}
        ),
        tags=tags,
    )


def _delivered(context: dg.SensorEvaluationContext) -> bool:
    """Whether `playbook_actions` was ever materialised (False for a context without an instance)."""
    try:
        instance = context.instance
    except dg.DagsterInvariantViolationError:
        return False
    return latest_storage_id(instance, [ACTIONS_KEY]) is not None


def _config(settings: SettingsResource) -> PlaybookConfig | str:
    try:
        return settings.load().playbook_config()
    except (PlaybookConfigError, ValueError) as exc:
        return f"beton.yaml: {exc}"


@dg.sensor(
    job=playbook_delivery_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "After each account_scores materialization (every partition, in order): evaluate the account playbooks on "
        "that day's scores and request one delivery run per playbook and day with matches (run key playbook:day)."
    ),
)
def playbook_scores_sensor(
    context: dg.SensorEvaluationContext, warehouse: WarehouseResource, settings: SettingsResource
):
    # First tick: start after the newest delivery (e.g. `beton run`'s), which planned the scores before it.
    after = int(context.cursor) if context.cursor else latest_storage_id(context.instance, [ACTIONS_KEY])
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=SCORES_KEY, after_storage_id=after), limit=MAX_EVENTS_PER_TICK, ascending=True
    ).records
    if not records:
        return dg.SkipReason("no new account_scores materialization")
    cursor = str(records[-1].storage_id)
    config = _config(settings)
    if isinstance(config, str):
        return dg.SkipReason(config)  # cursor kept: the days are evaluated once the file is fixed
    if not config.account_playbooks:
        return dg.SensorResult(skip_reason="no account playbook enabled in beton.yaml", cursor=cursor)
    partition_days = {r.partition_key for r in records}

    def read(con: duckdb.DuckDBPyConnection) -> tuple[list[date], list[tuple[str, date, int]]]:
        latest = playbooks.latest_score_day(con)
        days = {date.fromisoformat(p[:10]) for p in partition_days if p}
        if None in partition_days and latest:  # an unpartitioned materialization: its latest day
            days.add(latest)
        # Days a delivery would only record as dry_run (a backfill of history) are not worth a run.
        days = sorted(d for d in days if not is_stale(d, latest, config.destinations.max_action_age_days))
        return days, playbooks.account_matches(con, config, days)

    found = warehouse.read_or_skip(read)
    if isinstance(found, dg.SkipReason):
        return found
    days, matches = found
    if not matches:
        shown = ", ".join(map(str, days)) or "no recent day"
        return dg.SensorResult(skip_reason=f"no account matched a playbook on {shown}", cursor=cursor)
    return dg.SensorResult(run_requests=[_run_request(p, d, matched=str(n)) for p, d, n in matches], cursor=cursor)


@dg.sensor(
    job=playbook_delivery_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "When a signal's health in beton.signal_health changes to a state a health playbook watches (degrading, "
        "broken, …), request that playbook's delivery for the day. Cursor: the last day seen and each signal's last "
        "seen health, so no change alerts twice."
    ),
)
def signal_health_sensor(context: dg.SensorEvaluationContext, warehouse: WarehouseResource, settings: SettingsResource):
    state = json.loads(context.cursor) if context.cursor else {}
    through = date.fromisoformat(state["through_day"]) if state.get("through_day") else None
    config = _config(settings)
    if isinstance(config, str):
        return dg.SkipReason(config)
    if not config.health_playbooks:
        return dg.SkipReason("no health playbook enabled in beton.yaml")
    found = warehouse.read_or_skip(lambda con: playbooks.health_requests(con, config, through))
    if isinstance(found, dg.SkipReason):
        return found
    requests, latest, last_day = found
    if not context.cursor and _delivered(context):
        requests = []  # first tick after a delivery (e.g. `beton run`'s), which acted on the latest health day
    new_state = {
        "through_day": last_day.isoformat() if last_day else None,
        "health": {**state.get("health", {}), **latest},
    }
    cursor = json.dumps(new_state, sort_keys=True)
    if not requests:
        return dg.SensorResult(skip_reason="no signal health change to alert on", cursor=cursor)
    runs = [_run_request(playbook, day, signals=",".join(ids)[:200]) for playbook, day, ids in requests]
    return dg.SensorResult(run_requests=runs, cursor=cursor)


@dg.sensor(
    job=playbook_delivery_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "When outbox actions are due again (retrying after a backoff, or pending), request one send-only delivery run "
        "(run key = the earliest due time and the count, so an unchanged backlog is not requested twice)."
    ),
)
def playbook_retry_sensor(
    context: dg.SensorEvaluationContext, warehouse: WarehouseResource, settings: SettingsResource
):
    config = _config(settings)
    if isinstance(config, str):
        return dg.SkipReason(config)
    names = [p.name for p in config.playbooks if p.enabled]
    if not names:
        return dg.SkipReason("no playbook enabled in beton.yaml")
    found = warehouse.read_or_skip(lambda con: outbox.next_due_at(con, names))
    if isinstance(found, dg.SkipReason):
        return found
    due_at, n = found
    now = datetime.now(UTC).replace(tzinfo=None)
    if not n or due_at is None or due_at > now:
        return dg.SkipReason(f"{n} action(s) waiting; none due" if n else "nothing to retry")
    return dg.RunRequest(
        run_key=f"retry:{due_at.isoformat()}:{n}",
        run_config=dg.RunConfig(ops={"playbook_actions": PlaybookRunConfig(playbooks=names, plan=False)}),
        tags={"beton/retry": str(n)},
    )
