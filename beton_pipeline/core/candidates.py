"""Candidate signals: every behaviour, property, attribute and intent condition discovery tests.

A candidate is a yes/no condition on an account, evaluated on point-in-time features (the marts
`account_event_features`, `account_property_features`, `account_intent_features`, `account_features`):

| kind             | condition (all strictly before the account's feature window end)             | family            |
|------------------|-------------------------------------------------------------------------------|-------------------|
| `event_count`    | event E happened ≥ t times in the first d days (t: see below, d ∈ windows)     | `event:E`         |
| `event_property` | event E with property P = v happened ≥ t times in the first d days            | `property:E:P=v`  |
| `attribute`      | CRM/billing attribute = value (industry, employee band, plan interval)        | `attribute:A=v`   |
| `intent`         | a buying signal of type T in the lookback before start (or up to window end)  | `intent:T`        |
| `pair`           | both of two single candidates from different families (AND)                   | `pair:F1&F2`      |

Each candidate has a canonical `key` (stable across runs: the same definition always gives the same
key and `signal_id`). `candidate_matrix` returns the accounts × candidates boolean matrix in
sparse (CSR) form; building it loops only over the (few) configured windows and thresholds, never over
accounts or candidates.

Count thresholds t are either an explicit list (`discovery.count_thresholds: [1, 2, 3, 5, 10]`) or
`auto`: every point of `count_grid` up to the largest count in the data (every integer up to
`DENSE_COUNT_LIMIT`, then points `COUNT_GRID_RATIO` apart). The grid itself does not depend on the
data, so every cohort month counts the same candidates; `core.discovery.choose_count_thresholds` then
picks, per event and window, the ones worth testing from the distribution of counts among accounts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp

ATTRIBUTE_COLUMNS = ("industry", "employee_band", "plan_interval")
"""Account attributes turned into one candidate per observed value."""

PROPERTY_THRESHOLDS = (1, 2, 3)
"""Count thresholds for property-value candidates (values are rarer than events)."""

AUTO = "auto"
"""`FeatureSpec.count_thresholds` when thresholds come from the data (`count_grid`, then discovery's choice)."""

DENSE_COUNT_LIMIT = 10
"""With `auto` thresholds, every integer 1..this is a candidate threshold (small counts: each step matters)."""

COUNT_GRID_RATIO = 1.25
"""Above `DENSE_COUNT_LIMIT`, `auto` grid points are about this factor apart (13, 16, 20, 24, 31, 38, 48, …)."""


def count_grid(max_count: int) -> tuple[int, ...]:
    """The `auto` count thresholds up to `max_count`: 1, 2, …, DENSE_COUNT_LIMIT, then round(10 · 1.25^k).

    Fixed (it does not depend on which accounts are counted), so a threshold means the same candidate
    in every cohort month; only its length follows the data's largest count.
    """
    dense = range(1, min(DENSE_COUNT_LIMIT, max(max_count, 0)) + 1)
    if max_count <= DENSE_COUNT_LIMIT:
        return tuple(dense)
    steps = int(np.floor(np.log(max_count / DENSE_COUNT_LIMIT) / np.log(COUNT_GRID_RATIO))) + 1
    sparse = np.floor(DENSE_COUNT_LIMIT * COUNT_GRID_RATIO ** np.arange(1, steps + 1) + 0.5).astype(np.int64)
    return tuple(dense) + tuple(int(t) for t in np.unique(sparse) if DENSE_COUNT_LIMIT < t <= max_count)


@dataclass(frozen=True)
class FeatureFrames:
    """The point-in-time feature tables discovery reads, as polars frames.

    accounts: account_id, cohort_month, started_at, converted (bool), arr, industry, employee_band, plan_interval
    events: account_id, event_name, n_first_<d>d for each window d
    properties: account_id, event_name, property_name, property_value, n_first_<d>d
    intent: account_id, signal_type, n_before_start, n_before_window_end
    """

    accounts: pl.DataFrame
    events: pl.DataFrame
    properties: pl.DataFrame
    intent: pl.DataFrame


@dataclass(frozen=True)
class CandidateMatrix:
    """Accounts × candidates. `matrix[i, j]` is True when candidate j fired for account i."""

    account_ids: np.ndarray
    candidates: pl.DataFrame  # key, signal_id, kind, family, definition, event, property, value, window_days, threshold
    matrix: sp.csr_matrix

    @property
    def n_candidates(self) -> int:
        return self.candidates.height

    def take_rows(self, rows: np.ndarray) -> CandidateMatrix:
        """The same candidates for the accounts at positions `rows` only (e.g. one cohort month)."""
        return CandidateMatrix(self.account_ids[rows], self.candidates, self.matrix[rows])


def signal_id(key: str) -> str:
    """A short stable id for a candidate key: `sig_` + the first 12 hex digits of its SHA-256."""
    return "sig_" + hashlib.sha256(key.encode()).hexdigest()[:12]


def signal_ids(keys: pl.Series) -> pl.Series:
    """`signal_id` for every key (hashing is per distinct key; there are few)."""
    return keys.map_elements(signal_id, return_dtype=pl.String)


def pair_key(a: str, b: str) -> str:
    """The key of the AND-pair of two single keys: `pair:A&B`, the smaller key first."""
    return f"pair:{a}&{b}" if a < b else f"pair:{b}&{a}"


def pair_parts(key: str, singles: set[str]) -> tuple[str, str] | None:
    """The two single keys of a pair key `pair:A&B`, or None when no split gives two keys of `singles`.

    Keys may contain `&` themselves (a property value such as `/a&b`): the split whose halves are both
    known keys wins (for two distinct keys there is exactly one: `pair_parts(pair_key(a, b), {a, b})`
    is `(min(a, b), max(a, b))`).
    """
    body = key.removeprefix("pair:")
    for i, ch in enumerate(body):  # a pair key is a few dozen characters
        if ch == "&" and body[:i] in singles and body[i + 1 :] in singles:
            return body[:i], body[i + 1 :]
    return None


CANDIDATE_SCHEMA = {
    "key": pl.String,
    "kind": pl.String,
    "family": pl.String,
    "definition": pl.String,
    "event": pl.String,
    "property": pl.String,
    "value": pl.String,
    "window_days": pl.Int64,
    "threshold": pl.Int64,
}
"""The columns that define a candidate (its `signal_id` is derived from `key`)."""


@dataclass(frozen=True)
class _Block:
    """One kind's candidates (`CANDIDATE_SCHEMA` rows that fire for at least one account) and where they fire:
    `rows[i]` is an account's position in `frames.accounts`, `cols[i]` a row of `candidates`."""

    candidates: pl.DataFrame
    rows: np.ndarray
    cols: np.ndarray


_NO_HIT = np.iinfo(np.int64).min
"""A missing count: below every threshold (thresholds are ≥ 1)."""


def _empty_block() -> _Block:
    return _Block(pl.DataFrame(schema=CANDIDATE_SCHEMA), np.empty(0, np.int64), np.empty(0, np.int64))


def _account_rows(frames: FeatureFrames) -> pl.DataFrame:
    """account_id → its position in `frames.accounts` (`_row`)."""
    return frames.accounts.select("account_id").with_row_index("_row").with_columns(pl.col("_row").cast(pl.Int64))


def _wanted(candidates: pl.DataFrame, keys: frozenset[str] | None) -> np.ndarray:
    """Per candidate row: kept (`keys` is None, or its key is in `keys`)."""
    if keys is None:
        return np.ones(candidates.height, dtype=bool)
    return candidates.get_column("key").is_in(list(keys)).to_numpy()


def _count_block(
    frame: pl.DataFrame,
    rows_of: pl.DataFrame,
    windows: tuple[int, ...],
    thresholds: tuple[int, ...],
    kind: str,
    observation_days: int,
    keys: frozenset[str] | None,
) -> _Block:
    """Event-count (`kind` "event_count") or property-value ("event_property") candidates: one per family,
    window d and threshold t that some account reaches (n_first_<d>d ≥ t).

    The family (event, or event + property + value) becomes an integer code; a (code, window, threshold)
    lookup gives each candidate's row; the coordinates come from one comparison per window and threshold
    over the count columns. Descriptions (keys, definitions) are built once per candidate, never per hit."""
    is_property = kind == "event_property"
    family_columns = ["event_name", "property_name", "property_value"] if is_property else ["event_name"]
    columns = [f"n_first_{d}d" for d in windows]
    if frame.is_empty() or not thresholds or not windows:
        return _empty_block()
    located = frame.join(rows_of, on="account_id", how="inner")
    families = located.select(family_columns).unique().sort(family_columns).with_row_index("_family")
    located = located.join(families, on=family_columns, how="inner").select(
        "_row", pl.col("_family").cast(pl.Int64), *(pl.col(c).fill_null(_NO_HIT).cast(pl.Int64) for c in columns)
    )
    if located.is_empty():
        return _empty_block()
    largest = located.group_by("_family").agg(pl.col(c).max() for c in columns).sort("_family")
    most = np.full((families.height, len(windows)), _NO_HIT, dtype=np.int64)
    most[largest.get_column("_family").to_numpy()] = largest.select(columns).to_numpy()
    # Every (family, window, threshold) some account reaches: the candidates, in that order.
    fam, win, thr = np.nonzero(most[:, :, None] >= np.asarray(thresholds, dtype=np.int64)[None, None, :])
    if fam.size == 0:
        return _empty_block()
    days = np.asarray(windows, dtype=np.int64)[win]
    threshold = np.asarray(thresholds, dtype=np.int64)[thr]
    found = families[fam.astype(np.int64)].with_columns(
        pl.Series("window_days", days), pl.Series("threshold", threshold)
    )
    if is_property:
        subject = pl.format("`{}` with {} = {}", "event_name", "property_name", "property_value")
        family = pl.format("property:{}:{}={}", "event_name", "property_name", "property_value")
    else:
        subject = pl.format("`{}`", "event_name")
        family = pl.format("event:{}", "event_name")
    window_text = (
        pl.when(pl.col("window_days") == observation_days)
        .then(pl.format("in the first {} days (observation window)", "window_days"))
        .otherwise(pl.format("in the first {} days", "window_days"))
    )
    candidates = found.select(
        pl.concat_str([family, pl.format(":first_{}d:>={}", "window_days", "threshold")]).alias("key"),
        pl.lit(kind).alias("kind"),
        family.alias("family"),
        pl.format("{} >= {} {}", subject, "threshold", window_text).alias("definition"),
        pl.col("event_name").alias("event"),
        (pl.col("property_name") if is_property else pl.lit(None, pl.String)).alias("property"),
        (pl.col("property_value") if is_property else pl.lit(None, pl.String)).alias("value"),
        "window_days",
        "threshold",
    )
    lookup = np.full((families.height, len(windows), len(thresholds)), -1, dtype=np.int64)
    kept = _wanted(candidates, keys)
    lookup[fam[kept], win[kept], thr[kept]] = np.arange(candidates.height, dtype=np.int64)[kept]
    account_rows = located.get_column("_row").to_numpy()
    family_codes = located.get_column("_family").to_numpy()
    rows, cols = [], []
    for w, column in enumerate(columns):
        counts = located.get_column(column).to_numpy()
        for t, value in enumerate(thresholds):
            if not (lookup[:, w, t] >= 0).any():
                continue
            reached = counts >= value
            col = lookup[family_codes[reached], w, t]
            keep = col >= 0
            rows.append(account_rows[reached][keep])
            cols.append(col[keep])
    return _keep(candidates, _concat(rows), _concat(cols), keys)


def _attribute_block(accounts: pl.DataFrame, keys: frozenset[str] | None) -> _Block:
    """One candidate per observed value of each `ATTRIBUTE_COLUMNS` column."""
    blocks = []
    for column in ATTRIBUTE_COLUMNS:
        if column not in accounts.columns:
            continue
        values = accounts.select(pl.col(column).cast(pl.String).alias("value")).with_row_index("_row")
        values = values.filter(pl.col("value").is_not_null())
        distinct = values.select("value").unique().sort("value").with_row_index("_code")
        candidates = distinct.select(
            pl.format("attribute:{}={}", pl.lit(column), "value").alias("key"),
            pl.lit("attribute").alias("kind"),
            pl.format("attribute:{}={}", pl.lit(column), "value").alias("family"),
            pl.format("{} = {}", pl.lit(column), "value").alias("definition"),
            pl.lit(None, pl.String).alias("event"),
            pl.lit(column).alias("property"),
            "value",
            pl.lit(None, pl.Int64).alias("window_days"),
            pl.lit(None, pl.Int64).alias("threshold"),
        )
        located = values.join(distinct, on="value", how="inner")
        blocks.append(
            _keep(
                candidates,
                located.get_column("_row").cast(pl.Int64).to_numpy(),
                located.get_column("_code").cast(pl.Int64).to_numpy(),
                keys,
            )
        )
    return _stack(blocks)


def _intent_block(
    intent: pl.DataFrame, rows_of: pl.DataFrame, lookback_days: int, keys: frozenset[str] | None
) -> _Block:
    """Per buying-signal type: one candidate for the lookback before start, one up to the window end."""
    if intent.is_empty():
        return _empty_block()
    located = intent.join(rows_of, on="account_id", how="inner")
    blocks = []
    for column, suffix, definition in (
        (
            "n_before_start",
            "before_start",
            pl.format("{} in the {} days before start", "signal_type", pl.lit(lookback_days)),
        ),
        (
            "n_before_window_end",
            "before_window_end",
            pl.format(
                "{} from {} days before start to the end of the observation window",
                "signal_type",
                pl.lit(lookback_days),
            ),
        ),
    ):
        fired = located.filter(pl.col(column) >= 1)
        distinct = fired.select("signal_type").unique().sort("signal_type").with_row_index("_code")
        candidates = distinct.select(
            pl.format("intent:{}:{}", "signal_type", pl.lit(suffix)).alias("key"),
            pl.lit("intent").alias("kind"),
            pl.format("intent:{}", "signal_type").alias("family"),
            definition.alias("definition"),
            pl.lit(None, pl.String).alias("event"),
            pl.lit("signal_type").alias("property"),
            pl.col("signal_type").alias("value"),
            pl.lit(lookback_days, pl.Int64).alias("window_days"),
            pl.lit(1, pl.Int64).alias("threshold"),
        )
        located_codes = fired.join(distinct, on="signal_type", how="inner")
        blocks.append(
            _keep(
                candidates,
                located_codes.get_column("_row").to_numpy(),
                located_codes.get_column("_code").cast(pl.Int64).to_numpy(),
                keys,
            )
        )
    return _stack(blocks)


def _keep(candidates: pl.DataFrame, rows: np.ndarray, cols: np.ndarray, keys: frozenset[str] | None) -> _Block:
    """A block of `candidates` with hits (`rows`, `cols`), restricted to `keys` (when given)."""
    kept = _wanted(candidates, keys)
    if kept.all():
        return _Block(candidates, rows, cols)
    renumber = np.full(candidates.height, -1, dtype=np.int64)
    renumber[kept] = np.arange(int(kept.sum()), dtype=np.int64)
    cols = renumber[cols]
    return _Block(candidates.filter(pl.Series(kept)), rows[cols >= 0], cols[cols >= 0])


def _stack(blocks: list[_Block]) -> _Block:
    """Blocks one after another: each block's candidate rows are offset by the candidates before it."""
    if not blocks:
        return _empty_block()
    offsets = np.cumsum([0] + [b.candidates.height for b in blocks])
    return _Block(
        pl.concat([b.candidates for b in blocks], how="vertical_relaxed"),
        _concat([b.rows for b in blocks]),
        _concat([b.cols + offset for b, offset in zip(blocks, offsets, strict=False)]),
    )


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64, copy=False) if parts else np.empty(0, np.int64)


