"""`make bench`: time `beton run` and beton's compute path against the floor, the peer's method and an
analyst's pandas, on demo datasets of about 1M and 10M events (BENCHMARKS.md says what each figure is).

    .venv/bin/python benchmarks/run.py                  # the full benchmark (1M and 10M, 3 repetitions)
    .venv/bin/python benchmarks/run.py --sizes 1M --repetitions 1   # a quick look

With 10M among the sizes it also measures the next day's run at 10M (`benchmarks/daily.py`: three more
`beton run`s, ~8 minutes) and reports its goal with the others; `--daily none` leaves it out.

Everything it writes lives in `.bench/` (gitignored): the datasets (`data/`, reused while their
parameters match), one work directory per size (`runs/<size>/`: the warehouse of the last repetition,
the Dagster home, dbt's target folders) and the results (`results/<UTC time>.json` and `.md`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):  # run as a script (`python benchmarks/run.py`): make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402

from benchmarks import methods  # noqa: E402
from benchmarks.datasets import DatasetSpec, dataset_events, ensure_dataset  # noqa: E402
from beton_pipeline.settings import settings_mapping  # noqa: E402
from beton_pipeline.sources import demo_config  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BENCH_ROOT = PROJECT_ROOT / ".bench"
GIB = 1024**3

SIZES = {
    "1M": DatasetSpec("1M", n_accounts=9_300),
    "10M": DatasetSpec("10M", n_accounts=93_000),
    "100M": DatasetSpec("100M", n_accounts=930_000),
    "smoke": DatasetSpec("smoke", n_accounts=500),
}
"""About 1M, 10M and 100M events (the demo writes ~107 events per account: `datasets.EVENTS_PER_ACCOUNT`);
`smoke` (~54k events) is for the test that keeps this script from rotting. `make bench` runs 1M and 10M;
`make bench-100m` runs 100M once, without the pandas comparator (it would need the events in memory)."""

INGEST_STAGE, DBT_STEP, SIGNALS_STEP, COUNTS_STAGE = "ingest + dbt", "beton_dbt_models", "signals", "cohort counts"
"""beton's compute path = the dbt step + the cohort-counts stage + the `signals` step (BENCHMARKS.md)."""

TARGETS = {
    "compute_vs_floor": 2.0,
    "pandas_vs_beton": 20.0,
    "run_seconds_10m": 180.0,
    "peak_rss_gib_10m": 4.0,
    "run_seconds_100m": 1800.0,
    "peak_rss_gib_100m": 8.0,
    "scaling_exponent": 1.1,
    "orchestration_share": 0.10,
    "daily_share": 0.10,
}
"""The issue's targets on 2 cores; near-linear means time grows with events^k, k ≤ 1.1; the orchestration share is
the run's wall time outside every step (Dagster's run set-up, event log and partitions) over its whole. The daily
run's target (≤ 10 % of a full run, with the same tables) is measured by `benchmarks/daily.py`: `make bench` runs it
at 10M and reports it in the same table."""

WORKER_TIMEOUT_SECONDS = 45 * 60
"""A `beton run` repetition on up to 10M events that takes longer than this is stopped (bounded, never hangs
`make bench`); larger datasets get proportionally longer (`worker_timeout`)."""


def worker_timeout(spec: DatasetSpec) -> float:
    """`WORKER_TIMEOUT_SECONDS`, scaled up with the accounts above the 10M dataset's 93,000."""
    return WORKER_TIMEOUT_SECONDS * max(1.0, spec.n_accounts / SIZES["10M"].n_accounts)


def log(message: str) -> None:
    """Progress to stderr (the results table goes to stdout)."""
    print(f"[bench {datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------------------


def machine_info() -> dict:
    """nproc, memory, CPU model, load average (other engineers may be running tests), versions, commit."""
    import duckdb
    import polars
    import psutil

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / GIB, 1),
        "cpu": cpu,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "polars": polars.__version__,
        "platform": platform.platform(),
        "commit": commit + (" (uncommitted changes)" if dirty else ""),
        "started_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


# --------------------------------------------------------------------------------------------------
# `beton run`, one subprocess per repetition
# --------------------------------------------------------------------------------------------------


