"""store/catalog.py: the `beton events` catalogue read from a small hand-made warehouse."""

from beton_pipeline.settings import Settings
from beton_pipeline.store.catalog import event_catalog
from beton_pipeline.warehouse import connect
from tests.store.signal_marts import MONTHS, PER_MONTH, make_marts


def test_catalogue_lists_what_conditions_can_name(tmp_path):
    warehouse = make_marts(tmp_path / "warehouse.duckdb")
    with connect(warehouse, read_only=True) as con:
        catalog = event_catalog(con, Settings(), top=1)
        invited = con.sql(
            "select count(*) from marts.account_event_features where event_name = 'invited_teammate'"
        ).fetchall()[0][0]
    events = {r["event"]: r for r in catalog["events"]}
    assert set(events) == {"invited_teammate", "noise"} and events["invited_teammate"]["accounts"] == invited
    assert len(catalog["properties"]) == 1  # top=1 value per property
    assert catalog["properties"][0]["property"] == "$current_url"
    assert catalog["raw_property_keys"] == []  # no resolved events in this warehouse
    attributes = {r["attribute"]: r for r in catalog["attributes"]}
    assert (
        attributes["industry"]["accounts"] <= len(MONTHS) * PER_MONTH and len(attributes["industry"]["top_values"]) == 1
    )
    assert (
        attributes["employee_count"]["min"]
        <= attributes["employee_count"]["median"]
        <= attributes["employee_count"]["max"]
    )
    assert catalog["intent"][0]["intent"] == "g2_visit"
    assert catalog["windows_days"] == list(Settings().feature_windows)
