"""Custom signals: `signals/*.yml` (conditions) and `signals/*.sql` (SQL), evaluated into account sets.

* **Loading.** The folders come from `settings.signal_dirs()` (`BETON_SIGNALS_DIR`, else `signals/` and,
  on demo data, the demo's examples). A YAML file is parsed and checked against what the marts hold
  (`core.conditions`); a SQL file holds one SELECT returning `account_id` (optionally `fired_at`),
  with optional leading comments `-- name: ...` and `-- description: ...`. Every problem names the
  file, the line where it can be told, the field and the nearest known name. Two files with the same
  definition are an error.
* **Failing alone.** A file that cannot be used (at load, or a SQL query that fails when run) is a
  `SignalProblem`: it is left out, the others are counted, and the problems are written to
  `beton.custom_signal_problems` (`refresh_custom_signals`). Whether that fails the run is the
  asset's decision (`signals.strict`).
* **Identity.** `signal_id` = `sig_` + 12 hex digits of SHA-256 of the key, where the key is
  `custom:condition:<canonical JSON>` or `custom:sql:<DuckDB's normalised SQL>`: stable across
  runs, independent of file names, comments and formatting.
* **Evaluation.** Every signal becomes one boolean per account with events, like discovery's
  candidates. Conditions read the point-in-time marts. SQL runs in the sandbox (`sql_sandbox`); when
  it returns `fired_at`, only firings strictly before the account's feature window end count (the
  point-in-time rule of discovery); without `fired_at` the SQL's author is responsible for it, and
  the row's `method` says so.
* **Firing times.** The `custom_signals` asset also writes `beton.custom_signal_firings` (account_id,
  signal_id, fired_at): one row per account (with events, in play or not) whose signal is true, for
  every custom signal loaded, enabled or not. Conditions fire by `core.conditions.firing_times_many`
  (the t-th occurrence of a counted event, the start for CRM attributes, the first subscription for
  plan attributes, the latest intent signal; `all` at its latest child, `any` at its earliest true
  child; `not` and non-monotone comparisons at the feature window end), from leaf times looked up in
  the dbt occurrence models (`store.firings.condition_leaf_times`). SQL signals fire at the query's
  `fired_at`, else at the feature window end. No firing is after the window end. `store.live_signals`
  reads the enabled ones' rows, so daily health and scores include custom signals.
* **Counts.** The `custom_signals` asset counts each signal per cohort month (eligible accounts: outcome
  known) into `beton.custom_signal_cohort_counts` (`count_custom_signals`: the same sufficient statistics as
  discovery's candidates), and again per activity band into `beton.custom_signal_stratum_counts` with the
  bands' totals in `beton.custom_signal_strata` (`custom_stratum_counts`: `core.discovery.count_by_stratum`
  on the activity of the observation window, so the same bands as discovered candidates of that month and
  window; a condition may mix windows and attributes, and the observation window is the longest window any
  of them can look at). The `signals` asset tests them together with the discovered candidates
  (`store.signals`); `store.signals.custom_signal_rows` tests one signal on its own (`beton backtest`);
  `store.backtests` backtests them per cohort month.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import scipy.sparse as sp

from beton_pipeline.core.candidates import (
    CANDIDATE_SCHEMA,
    CandidateMatrix,
    FeatureFrames,
    FeatureSpec,
    account_activity,
    signal_id,
)
from beton_pipeline.core.conditions import (
    ATTRIBUTE_TYPES,
    BoundSignal,
    Condition,
    SignalDefinition,
    SignalDefinitionError,
    Vocabulary,
    bind,
    evaluate_many,
    firing_times_many,
    parse_condition_json,
    parse_signal,
    timed_leaves,
)
from beton_pipeline.core.discovery import (
    CANDIDATE_COLUMNS,
    StratumCounts,
    cohort_counts_from_matrix,
    cohort_labels,
    count_by_stratum,
)
from beton_pipeline.settings import PROJECT_ROOT, Settings
from beton_pipeline.store.firings import FIRING_SCHEMA, condition_leaf_times
from beton_pipeline.store.sql_sandbox import SqlSignalError, normalise_sql, run_sql_signal, sandbox_connection
from beton_pipeline.store.tables import read_feature_frames, replace_rows
from beton_pipeline.warehouse import connect, table_exists

CUSTOM_COUNTS_TABLE = "beton.custom_signal_cohort_counts"
CUSTOM_STRATUM_COUNTS_TABLE = "beton.custom_signal_stratum_counts"
"""Custom signals per cohort month × activity band (the schema of beton.signal_cohort_stratum_counts). A table of
their own, not rows of the discovered one: that one is replaced month by month by the partitioned
`signal_cohort_counts`, this one as a whole by `custom_signals`, as beton.custom_signal_cohort_counts."""
CUSTOM_STRATA_TABLE = "beton.custom_signal_strata"
"""The bands' totals of `CUSTOM_STRATUM_COUNTS_TABLE` (the schema of beton.signal_cohort_strata; the observation
window only). Written with the counts, so they exist whatever windows the month's discovered candidates have."""
FIRINGS_TABLE = "beton.custom_signal_firings"
"""When each custom signal fired for each account (account_id, signal_id, fired_at): every custom signal the
last `custom_signals` materialisation loaded, enabled or not; `store.live_signals` reads the enabled ones."""
PROBLEMS_TABLE = "beton.custom_signal_problems"
"""The signal files the last `custom_signals` materialisation left out, with the reason (one row per problem)."""
CONDITION_PREFIX = "custom:condition:"
SQL_PREFIX = "custom:sql:"
SIGNAL_SUFFIXES = {".yml": "condition", ".yaml": "condition", ".sql": "sql"}
NO_FIRED_AT_NOTE = "SQL without fired_at: point in time not checked"
EXTRA_ACCOUNT_COLUMNS = ("feature_window_end_at",) + tuple(
    c for c in ATTRIBUTE_TYPES if c not in ("industry", "employee_band", "plan_interval")
)