def run_pipeline_once(
    source_dir: Path, work: Path, timeout: float = WORKER_TIMEOUT_SECONDS, fresh: bool = True
) -> dict:
    """One `beton run` in a fresh process, fresh warehouse file and fresh Dagster home; its timings and memory.

    The warehouse path stays the same across repetitions (the file is deleted first), as a scheduled
    run's would. dbt's per-run target folders go to `work/dbt_target` (DBT_TARGET_PATH); the settings are
    a snapshot of what the run would load (`settings_mapping`) taken when the repetition starts.
    `fresh=False` keeps the warehouse and the Dagster home of the previous run in `work` (a next day's run).
    """
    warehouse = work / "warehouse.duckdb"
    home = work / "dagster_home"
    dbt_target = work / "dbt_target"
    if fresh:
        for path in (warehouse, Path(f"{warehouse}.wal")):
            path.unlink(missing_ok=True)
        shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(dbt_target, ignore_errors=True)
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    out = work / "worker.json"
    out.unlink(missing_ok=True)
    # A snapshot of the settings: every asset re-reads them, and a file edited mid-run must not change the run.
    config = work / "beton.yaml"
    raw, _ = settings_mapping(demo_data=demo_config.is_demo_export(source_dir))  # what `beton run` on it loads
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {
        **os.environ,
        "BETON_SOURCE_DIR": str(source_dir.resolve()),
        "BETON_WAREHOUSE": str(warehouse.resolve()),
        "DAGSTER_HOME": str(home.resolve()),
        "DBT_TARGET_PATH": str(dbt_target.resolve()),
        "BETON_CONFIG": str(config.resolve()),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])),
    }
    log_path = work / "worker.log"
    started = time.perf_counter()
    with open(log_path, "w") as log_file:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.pipeline_worker", str(out)],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            timeout=timeout,
        )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0 or not out.exists():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        raise RuntimeError(f"beton run failed (exit {proc.returncode}); last lines of {log_path}:\n{tail}")
    result = json.loads(out.read_text())
    result["process_seconds"] = round(elapsed, 3)
    return result


# --------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def timed_repeats(fn, repetitions: int) -> tuple[list[float], object]:
    """Call `fn()` `repetitions` times; the seconds of each call and the last result."""
    seconds, result = [], None
    for _ in range(repetitions):
        started = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - started)
    return seconds, result


def median_parts(parts: list[dict[str, float]]) -> dict[str, float]:
    """Per-key median over repetitions, keys in the order they were timed."""
    keys = dict.fromkeys(k for p in parts for k in p)
    return {k: median([p[k] for p in parts if k in p]) for k in keys}


