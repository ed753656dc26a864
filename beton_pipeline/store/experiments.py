"""Experiments defined in the app, warehouse side: their definitions, their statuses and every decision.

* `beton.experiments`: one row per experiment defined in `beton serve` — the `core.playbooks.Experiment` fields
  (its period as `period_start` / `period_end`), the hypothesis, the owner, the current status, who created it and
  when. Written only by the app (`create_experiment`, `change_status`), never recomputed by a run.
* `beton.experiment_decisions`: every status change (`from_status` NULL: created as Draft) with who, when and why,
  the experiment's decision log. Rows are only appended.

beton.yaml's experiments are not stored: they are Running for as long as beton.yaml lists them, and a name in
beton.yaml hides an app experiment of the same name (beton.yaml wins, as the readouts do). `find_experiment` is
the lookup the tracking endpoint uses (by name or flag, beton.yaml's first); `read_experiment_readout` reads out
one experiment as the `experiment_readouts` asset does (`store.readouts.experiment_counts` and
`core.readouts.experiment_readout_from_counts`), so an app experiment has a readout as soon as its exposures are
in the warehouse. Both tables are created when first written (reads of a warehouse without them see none).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb

from beton_pipeline.core.experiments import (
    CONFIG_STATUS,
    INITIAL_STATUS,
    READ_OUT_STATUSES,
    ExperimentRefused,
    Intake,
    check_transition,
    check_unused,
)
from beton_pipeline.core.playbooks import Experiment, PlaybookConfig
from beton_pipeline.core.readouts import ExperimentReadout, experiment_readout_from_counts
from beton_pipeline.store.readouts import experiment_counts
from beton_pipeline.warehouse import table_exists, transaction

EXPERIMENTS_TABLE = "beton.experiments"
DECISIONS_TABLE = "beton.experiment_decisions"
CONFIG_SOURCE, APP_SOURCE = "beton.yaml", "app"
"""Where an experiment is defined."""

EXPERIMENTS_DDL = f"""
create schema if not exists beton;
create table if not exists {EXPERIMENTS_TABLE} (
    name varchar not null,
    flag varchar not null,
    goal_event varchar not null,
    control varchar not null,
    variants varchar[] not null,  -- control first
    weights double[] not null,  -- empty: equal shares
    conversion_window_days integer,
    period_start date,
    period_end date,
    hypothesis varchar not null,
    owner varchar not null,
    status varchar not null,
    created_at timestamp not null,
    created_by varchar not null
);
create table if not exists {DECISIONS_TABLE} (
    experiment varchar not null,
    from_status varchar,  -- null: the experiment was created
    to_status varchar not null,
    decided_by varchar not null,
    decided_at timestamp not null,
    why varchar
);
"""
EXPOSURE_TABLES = (("intermediate", "int_experiment_exposures"), ("intermediate", "int_events_resolved"))
"""What a readout reads (built by `beton run`)."""


class UnknownExperimentError(LookupError):
    """No experiment of that name in beton.yaml or the app; the message names the ones there are."""


@dataclass(frozen=True)
class ExperimentEntry:
    """What the tracking endpoint needs of an experiment: its keys, its variants (empty: any), its goal, its
    status and where it is defined (`beton.yaml` or `app`)."""

    name: str
    flag: str
    variants: tuple[str, ...]
    goal_event: str
    status: str
    source: str


@dataclass(frozen=True)
class DefinedExperiment:
    """An experiment with its workflow: `source` beton.yaml (status Running, no hypothesis or owner) or app."""

    experiment: Experiment
    source: str
    status: str
    hypothesis: str | None = None
    owner: str | None = None
    created_at: datetime | None = None
    created_by: str | None = None

    @property
    def entry(self) -> ExperimentEntry:
        e = self.experiment
        return ExperimentEntry(e.name, e.flag, e.variants, e.goal_event, self.status, self.source)

    def as_dict(self) -> dict:
        """The definition (`Experiment`'s fields), status, source, hypothesis, owner and creation as JSON values."""
        return {
            **self.experiment.model_dump(mode="json"),
            "status": self.status,
            "source": self.source,
            "hypothesis": self.hypothesis,
            "owner": self.owner,
            "created_at": self.created_at,
            "created_by": self.created_by,
        }


def _app_experiments(con: duckdb.DuckDBPyConnection) -> list[DefinedExperiment]:
    if not table_exists(con, "beton", "experiments"):
        return []
    out = []
    for row in con.sql(f"select * from {EXPERIMENTS_TABLE} order by created_at, name").pl().to_dicts():
        experiment = Experiment(
            name=row["name"],
            flag=row["flag"],
            goal_event=row["goal_event"],
            control=row["control"],
            variants=tuple(row["variants"]),
            weights=tuple(row["weights"]),
            conversion_window_days=row["conversion_window_days"],
            start=row["period_start"],
            end=row["period_end"],
        )
        out.append(
            DefinedExperiment(
                experiment,
                APP_SOURCE,
                row["status"],
                row["hypothesis"],
                row["owner"],
                row["created_at"],
                row["created_by"],
            )
        )
    return out


def defined_experiments(con: duckdb.DuckDBPyConnection, config: PlaybookConfig) -> list[DefinedExperiment]:
    """beton.yaml's experiments (Running), then the app's in the order they were created (those whose name
    beton.yaml now uses are left out: beton.yaml wins)."""
    configured = configured_experiments(config)
    names = {e.name for e in config.experiments}
    return configured + [d for d in _app_experiments(con) if d.experiment.name not in names]


def defined_experiment(con: duckdb.DuckDBPyConnection, config: PlaybookConfig, name: str) -> DefinedExperiment:
    """The experiment called `name`; UnknownExperimentError naming the experiments there are otherwise."""
    every = defined_experiments(con, config)
    for defined in every:
        if defined.experiment.name == name:
            return defined
    have = ", ".join(d.experiment.name for d in every) or "none yet"
    raise UnknownExperimentError(f"no experiment named {name!r} (there are: {have}); /experiments lists them")


def find_experiment(con: duckdb.DuckDBPyConnection, config: PlaybookConfig, key: str) -> ExperimentEntry | None:
    """The experiment whose name, else whose flag, is `key` (beton.yaml's before the app's); None when none is."""
    every = defined_experiments(con, config)
    for match in (lambda d: d.experiment.name == key, lambda d: d.experiment.flag == key):
        for defined in every:
            if match(defined):
                return defined.entry
    return None


def started_app_experiments(con: duckdb.DuckDBPyConnection, config: PlaybookConfig) -> tuple[Experiment, ...]:
    """The app's experiments that have started and beton.yaml does not name: Running, Readout or Shipped, or Killed
    after it ran (a Draft or Review killed never had exposures to read out). Those the `experiment_readouts`
    asset reads out beside beton.yaml's."""
    ran = {row["experiment"] for row in experiment_decisions(con) if row["to_status"] == "Running"}
    return tuple(
        d.experiment
        for d in defined_experiments(con, config)
        if d.source == APP_SOURCE
        and d.status in READ_OUT_STATUSES
        and (d.status != "Killed" or d.experiment.name in ran)
    )


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def configured_experiments(config: PlaybookConfig) -> list[DefinedExperiment]:
    """beton.yaml's experiments, each Running as long as beton.yaml lists it."""
    return [DefinedExperiment(e, CONFIG_SOURCE, CONFIG_STATUS) for e in config.experiments]


def _every(con: duckdb.DuckDBPyConnection, config: PlaybookConfig) -> list[DefinedExperiment]:
    """beton.yaml's experiments and every app experiment, a shadowed one included (its keys stay taken)."""
    return configured_experiments(config) + _app_experiments(con)


def create_experiment(
    con: duckdb.DuckDBPyConnection, config: PlaybookConfig, intake: Intake, by: str, now: datetime | None = None
) -> DefinedExperiment:
    """Store a new experiment as Draft (and its creation in the decision log), written whole or not at all;
    ExperimentRefused when its name or flag is another experiment's (beton.yaml's or the app's)."""
    con.execute(EXPERIMENTS_DDL)
    e, now = intake.experiment, now or _now()
    with transaction(con):
        others = [(d.experiment, "beton.yaml" if d.source == CONFIG_SOURCE else "the app") for d in _every(con, config)]
        check_unused(e, others)
        con.execute(
            f"insert into {EXPERIMENTS_TABLE} values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                e.name,
                e.flag,
                e.goal_event,
                e.control,
                list(e.variants),
                list(e.weights),
                e.conversion_window_days,
                e.start,
                e.end,
                intake.hypothesis,
                intake.owner,
                INITIAL_STATUS,
                now,
                by,
            ],
        )
        con.execute(
            f"insert into {DECISIONS_TABLE} values (?, NULL, ?, ?, ?, ?)", [e.name, INITIAL_STATUS, by, now, "created"]
        )
    return DefinedExperiment(e, APP_SOURCE, INITIAL_STATUS, intake.hypothesis, intake.owner, now, by)


