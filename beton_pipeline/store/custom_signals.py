"""Custom signals: `signals/*.yml` (conditions) and `signals/*.sql` (SQL), evaluated into account sets.

* **Loading.** A YAML file is parsed and checked against what the marts hold
  (`core.conditions`); a SQL file holds one SELECT returning `account_id` (optionally `fired_at`),
  with optional leading comments `-- name: ...` and `-- description: ...`. Every problem names the
  file (and, for YAML, the line and field). Two files with the same definition are an error.
* **Identity.** `signal_id` = `sig_` + 12 hex digits of SHA-256 of the key, where the key is
  `custom:condition:<canonical JSON>` or `custom:sql:<DuckDB's normalised SQL>`: stable across
  runs, independent of file names, comments and formatting.
* **Evaluation.** Every signal becomes one boolean per eligible account (accounts with a known
  outcome), like discovery's candidates. Conditions read the point-in-time marts. SQL runs in the
  sandbox (`sql_sandbox`); when it returns `fired_at`, only firings strictly before the account's
  feature window end count (the point-in-time rule of discovery); without `fired_at` the SQL's
  author is responsible for it, and the row's `method` says so.
* **Statistics.** The `custom_signals` asset counts each signal per cohort month
  (`custom_cohort_counts`, the same sufficient statistics as discovery's candidates); the `signals`
  asset tests them together with the discovered candidates: same temporal split, tests, holdout
  replication, projected ARR and recommendation rule, and one Benjamini–Hochberg family over
  everything tested in the run. `custom_signal_rows` does the same for one signal on its own
  (`beton backtest`, which writes nothing), where q = p.
* Discovered signals are re-evaluated for backtests with discovery's own candidate code
  (`discovered_fired`), so their counts are exactly discovery's.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import scipy.sparse as sp

from beton_pipeline.core.backtest import BACKTEST_SCHEMA, backtest
from beton_pipeline.core.candidates import FeatureFrames, build_candidate_matrix, candidate_hits, signal_id
from beton_pipeline.core.conditions import (
    ATTRIBUTE_TYPES,
    BoundSignal,
    Condition,
    SignalDefinition,
    SignalDefinitionError,
    Vocabulary,
    bind,
    evaluate_many,
    parse_condition_json,
    parse_signal,
)
from beton_pipeline.core.discovery import (
    CANDIDATE_COLUMNS,
    HoldoutSplit,
    attach_holdout,
    choose_holdout,
    evaluate,
    projected_arr,
    recommend,
    span_days,
)
from beton_pipeline.core.stats import benjamini_hochberg
from beton_pipeline.settings import PROJECT_ROOT, Settings
from beton_pipeline.store.signals import SIGNAL_COLUMNS, SIGNALS_SCHEMA, SIGNALS_TABLE, latest_overrides
from beton_pipeline.store.sql_sandbox import SqlSignalError, normalise_sql, run_sql_signal, sandbox_connection
from beton_pipeline.store.tables import read_feature_frames, replace_rows
from beton_pipeline.warehouse import connect, table_exists

BACKTESTS_TABLE = "beton.signal_backtests"
CONDITION_PREFIX = "custom:condition:"
SQL_PREFIX = "custom:sql:"
SIGNAL_SUFFIXES = {".yml": "condition", ".yaml": "condition", ".sql": "sql"}
NO_FIRED_AT_NOTE = "SQL without fired_at: point in time not checked"
EXTRA_ACCOUNT_COLUMNS = ("feature_window_end_at",) + tuple(c for c in ATTRIBUTE_TYPES if c not in ("industry", "employee_band", "plan_interval"))
BACKTESTS_SCHEMA: dict[str, pl.DataType] = {
    "signal_id": pl.String(), "source": pl.String(), "definition": pl.String(), "origin": pl.String(),
    **{k: v for k, v in BACKTEST_SCHEMA.items() if k != "signal_id"},
    "verdict": pl.String(), "verdict_reason": pl.String(), "periods_with_data": pl.Int64(), "periods_lift_above_1": pl.Int64(),
    "heterogeneity_p": pl.Float64(), "confidence_level": pl.Float64(), "as_of": pl.Datetime("us"),
}
"""beton.signal_backtests, column by column (one row per signal × cohort month; core/backtest.py explains each)."""


def signals_dir() -> Path:
    """`BETON_SIGNALS_DIR` if set, else `signals/` at the project root."""
    return Path(os.environ.get("BETON_SIGNALS_DIR") or PROJECT_ROOT / "signals").resolve()


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


# ------------------------------------------------------------------------------------------------
# Reading the marts
# ------------------------------------------------------------------------------------------------
def read_account_frames(con: duckdb.DuckDBPyConnection, settings: Settings) -> FeatureFrames:
    """Discovery's feature frames for every eligible account, with the extra point-in-time attributes
    conditions may use and `feature_window_end_at` (for SQL signals' `fired_at`)."""
    frames = read_feature_frames(con, settings.feature_windows)
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
        name: frozenset(column(f"select distinct {name} from marts.account_features where {name} is not null") if kind != "number" else [])
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
    return CustomSignal(bound.signal_id, bound.key, "condition", d.name, d.description, bound.text, origin, condition=bound.condition)


def sql_signal(sql: str, origin: str, name: str | None = None, description: str | None = None) -> CustomSignal:
    """A CustomSignal from SQL text (statically checked: one SELECT; normalised by DuckDB's parser for the key)."""
    header = _sql_header(sql)
    normalised = normalise_sql(sql)
    key = SQL_PREFIX + normalised
    short = normalised if len(normalised) <= 160 else normalised[:157] + "..."
    return CustomSignal(
        signal_id(key), key, "sql", name or header.get("name") or Path(origin).stem, description or header.get("description"),
        f"SQL {short}", origin, sql=sql,
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


def load_signal_files(directory: Path, vocab: Vocabulary) -> list[CustomSignal]:
    """Every signal in `directory`; raises CustomSignalsError listing every problem (file, line, field)."""
    loaded: list[CustomSignal] = []
    problems: list[str] = []
    seen: dict[str, str] = {}
    for path in signal_files(directory):
        origin = _display_path(path)
        try:
            signal = load_definition(path.read_text(encoding="utf-8"), origin, SIGNAL_SUFFIXES[path.suffix.lower()], vocab)
        except (SignalDefinitionError, SqlSignalError) as exc:
            problems.append(str(exc) if isinstance(exc, SignalDefinitionError) else f"{origin}: {exc}")
            continue
        except UnicodeDecodeError:
            problems.append(f"{origin}: not UTF-8 text")
            continue
        if signal.signal_id in seen:
            problems.append(f"{origin}: the same definition as {seen[signal.signal_id]} ({signal.signal_id}); keep one of them")
            continue
        seen[signal.signal_id] = origin
        loaded.append(signal)
    if problems:
        raise CustomSignalsError("\n".join(problems))
    return loaded


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def signal_from_key(key: str, origin: str, name: str, vocab: Vocabulary) -> CustomSignal:
    """Rebuild a custom signal from its `beton.signals.candidate_key` (the key holds the whole definition)."""
    if key.startswith(CONDITION_PREFIX):
        condition = parse_condition_json(key[len(CONDITION_PREFIX):], origin)
        bound = bind(SignalDefinition(name=name, description=None, condition=condition, source=origin), vocab)
        return condition_signal(bound, origin)
    if key.startswith(SQL_PREFIX):
        return sql_signal(key[len(SQL_PREFIX):], origin, name=name)
    raise ValueError(f"{key!r} is not a custom signal key")


# ------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Evaluated:
    """Signals evaluated on `frames.accounts`: `fired` is accounts × signals (bool); `notes` per signal id."""

    signals: list[CustomSignal]
    fired: np.ndarray
    notes: dict[str, str]


def evaluate_custom_signals(
    signals: list[CustomSignal], frames: FeatureFrames, warehouse: Path | None, timeout_seconds: float = 30.0
) -> Evaluated:
    """One boolean column per signal over `frames.accounts`: conditions on the frames, SQL in the sandbox.

    SQL signals open their own sandbox connection to `warehouse`: close any other connection of this
    process to the same file first (DuckDB refuses a second configuration of an open file).
    """
    fired = np.zeros((frames.accounts.height, len(signals)), dtype=bool)
    notes: dict[str, str] = {}
    conditions = [(i, s.condition) for i, s in enumerate(signals) if s.kind == "condition"]
    if conditions:
        fired[:, [i for i, _ in conditions]] = evaluate_many([c for _, c in conditions], frames)
    sql_signals = [(i, s) for i, s in enumerate(signals) if s.kind == "sql"]
    if sql_signals:
        if warehouse is None:
            raise SqlSignalError("SQL signals need the warehouse file")
        window_end = frames.accounts.select("account_id", "feature_window_end_at")
        with sandbox_connection(warehouse) as con:
            for i, signal in sql_signals:
                try:
                    result = run_sql_signal(con, signal.sql, timeout_seconds)
                except SqlSignalError as exc:
                    raise type(exc)(f"{signal.origin}: {exc}") from None
                ok = (
                    result.accounts.join(window_end, on="account_id", how="inner")
                    .filter(pl.col("fired_at").is_null() | (pl.col("fired_at") < pl.col("feature_window_end_at")))
                    .get_column("account_id")
                )
                fired[:, i] = frames.accounts.get_column("account_id").is_in(ok.implode()).to_numpy()
                if not result.has_fired_at:
                    notes[signal.signal_id] = NO_FIRED_AT_NOTE
    return Evaluated(signals=signals, fired=fired, notes=notes)


def _pair_parts(key: str, singles: set[str]) -> tuple[str, str] | None:
    """Split `pair:A&B` into its two single keys (names may contain `&`: the split whose halves are known wins)."""
    body = key[len("pair:"):]
    for i, ch in enumerate(body):
        if ch == "&" and body[:i] in singles and body[i + 1:] in singles:
            return body[:i], body[i + 1:]
    return None


def discovered_fired(frames: FeatureFrames, keys: list[str], settings: Settings) -> np.ndarray:
    """accounts × keys booleans for discovered candidates (singles and pairs), with discovery's own candidate code."""
    hits = candidate_hits(frames, settings.feature_spec())
    singles = set(hits.get_column("key").unique().to_list())
    needed = {k for k in keys if not k.startswith("pair:")}
    parts = {k: _pair_parts(k, singles) for k in keys if k.startswith("pair:")}
    for pair in parts.values():
        if pair:
            needed.update(pair)
    matrix = build_candidate_matrix(frames, hits.filter(pl.col("key").is_in(sorted(needed))))
    column = {k: i for i, k in enumerate(matrix.candidates.get_column("key").to_list())}
    dense = matrix.matrix.tocsc()
    out = np.zeros((frames.accounts.height, len(keys)), dtype=bool)

    def col(k: str) -> np.ndarray:
        if k not in column:  # fired for no eligible account
            return np.zeros(frames.accounts.height, dtype=bool)
        return dense[:, column[k]].toarray().ravel() > 0

    for j, key in enumerate(keys):  # one column per requested signal (a handful), not per account
        if key.startswith("pair:"):
            pair = parts[key]
            out[:, j] = col(pair[0]) & col(pair[1]) if pair else False
        else:
            out[:, j] = col(key)
    return out


# ------------------------------------------------------------------------------------------------
# Statistics (beton.signals rows) and backtests
# ------------------------------------------------------------------------------------------------
def cohort_labels(frames: FeatureFrames) -> np.ndarray:
    """Each account's cohort month as `YYYY-MM` (the partition keys of `signal_cohort_counts`)."""
    return frames.accounts.get_column("cohort_month").dt.strftime("%Y-%m").to_numpy().astype(str)


def temporal_split(frames: FeatureFrames, holdout_fraction: float) -> HoldoutSplit:
    """Discovery's split of the eligible cohorts (the same `choose_holdout` on the same cohort sizes)."""
    months = cohort_labels(frames)
    labels, counts = np.unique(months, return_counts=True)
    return choose_holdout(pl.DataFrame({"cohort_month": labels.tolist(), "n_eligible": counts.astype(np.int64)}), holdout_fraction)


def _counts(fired: np.ndarray, rows: np.ndarray, converted: np.ndarray, arr: np.ndarray) -> dict[str, np.ndarray]:
    x = sp.csr_matrix(fired[rows].astype(np.float64))
    y = converted[rows].astype(np.float64)
    arr_y = np.where(y > 0, np.nan_to_num(arr[rows].astype(np.float64)), 0.0)
    right = np.column_stack([np.ones_like(y), y, arr_y])
    counts = np.asarray(x.T @ right) if fired.shape[1] else np.zeros((0, 3))
    return {
        "n_with": np.rint(counts[:, 0]).astype(np.int64),
        "conversions_with": np.rint(counts[:, 1]).astype(np.int64),
        "arr_with": counts[:, 2],
        "n_total": np.full(fired.shape[1], int(len(y)), dtype=np.int64),
        "conversions_total": np.full(fired.shape[1], int(y.sum()), dtype=np.int64),
    }


def custom_signal_rows(evaluated: Evaluated, frames: FeatureFrames, settings: Settings) -> tuple[pl.DataFrame, HoldoutSplit]:
    """The beton.signals statistics of custom signals, on discovery's temporal split (module docstring)."""
    config = settings.discovery_config()
    split = temporal_split(frames, settings.windows.holdout_fraction)
    months = cohort_labels(frames)
    converted = frames.accounts.get_column("converted").to_numpy().astype(bool)
    arr = frames.accounts.get_column("arr").fill_null(0).to_numpy().astype(np.float64)
    signals = evaluated.signals
    candidates = custom_candidates(signals)
    disc_rows = np.isin(months, list(split.discovery_months))
    hold_rows = np.isin(months, list(split.holdout_months))
    disc = candidates.with_columns(pl.Series(k, v) for k, v in _counts(evaluated.fired, disc_rows, converted, arr).items())
    hold = candidates.with_columns(pl.Series(k, v) for k, v in _counts(evaluated.fired, hold_rows, converted, arr).items())
    tested = evaluate(disc, config.confidence_level)
    tested = tested.with_columns(pl.Series("q_value", benjamini_hochberg(tested.get_column("p_value").to_numpy()), dtype=pl.Float64))
    tested = attach_holdout(tested, hold if split.holdout_months else pl.DataFrame(), config.confidence_level)
    tested = tested.with_columns(projected_arr(tested, span_days(split.discovery_months), config.acv))
    out = recommend(tested, config).with_columns(pl.lit("custom").alias("source"))
    n = len(signals)
    notes = pl.DataFrame({"signal_id": list(evaluated.notes), "_note": list(evaluated.notes.values())}, schema={"signal_id": pl.String, "_note": pl.String})
    out = out.join(notes, on="signal_id", how="left").with_columns(
        pl.format(
            "{}; q: Benjamini-Hochberg over {} custom signal(s) of this run; holdout: {} later cohort months",
            "method", pl.lit(n), pl.lit(len(split.holdout_months)),
        ).alias("method")
    ).with_columns(
        pl.when(pl.col("_note").is_not_null()).then(pl.format("{}; {}", "method", "_note")).otherwise(pl.col("method")).alias("method"),
        pl.when(pl.col("n_with") == 0).then(pl.lit("fired for no account in the discovery cohorts"))
        .when(pl.col("n_without") == 0).then(pl.lit("fired for every account in the discovery cohorts"))
        .otherwise(pl.col("recommendation_reason")).alias("recommendation_reason"),
    ).drop("_note")
    return out, split


def signals_table_rows(rows: pl.DataFrame, overrides: pl.DataFrame, confidence_level: float, as_of) -> pl.DataFrame:
    """`custom_signal_rows` in beton.signals' schema, `enabled` from the recommendation unless a user override says otherwise."""
    frame = rows.with_columns(
        pl.col("key").alias("candidate_key"),
        pl.lit("[]").alias("alternatives"),
        pl.lit(confidence_level).alias("confidence_level"),
        pl.lit(as_of, pl.Datetime("us")).alias("as_of"),
    )
    frame = frame.with_columns(pl.col(c).fill_nan(None) for c in frame.columns if frame.schema[c] == pl.Float64)
    frame = frame.join(overrides.select("signal_id", pl.col("enabled").alias("enabled_override")), on="signal_id", how="left")
    frame = frame.with_columns(pl.coalesce(pl.col("enabled_override"), pl.col("recommendation") == "enable").alias("enabled"))
    frame = frame.with_columns(pl.lit(None).alias(c) for c in SIGNAL_COLUMNS if c not in frame.columns)  # e.g. pair parts
    return frame.select(SIGNAL_COLUMNS).cast(SIGNALS_SCHEMA).sort("signal_id")


def backtest_rows(
    fired: np.ndarray, signal_ids: list[str], frames: FeatureFrames, settings: Settings, split: HoldoutSplit,
    meta: pl.DataFrame, as_of,
) -> pl.DataFrame:
    """beton.signal_backtests rows for the signals of `fired` (accounts × signals), labelled from `meta`
    (signal_id, source, definition, origin)."""
    periods = backtest(
        fired,
        signal_ids,
        cohort_labels(frames),
        frames.accounts.get_column("converted").to_numpy().astype(bool),
        frames.accounts.get_column("arr").fill_null(0).to_numpy().astype(np.float64),
        settings.backtest_config(),
        holdout_periods=split.holdout_months,
    )
    rows = meta.join(periods, on="signal_id", how="inner").with_columns(
        pl.lit(settings.thresholds.confidence_level).alias("confidence_level"),
        pl.lit(as_of, pl.Datetime("us")).alias("as_of"),
    )
    return rows.select(list(BACKTESTS_SCHEMA)).cast(BACKTESTS_SCHEMA).sort("signal_id", "cohort_month")


def write_backtests(con: duckdb.DuckDBPyConnection, rows: pl.DataFrame, signal_ids: list[str]) -> None:
    """Replace exactly the beton.signal_backtests rows of `signal_ids` with `rows` (one transaction)."""
    frame = rows.select(list(BACKTESTS_SCHEMA)).cast(BACKTESTS_SCHEMA) if rows.height else pl.DataFrame(schema=BACKTESTS_SCHEMA)
    placeholders = ", ".join("?" for _ in signal_ids) or "null"
    replace_rows(con, BACKTESTS_TABLE, frame, f"signal_id in ({placeholders})", list(signal_ids))
    # Signals that no longer get a backtest (disabled, or their file removed) leave no stale rows behind.
    con.execute(
        f"delete from {BACKTESTS_TABLE} where coalesce(origin, '') <> 'launchpad' and signal_id not in "
        "(select signal_id from beton.signals where source = 'custom' or (source = 'discovered' and enabled))"
    )


def as_of_time(con: duckdb.DuckDBPyConnection):
    """The run's as-of time (the marts' `as_of_at`)."""
    return con.sql("select max(as_of_at) from marts.account_outcomes").fetchall()[0][0]


BACKTEST_META_SCHEMA = {"signal_id": pl.String, "source": pl.String, "definition": pl.String, "origin": pl.String}


def backtest_meta(signals: list[CustomSignal], source: str = "custom") -> pl.DataFrame:
    """The label columns of beton.signal_backtests for custom signals."""
    return pl.DataFrame(
        {"signal_id": [s.signal_id for s in signals], "source": [source] * len(signals),
         "definition": [s.definition for s in signals], "origin": [s.origin for s in signals]},
        schema=BACKTEST_META_SCHEMA,
    )


@dataclass(frozen=True)
class SingleBacktest:
    """One custom signal, tested and backtested without writing anything: its beton.signals row and its periods."""

    signal: CustomSignal
    signal_row: pl.DataFrame
    periods: pl.DataFrame
    split: HoldoutSplit


def backtest_definition(text: str, origin: str, kind: str, settings: Settings, warehouse: Path, timeout_seconds: float = 30.0) -> SingleBacktest:
    """Load one definition (`kind`: `condition`, `sql` or `auto`), evaluate it on the eligible accounts, and
    compute its beton.signals row (q over this one signal) and its per-period backtest.

    Raises SignalDefinitionError / SqlSignalError (SqlSignalRefused) with a one-line reason.
    """
    kind = guess_kind(text) if kind == "auto" else kind
    with connect(warehouse, read_only=True) as con:
        vocab = read_vocabulary(con, settings) if kind == "condition" else None
        frames = read_account_frames(con, settings)
        overrides = latest_overrides(con)
        as_of = as_of_time(con)
    signal = load_definition(text, origin, kind, vocab)
    evaluated = evaluate_custom_signals([signal], frames, warehouse, timeout_seconds)
    rows, split = custom_signal_rows(evaluated, frames, settings)
    signal_row = signals_table_rows(rows, overrides, settings.thresholds.confidence_level, as_of)
    periods = backtest_rows(evaluated.fired, [signal.signal_id], frames, settings, split, backtest_meta([signal]), as_of)
    return SingleBacktest(signal=signal, signal_row=signal_row, periods=periods, split=split)


# ------------------------------------------------------------------------------------------------
# What the assets run (reads first, then the sandbox; the caller opens the writer last)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BacktestRun:
    """Backtest rows for the requested signal ids, and the ids no longer in beton.signals (their rows are to be removed)."""

    rows: pl.DataFrame
    missing: list[str]


def compute_backtests(warehouse: Path, settings: Settings, signal_ids: list[str], timeout_seconds: float = 30.0) -> BacktestRun:
    """Backtest the given beton.signals ids (discovered with discovery's candidate code, custom from their key)."""
    with connect(warehouse, read_only=True) as con:
        wanted = pl.DataFrame({"signal_id": sorted(set(signal_ids))}, schema={"signal_id": pl.String})
        con.register("_wanted", wanted.to_arrow())
        known = con.sql(
            f"select s.signal_id, s.source, s.candidate_key, s.definition from {SIGNALS_TABLE} s join _wanted using (signal_id) order by s.signal_id"
        ).pl() if table_exists(con, "beton", "signals") else pl.DataFrame(schema={"signal_id": pl.String, "source": pl.String, "candidate_key": pl.String, "definition": pl.String})
        con.unregister("_wanted")
        frames = read_account_frames(con, settings)
        custom_rows = known.filter(pl.col("source") == "custom")
        vocab = read_vocabulary(con, settings) if custom_rows.height else None
        as_of = as_of_time(con)
    missing = sorted(set(signal_ids) - set(known.get_column("signal_id").to_list()))
    discovered = known.filter(pl.col("source") == "discovered")
    custom = [
        signal_from_key(r["candidate_key"], f"beton.signals {r['signal_id']}", r["definition"], vocab)
        for r in custom_rows.iter_rows(named=True)
    ]
    parts, ids = [], []
    if discovered.height:
        parts.append(discovered_fired(frames, discovered.get_column("candidate_key").to_list(), settings))
        ids += discovered.get_column("signal_id").to_list()
    if custom:
        parts.append(evaluate_custom_signals(custom, frames, warehouse, timeout_seconds).fired)
        ids += [r["signal_id"] for r in custom_rows.iter_rows(named=True)]
    if not ids:
        return BacktestRun(rows=pl.DataFrame(schema=BACKTESTS_SCHEMA), missing=missing)
    fired = np.column_stack(parts)
    split = temporal_split(frames, settings.windows.holdout_fraction)
    meta = known.select(
        "signal_id", "source", "definition",
        pl.when(pl.col("source") == "custom").then(pl.lit("signals folder")).otherwise(pl.lit("discovery")).alias("origin"),
    )
    rows = backtest_rows(fired, ids, frames, settings, split, meta, as_of)
    return BacktestRun(rows=rows, missing=missing)


# ------------------------------------------------------------------------------------------------
# Builder help: what conditions can name (`beton events`)
# ------------------------------------------------------------------------------------------------
def event_catalog(con: duckdb.DuckDBPyConnection, settings: Settings, top: int = 10) -> dict:
    """Events, property values, attributes and intent types in the marts, with counts and top values.

    events: per event, the accounts with it and its count before the feature window end;
    properties: per configured property feature, its top values (accounts, events);
    raw_property_keys: property keys seen on resolved events (usable after adding them to
    `discovery.property_features`); attributes: top values (strings) or min/median/max (numbers);
    intent: accounts with each type before start and up to the window end; windows and lookback.
    """
    events = con.sql(
        "select event_name as event, count(distinct account_id) as accounts, sum(n_in_window) as events "
        "from marts.account_event_features group by 1 order by accounts desc, event"
    ).pl()
    properties = con.sql(
        f"""select event, property, value, accounts, events from (
              select event_name as event, property_name as property, property_value as value,
                     count(distinct account_id) as accounts, sum(n_in_window) as events,
                     row_number() over (partition by event_name, property_name order by count(distinct account_id) desc, property_value) as rk
              from marts.account_property_features group by 1, 2, 3)
            where rk <= {int(top)} order by event, property, accounts desc, value"""
    ).pl()
    configured = {(p.event, p.property) for p in settings.discovery.property_features}
    raw_keys = con.sql(
        """select event_name as event, key as property, count(*) as events from (
              select event_name, unnest(json_keys(properties)) as key from intermediate.int_events_resolved
              where account_id is not null and properties is not null and json_type(properties) = 'OBJECT')
            group by 1, 2 order by events desc, event, property"""
    ).pl() if table_exists(con, "intermediate", "int_events_resolved") else pl.DataFrame(schema={"event": pl.String, "property": pl.String, "events": pl.Int64})
    usable = pl.DataFrame(
        {"event": [e for e, _ in configured], "property": [p for _, p in configured], "usable": [True] * len(configured)},
        schema={"event": pl.String, "property": pl.String, "usable": pl.Boolean},
    )
    raw_keys = raw_keys.join(usable, on=["event", "property"], how="left", maintain_order="left").with_columns(pl.col("usable").fill_null(False))
    attributes = []
    for name, kind in ATTRIBUTE_TYPES.items():
        if kind == "number":
            row = con.sql(f"select count({name}), min({name}), median({name}), max({name}) from marts.account_features").fetchall()[0]
            attributes.append({"attribute": name, "type": kind, "accounts": row[0], "min": row[1], "median": row[2], "max": row[3]})
        else:
            values = con.sql(
                f"select cast({name} as varchar), count(*) from marts.account_features where {name} is not null group by 1 order by 2 desc, 1 limit {int(top)}"
            ).fetchall()
            attributes.append({"attribute": name, "type": kind, "accounts": sum(n for _, n in values), "top_values": [{"value": v, "accounts": n} for v, n in values]})
    intent = con.sql(
        "select signal_type as intent, count(*) filter (where n_before_start > 0) as accounts_before_start, "
        "count(*) filter (where n_before_window_end > 0) as accounts_before_window_end "
        "from marts.account_intent_features group by 1 order by 2 desc, 1"
    ).pl()
    return {
        "windows_days": list(settings.feature_windows),
        "observation_days": settings.windows.observation_days,
        "intent_lookback_days": settings.discovery.intent_lookback_days,
        "events": events.to_dicts(),
        "properties": properties.to_dicts(),
        "raw_property_keys": raw_keys.to_dicts(),
        "attributes": attributes,
        "intent": intent.to_dicts(),
    }


# ------------------------------------------------------------------------------------------------
# Custom signals as per-cohort sufficient statistics: `signals` tests them in the same family
# (one Benjamini–Hochberg over every discovered candidate and every custom signal of the run).
# ------------------------------------------------------------------------------------------------
CUSTOM_COUNTS_TABLE = "beton.custom_signal_cohort_counts"


def custom_candidates(signals: list[CustomSignal]) -> pl.DataFrame:
    """The candidate columns of custom signals: kind `condition` or `sql`, a family of their own."""
    return pl.DataFrame(
        {
            "key": [s.key for s in signals],
            "signal_id": [s.signal_id for s in signals],
            "kind": [s.kind for s in signals],
            "family": [f"custom:{s.signal_id}" for s in signals],
            "definition": [s.definition for s in signals],
            "event": [None] * len(signals), "property": [None] * len(signals), "value": [None] * len(signals),
            "window_days": [None] * len(signals), "threshold": [None] * len(signals),
        },
        schema={"key": pl.String, "signal_id": pl.String, "kind": pl.String, "family": pl.String, "definition": pl.String,
                "event": pl.String, "property": pl.String, "value": pl.String, "window_days": pl.Int64, "threshold": pl.Int64},
    ).select(CANDIDATE_COLUMNS)


def custom_cohort_counts(evaluated: Evaluated, frames: FeatureFrames) -> pl.DataFrame:
    """Per cohort month and custom signal: the same sufficient statistics as `beton.signal_cohort_counts`,
    plus `note` (e.g. SQL without fired_at). One sparse product per cohort month."""
    from beton_pipeline.core.candidates import CandidateMatrix
    from beton_pipeline.core.discovery import cohort_counts_from_matrix

    candidates = custom_candidates(evaluated.signals)
    matrix = CandidateMatrix(
        account_ids=frames.accounts.get_column("account_id").to_numpy(),
        candidates=candidates,
        matrix=sp.csr_matrix(evaluated.fired.astype(np.float64)),
    )
    counts = cohort_counts_from_matrix(
        matrix,
        cohort_labels(frames),
        frames.accounts.get_column("converted").to_numpy().astype(bool),
        frames.accounts.get_column("arr").fill_null(0).to_numpy().astype(np.float64),
        keep_empty=True,
    )
    notes = pl.DataFrame({"signal_id": list(evaluated.notes), "note": list(evaluated.notes.values())}, schema={"signal_id": pl.String, "note": pl.String})
    return counts.join(notes, on="signal_id", how="left")


def compute_custom_cohort_counts(warehouse: Path, settings: Settings, directory: Path, timeout_seconds: float = 30.0) -> tuple[list[CustomSignal], pl.DataFrame]:
    """Load every signal file of `directory`, evaluate it on the eligible accounts, count per cohort month."""
    with connect(warehouse, read_only=True) as con:
        vocab = read_vocabulary(con, settings)
        frames = read_account_frames(con, settings)
    signals = load_signal_files(directory, vocab)
    if not signals:
        return signals, pl.DataFrame()
    evaluated = evaluate_custom_signals(signals, frames, warehouse, timeout_seconds)
    return signals, custom_cohort_counts(evaluated, frames)
