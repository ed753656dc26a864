"""The `beton` command (README, "The beton command"). Every subcommand has --help and exits
non-zero with a one-line reason on error; a failed `beton run` with a short paragraph (each failed
check or step, its numbers and what to change), never a stack trace."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from beton_pipeline.core.formatting import MISSING, fmt, fmt_estimate, fmt_interval, plain_table
from beton_pipeline.settings import (
    PROJECT_ROOT,
    SettingsError,
    config_path,
    demo_dir,
    load_settings,
    warehouse_path,
)

app = typer.Typer(
    help="beton: discover, prove, backtest, score and act on the signals that predict revenue.", no_args_is_help=True
)
signals_app = typer.Typer(
    help="List beton.signals; show one; enable, disable or reset (clear the override of) one.",
    invoke_without_command=True,
)
app.add_typer(signals_app, name="signals")
destinations_app = typer.Typer(help="Set up the destinations playbooks write to.", no_args_is_help=True)
app.add_typer(destinations_app, name="destinations")
attio_app = typer.Typer(help="Attio: the attributes beton writes on company records.", no_args_is_help=True)
destinations_app.add_typer(attio_app, name="attio")
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def _fail(message: str) -> None:
    sys.stderr.write(f"error: {' '.join(message.split())}\n")  # one line, whatever the terminal width
    raise typer.Exit(code=1)


def _fail_paragraph(message: str) -> None:
    """A short paragraph whose lines are kept (one per failed check or step); each line's spacing is tidied."""
    lines = [" ".join(line.split()) for line in message.splitlines() if line.strip()]
    sys.stderr.write("error: " + "\n  ".join(lines) + "\n")
    raise typer.Exit(code=1)