def change_status(
    con: duckdb.DuckDBPyConnection,
    config: PlaybookConfig,
    name: str,
    status: str,
    by: str,
    why: str,
    now: datetime | None = None,
) -> DefinedExperiment:
    """Move the app experiment `name` to `status` and log the decision (who, when, why), in one transaction.
    TransitionRefused (naming the allowed next statuses) for a move the workflow does not allow,
    ExperimentRefused for a beton.yaml experiment, UnknownExperimentError for an unknown name."""
    with transaction(con):
        defined = defined_experiment(con, config, name)
        if defined.source == CONFIG_SOURCE:
            raise ExperimentRefused(
                f"{name} is defined in beton.yaml: it is {CONFIG_STATUS} while beton.yaml lists it, and its status "
                "is changed there, not in the app"
            )
        check_transition(defined.status, status)
        now = now or _now()
        con.execute(f"update {EXPERIMENTS_TABLE} set status = ? where name = ?", [status, name])
        con.execute(
            f"insert into {DECISIONS_TABLE} values (?, ?, ?, ?, ?, ?)", [name, defined.status, status, by, now, why]
        )
    return DefinedExperiment(
        defined.experiment,
        APP_SOURCE,
        status,
        defined.hypothesis,
        defined.owner,
        defined.created_at,
        defined.created_by,
    )