class CustomSignalsError(ValueError):
    """One or more custom signals could not be loaded; the message lists every problem, one per line."""


@dataclass(frozen=True)
class CustomSignal:
    """A loaded custom signal. `kind` is `condition` or `sql`; `text` is its readable definition."""

    signal_id: str
    key: str
    kind: str
    name: str
    description: str | None
    text: str
    origin: str
    condition: Condition | None = None
    sql: str | None = None

    @property
    def definition(self) -> str:
        """The `beton.signals.definition` text: the name, then what it tests."""
        return f"{self.name}: {self.text}"


@dataclass(frozen=True)
class SignalProblem:
    """Why one signal file was left out: `text` reads `FILE[:LINE]: [FIELD: ]reason (did you mean ...)`."""

    file: str
    line: int | None
    text: str


@dataclass(frozen=True)
class CustomSignalsReport:
    """What loading and evaluating the custom signals gave: the signals used and the files left out."""

    signals: list[CustomSignal]
    problems: list[SignalProblem]
    directories: list[Path]
    counts: pl.DataFrame
    firings: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=FIRING_SCHEMA))
    missing_leaf_times: int = 0
    """Condition leaves true by the marts' counts without a time in the occurrence models (0 when they agree)."""
    strata: StratumCounts = field(default_factory=StratumCounts.empty)
    """Per cohort month × activity band (`custom_stratum_counts`)."""

    @property
    def files(self) -> int:
        """Signal files read (used or left out)."""
        return len(self.signals) + len(self.problems)

    def paragraph(self, strict: bool) -> str:
        """The problems for people: the first line says what happened and what to change; one line per file."""
        where = ", ".join(_display_path(d) for d in self.directories) or "no signal folder"
        n = len(self.problems)
        files = "file" if n == 1 else "files"
        head = f"custom signals: {n} of {self.files} signal {files} in {where} could not be used" + (
            " and signals.strict is true in beton.yaml, so the run stops; fix or remove them, or set "
            "signals.strict: false to run without them:"
            if strict
            else f"; {'it was' if n == 1 else 'they were'} left out and the other signals ran "
            "(signals.strict: true makes this fail the run):"
        )
        return "\n".join([head, *(f"- {p.text}" for p in self.problems)])


def problems_frame(problems: Sequence[SignalProblem]) -> pl.DataFrame:
    """Problems as rows of beton.custom_signal_problems."""
    return pl.DataFrame(
        {"file": [p.file for p in problems], "line": [p.line for p in problems], "problem": [p.text for p in problems]},
        schema={"file": pl.String, "line": pl.Int64, "problem": pl.String},
    )