@dataclass(frozen=True)
class FeatureSpec:
    """How candidates are built: windows, count thresholds (a list, or `AUTO`: `count_grid`), the observation
    window and intent lookback, and the events left out. Built from settings by `Settings.feature_spec()`;
    the lead-score model stores it as JSON."""

    windows: tuple[int, ...]
    count_thresholds: tuple[int, ...] | str
    observation_days: int
    intent_lookback_days: int
    excluded_events: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(
            {
                "windows": list(self.windows),
                "count_thresholds": self.count_thresholds
                if self.count_thresholds == AUTO
                else list(self.count_thresholds),
                "observation_days": self.observation_days,
                "intent_lookback_days": self.intent_lookback_days,
                "excluded_events": list(self.excluded_events),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        raw = json.loads(text)
        thresholds = raw["count_thresholds"]
        return cls(
            windows=tuple(int(d) for d in raw["windows"]),
            count_thresholds=AUTO if thresholds == AUTO else tuple(int(t) for t in thresholds),
            observation_days=int(raw["observation_days"]),
            intent_lookback_days=int(raw["intent_lookback_days"]),
            excluded_events=tuple(raw.get("excluded_events", ())),
        )


def event_thresholds(events: pl.DataFrame, spec: FeatureSpec) -> tuple[int, ...]:
    """The count thresholds event candidates are built at: the explicit list, or `count_grid` up to the
    largest count in any window of `events`."""
    if spec.count_thresholds != AUTO:
        return tuple(spec.count_thresholds)
    columns = [f"n_first_{d}d" for d in spec.windows if f"n_first_{d}d" in events.columns]
    if events.is_empty() or not columns:
        return ()
    largest = events.select(pl.max_horizontal(pl.col(c).max() for c in columns)).item()
    return count_grid(int(largest or 0))


def candidate_matrix(frames: FeatureFrames, spec: FeatureSpec, keys: Iterable[str] | None = None) -> CandidateMatrix:
    """The sparse accounts × candidates matrix for `frames.accounts` (row order kept): every single candidate
    (no pairs) that fires for at least one account, or only those whose key is in `keys`; one column per
    key, sorted by key.

    Built from integer codes, never from per-hit strings: each kind's candidates are described once
    (`_count_block`, `_attribute_block`, `_intent_block`) and their hits are (account position, candidate
    row) integer pairs. At 10M events (77,793 eligible accounts, 8.1M hits) the long form of one string row
    per hit took 5.0 GB of memory; these pairs take 16 bytes a hit."""
    wanted = None if keys is None else frozenset(keys)
    rows_of = _account_rows(frames)
    events = frames.events.filter(~pl.col("event_name").is_in(list(spec.excluded_events)))
    block = _stack(
        [
            _count_block(
                events,
                rows_of,
                spec.windows,
                event_thresholds(events, spec),
                "event_count",
                spec.observation_days,
                wanted,
            ),
            _count_block(
                frames.properties,
                rows_of,
                spec.windows,
                PROPERTY_THRESHOLDS,
                "event_property",
                spec.observation_days,
                wanted,
            ),
            _attribute_block(frames.accounts, wanted),
            _intent_block(frames.intent, rows_of, spec.intent_lookback_days, wanted),
        ]
    )
    local = block.candidates.with_row_index("_local")
    candidates = local.unique(subset="key", keep="first", maintain_order=True).sort("key").drop("_local")
    column_of = (
        local.select("_local", "key")
        .join(candidates.select("key").with_row_index("_col"), on="key", how="inner")
        .sort("_local")
        .get_column("_col")
        .cast(pl.Int64)
        .to_numpy()
    )
    candidates = candidates.with_columns(signal_ids(candidates.get_column("key")).alias("signal_id"))
    matrix = sp.csr_matrix(
        (np.ones(block.rows.size, dtype=np.float64), (block.rows, column_of[block.cols])),
        shape=(frames.accounts.height, candidates.height),
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0  # a candidate fires once per account
    return CandidateMatrix(
        account_ids=frames.accounts.get_column("account_id").to_numpy(), candidates=candidates, matrix=matrix
    )


def candidate_hits(frames: FeatureFrames, spec: FeatureSpec) -> pl.DataFrame:
    """`candidate_matrix` in long form: one row per (account, candidate that fired for it), with the
    candidate's columns. For reading and tests on small data; the pipeline works on the matrix."""
    built = candidate_matrix(frames, spec)
    coo = built.matrix.tocoo()
    order = np.lexsort((coo.col, coo.row))
    return pl.DataFrame({"account_id": built.account_ids[coo.row[order]]}).hstack(
        built.candidates.select(list(CANDIDATE_SCHEMA))[coo.col[order].astype(np.int64)]
    )


def sufficient_statistics(matrix: CandidateMatrix, converted: np.ndarray, arr: np.ndarray) -> pl.DataFrame:
    """Counts per candidate in one sparse product: Xᵀ · [1, y, y·arr].

    n_with = Σ_i X_ij, conversions_with = Σ_i X_ij·y_i, arr_with = Σ_i X_ij·y_i·arr_i,
    where y_i = 1 when account i converted. The totals (n, conversions) are returned as columns too,
    so per-cohort rows can be summed and the "without" counts derived as total − with.
    """
    y = converted.astype(np.float64)
    arr_converted = np.where(y > 0, np.nan_to_num(arr.astype(np.float64)), 0.0)
    right = np.column_stack([np.ones_like(y), y, arr_converted])
    counts = np.asarray(matrix.matrix.T @ right)
    return matrix.candidates.with_columns(
        pl.Series("n_with", np.rint(counts[:, 0]).astype(np.int64)),
        pl.Series("conversions_with", np.rint(counts[:, 1]).astype(np.int64)),
        pl.Series("arr_with", counts[:, 2]),
        pl.lit(int(len(y)), pl.Int64).alias("n_total"),
        pl.lit(int(y.sum()), pl.Int64).alias("conversions_total"),
    )


WINDOWED_KINDS = ("event_count", "event_property")
"""Candidate kinds defined over a first-N-days window; the others (attributes, intent, custom signals) have none."""


def activity_windows(candidates: pl.DataFrame, observation_days: int) -> np.ndarray:
    """The window (days) of each candidate's activity measure (`account_activity`), one per row of `candidates`.

    An event-count or property-value candidate is measured against activity in its own window (a
    `first_3d` candidate is compared with accounts as active in their first 3 days). Attributes, intent
    and anything else without a first-N-days window use the observation window: it is the longest window
    a candidate may look at, and everything in it is known before the account's feature window ends, so
    the measure never sees the outcome. (An intent `before_start` candidate is known earlier still; the
    observation window is then later than the candidate, which is safe for leakage and measures the
    account's activity as a whole.)
    """
    windowed = candidates.get_column("kind").is_in(list(WINDOWED_KINDS)).to_numpy()
    days = candidates.get_column("window_days").fill_null(observation_days).to_numpy().astype(np.int64)
    return np.where(windowed, days, int(observation_days)).astype(np.int64)


def account_activity(frames: FeatureFrames, spec: FeatureSpec) -> dict[int, np.ndarray]:
    """Each account's overall activity in each window of `spec`: all its events in its first d days.

    activity_d(i) = Σ over event names E not in `spec.excluded_events` of n_first_<d>d(i, E), read from the
    same `account_event_features` rows the candidates are built from (no further read of the events), one
    float64 array per window aligned with `frames.accounts` (0 for an account without events). It counts
    the candidate's own events too: when event counts grow with a latent activity level, the total is what
    carries that level, and leaving the candidate's event out left activity proxies with a residual lift
    (README, "Adjusted lift").
    """
    account_ids = frames.accounts.get_column("account_id")
    columns = [f"n_first_{d}d" for d in spec.windows]
    events = frames.events.filter(~pl.col("event_name").is_in(list(spec.excluded_events)))
    totals = (
        events.group_by("account_id").agg(pl.col(c).sum().cast(pl.Float64) for c in columns)
        if events.height
        else pl.DataFrame(schema={"account_id": account_ids.dtype, **{c: pl.Float64 for c in columns}})
    )
    aligned = pl.DataFrame({"account_id": account_ids}).join(totals, on="account_id", how="left", maintain_order="left")
    return {d: aligned.get_column(c).fill_null(0.0).to_numpy() for d, c in zip(spec.windows, columns, strict=True)}
