"""store/custom_signals.py on a small hand-made warehouse: signal files are loaded with their problems named,
evaluated (conditions and sandboxed SQL), and counted per cohort month; re-counting replaces the whole table."""

import polars as pl
import pytest

from beton_pipeline.settings import Settings
from beton_pipeline.store import custom_signals as store
from beton_pipeline.warehouse import connect
from tests.store.signal_marts import MONTHS, make_marts

INVITES_YAML = """\
name: Invites
when:
  event: invited_teammate
  count: ">= 3"
  within_days: 14
"""
INVITES_SQL = """\
-- name: Invites (SQL)
select account_id from marts.account_event_features where event_name = 'invited_teammate' and n_first_14d >= 3
"""


@pytest.fixture
def warehouse(tmp_path):
    return make_marts(tmp_path / "warehouse.duckdb")


def _counts(warehouse):
    with connect(warehouse, read_only=True) as con:
        return con.sql(f"select * from {store.CUSTOM_COUNTS_TABLE} order by signal_id, cohort_month").pl()


def test_yaml_and_sql_of_the_same_behaviour_count_the_same(warehouse, tmp_path):
    signals_dir = tmp_path / "signals"
    signals_dir.mkdir()
    (signals_dir / "invites.yml").write_text(INVITES_YAML)
    (signals_dir / "invites.sql").write_text(INVITES_SQL)
    signals = store.count_custom_signals(warehouse, Settings(), signals_dir)
    counts = _counts(warehouse)
    assert sorted(s.kind for s in signals) == ["condition", "sql"]
    assert counts.height == 2 * len(MONTHS)  # every signal × month, zero counts kept
    by_kind = {
        k: g.sort("cohort_month").select("n_with", "conversions_with", "n_total") for (k,), g in counts.group_by("kind")
    }
    assert by_kind["condition"].equals(by_kind["sql"])
    assert counts.filter(pl.col("kind") == "sql").get_column("note").to_list() == [store.NO_FIRED_AT_NOTE] * len(MONTHS)


def test_recounting_replaces_the_table_and_an_empty_folder_empties_it(warehouse, tmp_path):
    signals_dir = tmp_path / "signals"
    signals_dir.mkdir()
    (signals_dir / "invites.yml").write_text(INVITES_YAML)
    (signals_dir / "invites.sql").write_text(INVITES_SQL)
    store.count_custom_signals(warehouse, Settings(), signals_dir)
    (signals_dir / "invites.sql").unlink()
    [left] = store.count_custom_signals(warehouse, Settings(), signals_dir)
    assert _counts(warehouse).get_column("signal_id").unique().to_list() == [left.signal_id]
    (signals_dir / "invites.yml").unlink()
    assert store.count_custom_signals(warehouse, Settings(), signals_dir) == []
    assert _counts(warehouse).is_empty()


def test_every_problem_is_named_with_its_file(warehouse, tmp_path):
    signals_dir = tmp_path / "signals"
    signals_dir.mkdir()
    (signals_dir / "a.yml").write_text(INVITES_YAML)
    (signals_dir / "b.yml").write_text(INVITES_YAML.replace("Invites", "Same definition"))
    (signals_dir / "c.yml").write_text("name: Unknown\nwhen:\n  event: no_such_event\n")
    with connect(warehouse, read_only=True) as con:
        vocab = store.read_vocabulary(con, Settings())
    with pytest.raises(store.CustomSignalsError) as err:
        store.load_signal_files(signals_dir, vocab)
    lines = str(err.value).splitlines()
    assert len(lines) == 2
    assert "b.yml" in lines[0] and "the same definition" in lines[0]
    assert "c.yml" in lines[1] and "no_such_event" in lines[1]


def test_signal_from_key_rebuilds_the_same_signal(warehouse):
    with connect(warehouse, read_only=True) as con:
        vocab = store.read_vocabulary(con, Settings())
    for signal in (
        store.load_definition(INVITES_YAML, "x.yml", "condition", vocab),
        store.sql_signal(INVITES_SQL, "x.sql"),
    ):
        again = store.signal_from_key(signal.key, "beton.signals", signal.name, vocab)
        assert (again.signal_id, again.kind, again.text) == (signal.signal_id, signal.kind, signal.text)