@dataclass
class SizeResult:
    """Everything measured on one dataset."""

    label: str
    n_accounts: int
    n_events_written: int | None
    repetitions: int
    pipeline_runs: list[dict] = field(default_factory=list)
    floor_seconds: list[float] = field(default_factory=list)
    floor_result: dict = field(default_factory=dict)
    peer_seconds: list[float] = field(default_factory=list)
    peer_top: list[dict] = field(default_factory=list)
    core_seconds: list[float] = field(default_factory=list)
    core_parts: dict[str, float] = field(default_factory=dict)
    core_candidates: int = 0
    pandas_seconds: list[float] = field(default_factory=list)
    pandas_parts: dict[str, float] = field(default_factory=dict)
    pandas_candidates: int = 0
    quality: dict[str, dict] = field(default_factory=dict)
    dataset_generated_seconds: float | None = None

    # Derived figures (medians) -----------------------------------------------------------------
    def stage(self, name: str) -> float:
        return median([r["stage_seconds"].get(name, float("nan")) for r in self.pipeline_runs])

    def step(self, key: str) -> float:
        return median([r["step_seconds"].get(key, 0.0) for r in self.pipeline_runs])

    def ingest_seconds(self) -> float:
        """The ingest half of "ingest + dbt": the stage minus the dbt step, per repetition."""
        return median(
            [r["stage_seconds"][INGEST_STAGE] - r["step_seconds"].get(DBT_STEP, 0.0) for r in self.pipeline_runs]
        )

    def compute_path_seconds(self) -> float:
        """dbt step + cohort-counts stage + `signals` step, per repetition, then the median."""
        return median(
            [
                r["step_seconds"].get(DBT_STEP, 0.0)
                + r["stage_seconds"].get(COUNTS_STAGE, 0.0)
                + r["step_seconds"].get(SIGNALS_STEP, 0.0)
                for r in self.pipeline_runs
            ]
        )

    def stage_names(self) -> list[str]:
        """The runner's stages, in its order."""
        return list(self.pipeline_runs[0]["stage_seconds"]) if self.pipeline_runs else []

    def orchestration_seconds(self) -> float:
        """`run_pipeline` wall time not spent inside any step: run set-up, event log, partitions, summary."""
        return median([r["wall_seconds"] - sum(r["step_seconds"].values()) for r in self.pipeline_runs])

    def whole_seconds(self) -> float:
        return median([r["wall_seconds"] for r in self.pipeline_runs])

    def peak_rss_gib(self) -> float:
        return median([r["peak_rss_bytes"] / GIB for r in self.pipeline_runs])

    def max_peak_rss_gib(self) -> float:
        return max((r["peak_rss_bytes"] / GIB for r in self.pipeline_runs), default=float("nan"))

    def max_stage_rss_gib(self, stage: str) -> float:
        return max(
            (r.get("peak_rss_by_stage", {}).get(stage, 0) / GIB for r in self.pipeline_runs), default=float("nan")
        )

    def raw_events(self) -> int:
        return int(self.pipeline_runs[-1]["rows"].get("raw.raw_events", 0)) if self.pipeline_runs else 0

    def dbt_models_seconds(self) -> float:
        """Sum of the dbt models' own execution times (no tests, no dbt start-up), median over repetitions."""
        return self.dbt_type_seconds("model")

    def dbt_type_seconds(self, resource_type: str) -> float:
        """Summed execution time of one dbt resource type (model, test, unit_test, seed), median over repetitions."""
        return median([r.get("dbt", {}).get("seconds_by_type", {}).get(resource_type, 0.0) for r in self.pipeline_runs])

    def dbt_overhead_seconds(self) -> float:
        """The dbt step minus dbt's own elapsed time: dbt's start-up and parsing, and dagster-dbt's event handling."""
        return median(
            [
                r["step_seconds"].get(DBT_STEP, 0.0) - r.get("dbt", {}).get("elapsed_seconds", 0.0)
                for r in self.pipeline_runs
            ]
        )


def measure_size(spec: DatasetSpec, repetitions: int, analyst_repetitions: int, root: Path = BENCH_ROOT) -> SizeResult:
    """Generate (or reuse) the dataset, run `beton run` `repetitions` times, then time the comparators."""
    from beton_pipeline.settings import load_settings
    from beton_pipeline.store.signals import read_signals
    from beton_pipeline.warehouse import connect

    started = time.perf_counter()
    source_dir, generated = ensure_dataset(spec, root / "data", log=log)
    result = SizeResult(spec.label, spec.n_accounts, dataset_events(source_dir), repetitions)
    if generated:
        result.dataset_generated_seconds = round(time.perf_counter() - started, 1)
    truth = json.loads((source_dir / "TRUTH.json").read_text())
    work = root / "runs" / spec.label
    work.mkdir(parents=True, exist_ok=True)

    for i in range(repetitions):
        log(f"{spec.label}: beton run {i + 1}/{repetitions} (load average {os.getloadavg()[0]:.1f}) …")
        run = run_pipeline_once(source_dir, work, timeout=worker_timeout(spec))
        log(
            f"{spec.label}: beton run {i + 1}/{repetitions}: {run['wall_seconds']:.1f} s, peak RSS {run['peak_rss_bytes'] / GIB:.2f} GiB"
        )
        result.pipeline_runs.append(run)

    settings = load_settings(work / "beton.yaml")  # the snapshot the last repetition ran with
    methods.warm_up()  # imports are not part of any timing
    warehouse = work / "warehouse.duckdb"
    with connect(warehouse, read_only=True) as con:
        log(f"{spec.label}: floor ×{repetitions}")
        result.floor_seconds, result.floor_result = timed_repeats(
            lambda: methods.floor(con, settings.windows.observation_days), repetitions
        )
        log(f"{spec.label}: peer's method ×{repetitions}")
        result.peer_seconds, top = timed_repeats(
            lambda: methods.peer(con, settings.discovery.excluded_events), repetitions
        )
        result.peer_top = top.to_dicts()
        log(f"{spec.label}: beton core in-process ×{repetitions}")
        core_parts = []
        for _ in range(repetitions):
            t = time.perf_counter()
            core = methods.beton_core(con, settings)
            result.core_seconds.append(time.perf_counter() - t)
            core_parts.append(core.seconds)
        result.core_parts, result.core_candidates = median_parts(core_parts), core.candidates
        log(f"{spec.label}: analyst's pandas ×{analyst_repetitions}")
        pandas_parts, analyst = [], None
        for _ in range(analyst_repetitions):
            t = time.perf_counter()
            analyst = methods.analyst_pandas(
                con,
                windows=settings.feature_windows,
                thresholds=settings.discovery.count_thresholds,
                excluded_events=settings.discovery.excluded_events,
            )
            result.pandas_seconds.append(time.perf_counter() - t)
            pandas_parts.append(analyst.seconds)
        result.pandas_parts = median_parts(pandas_parts)
        result.pandas_candidates = len(analyst.tests) if analyst else 0
        result.quality = {
            "beton": asdict(methods.beton_quality(con, truth)),
            "beton_marginal": asdict(
                methods.beton_marginal_quality(read_signals(con, include_all=True), truth, settings.discovery_config())[
                    0
                ]
            ),
            "peer": asdict(methods.peer_quality(top, truth)),
        }
        if analyst:
            result.quality["pandas"] = asdict(methods.analyst_quality(analyst.tests, truth))
    return result


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def _s(x: float) -> str:
    return "—" if x != x else (f"{x:,.1f}" if x >= 10 else f"{x:.2f}")


