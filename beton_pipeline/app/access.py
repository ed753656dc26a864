"""The app's only way to the warehouse (`Warehouse`): each call opens the DuckDB file, reads or writes, and
closes it, so a run waiting for the file waits for one request at most."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import duckdb
import polars as pl
from fastapi import Depends, Request

from beton_pipeline.app.web import RETRY_AFTER_SECONDS, Refused, WarehouseUnavailable
from beton_pipeline.core.conditions import SignalDefinitionError
from beton_pipeline.settings import Settings
from beton_pipeline.store import dashboard
from beton_pipeline.store.backtests import backtest_definition
from beton_pipeline.store.catalog import event_catalog
from beton_pipeline.store.outbox import action_counts
from beton_pipeline.store.playbooks import latest_score_day
from beton_pipeline.store.readouts import read_playbook_readouts
from beton_pipeline.store.signal_detail import (
    json_row,
    named_signals,
    read_signal_detail,
    record_decision,
    signal_names,
)
from beton_pipeline.store.sources_status import source_status
from beton_pipeline.store.sql_sandbox import SandboxLockedError, SqlSignalError
from beton_pipeline.warehouse import WarehouseLockedError, connect, table_exists

LOCK_WAIT_SECONDS = 2.0
"""How long a request waits for a run to release the warehouse before it answers 503."""
RECENT_LEADS = 20
"""Accounts the dashboard lists: the latest scored day's best-ranked."""
BACKTEST_SECONDS = 30.0
"""Time limit of a SQL signal backtested from the pages (as `beton backtest`'s default)."""
CATALOG_TOP = 20
"""Top values per property and attribute the catalog lists."""


@dataclass(frozen=True)
class SignalFilter:
    """What the list shows: `recommendation` (enable/review/reject), `enabled`, `source` (discovered/custom…),
    `q` (text in the name, definition or id), `sort` (a `SORTABLE` column; None = beton's order), `order`."""

    recommendation: str | None = None
    enabled: bool | None = None
    source: str | None = None
    q: str | None = None
    sort: str | None = None
    order: Literal["asc", "desc"] = "desc"

    @classmethod
    def of(cls, recommendation=None, enabled=None, source=None, q=None, sort=None, order="desc") -> SignalFilter:
        """The filter of a request's query parameters (an empty value is "any")."""
        return cls(
            recommendation or None,
            None if not enabled else enabled == "true",
            source or None,
            (q or "").strip() or None,
            sort or None,
            order,
        )

    def apply(self, frame: pl.DataFrame) -> pl.DataFrame:
        """The rows of `frame` this filter keeps, in its order."""
        keep = pl.lit(True)
        if self.recommendation:
            keep &= pl.col("recommendation") == self.recommendation
        if self.enabled is not None:
            keep &= pl.col("enabled") == self.enabled
        if self.source:
            keep &= pl.col("source") == self.source
        if self.q:
            text = self.q.lower()
            keep &= pl.any_horizontal(
                pl.col(c).str.to_lowercase().str.contains(text, literal=True)
                for c in ("name", "definition", "signal_id")
            )
        out = frame.filter(keep.fill_null(False))
        if self.sort:
            out = out.sort(self.sort, descending=self.order == "desc", nulls_last=True, maintain_order=True)
        return out