# ------------------------------------------------------------------------------------------------
# Reading the marts
# ------------------------------------------------------------------------------------------------
def read_account_frames(
    con: duckdb.DuckDBPyConnection, settings: Settings, eligible_only: bool = True
) -> FeatureFrames:
    """Discovery's feature frames for every eligible account (every account with events, with
    `eligible_only=False`), with the extra point-in-time attributes conditions may use and
    `feature_window_end_at` (for SQL signals' `fired_at` and firing times)."""
    frames = read_feature_frames(con, settings.feature_windows, eligible_only=eligible_only)
    extra = con.sql(f"select account_id, {', '.join(EXTRA_ACCOUNT_COLUMNS)} from marts.account_features").pl()
    accounts = frames.accounts.join(extra, on="account_id", how="left", maintain_order="left")
    return FeatureFrames(accounts=accounts, events=frames.events, properties=frames.properties, intent=frames.intent)


def read_vocabulary(con: duckdb.DuckDBPyConnection, settings: Settings) -> Vocabulary:
    """What conditions may name: events, property values, attribute values and intent types in the marts (all accounts)."""

    def column(sql: str) -> list:
        return [r[0] for r in con.sql(sql).fetchall()]

    values = con.sql(
        "select event_name, property_name, list(distinct property_value) as property_values "
        "from marts.account_property_features group by all"
    ).fetchall()  # one row per configured property feature
    attributes = {
        name: frozenset(
            column(f"select distinct {name} from marts.account_features where {name} is not null")
            if kind != "number"
            else []
        )
        for name, kind in ATTRIBUTE_TYPES.items()
    }
    return Vocabulary(
        events=frozenset(column("select distinct event_name from marts.account_event_features")),
        properties={(event, prop): frozenset(seen) for event, prop, seen in values},
        attributes=attributes,
        intent_types=frozenset(column("select distinct signal_type from marts.account_intent_features")),
        windows=settings.feature_windows,
        observation_days=settings.windows.observation_days,
        intent_lookback_days=settings.discovery.intent_lookback_days,
    )


# ------------------------------------------------------------------------------------------------
# Loading definitions
# ------------------------------------------------------------------------------------------------
_SQL_HEADER = re.compile(r"^\s*--\s*(name|description)\s*:\s*(.*?)\s*$", re.IGNORECASE)


