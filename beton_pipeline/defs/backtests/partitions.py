"""One dynamic partition per signal: enabled discovered signals and every custom signal.

`register_signal_partitions(instance, con)` adds the missing ones (`beton run` calls it after
`custom_signals`; the sensor in `sensors.py` does the same after `signals` or `custom_signals`
materialise). Partitions are never removed: a signal that leaves beton.signals keeps its partition,
and re-materialising it removes its rows.
"""

import dagster as dg
import duckdb

from beton_pipeline.store.backtests import backtested_signal_ids

signal_partitions = dg.DynamicPartitionsDefinition(name="signals")


def register_signal_partitions(instance: dg.DagsterInstance, con: duckdb.DuckDBPyConnection) -> list[str]:
    """Add a `signals` partition for every signal that gets a backtest; returns those signal ids (sorted)."""
    ids = backtested_signal_ids(con)
    existing = set(instance.get_dynamic_partitions(signal_partitions.name))
    new = [i for i in ids if i not in existing]
    if new:
        instance.add_dynamic_partitions(signal_partitions.name, new)
    return ids