class _Access:
    """Readers together, a writer alone, within this process. DuckDB refuses a second connection to one file with
    another configuration in the same process (a read-only page beside a decision's read-write connection, or the
    SQL sandbox's), so a decision and a backtest wait for the pages in flight, and pages wait for them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writing)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writing and self._readers == 0)
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class Warehouse:
    """The app's only way to the warehouse: each call opens the file (read-only, but for a user's decision),
    reads or writes, and closes it.

    `settings` (beton.yaml's) name intent signals' windows, set the freshness limits and list the playbooks;
    `lock_wait_seconds` is how long a call waits for a run to release the file before `WarehouseUnavailable`."""

    def __init__(self, path: Path, settings: Settings, lock_wait_seconds: float = LOCK_WAIT_SECONDS):
        self.path, self.settings, self.lock_wait_seconds = path, settings, lock_wait_seconds
        self.observation_days = settings.windows.observation_days
        self._access = _Access()

    def use_settings(self, settings: Settings) -> None:
        """Read with `settings` from now on (the settings page changed beton.yaml). Signals keep the names of the
        observation window the warehouse was built with until a run rebuilds it."""
        self.settings = settings

    @contextmanager
    def open(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if not self.path.exists():
            raise WarehouseUnavailable(f"No warehouse at {self.path} yet: run `beton run` (or `make run`) first.")
        try:
            with self._access.shared(), connect(self.path, read_only=True, wait_seconds=self.lock_wait_seconds) as con:
                yield con
        except WarehouseLockedError:
            raise WarehouseUnavailable(
                f"A beton run is writing the warehouse; this page comes back when it is done "
                f"(retry in {RETRY_AFTER_SECONDS} s)."
            ) from None

    @contextmanager
    def write(self, what: str) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection for one change (`what`, e.g. "the decision was not recorded", is what a 503
        says when a run holds the file), taken when no page of this process is reading."""
        if not self.path.exists():
            raise WarehouseUnavailable(f"No warehouse at {self.path} yet: run `beton run` (or `make run`) first.")
        try:
            with self._access.exclusive(), connect(self.path, wait_seconds=self.lock_wait_seconds) as con:
                yield con
        except WarehouseLockedError:
            raise WarehouseUnavailable(
                f"A beton run is writing the warehouse; {what}: try again in {RETRY_AFTER_SECONDS} s."
            ) from None

    def decide(self, signal_id: str, enabled: bool | None, changed_by: str, reason: str | None) -> bool:
        """Record a decision on a signal (`store.signal_detail.record_decision`): the `enabled` it has now."""
        with self.write("the decision was not recorded") as con:
            return record_decision(con, signal_id, enabled, changed_by, reason)

    def sources(self) -> list[dict]:
        """Each contract table's origin, last ingest, quarantine and freshness (`store.sources_status`)."""
        with self.open() as con:
            return source_status(con, self.settings)

    def playbooks(self) -> list[dict]:
        """Each playbook of the settings (and any the outbox still holds): its rule, its actions by status and
        its readout (treated vs held out)."""
        with self.open() as con:
            counts, readouts = action_counts(con), read_playbook_readouts(con)
        by_playbook: dict[str, dict] = {}
        for row in counts.iter_rows(named=True):
            entry = by_playbook.setdefault(row["playbook"], {"actions": {}, "first_day": None, "last_day": None})
            entry["actions"][row["status"]] = row["actions"]
            entry["first_day"] = min(d for d in (entry["first_day"], row["first_day"]) if d is not None)
            entry["last_day"] = max(d for d in (entry["last_day"], row["last_day"]) if d is not None)
        readout = {r["playbook"]: r for r in readouts.to_dicts()}
        configured = self.settings.playbook_config().playbooks
        names = [p.name for p in configured] + sorted(set(by_playbook) - {p.name for p in configured})
        rules = {p.name: p for p in configured}
        out = []
        for name in names:
            playbook = rules.get(name)
            activity = by_playbook.get(name, {"actions": {}, "first_day": None, "last_day": None})
            out.append(
                {
                    "name": name,
                    "configured": playbook is not None,
                    "kind": playbook.kind if playbook else None,
                    "when": {k: v for k, v in playbook.when.model_dump().items() if v not in (None, (), [])}
                    if playbook
                    else None,
                    "then": [a.destination for a in playbook.then] if playbook else [],
                    "holdout_fraction": playbook.effective_holdout_fraction if playbook else None,
                    "cooldown_days": playbook.cooldown_days if playbook else None,
                    **activity,
                    "readout": readout.get(name),
                }
            )
        return out

    def catalog(self) -> dict:
        """What conditions can name: events, property values, attributes, intent types (`beton events`)."""
        with self.open() as con:
            if not table_exists(con, "marts", "account_event_features"):
                raise WarehouseUnavailable("The feature marts are not built yet: run `beton run` first.")
            return event_catalog(con, self.settings, top=CATALOG_TOP)

    def backtest(self, text: str, kind: str, timeout_seconds: float = BACKTEST_SECONDS) -> dict:
        """One custom signal (`kind`: condition or sql) tested and backtested as `beton backtest` does, nothing
        written: its beton.signals `signal` row, the backtest's `verdict` and `verdict_reason`, and its `periods`.
        Refused (400) with the definition's or the sandbox's reason when it cannot run."""
        if not self.path.exists():
            raise WarehouseUnavailable(f"No warehouse at {self.path} yet: run `beton run` (or `make run`) first.")
        try:
            with self._access.exclusive():  # the sandbox opens the file with its own configuration
                result = backtest_definition(
                    text, "beton serve", kind, self.settings, self.path, timeout_seconds, self.lock_wait_seconds
                )
        except (SignalDefinitionError, SqlSignalError) as exc:
            if isinstance(exc, SandboxLockedError):
                raise WarehouseUnavailable(
                    f"A beton run is writing the warehouse; backtest again in {RETRY_AFTER_SECONDS} s."
                ) from None
            raise Refused(str(exc), 400) from None
        except WarehouseLockedError:
            raise WarehouseUnavailable(
                f"A beton run is writing the warehouse; backtest again in {RETRY_AFTER_SECONDS} s."
            ) from None
        periods = result.periods
        verdict = periods.row(0, named=True) if periods.height else {}
        return {
            "signal": json_row(result.signal_row.row(0, named=True)),
            "verdict": verdict.get("verdict"),
            "verdict_reason": verdict.get("verdict_reason"),
            "periods": periods.to_dicts(),
        }

    def signals(self, flt: SignalFilter, include_all: bool) -> pl.DataFrame:
        """beton.signals with names, filtered and sorted by `flt`."""
        with self.open() as con:
            frame = named_signals(con, include_all, self.observation_days)
        return flt.apply(frame)

    def signal(self, signal_id: str):
        """One signal in full (`store.signal_detail.SignalDetail`); UnknownSignalError for an unknown id."""
        with self.open() as con:
            return read_signal_detail(con, signal_id, self.observation_days)

    def dashboard(self) -> dict:
        """The dashboard's data: `day` (the latest scored), `latest` and `trend` (beton.revenue_metrics rows),
        `recent_leads` (with each top contribution's plain-language `name`) and `score_distribution`."""
        with self.open() as con:
            trend = dashboard.read_revenue_metrics(con)
            day = latest_score_day(con)
            leads = dashboard.read_leads(con, day, RECENT_LEADS) if day else pl.DataFrame()
            spread = dashboard.score_distribution(con, day) if day else pl.DataFrame()
            names = signal_names(con, self.observation_days)
        rows = trend.to_dicts()
        recent = [
            {
                **lead,
                "top_contributions": [
                    {**c, "name": names.get(c["signal_id"]) or c.get("definition")}
                    for c in lead.get("top_contributions") or []
                ],
            }
            for lead in leads.to_dicts()
        ]
        return {
            "day": day,
            "latest": rows[-1] if rows else None,
            "trend": rows,
            "recent_leads": recent,
            "score_distribution": spread.to_dicts(),
        }


def _reader(request: Request) -> Warehouse:
    return request.app.state.reader


Reader = Annotated[Warehouse, Depends(_reader)]
