"""How a launched run executes its steps: one after another in the run's own process.

Dagster's default (the multiprocess executor) starts a process per step, and each of beton's step
processes imports the whole code location (Dagster, dagster-dbt, polars, scipy, scikit-learn: 7.3 s in the
10M benchmark's worker, 9.6 s measured with `python -X importtime -c "import beton_pipeline.definitions"` on an
idle 2-core machine) before doing its own work, which is often under a second: for the 20 steps of
`daily_ingest_job` that is 2-3 minutes of starting processes. Nothing is lost by
running them in-process: every step that writes the warehouse is in the `duckdb_warehouse` pool of size
1 (DuckDB allows one writer), so they never ran side by side anyway, and the pool still orders steps
of concurrent runs (the in-process executor claims pool slots like the multiprocess one). `beton run`
executes its jobs in-process already (`runner.py`); this makes runs launched by the UI, schedules,
sensors and automation do the same. A deployment that wants other executors (Docker, Kubernetes)
sets its own here (RUNBOOK.md, "Scaling out")."""

import dagster as dg


@dg.definitions
def execution() -> dg.Definitions:
    return dg.Definitions(executor=dg.in_process_executor)