def _ratio(x: float) -> str:
    return "—" if x != x else f"{x:,.1f}×" if x >= 10 else f"{x:.2f}×"


def scaling_exponent(t_small: float, t_large: float, n_small: int, n_large: int) -> float:
    """k in t ∝ nᵏ between two sizes: log(t_large / t_small) / log(n_large / n_small)."""
    import math

    if not (t_small > 0 and t_large > 0 and n_large > n_small > 0):
        return float("nan")
    return math.log(t_large / t_small) / math.log(n_large / n_small)


def report(machine: dict, sizes: list[SizeResult], total_seconds: float, daily_result: dict | None = None) -> str:
    """The markdown the run prints and BENCHMARKS.md holds: machine, timings, ratios, quality, targets, and the
    next day's run (`benchmarks/daily.py`'s result) where it was measured."""
    lines = [
        "## Machine",
        "",
        f"- {machine['nproc']} cores ({machine['cpu']}), {machine['memory_gib']} GiB RAM, {machine['platform']}",
        f"- load average at start: {', '.join(str(x) for x in machine['load_average_start'])} "
        "(1, 5, 15 min; other engineers' test runs share the machine)",
        f"- Python {machine['python']}, DuckDB {machine['duckdb']}, polars {machine['polars']}; commit {machine['commit']}",
        f"- run {machine['started_utc']}, {total_seconds / 60:.1f} min in all",
        "",
        "## Timings (seconds, median of the repetitions)",
        "",
    ]
    header = (
        "| measurement | "
        + " | ".join(f"{s.label} events" for s in sizes)
        + (" | growth (k in t ∝ nᵏ) |" if len(sizes) == 2 else " |")
    )
    lines += [header, "|---" * (len(sizes) + 1 + (len(sizes) == 2)) + "|"]

    def row(name: str, values: list[float], fmt=_s, growth: bool = True) -> None:
        cells = [fmt(v) for v in values]
        extra = []
        if len(sizes) == 2:
            k = (
                scaling_exponent(values[0], values[1], sizes[0].raw_events(), sizes[1].raw_events())
                if growth
                else float("nan")
            )
            extra = ["—" if k != k else f"{k:.2f}"]
        lines.append("| " + " | ".join([name, *cells, *extra]) + " |")

    lines.append(
        "| events loaded (`raw.raw_events`) / accounts | "
        + " | ".join(f"{s.raw_events():,} / {s.n_accounts:,}" for s in sizes)
        + (" | |" if len(sizes) == 2 else " |")
    )
    lines.append(
        "| repetitions | " + " | ".join(str(s.repetitions) for s in sizes) + (" | |" if len(sizes) == 2 else " |")
    )
    row("**`beton run`, whole**", [s.whole_seconds() for s in sizes])
    stages = list(dict.fromkeys(name for s in sizes for name in s.stage_names()))
    for name in stages:
        if name == INGEST_STAGE:
            row("  ingest (9 tables + checks)", [s.ingest_seconds() for s in sizes])
            row("  dbt build (staging → marts, with dbt tests)", [s.step(DBT_STEP) for s in sizes])
            row("    models' SQL (summed execution time, 2 threads)", [s.dbt_models_seconds() for s in sizes])
            row(
                "    data and unit tests (summed execution time)",
                [s.dbt_type_seconds("test") + s.dbt_type_seconds("unit_test") for s in sizes],
            )
            row(
                "    dbt start-up and parsing, dagster-dbt (step − dbt's elapsed)",
                [s.dbt_overhead_seconds() for s in sizes],
            )
        else:
            row(f"  {name}", [s.stage(name) for s in sizes])
    row("  (orchestration: wall time outside every step)", [s.orchestration_seconds() for s in sizes])
    row("peak RSS of the process tree, GiB (max over repetitions)", [s.max_peak_rss_gib() for s in sizes], growth=False)
    row("**beton compute path** (dbt + cohort counts + `signals`)", [s.compute_path_seconds() for s in sizes])
    row("**floor** (one DuckDB query on `raw.raw_events`)", [median(s.floor_seconds) for s in sizes])
    row("beton core in-process (marts → signals)", [median(s.core_seconds) for s in sizes])
    for part in sizes[0].core_parts:
        row(f"  `{part}`", [s.core_parts.get(part, float("nan")) for s in sizes])
    row("**peer**: PostHog-style correlation (SQL)", [median(s.peer_seconds) for s in sizes])
    row("**analyst**: pandas + `fisher_exact` loop", [median(s.pandas_seconds) for s in sizes])
    for part in sizes[0].pandas_parts:
        row(f"  {part}", [s.pandas_parts.get(part, float("nan")) for s in sizes])
    lines += [
        "",
        "### Heaviest Dagster steps (seconds, median; summed over runs: `signal_cohort_counts` runs once per month)",
        "",
    ]
    lines += ["| step | " + " | ".join(s.label for s in sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
    steps = sorted(
        {k for s in sizes for r in s.pipeline_runs for k in r["step_seconds"]}, key=lambda k: -sizes[-1].step(k)
    )
    for key in steps[:12]:
        lines.append("| " + " | ".join([f"`{key}`", *(_s(s.step(key)) for s in sizes)]) + " |")
    lines += ["", "### Peak RSS of the process tree by stage (GiB, max over repetitions)", ""]
    lines += ["| stage | " + " | ".join(s.label for s in sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
    for name in stages:
        lines.append("| " + " | ".join([name, *(_s(s.max_stage_rss_gib(name)) for s in sizes)]) + " |")
    lines += [
        "",
        "## Ratios",
        "",
        "| ratio | " + " | ".join(s.label for s in sizes) + " |",
        "|---" * (len(sizes) + 1) + "|",
    ]

    def ratio_row(name: str, values: list[float]) -> None:
        lines.append("| " + " | ".join([name, *(_ratio(v) for v in values)]) + " |")

    ratio_row("beton compute path / floor", [s.compute_path_seconds() / median(s.floor_seconds) for s in sizes])
    ratio_row(
        "dbt models' SQL + beton core / floor",
        [(s.dbt_models_seconds() + median(s.core_seconds)) / median(s.floor_seconds) for s in sizes],
    )
    ratio_row("pandas / beton compute path", [median(s.pandas_seconds) / s.compute_path_seconds() for s in sizes])
    ratio_row(
        "pandas / (dbt models' SQL + beton core)",
        [median(s.pandas_seconds) / (s.dbt_models_seconds() + median(s.core_seconds)) for s in sizes],
    )
    ratio_row(
        "pandas tests loop / beton core",
        [s.pandas_parts.get("tests (loop)", float("nan")) / median(s.core_seconds) for s in sizes],
    )

    lines += [
        "",
        "## Discovery quality on the planted truth (`TRUTH.json`: planted behaviours, 1 drifting, 1 leak, activity proxies)",
        "",
    ]
    lines += [
        "Activity proxies: conditions on events whose counts are pure activity (TRUTH.json `proxies` and "
        "`activity_events`); they are counted in noise too.",
        "",
        "| method | size | planted found | noise shown in top 10 | activity proxies in top 10 | leak in top 10 "
        "| enabled (noise enabled; proxies enabled) | missed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in sizes:
        for method, label, found_how in (
            ("beton", "beton (`beton signals`: activity-adjusted rule)", "enabled"),
            ("beton_marginal", "beton, marginal rule alone (same rows, adjusted figures left out)", "enabled"),
            ("peer", "peer (top 10 by odds ratio)", "in its top 10"),
            ("pandas", "analyst (BH q ≤ 0.05, lift > 1)", "significant"),
        ):
            q = s.quality.get(method)
            if not q:
                continue
            enabled = (
                f"{q['enabled']} ({q['noise_enabled']}; {q.get('proxies_enabled', 0)})"
                if q.get("enabled") is not None
                else "—"
            )
            expressible = f" (can express {q['expressible']})" if q["expressible"] != q["planted_total"] else ""
            lines.append(
                f"| {label} | {s.label} | {q['planted_found']}/{q['planted_total']} {found_how}{expressible} | {q['noise_in_top10']} | "
                f"{q.get('proxies_in_top10', 0)} | {q['leak_in_top10']} | {enabled} | {', '.join(q['missed']) or '—'} |"
            )
    lines += ["", "## Targets (2 cores)", "", "| target | measured | met |", "|---|---|---|"]

    def target(name: str, measured: str, met: bool | None) -> None:
        lines.append(f"| {name} | {measured} | {'—' if met is None else ('yes' if met else '**no**')} |")

    huge = next((s for s in sizes if s.label == "100M"), None)
    big = next((s for s in sizes if s.label == "10M"), None) or (sizes[-1] if huge is None else None)
    if big is not None:  # the 10M goals (or, on a smaller run alone, the same measures on it)
        cp_floor = big.compute_path_seconds() / median(big.floor_seconds)
        target(
            f"compute path within {TARGETS['compute_vs_floor']:g}× the floor at {big.label}",
            f"{cp_floor:.1f}× ({_s(big.compute_path_seconds())} s vs {_s(median(big.floor_seconds))} s)",
            cp_floor <= TARGETS["compute_vs_floor"],
        )
        speedup = median(big.pandas_seconds) / big.compute_path_seconds()
        target(
            f"≥ {TARGETS['pandas_vs_beton']:g}× faster than pandas at {big.label}",
            f"pandas / compute path = {speedup:.2f}×" if speedup == speedup else "not measured",
            speedup >= TARGETS["pandas_vs_beton"] if speedup == speedup else None,
        )
        whole = big.whole_seconds()
        target(
            f"`beton run` on {big.label} under {TARGETS['run_seconds_10m']:g} s",
            f"{whole:.0f} s",
            whole < TARGETS["run_seconds_10m"],
        )
        rss = big.max_peak_rss_gib()
        target(
            f"peak RSS on {big.label} under {TARGETS['peak_rss_gib_10m']:g} GiB",
            f"{rss:.2f} GiB",
            rss < TARGETS["peak_rss_gib_10m"],
        )
    for s in sizes:  # Dagster's own time: what the run spends outside every step (run set-up, event log, partitions)
        share = s.orchestration_seconds() / s.whole_seconds()
        target(
            f"orchestration outside the steps ≤ {TARGETS['orchestration_share']:.0%} of `beton run` at {s.label}",
            f"{share:.1%} ({_s(s.orchestration_seconds())} s of {_s(s.whole_seconds())} s)",
            share <= TARGETS["orchestration_share"],
        )
    if huge is not None:
        whole, rss = huge.whole_seconds(), huge.max_peak_rss_gib()
        target(
            f"`beton run` on {huge.label} under {TARGETS['run_seconds_100m']:g} s",
            f"{whole:.0f} s",
            whole < TARGETS["run_seconds_100m"],
        )
        target(
            f"peak RSS on {huge.label} under {TARGETS['peak_rss_gib_100m']:g} GiB",
            f"{rss:.2f} GiB",
            rss < TARGETS["peak_rss_gib_100m"],
        )
    if len(sizes) == 2:
        k_whole = scaling_exponent(
            sizes[0].whole_seconds(), sizes[1].whole_seconds(), sizes[0].raw_events(), sizes[1].raw_events()
        )
        k_compute = scaling_exponent(
            sizes[0].compute_path_seconds(),
            sizes[1].compute_path_seconds(),
            sizes[0].raw_events(),
            sizes[1].raw_events(),
        )
        small, large = sizes
        parts = [
            ("ingest", small.ingest_seconds(), large.ingest_seconds()),
            ("dbt", small.step(DBT_STEP), large.step(DBT_STEP)),
        ]
        parts += [(name, small.stage(name), large.stage(name)) for name in stages if name != INGEST_STAGE]
        exponents = [(scaling_exponent(a, b, small.raw_events(), large.raw_events()), name) for name, a, b in parts]
        k_worst, worst = max(((k, n) for k, n in exponents if k == k), default=(float("nan"), "—"))
        ok = all(k <= TARGETS["scaling_exponent"] for k in (k_whole, k_compute, k_worst) if k == k)
        target(
            f"near-linear growth 1M → 10M (k ≤ {TARGETS['scaling_exponent']:g} in t ∝ nᵏ)",
            f"whole k = {k_whole:.2f}, compute path k = {k_compute:.2f}; steepest stage: {worst} k = {k_worst:.2f}",
            ok,
        )
    lines += daily_lines(daily_result)
    return "\n".join(lines) + "\n"


def daily_lines(result: dict | None) -> list[str]:
    """The next day's run in the report: its row of the targets table, then its own section (none unmeasured)."""
    from benchmarks import daily  # here: daily.py imports this module

    if result is None:
        return []
    same = sum(1 for d in result["differences"].values() if not d)
    tables = len(result["differences"])
    met = result["ratio"] <= TARGETS["daily_share"] and same == tables
    return [
        f"| the next day's run at {result['size']} ≤ {TARGETS['daily_share']:.0%} of a full run, same tables | "
        f"{result['ratio']:.0%} ({result['daily']['wall_seconds']:.1f} s vs {result['full']['wall_seconds']:.1f} s); "
        f"tables identical: {same} of {tables} | {'yes' if met else '**no**'} |",
        "",
        "#" + daily.report(result).rstrip("\n"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1M,10M", help="comma-separated dataset labels (1M, 10M, 100M)")
    parser.add_argument(
        "--repetitions",
        type=int,
        default=3,
        help="repetitions of every timing (median reported; at least 3 for the record)",
    )
    parser.add_argument(
        "--root", type=Path, default=BENCH_ROOT, help="where datasets, runs and results go (default: .bench/)"
    )
    parser.add_argument(
        "--analyst-repetitions",
        type=int,
        default=None,
        help="repetitions of the pandas version (default: --repetitions; 0 leaves it out)",
    )
    parser.add_argument(
        "--daily",
        default=None,
        help="size of the next day's run to measure (benchmarks/daily.py; default: 10M when it is among --sizes; "
        "'none' leaves it out)",
    )
    args = parser.parse_args(argv)
    labels = [s.strip() for s in args.sizes.split(",") if s.strip()]
    daily_label = ("10M" if "10M" in labels else "none") if args.daily is None else args.daily
    if daily_label != "none" and daily_label not in SIZES:
        parser.error(f"unknown --daily size {daily_label}; choose from {', '.join(SIZES)} or none")
    unknown = [s for s in labels if s not in SIZES]
    if unknown:
        parser.error(f"unknown size(s) {', '.join(unknown)}; choose from {', '.join(SIZES)}")
    if args.repetitions < 1:
        parser.error("--repetitions must be at least 1")
    if args.analyst_repetitions is not None and args.analyst_repetitions < 0:
        parser.error("--analyst-repetitions must be 0 or more")
    started = time.perf_counter()
    machine = machine_info()
    log(f"machine: {machine['nproc']} cores, {machine['memory_gib']} GiB, load average {machine['load_average_start']}")
    results = [
        measure_size(
            SIZES[label],
            args.repetitions,
            args.repetitions if args.analyst_repetitions is None else args.analyst_repetitions,
            args.root,
        )
        for label in labels
    ]
    daily_result = None
    if daily_label != "none":
        from benchmarks import daily  # here: daily.py imports this module

        daily_result = daily.measure(daily_label, args.root)
    total = time.perf_counter() - started
    text = report(machine, results, total, daily_result)
    out_dir = args.root / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (out_dir / f"{stamp}.json").write_text(
        json.dumps(
            {"machine": machine, "total_seconds": total, "sizes": [asdict(r) for r in results], "daily": daily_result},
            indent=1,
            default=str,
        )
        + "\n"
    )
    (out_dir / f"{stamp}.md").write_text(text)
    print(text)
    log(f"results: {out_dir / stamp}.json and .md ({total / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
