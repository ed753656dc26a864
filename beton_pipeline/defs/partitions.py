"""Partitions shared across domains, and the rule every catch-up sensor uses to request only what is
out of date.

* `cohort_months` (dynamic): `beton run` and the cohort sensor add the months (`YYYY-MM`) that have
  eligible accounts, so a new month adds one partition.

The daily partitions of signal health and scores: `defs/monitoring/partitions.py`.
"""

from collections.abc import Iterable

import dagster as dg

cohort_months = dg.DynamicPartitionsDefinition(name="cohort_months")


def range_tags(keys: list[str]) -> dict[str, str]:
    """Run tags for one run over the partitions `keys[0]`…`keys[-1]` (in the partitions' order): an asset
    with a single-run backfill policy (cohort counts, backtests, daily health and scores) then does them all
    in one run, reading its inputs once."""
    return {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}


def new_and_ordered(registered: list[str], keys: list[str]) -> tuple[list[str], list[str]]:
    """(the `keys` not yet registered, every key in partition order): a dynamic partitions definition
    orders its keys as they were added, so the new ones come after `registered`, in the order given."""
    known = set(registered)
    new = [k for k in keys if k not in known]
    position = {k: i for i, k in enumerate([*registered, *new])}
    return new, sorted(keys, key=position.__getitem__)


def latest_storage_id(instance: dg.DagsterInstance, asset_keys: Iterable[dg.AssetKey]) -> int | None:
    """The storage id of the newest materialization of any of `asset_keys` (None when none has one)."""
    ids = [
        records[0].storage_id
        for key in asset_keys
        if (records := instance.fetch_materializations(key, limit=1).records)
    ]
    return max(ids) if ids else None


def outdated_partitions(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, keys: Iterable[str], inputs_at: int | None
) -> list[str]:
    """The partitions among `keys` (in order) of `asset_key` that were never materialised, or were last
    materialised before `inputs_at` (the storage id of its inputs' newest materialization).

    This is what a catch-up sensor requests: what `beton run` (or an earlier run) just materialised after
    its inputs is up to date, so opening the UI after a run requests nothing."""
    keys = list(keys)
    latest = instance.get_latest_storage_id_by_partition(
        asset_key, dg.DagsterEventType.ASSET_MATERIALIZATION, partitions=set(keys)
    )
    return [k for k in keys if k not in latest or (inputs_at is not None and latest[k] < inputs_at)]