def _ensure_dagster_home() -> Path:
    """DAGSTER_HOME, or a project-local `.dagster_home/` using the project's dagster.yaml."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        home = str(PROJECT_ROOT / ".dagster_home")
        os.environ["DAGSTER_HOME"] = home
    path = Path(home)
    path.mkdir(parents=True, exist_ok=True)
    config = path / "dagster.yaml"
    if not config.exists():  # Postgres storage when DAGSTER_PG_HOST is set (RUNBOOK.md), else SQLite
        chosen = "dagster.postgres.yaml" if os.environ.get("DAGSTER_PG_HOST") else "dagster.yaml"
        config.write_text((PROJECT_ROOT / chosen).read_text())
    return path


@app.command()
def demo(
    accounts: Annotated[int, typer.Option(help="Number of accounts (500 to 1,000,000).", min=50)] = 8000,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed writes the same data.")] = 7,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Directory to write (default: data/demo).")] = None,
) -> None:
    """Write a demo source directory (the embedded default) with planted signals, decoys and bad rows."""
    from beton_pipeline.sources.demo import generate_demo

    target = out_dir or demo_dir()
    with Progress(
        SpinnerColumn(),
        TextColumn("demo data"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("accounts", total=accounts)
        summary = generate_demo(
            target, n_accounts=accounts, seed=seed, progress=lambda done, total: bar.update(task, completed=done)
        )
    out.print(f"wrote {summary.n_events:,} events for {summary.n_accounts:,} accounts to {summary.out_dir}")
    out.print(f"planted truth (never read by the pipeline): {summary.truth_path}")


@app.command()
def run() -> None:
    """Materialise the whole asset graph in-process against BETON_SOURCE_DIR (or demo data) and BETON_WAREHOUSE."""
    import dagster as dg

    try:
        load_settings()
    except SettingsError as exc:
        _fail(str(exc))
    _ensure_dagster_home()
    from beton_pipeline.runner import RunFailedError, run_pipeline

    stages = ["ingest + dbt", "cohort counts", "discovery", "backtests", "health + scores", "playbooks + readouts"]
    try:
        with (
            dg.DagsterInstance.get() as instance,
            Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
            ) as bar,
        ):
            task = bar.add_task("beton run", total=len(stages))

            def on_stage(name: str) -> None:
                bar.update(task, description=f"beton run: {name}", completed=stages.index(name))

            summary = run_pipeline(instance, on_stage=on_stage)
            bar.update(task, completed=len(stages), description="beton run: done")
    except RunFailedError as exc:  # what failed, the numbers, what to change; the event log has the rest
        _fail_paragraph(str(exc))
    except Exception as exc:  # one line for the user; the Dagster event log has the rest
        _fail(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    _print_summary(summary)


def _print_summary(summary) -> None:
    table = Table(title=f"beton run: {warehouse_path()}")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, n in summary.rows.items():
        table.add_row(name, f"{n:,}")
    out.print(table)
    acc = summary.accounts
    out.print(
        f"accounts: {acc.get('accounts', 0):,} ({acc.get('with_events', 0):,} with events, {acc.get('eligible', 0):,} with a known outcome, "
        f"{acc.get('eligible_converted', 0):,} of those converted)"
    )
    out.print("events by identity resolution: " + ", ".join(f"{k} {v:,}" for k, v in summary.identity.items()))
    if summary.monitoring_days:
        out.print(
            f"health and scores for {summary.monitoring_days[0]} … {summary.monitoring_days[1]}; latest health: "
            + ", ".join(f"{k} {v}" for k, v in sorted(summary.health.items()))
        )
    if summary.leads:
        leads = summary.leads
        out.print(
            f"latest day: {leads.get('accounts_in_play', 0):,} accounts in play, {leads.get('leads_surfaced', 0):,} leads surfaced, "
            f"pipeline influenced (30 d) {leads.get('pipeline_influenced_arr_30d', 0):,.0f}"
        )
    if summary.actions:
        out.print("playbook actions: " + ", ".join(f"{k} {v:,}" for k, v in summary.actions.items()))
    for text in summary.experiments:
        out.print(f"experiment: {text}")
    out.print("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in summary.stage_seconds.items()))
    out.print(f"enabled signals ({len(summary.enabled_signals)}):")
    for signal_id, definition, lift in summary.enabled_signals:
        out.print(f"  {signal_id}  lift {lift:.2f}  {definition}")
    if summary.signal_problems:
        out.print(
            f"custom signals: {summary.custom_signals} tested; {len(summary.signal_problems)} file(s) left out "
            "(fix or remove them; signals.strict: true makes this fail the run):",
            highlight=False,
        )
    elif summary.custom_signals:
        out.print(f"custom signals: {summary.custom_signals} tested (beton.signals, source = custom)", highlight=False)
    for problem in summary.signal_problems:
        out.print(f"  {problem}", highlight=False, markup=False)


@signals_app.callback()
def signals_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (one object per signal).")] = False,
    include_all: Annotated[
        bool, typer.Option("--all", help="Every tested candidate, not only each family's best.")
    ] = False,
) -> None:
    """List beton.signals, best first (a plain aligned table, one line per signal, when piped or redirected)."""
    if ctx.invoked_subcommand is not None:
        return
    from beton_pipeline.store.signal_detail import json_row, named_signals

    with _read_warehouse() as con:
        frame = named_signals(con, include_all, _observation_days())
    if as_json:
        _print_json([json_row(r) for r in frame.iter_rows(named=True)])
        return
    headers = ["signal_id", "enabled", "recommendation", "lift", "95% CI", "n_with", "q_value", "holdout_lift"]
    headers += ["projected_arr", "name", "definition"]
    rows = [
        [
            r["signal_id"],
            "yes" if r["enabled"] else "no",
            r["recommendation"],
            fmt(r["lift"], ".2f"),
            fmt_interval(r["lift_ci_low"], r["lift_ci_high"]),
            f"{r['n_with']:,}",
            fmt(r["q_value"], ".2g"),
            fmt(r["holdout_lift"], ".2f"),
            fmt(r["projected_arr"], ",.0f"),
            r["name"],
            r["definition"],
        ]
        for r in frame.iter_rows(named=True)
    ]
    _print_table(f"beton.signals ({frame.height} shown)", headers, rows, right=NUMERIC_COLUMNS)


NUMERIC_COLUMNS = ("lift", "n_with", "q_value", "holdout_lift", "projected_arr", "accounts", "fired", "converted")
"""Columns right-aligned in plain tables."""


def _print_table(title: str, headers: list[str], rows: list[list[str]], right: tuple[str, ...] = ()) -> None:
    """A rich table on a terminal; elsewhere (a pipe, a file) plain aligned text, one line per row, never wrapped."""
    if out.is_terminal:
        table = Table(title=title)
        for col in headers:
            table.add_column(col, overflow="fold", justify="right" if col in right else "left")
        for row in rows:
            table.add_row(*(Text(str(c)) for c in row))  # data as text: `[/x]` in a value is no markup
        out.print(table)
        return
    sys.stdout.write(f"# {title}\n{plain_table(headers, rows, right)}\n")


def _print_json(payload: object) -> None:
    sys.stdout.write(json.dumps(payload, default=str, indent=1, ensure_ascii=False) + "\n")


def _observation_days() -> int | None:
    """The observation window (names intent signals' windows); None when beton.yaml cannot be read."""
    try:
        return load_settings().windows.observation_days
    except SettingsError:
        return None


@contextmanager
def _read_warehouse():
    """A read-only connection to the warehouse, or a one-line error when there is none yet or it is busy."""
    from beton_pipeline.warehouse import WarehouseLockedError, connect

    path = warehouse_path()
    if not path.exists():
        _fail(f"{path}: no warehouse yet; run `beton run` (or `make run`) first")
    try:
        with connect(path, read_only=True) as con:
            yield con
    except WarehouseLockedError as exc:
        _fail(str(exc))


@signals_app.command("show")
def signals_show(
    signal_id: str,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON: signal, name, parts, backtest, health, overrides.")
    ] = False,
) -> None:
    """One signal in full: what it means, its statistics, its backtest by cohort month, its health and who overrode it."""
    from beton_pipeline.store.signal_detail import json_row, lift_in_words, read_signal_detail
    from beton_pipeline.store.signals import UnknownSignalError

    try:
        with _read_warehouse() as con:
            detail = read_signal_detail(con, signal_id, _observation_days())
    except UnknownSignalError as exc:
        _fail(str(exc.args[0]))
    if as_json:
        _print_json(
            {
                "signal": json_row(detail.signal),
                "name": detail.name,
                "parts": list(detail.parts),
                "backtest": detail.backtest.to_dicts(),
                "health": detail.health.to_dicts(),
                "overrides": detail.overrides.to_dicts(),
            }
        )
        return
    s = detail.signal
    lines = [
        f"{s['signal_id']}: {detail.name}",
        "",
        "definition",
        f"  condition       {s['definition']}",
        f"  kind            {s['kind']} ({s['source']}; family {s['family']})",
    ]
    lines += [f"  part            {p['signal_id']}: {p['name']}" for p in detail.parts]
    level = f"{100 * s['confidence_level']:.0f}%" if s.get("confidence_level") else "95%"
    lines += [
        "",
        "statistics (discovery cohorts)",
        f"  lift            {fmt(s['lift'], '.2f')} ({level} CI {fmt_interval(s['lift_ci_low'], s['lift_ci_high'])})",
        f"  in plain words  {lift_in_words(s)}",
        f"  adjusted lift   {fmt(s.get('adjusted_lift'), '.2f')} "
        f"({level} CI {fmt_interval(s.get('adjusted_lift_ci_low'), s.get('adjusted_lift_ci_high'))}), "
        f"p {fmt(s.get('adjusted_p_value'), '.2g')}, q {fmt(s.get('adjusted_q_value'), '.2g')}, "
        f"{fmt(s.get('activity_strata'), ',')} informative strata; holdout "
        f"{fmt(s.get('holdout_adjusted_lift'), '.2f')} "
        f"(CI {fmt_interval(s.get('holdout_adjusted_lift_ci_low'), s.get('holdout_adjusted_lift_ci_high'))})",
        f"  p, q            {fmt(s['p_value'], '.2g')}, {fmt(s['q_value'], '.2g')}",
        f"  support         {s['n_with']:,} accounts with it ({s['conversions_with']:,} converted, "
        f"{fmt(s['rate_with'], '.1%')}); {s['n_without']:,} without ({s['conversions_without']:,}, "
        f"{fmt(s['rate_without'], '.1%')})",
        f"  holdout         lift {fmt(s['holdout_lift'], '.2f')} (CI {fmt_interval(s['holdout_lift_ci_low'], s['holdout_lift_ci_high'])}), "
        f"p {fmt(s['holdout_p_value'], '.2g')}, {fmt(s['holdout_n_with'], ',')} of {fmt(s['holdout_n_total'], ',')} accounts "
        "in later cohorts",
        f"  projected ARR   {fmt(s['projected_arr'], ',.0f')}",
        f"  recommendation  {s['recommendation']}: {s['recommendation_reason'] or MISSING}",
        f"  enabled         {'yes' if s['enabled'] else 'no'}"
        + ("" if s["enabled_override"] is None else " (by override)"),
        f"  method          {s['method']}",
        f"  adjustment      {s.get('adjustment_method') or 'none (custom signal)'}",
        f"  as of           {s['as_of']}",
    ]
    out.print("\n".join(lines), markup=False, highlight=False)
    _print_detail_tables(detail)