def _sql_header(text: str) -> dict[str, str]:
    """`-- name: ...` / `-- description: ...` from the SQL's leading comment lines."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        match = _SQL_HEADER.match(line)
        if match:
            found.setdefault(match.group(1).lower(), match.group(2))
        elif not line.strip().startswith("--"):
            break
    return found


def condition_signal(bound: BoundSignal, origin: str) -> CustomSignal:
    """A CustomSignal from a bound condition."""
    d = bound.definition
    return CustomSignal(
        bound.signal_id, bound.key, "condition", d.name, d.description, bound.text, origin, condition=bound.condition
    )


def sql_signal(sql: str, origin: str, name: str | None = None, description: str | None = None) -> CustomSignal:
    """A CustomSignal from SQL text (statically checked: one SELECT; normalised by DuckDB's parser for the key)."""
    header = _sql_header(sql)
    normalised = normalise_sql(sql)
    key = SQL_PREFIX + normalised
    short = normalised if len(normalised) <= 160 else normalised[:157] + "..."
    return CustomSignal(
        signal_id(key),
        key,
        "sql",
        name or header.get("name") or Path(origin).stem,
        description or header.get("description"),
        f"SQL {short}",
        origin,
        sql=sql,
    )


def load_definition(text: str, origin: str, kind: str, vocab: Vocabulary) -> CustomSignal:
    """One custom signal from its text: `kind` is `condition` (YAML) or `sql`."""
    if kind == "sql":
        return sql_signal(text, origin)
    return condition_signal(bind(parse_signal(text, origin), vocab), origin)


def guess_kind(text: str) -> str:
    """`sql` when the text starts (after comments) with SELECT/WITH/FROM, else `condition`."""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("--") or stripped.startswith("#"):
            continue
        return "sql" if re.match(r"^\(?\s*(select|with|from)\b", stripped, re.IGNORECASE) else "condition"
    return "condition"


def signal_files(directory: Path) -> list[Path]:
    """The signal files in `directory` (`*.yml`, `*.yaml`, `*.sql`), sorted by name."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in SIGNAL_SUFFIXES)


def read_signal_files(
    directories: Path | Sequence[Path], vocab: Vocabulary
) -> tuple[list[CustomSignal], list[SignalProblem]]:
    """Every usable signal of `directories` (in order), and a problem for each file that is not: invalid YAML or
    SQL, an unknown key, a name this data does not have (with the nearest known name), or a duplicate."""
    loaded: list[CustomSignal] = []
    problems: list[SignalProblem] = []
    seen: dict[str, str] = {}
    for directory in [directories] if isinstance(directories, Path) else directories:
        for path in signal_files(directory):
            origin = _display_path(path)
            try:
                signal = load_definition(
                    path.read_text(encoding="utf-8"), origin, SIGNAL_SUFFIXES[path.suffix.lower()], vocab
                )
            except SignalDefinitionError as exc:
                problems.append(SignalProblem(origin, exc.line, str(exc)))
                continue
            except SqlSignalError as exc:
                problems.append(sql_problem(origin, exc))
                continue
            except UnicodeDecodeError:
                problems.append(SignalProblem(origin, None, f"{origin}: not UTF-8 text"))
                continue
            if signal.signal_id in seen:
                text = (
                    f"{origin}: the same definition as {seen[signal.signal_id]} ({signal.signal_id}); keep one of them"
                )
                problems.append(SignalProblem(origin, None, text))
                continue
            seen[signal.signal_id] = origin
            loaded.append(signal)
    return loaded, problems


def sql_problem(origin: str, exc: SqlSignalError) -> SignalProblem:
    """A SQL signal's error as a problem naming its file and, when known, the line."""
    where = f"{origin}:{exc.line}" if exc.line else origin
    return SignalProblem(origin, exc.line, f"{where}: {exc}")


def load_signal_files(directory: Path, vocab: Vocabulary) -> list[CustomSignal]:
    """Every signal in `directory`; raises CustomSignalsError listing every problem (file, line, field)."""
    loaded, problems = read_signal_files(directory, vocab)
    if problems:
        raise CustomSignalsError("\n".join(p.text for p in problems))
    return loaded


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def signal_from_key(key: str, origin: str, name: str, vocab: Vocabulary) -> CustomSignal:
    """Rebuild a custom signal from its `beton.signals.candidate_key` (the key holds the whole definition)."""
    if key.startswith(CONDITION_PREFIX):
        condition = parse_condition_json(key[len(CONDITION_PREFIX) :], origin)
        bound = bind(SignalDefinition(name=name, description=None, condition=condition, source=origin), vocab)
        return condition_signal(bound, origin)
    if key.startswith(SQL_PREFIX):
        return sql_signal(key[len(SQL_PREFIX) :], origin, name=name)
    raise ValueError(f"{key!r} is not a custom signal key")


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Evaluated:
    """Signals evaluated on `frames.accounts`: `fired` is accounts × signals (bool); `notes` per signal id.
    With leaf times given to `evaluate_custom_signals`, `fired_at` is accounts × signals (datetime64[us],
    NaT where not fired) and `missing_leaf_times` is `ConditionFirings.missing_leaf_times`."""

    signals: list[CustomSignal]
    fired: np.ndarray
    notes: dict[str, str]
    fired_at: np.ndarray | None = None
    missing_leaf_times: int = 0

    def rows(self, mask: np.ndarray) -> Evaluated:
        """The same signals on the accounts where `mask` is true."""
        return Evaluated(
            self.signals,
            self.fired[mask],
            self.notes,
            None if self.fired_at is None else self.fired_at[mask],
            self.missing_leaf_times,
        )


def evaluate_custom_signals(
    signals: list[CustomSignal],
    frames: FeatureFrames,
    warehouse: Path | None,
    timeout_seconds: float = 30.0,
    problems: list[SignalProblem] | None = None,
    leaf_times: pl.DataFrame | None = None,
) -> Evaluated:
    """One boolean column per signal over `frames.accounts`: conditions on the frames, SQL in the sandbox.

    A SQL signal whose query fails raises SqlSignalError naming its file; with a `problems` list, the
    failure is appended there instead and the signal is left out of the result (the others still run).
    SQL signals open their own sandbox connection to `warehouse`: close any other connection of this
    process to the same file first (DuckDB refuses a second configuration of an open file).
    With `leaf_times` (`store.firings.condition_leaf_times` of the conditions' `timed_leaves`), the
    result also holds when each signal fired (`Evaluated.fired_at`): conditions by
    `core.conditions.firing_times_many`, SQL at its `fired_at`, else the feature window end.
    """
    fired = np.zeros((frames.accounts.height, len(signals)), dtype=bool)
    timed = leaf_times is not None
    fired_at = np.full(fired.shape, np.datetime64("NaT"), dtype="datetime64[us]") if timed else None
    missing = 0
    notes: dict[str, str] = {}
    conditions = [(i, s.condition) for i, s in enumerate(signals) if s.kind == "condition"]
    if conditions:
        columns = [i for i, _ in conditions]
        if timed:
            firings = firing_times_many([c for _, c in conditions], frames, leaf_times)
            fired[:, columns] = firings.fired
            fired_at[:, columns] = firings.fired_at
            missing = firings.missing_leaf_times
        else:
            fired[:, columns] = evaluate_many([c for _, c in conditions], frames)
    sql_signals = [(i, s) for i, s in enumerate(signals) if s.kind == "sql"]
    if sql_signals:
        if warehouse is None:
            raise SqlSignalError("SQL signals need the warehouse file")
        window_end = frames.accounts.select("account_id", pl.col("feature_window_end_at").cast(pl.Datetime("us")))
        failed: list[int] = []
        with sandbox_connection(warehouse) as con:
            for i, signal in sql_signals:
                try:
                    result = run_sql_signal(con, signal.sql, timeout_seconds)
                except SqlSignalError as exc:
                    if problems is None:
                        raise type(exc)(f"{signal.origin}: {exc}", line=exc.line) from None
                    problems.append(sql_problem(signal.origin, exc))
                    failed.append(i)
                    continue
                at = window_end.join(result.accounts, on="account_id", how="left", maintain_order="left").select(
                    pl.when(pl.col("fired_at").is_null() | (pl.col("fired_at") < pl.col("feature_window_end_at")))
                    .then(pl.coalesce("fired_at", "feature_window_end_at"))
                    .alias("at"),
                    pl.col("account_id").is_in(result.accounts.get_column("account_id").implode()).alias("returned"),
                )
                fired[:, i] = (at.get_column("returned") & at.get_column("at").is_not_null()).to_numpy()
                if timed:
                    fired_at[:, i] = np.where(
                        fired[:, i], at.get_column("at").to_numpy().astype("datetime64[us]"), np.datetime64("NaT")
                    )
                if not result.has_fired_at:
                    notes[signal.signal_id] = NO_FIRED_AT_NOTE
        if failed:
            keep = [i for i in range(len(signals)) if i not in set(failed)]
            return Evaluated(
                [signals[i] for i in keep],
                fired[:, keep],
                notes,
                None if fired_at is None else fired_at[:, keep],
                missing,
            )
    return Evaluated(signals, fired, notes, fired_at, missing)


def firings_frame(evaluated: Evaluated, frames: FeatureFrames) -> pl.DataFrame:
    """`evaluated.fired_at` as rows of beton.custom_signal_firings (account_id, signal_id, fired_at)."""
    if evaluated.fired_at is None:
        raise ValueError("evaluate_custom_signals was run without leaf times: no firing times")
    rows, columns = np.nonzero(~np.isnat(evaluated.fired_at))
    ids = np.array([s.signal_id for s in evaluated.signals], dtype=object)
    return pl.DataFrame(
        {
            "account_id": frames.accounts.get_column("account_id").to_numpy()[rows],
            "signal_id": ids[columns] if len(columns) else np.array([], dtype=object),
            "fired_at": evaluated.fired_at[rows, columns],
        },
        schema=FIRING_SCHEMA,
    )


# ------------------------------------------------------------------------------------------------
# Custom signals as per-cohort sufficient statistics: `signals` tests them in the same family
# (one Benjamini–Hochberg over every discovered candidate and every custom signal of the run).
# ------------------------------------------------------------------------------------------------
def custom_candidates(signals: list[CustomSignal]) -> pl.DataFrame:
    """The candidate columns of custom signals: kind `condition` or `sql`, a family of their own."""
    return pl.DataFrame(
        {
            "key": [s.key for s in signals],
            "signal_id": [s.signal_id for s in signals],
            "kind": [s.kind for s in signals],
            "family": [f"custom:{s.signal_id}" for s in signals],
            "definition": [s.definition for s in signals],
            "event": [None] * len(signals),
            "property": [None] * len(signals),
            "value": [None] * len(signals),
            "window_days": [None] * len(signals),
            "threshold": [None] * len(signals),
        },
        schema={**CANDIDATE_SCHEMA, "signal_id": pl.String},
    ).select(CANDIDATE_COLUMNS)


def custom_matrix(evaluated: Evaluated, frames: FeatureFrames) -> CandidateMatrix:
    """Evaluated custom signals as a candidate matrix (accounts × signals), for discovery's counting code."""
    return CandidateMatrix(
        account_ids=frames.accounts.get_column("account_id").to_numpy(),
        candidates=custom_candidates(evaluated.signals),
        matrix=sp.csr_matrix(evaluated.fired.astype(np.float64)),
    )


def custom_cohort_counts(evaluated: Evaluated, frames: FeatureFrames) -> pl.DataFrame:
    """Per cohort month and custom signal: the same sufficient statistics as `beton.signal_cohort_counts`,
    plus `note` (e.g. SQL without fired_at). One sparse product per cohort month."""
    counts = cohort_counts_from_matrix(
        custom_matrix(evaluated, frames),
        cohort_labels(frames),
        frames.accounts.get_column("converted").to_numpy().astype(bool),
        frames.accounts.get_column("arr").fill_null(0).to_numpy().astype(np.float64),
        keep_empty=True,
    )
    notes = pl.DataFrame(
        {"signal_id": list(evaluated.notes), "note": list(evaluated.notes.values())},
        schema={"signal_id": pl.String, "note": pl.String},
    )
    return counts.join(notes, on="signal_id", how="left")


def custom_stratum_counts(
    evaluated: Evaluated, frames: FeatureFrames, spec: FeatureSpec, n_bands: int
) -> StratumCounts:
    """Per cohort month × activity band and custom signal: holders and their conversions, with the bands' totals.

    `core.discovery.count_by_stratum` with every signal on the observation window's activity
    (`core.candidates.account_activity`: all events of the account's first `spec.observation_days` days), cut
    per cohort month into `n_bands` bands (`activity_bands`). On the same accounts (a month's eligible ones)
    these are exactly the bands of discovered candidates of that month on that window (attributes, intent,
    first-N-days candidates with N = observation_days), so a custom condition equal to a discovered candidate
    gets the same adjusted figures. Why the observation window: a condition may combine events of
    different windows with attributes; everything it reads is known within the observation window."""
    matrix = custom_matrix(evaluated, frames)
    return count_by_stratum(
        matrix.matrix,
        matrix.candidates.get_column("key").to_numpy(),
        np.full(matrix.n_candidates, spec.observation_days, dtype=np.int64),
        account_activity(frames, spec),
        cohort_labels(frames),
        frames.accounts.get_column("converted").to_numpy().astype(bool),
        n_bands,
    )


def compute_custom_cohort_counts(
    warehouse: Path, settings: Settings, directories: Path | Sequence[Path], timeout_seconds: float = 30.0
) -> CustomSignalsReport:
    """Load every signal file of `directories`, evaluate the usable ones on the eligible accounts and count
    them per cohort month (and per activity band: `custom_stratum_counts`). A file that cannot be used is a
    problem of the report, never an exception."""
    dirs = [directories] if isinstance(directories, Path) else list(directories)
    with connect(warehouse, read_only=True) as con:
        vocab = read_vocabulary(con, settings)
        signals, problems = read_signal_files(dirs, vocab)
        if not signals:
            return CustomSignalsReport(signals, problems, dirs, pl.DataFrame())
        frames = read_account_frames(con, settings, eligible_only=False)
        leaves = timed_leaves([s.condition for s in signals if s.kind == "condition"])
        leaf_times = condition_leaf_times(con, leaves)
    evaluated = evaluate_custom_signals(signals, frames, warehouse, timeout_seconds, problems, leaf_times)
    eligible = frames.accounts.get_column("is_eligible").fill_null(False).to_numpy().astype(bool)
    eligible_frames = FeatureFrames(
        accounts=frames.accounts.filter(pl.Series(eligible)),
        events=frames.events,
        properties=frames.properties,
        intent=frames.intent,
    )
    counts, strata = pl.DataFrame(), StratumCounts.empty()
    if evaluated.signals:
        counts = custom_cohort_counts(evaluated.rows(eligible), eligible_frames)
        strata = custom_stratum_counts(
            evaluated.rows(eligible), eligible_frames, settings.feature_spec(), settings.discovery.activity_strata
        )
    problems.sort(key=lambda p: (p.file, p.line or 0))  # load-time and run-time problems, file by file
    return CustomSignalsReport(
        evaluated.signals,
        problems,
        dirs,
        counts,
        firings_frame(evaluated, frames),
        evaluated.missing_leaf_times,
        strata,
    )


def write_custom_cohort_counts(con: duckdb.DuckDBPyConnection, counts: pl.DataFrame) -> None:
    """Replace every row of beton.custom_signal_cohort_counts with `counts` (empty: the table is emptied)."""
    if counts.height:
        replace_rows(con, CUSTOM_COUNTS_TABLE, counts, "true")
    elif table_exists(con, *CUSTOM_COUNTS_TABLE.split(".")):
        con.execute(f"delete from {CUSTOM_COUNTS_TABLE}")


def write_custom_stratum_counts(con: duckdb.DuckDBPyConnection, strata: StratumCounts) -> None:
    """Replace every row of beton.custom_signal_stratum_counts and beton.custom_signal_strata (none: kept, empty)."""
    replace_rows(con, CUSTOM_STRATUM_COUNTS_TABLE, strata.counts, "true")
    replace_rows(con, CUSTOM_STRATA_TABLE, strata.strata, "true")


def read_custom_stratum_counts(con: duckdb.DuckDBPyConnection, months: set[str]) -> StratumCounts | None:
    """The custom signals' per-band counts and band totals of `months`; None when the `custom_signals` asset
    has not written them (a warehouse counted before custom signals were stratified: their rows are then
    not adjusted until it runs again)."""
    if not (
        table_exists(con, *CUSTOM_STRATA_TABLE.split("."))
        and table_exists(con, *CUSTOM_STRATUM_COUNTS_TABLE.split("."))
    ):
        return None
    wanted = sorted(months)
    where = "where list_contains(?, cohort_month)"
    return StratumCounts(
        con.sql(f"select * from {CUSTOM_STRATUM_COUNTS_TABLE} {where}", params=[wanted]).pl(),
        con.sql(f"select * from {CUSTOM_STRATA_TABLE} {where}", params=[wanted]).pl(),
    )


def write_custom_firings(con: duckdb.DuckDBPyConnection, firings: pl.DataFrame) -> None:
    """Replace every row of beton.custom_signal_firings with `firings` (none: the table is kept, empty)."""
    replace_rows(con, FIRINGS_TABLE, firings.cast(FIRING_SCHEMA).select(list(FIRING_SCHEMA)), "true")


def write_problems(con: duckdb.DuckDBPyConnection, problems: Sequence[SignalProblem]) -> None:
    """Replace every row of beton.custom_signal_problems (no problem: the table is kept, empty)."""
    replace_rows(con, PROBLEMS_TABLE, problems_frame(problems), "true")


def read_problems(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The problems the last `custom_signals` materialisation recorded (none before the first)."""
    if not table_exists(con, *PROBLEMS_TABLE.split(".")):
        return []
    return [r[0] for r in con.sql(f"select problem from {PROBLEMS_TABLE} order by file, line").fetchall()]


def refresh_custom_signals(
    warehouse: Path, settings: Settings, directories: Path | Sequence[Path], timeout_seconds: float = 30.0
) -> CustomSignalsReport:
    """What the `custom_signals` asset does: load and evaluate the signals of `directories` (reading only, then
    the sandbox), then replace beton.custom_signal_cohort_counts, beton.custom_signal_stratum_counts,
    beton.custom_signal_strata, beton.custom_signal_firings and beton.custom_signal_problems.
    Files that cannot be used are left out and listed in the report; whether that fails the run is the
    caller's decision (`signals.strict`)."""
    report = compute_custom_cohort_counts(warehouse, settings, directories, timeout_seconds)
    with connect(warehouse) as con:
        write_custom_cohort_counts(con, report.counts)
        write_custom_stratum_counts(con, report.strata)
        write_custom_firings(con, report.firings)
        write_problems(con, report.problems)
    return report


def count_custom_signals(
    warehouse: Path, settings: Settings, directories: Path | Sequence[Path], timeout_seconds: float = 30.0
) -> list[CustomSignal]:
    """`refresh_custom_signals`, strictly: raises CustomSignalsError listing every file left out. Returns the signals."""
    report = refresh_custom_signals(warehouse, settings, directories, timeout_seconds)
    if report.problems:
        raise CustomSignalsError(report.paragraph(strict=True))
    return report.signals
