"""One `beton run` in its own process, for the benchmark: `python -m benchmarks.pipeline_worker OUT.json`.

The parent sets `BETON_SOURCE_DIR`, `BETON_WAREHOUSE` (a fresh file) and `DAGSTER_HOME` (a temp
directory holding the project's dagster.yaml) and polls this process tree's memory. This process
runs `beton_pipeline.runner.run_pipeline` exactly as `beton run` does and writes to OUT.json:

* `stage_seconds`: the runner's own stage times;
* `step_seconds`: every Dagster step's duration (start → end in the event log), summed by step key
  over this process's runs (not those of an earlier `beton run` on the same instance), so the "ingest + dbt" stage splits into the ingest assets and the one dbt step;
* `dbt`: dbt's own timings (per model, per resource type, elapsed) from its `run_results.json` under
  `DBT_TARGET_PATH` (when the parent sets it);
* `wall_seconds`: `run_pipeline` from call to return (stages + the summary queries);
* `peak_rss_bytes` / `peak_rss_by_stage`: the peak of this process tree's summed RSS (this process +
  every descendant, i.e. the `dbt build` subprocess), sampled every 50 ms by a thread, overall and
  per stage;
* `maxrss_self_bytes` / `maxrss_children_bytes`: the kernel's `getrusage` peaks of this process and
  of its largest child. A forked child starts with its parent's resident pages counted, so the
  children figure is at least the parent's RSS at fork time.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil

SAMPLE_SECONDS = 0.05


def _maxrss_bytes(who: int) -> int:
    """`ru_maxrss` in bytes (Linux reports KiB)."""
    return int(resource.getrusage(who).ru_maxrss) * (1 if sys.platform == "darwin" else 1024)


class TreeMemorySampler:
    """Peak summed RSS of this process and its descendants, overall and per named phase (a thread)."""

    def __init__(self, interval: float = SAMPLE_SECONDS) -> None:
        self.interval = interval
        self.phase = "start"
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._me = psutil.Process()

    def tree_rss(self) -> int:
        """RSS of this process plus every live descendant, in bytes."""
        total = self._me.memory_info().rss
        for child in self._me.children(recursive=True):
            with contextlib.suppress(psutil.Error):  # exited between listing and reading
                total += child.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self.tree_rss()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def peak(self) -> int:
        return max(self.peaks.values(), default=0)


def step_seconds(instance, earlier: frozenset[str] = frozenset()) -> dict[str, float]:
    """Seconds per step key, summed over every run recorded in `instance` but the `earlier` run ids (those of a
    previous `beton run` on the same instance), from the event log's step stats."""
    totals: dict[str, float] = defaultdict(float)
    for record in instance.get_run_records():
        if record.dagster_run.run_id in earlier:
            continue
        for stat in instance.get_run_step_stats(record.dagster_run.run_id):
            if stat.start_time is not None and stat.end_time is not None:
                totals[stat.step_key] += stat.end_time - stat.start_time
    return {k: round(v, 3) for k, v in sorted(totals.items())}


def dbt_timings(target_root: Path | None) -> dict:
    """dbt's own timings from the `run_results.json` of the runs under `target_root` (DBT_TARGET_PATH):
    `model_seconds` (each model's execution time: the SQL alone), `seconds_by_type` (summed execution
    time of models, tests, unit tests, seeds; dbt runs two threads, so sums can exceed the elapsed
    time) and `elapsed_seconds` (dbt's own wall time, without its start-up and parsing)."""
    models: dict[str, float] = defaultdict(float)
    by_type: dict[str, float] = defaultdict(float)
    elapsed = 0.0
    if target_root is not None and target_root.is_dir():
        for path in target_root.glob("*/run_results.json"):
            results = json.loads(path.read_text())
            elapsed += float(results.get("elapsed_time") or 0.0)
            for result in results.get("results", []):
                unique_id = result.get("unique_id", "")
                seconds = float(result.get("execution_time") or 0.0)
                by_type[unique_id.split(".")[0]] += seconds
                if unique_id.startswith("model."):
                    models[unique_id.split(".")[-1]] += seconds
    return {
        "model_seconds": {k: round(v, 3) for k, v in sorted(models.items())},
        "seconds_by_type": {k: round(v, 3) for k, v in sorted(by_type.items())},
        "elapsed_seconds": round(elapsed, 3),
    }


def main(out: Path) -> None:
    """Run the whole graph once and write the timings to `out`."""
    started = time.perf_counter()
    import dagster as dg

    from beton_pipeline.runner import run_pipeline

    imported = time.perf_counter()
    with dg.DagsterInstance.get() as instance, TreeMemorySampler() as memory:
        earlier = frozenset(r.dagster_run.run_id for r in instance.get_run_records())
        t0 = time.perf_counter()
        summary = run_pipeline(instance, on_stage=lambda name: setattr(memory, "phase", name))
        memory.phase = "summary"
        wall = time.perf_counter() - t0
        steps = step_seconds(instance, earlier)
    out.write_text(
        json.dumps(
            {
                "stage_seconds": summary.stage_seconds,
                "step_seconds": steps,
                "wall_seconds": round(wall, 3),
                "import_seconds": round(imported - started, 3),
                "dbt": dbt_timings(Path(os.environ["DBT_TARGET_PATH"]) if os.environ.get("DBT_TARGET_PATH") else None),
                "rows": summary.rows,
                "accounts": summary.accounts,
                "peak_rss_bytes": memory.peak,
                "peak_rss_by_stage": memory.peaks,
                "maxrss_self_bytes": _maxrss_bytes(resource.RUSAGE_SELF),
                "maxrss_children_bytes": _maxrss_bytes(resource.RUSAGE_CHILDREN),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m benchmarks.pipeline_worker OUT.json")
    main(Path(sys.argv[1]))