def _print_detail_tables(detail) -> None:
    backtest = detail.backtest
    if backtest.height:
        verdict = f"{backtest['verdict'][0]}: {backtest['verdict_reason'][0]}" if "verdict" in backtest.columns else ""
        rows = [
            [
                r["cohort_month"],
                r["split"],
                f"{r['cohort_accounts']:,}",
                f"{r['fired']:,}",
                f"{r['converted']:,}",
                fmt(r["lift"], ".2f"),
                fmt_interval(r["lift_ci_low"], r["lift_ci_high"]),
                fmt(r["p_value"], ".2g"),
                "yes" if r["enough_data"] else "no",
            ]
            for r in backtest.iter_rows(named=True)
        ]
        headers = ["cohort", "split", "accounts", "fired", "converted", "lift", "95% CI", "p", "enough data"]
        _print_table(f"backtest by cohort month ({verdict})", headers, rows, right=NUMERIC_COLUMNS)
    else:
        out.print(
            "backtest by cohort month: no rows in beton.signal_backtests for this signal "
            "(`beton run` backtests enabled discovered signals and every custom signal)",
            markup=False,
        )
    health = detail.health
    if health.height:
        latest = health.row(-1, named=True)
        rows = [
            [
                str(r["day"]),
                r["health"],
                fmt(r.get("lift"), ".2f"),
                fmt_interval(r.get("lift_ci_low"), r.get("lift_ci_high")),
            ]
            for r in health.iter_rows(named=True)
        ]
        _print_table(
            f"health: {latest['health']} on {latest['day']} (last {health.height} days)",
            ["day", "health", "lift", "95% CI"],
            rows,
            right=NUMERIC_COLUMNS,
        )
    else:
        out.print(
            "health: no rows in beton.signal_health for this signal (it tracks enabled discovered signals)",
            markup=False,
        )
    overrides = detail.overrides
    if overrides.height:
        rows = [
            [
                str(r["changed_at"])[:19],
                {True: "enabled", False: "disabled", None: "reset"}[r["enabled"]],
                r["changed_by"],
                r["reason"] or MISSING,
            ]
            for r in overrides.iter_rows(named=True)
        ]
        _print_table("overrides (latest last)", ["when (UTC)", "decision", "by", "why"], rows)
    else:
        out.print("override: none (enabled follows the recommendation)")


