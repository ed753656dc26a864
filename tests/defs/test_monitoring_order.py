"""The daily run order: a day's scores weight each signal by its health that day, so `account_scores`
depends on `signal_health`, partition for partition (both on the monitoring days)."""

import dagster as dg


def test_scores_of_a_day_come_after_the_health_of_that_day():
    from beton_pipeline.definitions import defs

    graph = defs.resolve_asset_graph()
    health, scores = dg.AssetKey("signal_health"), dg.AssetKey("account_scores")
    assert health in graph.get(scores).parent_keys
    assert graph.get(scores).partitions_def == graph.get(health).partitions_def
    # same partitions, no explicit mapping: day D of the scores reads day D of the health
    mapping = graph.get(scores).partition_mappings.get(health)
    assert mapping is None or isinstance(mapping, dg.IdentityPartitionMapping)


def test_custom_signals_firings_are_written_before_health_and_scores_read_them():
    from beton_pipeline.definitions import defs
    from beton_pipeline.store.firings import FIRING_INPUTS

    graph = defs.resolve_asset_graph()
    custom = dg.AssetKey("custom_signals")
    for daily in ("signal_health", "account_scores"):
        assert custom in graph.get(dg.AssetKey(daily)).parent_keys
    # custom firing times read the occurrence models, so they are rebuilt before custom_signals runs
    assert {dg.AssetKey(name) for name in FIRING_INPUTS} <= graph.get(custom).parent_keys