def experiment_decisions(con: duckdb.DuckDBPyConnection, name: str | None = None) -> list[dict]:
    """The decision log (oldest first): every experiment's, or `name`'s."""
    if not table_exists(con, "beton", "experiment_decisions"):
        return []
    where, params = ("where experiment = ?", [name]) if name is not None else ("", [])
    frame = con.sql(f"select * from {DECISIONS_TABLE} {where} order by decided_at, to_status", params=params).pl()
    return frame.to_dicts()


def last_decisions(con: duckdb.DuckDBPyConnection) -> dict[str, dict]:
    """Each app experiment's latest decision."""
    return {row["experiment"]: row for row in experiment_decisions(con)}


def exposures_so_far(con: duckdb.DuckDBPyConnection, experiments: Sequence[Experiment]) -> dict[str, int | None]:
    """Users exposed to each experiment's flag in its period so far (name → count; those still inside their
    conversion window included); None for each before `beton run` has built the exposures."""
    if not table_exists(con, *EXPOSURE_TABLES[0]):
        return {e.name: None for e in experiments}
    return {
        e.name: con.sql(
            f"select count(distinct distinct_id) from {'.'.join(EXPOSURE_TABLES[0])} where feature_flag = $flag "
            "and ($period_start is null or exposed_at >= cast($period_start as timestamp)) "
            "and ($period_end is null or exposed_at < cast($period_end as timestamp))",
            params={"flag": e.flag, "period_start": e.start, "period_end": e.end},
        ).fetchall()[0][0]
        for e in experiments
    }


def read_experiment_readout(
    con: duckdb.DuckDBPyConnection, experiment: Experiment, confidence_level: float
) -> ExperimentReadout | None:
    """One experiment read out from the warehouse as the `experiment_readouts` asset does (reads only); None
    before `beton run` has built the exposures and the resolved events."""
    if not all(table_exists(con, schema, table) for schema, table in EXPOSURE_TABLES):
        return None
    counts, diagnostics = experiment_counts(con, experiment)
    return experiment_readout_from_counts(experiment, counts, diagnostics, confidence_level)