def _override(signal_id: str, enabled: bool | None, by: str | None, reason: str | None) -> None:
    """Record a decision in beton.signal_overrides: enable, disable, or (None) back to the recommendation."""
    from beton_pipeline.store.signal_detail import record_decision
    from beton_pipeline.store.signals import UnknownSignalError
    from beton_pipeline.warehouse import WarehouseLockedError, connect

    path = warehouse_path()
    if not path.exists():
        _fail(f"{path}: no warehouse yet; run `beton run` (or `make run`) first")
    who = by or os.environ.get("USER") or "unknown"
    try:
        with connect(path) as con:
            now_enabled = record_decision(con, signal_id, enabled, who, reason)
    except (UnknownSignalError, WarehouseLockedError) as exc:
        _fail(str(exc.args[0]))
    if enabled is None:
        state = f"override cleared: {'enabled' if now_enabled else 'disabled'} as recommended"
    else:
        state = "enabled" if enabled else "disabled"
    out.print(f"{signal_id}: {state} by {who}" + (f" ({reason})" if reason else ""), markup=False, highlight=False)


ReasonOption = Annotated[str | None, typer.Option(help="Why (kept with the decision).")]
ByOption = Annotated[str | None, typer.Option(help="Who decided (default: $USER).")]


@signals_app.command("enable")
def signals_enable(
    signal_id: str,
    reason: ReasonOption = None,
    by: ByOption = None,
) -> None:
    """Enable a signal whatever its recommendation; survives re-runs."""
    _override(signal_id, True, by, reason)


@signals_app.command("disable")
def signals_disable(
    signal_id: str,
    reason: ReasonOption = None,
    by: ByOption = None,
) -> None:
    """Disable a signal whatever its recommendation; survives re-runs."""
    _override(signal_id, False, by, reason)


@signals_app.command("reset")
def signals_reset(
    signal_id: str,
    reason: ReasonOption = None,
    by: ByOption = None,
) -> None:
    """Clear a signal's override: it follows its recommendation again (the decision is recorded with who and why)."""
    _override(signal_id, None, by, reason)


@app.command()
def backtest(
    sql: Annotated[
        str | None,
        typer.Option(
            "--sql", help="One SELECT returning account_id (optionally fired_at), run in a read-only sandbox."
        ),
    ] = None,
    file: Annotated[Path | None, typer.Option("--file", help="A signal file: YAML (name + when) or .sql.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON: the beton.signals row and the per-period results.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Time limit of a SQL signal, in seconds.", min=0.1, max=600)] = 30.0,
) -> None:
    """Backtest one custom signal without writing it: its beton.signals columns and its results per cohort month."""
    import duckdb

    from beton_pipeline.core.conditions import SignalDefinitionError
    from beton_pipeline.store.backtests import backtest_definition
    from beton_pipeline.store.custom_signals import SIGNAL_SUFFIXES
    from beton_pipeline.store.sql_sandbox import SqlSignalError
    from beton_pipeline.warehouse import WarehouseLockedError

    if (sql is None) == (file is None):
        _fail("give exactly one of --sql QUERY or --file SIGNAL.yml")
    try:
        settings = load_settings()
    except SettingsError as exc:
        _fail(str(exc))
    path = warehouse_path()
    if not path.exists():
        _fail(f"{path}: no warehouse yet; run `beton run` (or `make run`) first")
    if file is not None:
        if not file.is_file():
            _fail(f"{file}: no such file")
        text, origin, kind = (
            file.read_text(encoding="utf-8"),
            str(file),
            SIGNAL_SUFFIXES.get(file.suffix.lower(), "auto"),
        )
    else:
        text, origin, kind = sql, "--sql", "sql"
    try:
        with console.status("backtesting"):
            result = backtest_definition(text, origin, kind, settings, path, timeout)
    except (SignalDefinitionError, SqlSignalError, WarehouseLockedError) as exc:
        _fail(str(exc))
    except duckdb.Error as exc:  # e.g. no marts yet
        _fail(f"{path}: {str(exc).splitlines()[0]} (has `beton run` finished?)")
    row = result.signal_row.row(0, named=True)
    periods = result.periods
    verdict = (
        (periods.get_column("verdict")[0], periods.get_column("verdict_reason")[0]) if periods.height else (None, None)
    )
    if as_json:
        payload = {"signal": row, "verdict": verdict[0], "verdict_reason": verdict[1], "periods": periods.to_dicts()}
        sys.stdout.write(json.dumps(payload, default=str, indent=1) + "\n")
        return
    summary = Table(
        title=f"{row['signal_id']} (not written; discovery cohorts {', '.join(result.split.discovery_months[:1])}…, "
        f"holdout {len(result.split.holdout_months)} later months)",
        show_header=False,
    )
    summary.add_column("column")
    summary.add_column("value", overflow="fold")
    for key, value in row.items():
        summary.add_row(key, fmt(value, ".6g" if isinstance(value, float) else ""))
    out.print(summary)
    table = Table(title=f"per cohort month: {verdict[0]} ({verdict[1]})")
    for col in (
        "cohort",
        "split",
        "accounts",
        "fired",
        "converted",
        "precision",
        "recall",
        "lift",
        "95% CI",
        "projected ARR (95% CI)",
        "enough data",
    ):
        table.add_column(col, overflow="fold", no_wrap=col == "projected ARR (95% CI)")
    for r in periods.iter_rows(named=True):
        table.add_row(
            r["cohort_month"],
            r["split"],
            f"{r['cohort_accounts']:,}",
            f"{r['fired']:,}",
            f"{r['converted']:,}",
            fmt(r["precision"], ".3f"),
            fmt(r["recall"], ".3f"),
            fmt(r["lift"], ".2f"),
            fmt_interval(r["lift_ci_low"], r["lift_ci_high"]),
            fmt_estimate(r["projected_arr"], r["projected_arr_ci_low"], r["projected_arr_ci_high"], ",.0f"),
            "yes" if r["enough_data"] else "no",
        )
    _wide().print(table)


def _wide() -> Console:
    """stdout, at least 160 columns wide when it is not a terminal (pipes, files), so wide tables do not wrap."""
    return out if out.is_terminal else Console(soft_wrap=True, width=max(out.width, 160))


@app.command()
def serve(
    host: Annotated[
        str, typer.Option(help="Address to listen on; the default serves this machine only.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8765,
) -> None:
    """The signal browser: pages with charts and a JSON API over the warehouse (read-only), at http://HOST:PORT."""
    import uvicorn

    from beton_pipeline.app.auth import TOKEN_ENV, app_token
    from beton_pipeline.app.server import create_app

    path = warehouse_path()
    if not path.exists():
        _fail(f"{path}: no warehouse yet; run `beton run` (or `make run`) first")
    token = app_token()
    writes = "changes need the app token" if token else f"read-only ({TOKEN_ENV} is not set)"
    console.print(f"beton: serving {path} at http://{host}:{port}/ ({writes}; Ctrl-C stops)")
    try:
        settings = load_settings()
    except SettingsError as exc:
        _fail(str(exc))
    hosts = ("*",) if host in ("0.0.0.0", "::") else (host, "127.0.0.1", "localhost")
    app_ = create_app(path, settings, token=token, hosts=hosts, config_path=config_path())
    uvicorn.run(app_, host=host, port=port, log_level="warning")


@app.command()
def events(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    top: Annotated[int, typer.Option(help="Top values shown per property and attribute.", min=1, max=1000)] = 10,
) -> None:
    """List the events, properties, attributes and intent types that custom signal conditions can use."""
    import duckdb

    from beton_pipeline.store.catalog import event_catalog
    from beton_pipeline.warehouse import WarehouseLockedError, connect

    try:
        settings = load_settings()
    except SettingsError as exc:
        _fail(str(exc))
    path = warehouse_path()
    if not path.exists():
        _fail(f"{path}: no warehouse yet; run `beton run` (or `make run`) first")
    try:
        with console.status("reading the marts"), connect(path, read_only=True) as con:
            catalog = event_catalog(con, settings, top=top)
    except WarehouseLockedError as exc:
        _fail(str(exc))
    except duckdb.Error as exc:
        _fail(f"{path}: {str(exc).splitlines()[0]} (has `beton run` finished?)")
    if as_json:
        sys.stdout.write(json.dumps(catalog, default=str, indent=1) + "\n")
        return
    out.print(
        f"windows (within_days): {', '.join(map(str, catalog['windows_days']))} (default {catalog['observation_days']}); "
        f"intent lookback (within_days_before_start): {catalog['intent_lookback_days']}"
    )
    table = Table(title="events (event:)")
    for col in ("event", "accounts", "events before window end"):
        table.add_column(col)
    for r in catalog["events"]:
        table.add_row(r["event"], f"{r['accounts']:,}", f"{int(r['events']):,}")
    out.print(table)
    table = Table(title=f"property values (event: + property: + equals:/in:), top {top}")
    for col in ("event", "property", "value", "accounts", "events"):
        table.add_column(col, overflow="fold")
    for r in catalog["properties"]:
        table.add_row(r["event"], r["property"], r["value"], f"{r['accounts']:,}", f"{int(r['events']):,}")
    out.print(table)
    keys = [r for r in catalog["raw_property_keys"] if not r["usable"]]
    if keys:
        out.print(
            "other property keys seen (add to beton.yaml discovery.property_features to use them): "
            + ", ".join(f"{r['event']}.{r['property']} ({r['events']:,})" for r in keys[:40])
            + (" …" if len(keys) > 40 else "")
        )
    table = Table(title='attributes (attribute: + equals/not_equals/in, or value: ">= n" for numbers)')
    for col in ("attribute", "type", "accounts", "values"):
        table.add_column(col, overflow="fold")
    for r in catalog["attributes"]:
        if r["type"] == "number":
            values = f"min {r['min']}, median {r['median']}, max {r['max']}"
        else:
            values = ", ".join(f"{v['value']} ({v['accounts']:,})" for v in r["top_values"])
        table.add_row(r["attribute"], r["type"], f"{r['accounts']:,}", values)
    out.print(table)
    table = Table(title="intent signals (intent: + until: start|window_end)")
    for col in ("intent", "accounts before start", "accounts before window end"):
        table.add_column(col)
    for r in catalog["intent"]:
        table.add_row(r["intent"], f"{r['accounts_before_start']:,}", f"{r['accounts_before_window_end']:,}")
    out.print(table)


def _export_dir(source: Path | None) -> Path:
    """SOURCE_DIR, else BETON_SOURCE_DIR, else the demo folder; an error when it is not a directory."""
    from beton_pipeline.settings import source_dir

    chosen = source or source_dir() or demo_dir()
    if not chosen.is_dir():
        hint = "" if source or source_dir() else " (no BETON_SOURCE_DIR; `beton demo` writes the demo folder)"
        _fail(f"{chosen}: no such directory{hint}; pass the export's folder as SOURCE_DIR")
    return chosen.resolve()


def _profile(source: Path, settings):
    """`store.export_check.profile_export` in the check's work folder (`dbt_project.check_work_dir`), with a spinner."""
    from beton_pipeline.dbt_project import check_work_dir
    from beton_pipeline.store.export_check import profile_export

    try:
        with check_work_dir() as work, console.status(f"profiling {source}"):
            return profile_export(source, settings, work)
    except Exception as exc:  # one line for the user, never a stack trace
        _fail(f"profiling {source} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def _count(n: int | None) -> str:
    return "n/a" if n is None else f"{n:,}"


def _print_profile(profile) -> None:
    """The profile for people: one block per table, then identity, outcomes and power. Plain text (no
    table borders), so it reads the same in a terminal, a pipe or a file."""

    def write(text: str = "") -> None:
        out.print(text, markup=False, highlight=False)

    write(f"beton check: {profile.source_dir}" + (f" (as-of {profile.as_of})" if profile.as_of else ""))
    for t in profile.tables:
        write()
        kind = "required" if t.required else "optional"
        for skipped in t.skipped_files:
            write(f"{t.table} ({kind}): skipped {skipped}")
        if t.error:
            write(f"{t.table} ({kind}): cannot be read: {t.error}")
            continue
        if not t.files:
            write(f"{t.table} ({kind}): no file (absent: the features that use it are left out)")
            continue
        write(
            f"{t.table} ({kind}): {t.rows_read:,} rows read from {len(t.files)} file(s), {t.rows_loaded:,} loaded, "
            f"{t.rows_quarantined:,} quarantined, {t.exact_duplicates:,} exact duplicates"
        )
        write(f"  files: {', '.join(t.files)}")
        if t.first:
            write(f"  {t.time_column}: {t.first} … {t.last}" + (f"; {t.freshness}" if t.freshness else ""))
        write(
            f"  columns found: {', '.join(t.columns_found)}"
            + (f"; absent or empty: {', '.join(t.columns_absent_or_empty)}" if t.columns_absent_or_empty else "")
            + (f"; extra (ignored): {', '.join(t.columns_extra)}" if t.columns_extra else "")
        )
        if t.quarantine_reasons:
            write("  bad rows: " + "; ".join(f"{reason} ({n:,})" for reason, n in t.quarantine_reasons.items()))
    write()
    rules = profile.events_by_identity_rule
    total = sum(rules.values())
    if total:
        write(
            f"identity: {total:,} events; " + ", ".join(f"{rule} {n:,} ({n / total:.1%})" for rule, n in rules.items())
        )
    if profile.accounts is not None:
        converted = profile.eligible_converted or 0
        rate = f" ({converted / profile.eligible_accounts:.1%})" if profile.eligible_accounts else ""
        write(
            f"accounts: {profile.accounts:,} ({_count(profile.accounts_with_events)} with events); "
            f"{_count(profile.eligible_accounts)} eligible (outcome window closed), {converted:,} of them converted{rate}; "
            f"{_count(profile.converted_accounts)} converted at any time"
        )
        w = profile.windows
        write(
            f"windows: observation_days {w['observation_days']}, conversion_window_days {w['conversion_window_days']}, "
            f"holdout_fraction {w['holdout_fraction']:g} (beton.yaml or defaults; `beton init` suggests them from the data)"
        )
    if profile.discovery_accounts is not None:
        p = profile.power
        mdl = "none" if profile.min_detectable_lift is None else f"{profile.min_detectable_lift:.2f}"
        write(
            f"discovery: {profile.discovery_accounts:,} eligible accounts in the discovery cohorts, "
            f"{profile.discovery_conversion_rate:.1%} converted; smallest detectable lift {mdl} for a signal held by "
            f"{p['signal_share']:.0%} of them ({p['power']:.0%} power, alpha {p['alpha']:g})"
        )
    for warning in profile.warnings:
        write(f"warning: {' '.join(warning.split())}")
    if not profile.problems:
        write("ok: `beton run` can work on this export")


def _check_sources(settings, as_json: bool) -> None:
    """`beton check --sources`: each enabled connector's answer, one line each; non-zero when one cannot pull."""
    from beton_pipeline.sources.connectors.checks import check_connection

    if not settings.sources.enabled:
        _fail("no connector is enabled: set sources.<posthog|attio|stripe>.enabled: true in beton.yaml")
    results = [check_connection(name, settings.connector_config(name)) for name in settings.sources.enabled]
    if as_json:
        payload = {"ok": all(r.ok for r in results), "sources": [vars(r) for r in results]}
        sys.stdout.write(json.dumps(payload, indent=1) + "\n")
    else:
        for r in results:
            out.print(f"{r.source}: {'ok' if r.ok else 'FAILED'}: {r.detail}", markup=False, highlight=False)
    failed = [r for r in results if not r.ok]
    if failed:
        _fail_paragraph(
            f"beton check --sources: {len(failed)} of {len(results)} connector(s) cannot pull:\n"
            + "\n".join(f"- {r.source}: {r.detail}" for r in failed)
        )


@app.command()
def check(
    source: Annotated[
        Path | None, typer.Argument(help="The export's folder (default: BETON_SOURCE_DIR, else the demo folder).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (the whole profile, plus `ok`).")] = False,
    sources: Annotated[
        bool,
        typer.Option("--sources", help="Instead: test each enabled connector's key with one call to its API."),
    ] = False,
) -> None:
    """Profile an export before any run, in a temporary warehouse: each table's files, rows, time range,
    columns and bad rows; identity coverage; accounts, eligible accounts and conversions; the smallest
    detectable lift. Exits non-zero, listing what to fix, when `beton run` cannot work on it.
    With --sources: one call per enabled connector (sources in beton.yaml) says whether its key works."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        _fail(str(exc))
    if sources:
        _check_sources(settings, as_json)
        return
    profile, _ = _profile(_export_dir(source), settings)
    if as_json:
        sys.stdout.write(json.dumps({"ok": not profile.problems, **profile.to_dict()}, default=str, indent=1) + "\n")
    else:
        _print_profile(profile)
    if profile.problems:
        noun = "problem" if len(profile.problems) == 1 else "problems"
        _fail_paragraph(
            f"beton check: {len(profile.problems)} {noun} would stop `beton run` on this export:\n"
            + "\n".join(f"- {p}" for p in profile.problems)
        )


@app.command()
def init(
    source: Annotated[
        Path | None, typer.Argument(help="The export's folder (default: BETON_SOURCE_DIR, else the demo folder).")
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="The file to write.")] = Path("beton.yaml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUTPUT if it exists.")] = False,
) -> None:
    """Write a starter beton.yaml for an export: windows suggested from its data (each with the figure it
    came from), beton's defaults for the rest, no playbooks or experiments. Never overwrites without --force."""
    from beton_pipeline.core.starter import suggest_windows
    from beton_pipeline.settings import Settings

    if output.exists() and not force:
        _fail(f"{output}: already exists; pass --force to overwrite it, or --output another file")
    if not output.parent.resolve().is_dir():
        _fail(f"{output}: its folder {output.parent} does not exist; create it or choose another --output")
    source_dir = _export_dir(source)
    defaults = Settings()
    profile, timing = _profile(source_dir, defaults)
    if timing.as_of is None:
        _fail_paragraph(
            "beton init: the export could not be profiled, so no window can be suggested:\n"
            + "\n".join(f"- {p}" for p in profile.problems)
        )
    w = defaults.windows
    suggested = suggest_windows(
        timing.days_to_convert, timing.started_at, timing.as_of, w.conversion_window_days, w.observation_days
    )
    text = _starter_yaml(source_dir, profile, suggested)
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        _fail(f"{output}: cannot be written: {exc.strerror or exc}")
    try:
        load_settings(output)
    except SettingsError as exc:  # a bug in the starter, not the user's doing: say so and keep the file
        _fail(f"{output}: the starter file does not load ({exc}); please report this")
    out.print(f"wrote {output}: {_window_line(suggested)}", markup=False, highlight=False)
    out.print(
        f"use it with: BETON_CONFIG={output} beton run   (or keep it as beton.yaml beside the project)", markup=False
    )
    if profile.problems:
        out.print(
            f"note: beton check finds {len(profile.problems)} problem(s) with this export; run `beton check {source_dir}`",
            markup=False,
            highlight=False,
        )


def _window_line(suggested) -> str:
    parts = []
    for name in ("conversion_window_days", "observation_days", "holdout_fraction"):
        s = getattr(suggested, name)
        parts.append(f"{name} {s.value:g}" if s.value is not None else f"{name} default")
    return ", ".join(parts)


def _starter_yaml(source_dir: Path, profile, suggested) -> str:
    """The starter file's text: the suggested windows with their figures as comments; nothing demo-specific."""
    from datetime import UTC, datetime

    events = next((t for t in profile.tables if t.table == "events"), None)
    lines = [
        f"# beton.yaml: a starter written by `beton init` on {datetime.now(UTC):%Y-%m-%d} for the export",
        f"#   {source_dir}",
        f"# with {_count(profile.accounts)} accounts ({_count(profile.accounts_with_events)} with events), "
        f"{_count(profile.converted_accounts)} converted"
        + (f", events {events.first} … {events.last}." if events and events.first else "."),
        '# Every setting not written here keeps its documented default (README, "Configuration").',
        '# No playbooks, experiments or destinations: add your own (README, "Playbooks").',
        "",
        "windows:",
    ]
    for name in ("conversion_window_days", "observation_days", "holdout_fraction"):
        s = getattr(suggested, name)
        lines.append(f"  # {' '.join(s.reason.split())}")
        if s.value is None:
            lines.append(f"  # {name}: (beton's default)")
        else:
            value = f"{s.value:g}" if isinstance(s.value, float) else str(int(s.value))
            lines.append(f"  {name}: {value}")
    lines += ["", "playbooks: []", "experiments: []", ""]
    return "\n".join(lines)


@attio_app.command("fields")
def attio_fields(
    object_slug: Annotated[
        str | None,
        typer.Option("--object", help="The Attio object (default: destinations.attio.object, else companies)."),
    ] = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="Create the missing attributes and record the mapping in the settings.")
    ] = False,
    use: Annotated[
        list[str] | None,
        typer.Option(
            "--use", metavar="FIELD=SLUG", help="Write FIELD (score, rank, top_signals, why) to attribute SLUG."
        ),
    ] = None,
) -> None:
    """Match beton's fields (score, rank, top signals, why) to the Attio object's attributes: use an existing
    attribute of the right name and type, create a missing one, or report a conflict. A dry run unless --apply,
    which creates the attributes and records destinations.attio in the settings file (beton.yaml or BETON_CONFIG)."""
    from beton_pipeline.app import attio_setup

    def say(text: str) -> None:
        out.print(text, markup=False, highlight=False)

    path = config_path()
    try:
        recorded = attio_setup.recorded_mapping(path)
        setup = attio_setup.plan(path, recorded, object_slug, attio_setup.parse_use(use or []))
    except attio_setup.AttioSetupError as exc:
        _fail_paragraph(exc.message)
    target, proposals, creates, mapping = setup.object, setup.proposals, setup.creates, setup.mapping
    mode = "applying" if apply else "dry run: nothing changed"
    _print_table(
        f"Attio {target}: beton's fields ({mode})",
        ["field", "action", "attribute", "title", "type", "reason"],
        [[p.field, p.action, p.api_slug, p.title or MISSING, p.value_type, p.reason] for p in proposals],
    )
    if not apply:
        made = ", ".join(f'{p.api_slug} ({p.value_type}, "{p.title}")' for p in creates)
        say(
            "--apply would: "
            + (f"create {made} on {target}; " if creates else "create nothing; ")
            + f"record destinations.attio in {path}: object {target}, "
            + (", ".join(f"{f}: {s}" for f, s in mapping.items()) or "no field")
            + "."
        )
        for p in setup.conflicts:
            say(f"conflict: {attio_setup.conflict_advice(p)}")
        return
    try:
        done = attio_setup.apply(setup, lambda p: say(f"created {p.api_slug} ({p.value_type}) on {target}"))
    except attio_setup.AttioSetupError as exc:
        _fail_paragraph(exc.message)
    if done.recorded:
        say(
            f"recorded destinations.attio in {path}: object {target}, "
            + ", ".join(f"{f}: {s}" for f, s in done.recorded.items())
        )
        say(f"playbooks write them with an action like {{type: attio, field: {next(iter(done.recorded))}}}")
    if done.conflicts:
        _fail_paragraph(
            f"{len(done.conflicts)} field(s) not mapped (a conflict blocks --apply for that field):\n"
            + "\n".join(attio_setup.conflict_advice(p) for p in done.conflicts)
        )


if __name__ == "__main__":
    app()
