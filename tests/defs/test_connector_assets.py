"""The connector assets in Dagster (dagster-dlt's own run path, not the tests' `pull`): a pull then its ingest,
the cursor in the pull's metadata, a failing pull as one readable paragraph without the key, a full refresh of
part of a connector refused, and a second materialisation pulling only from the cursor on."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml

from beton_pipeline.defs.connectors.assets import build_connector_assets, pull_key
from beton_pipeline.defs.ingest.assets import build_ingest_assets
from beton_pipeline.defs.resources import SettingsResource, SourceResource, WarehouseResource
from beton_pipeline.settings import load_settings
from tests.fakes.attio_api import FakeAttioRecords
from tests.fakes.posthog_api import FakePostHog

KEYS = {"BETON_POSTHOG_API_KEY": "phx_SECRET_assets_9z", "BETON_ATTIO_API_KEY": "attio-SECRET-assets-8y"}
NOW = datetime.now(UTC).replace(microsecond=0)


def _events(first: int, count: int) -> list[dict]:
    return [
        {
            "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"e{n}")),
            "event": "$pageview",
            "timestamp": (NOW - timedelta(hours=2) + timedelta(minutes=n)).isoformat(),
            "distinct_id": f"u{n % 3}",
            "properties": {"$groups": {"company": "acme.io"}},
            "person_properties": {"email": f"u{n % 3}@acme.io"},
        }
        for n in range(first, first + count)
    ]


@pytest.fixture
def setup(tmp_path, monkeypatch):
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    with (
        FakePostHog(KEYS["BETON_POSTHOG_API_KEY"], "7", _events(0, 12)) as posthog,
        FakeAttioRecords(KEYS["BETON_ATTIO_API_KEY"]) as attio,
    ):
        attio.add_company("c1", "Acme", ["acme.io"], created_at="2025-01-05T10:00:00.000000000Z")
        attio.add_company("c2", "Globex", ["globex.com"], created_at="2025-01-06T10:00:00.000000000Z")
        config = tmp_path / "beton.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "sources": {
                        "landing_dir": str(tmp_path / "pulled"),
                        "posthog": {
                            "enabled": True,
                            "host": posthog.url,
                            "project_id": "7",
                            "page_size": 5,
                            "start": (NOW - timedelta(days=1)).isoformat(),
                            "max_attempts": 2,
                            "max_wait_seconds": 0.1,
                            "overlap_minutes": 5,
                        },
                        "attio": {"enabled": True, "api_base": attio.url, "deal_history": False},
                    }
                }
            )
        )
        settings = load_settings(config)
        assets = [build_connector_assets(name, settings) for name in settings.sources.enabled]
        ingest = [a for a in build_ingest_assets(settings.sources.pulled_tables()) if a.key.path[-1] == "raw_events"]
        resources = {
            "warehouse": WarehouseResource(path=str(tmp_path / "w.duckdb")),
            "settings": SettingsResource(config_path=str(config)),
            "source": SourceResource(source_dir=str(tmp_path)),
        }
        yield posthog, attio, assets, ingest, resources, tmp_path


def _materialize(assets, resources, selection=None, run_config=None) -> dg.ExecuteInProcessResult:
    return dg.materialize(assets, resources=resources, selection=selection, run_config=run_config, raise_on_error=False)


def _cursor(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict:
    (materialization,) = [m for m in result.asset_materializations_for_node("pull_posthog") if m.asset_key == key]
    return materialization.metadata["cursor"].value


def test_pull_then_ingest_with_the_cursor_in_the_metadata_and_only_new_rows_next_time(setup):
    posthog, attio, assets, ingest, resources, tmp = setup
    result = _materialize(
        [*assets, *ingest], resources, selection=[pull_key("posthog", "events"), dg.AssetKey("raw_events")]
    )
    assert result.success
    cursor = _cursor(result, pull_key("posthog", "events"))
    last = max(_events(0, 12), key=lambda e: e["timestamp"])
    assert cursor["table"]["cursor"]["uuid"] == last["uuid"]
    with duckdb.connect(str(tmp / "w.duckdb"), read_only=True) as con:
        assert con.sql("select count(*) from raw.raw_events").fetchall() == [(12,)]
    posthog.add(_events(12, 3))
    asked = len(posthog.queries)
    result = _materialize(
        [*assets, *ingest], resources, selection=[pull_key("posthog", "events"), dg.AssetKey("raw_events")]
    )
    assert result.success
    assert sum(q.rows for q in posthog.queries[asked:]) < 12  # the overlap and the new ones, not everything
    with duckdb.connect(str(tmp / "w.duckdb"), read_only=True) as con:
        assert con.sql("select count(*), count(distinct uuid) from raw.raw_events").fetchall() == [(15, 15)]


def test_a_failing_pull_is_one_paragraph_without_the_key_and_lands_nothing(setup):
    posthog, attio, assets, ingest, resources, tmp = setup
    posthog.break_after(1)
    result = _materialize(
        [*assets, *ingest], resources, selection=[pull_key("posthog", "events"), dg.AssetKey("raw_events")]
    )
    assert not result.success
    (failure,) = result.get_step_failure_events()
    text = failure.step_failure_data.error.message
    assert "Failure: posthog: POST" in text and "answered 500" in text and "attempts" in text
    assert all(key not in text for key in KEYS.values())
    assert not list((tmp / "pulled" / "posthog").glob("events/*.parquet"))


def test_a_full_refresh_of_part_of_a_connector_is_refused(setup):
    posthog, attio, assets, ingest, resources, tmp = setup
    run_config = {"ops": {"pull_attio": {"config": {"full_refresh": True}}}}
    result = _materialize(assets, resources, selection=[pull_key("attio", "crm_companies")], run_config=run_config)
    assert not result.success
    text = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "full_refresh drops every table and cursor of the attio connector" in text
    everything = [pull_key("attio", t) for t in ("crm_companies", "crm_people", "crm_deals")]
    assert _materialize(assets, resources, selection=everything, run_config=run_config).success


def test_without_deal_history_the_stage_changes_are_not_read_from_the_landing(setup):
    *_, tmp = setup
    settings = load_settings(tmp / "beton.yaml")
    assert "crm_deal_stage_changes" not in settings.sources.pulled_tables()
    assert settings.sources.pulled_tables()["crm_deals"] == "attio"
    assert Path(SourceResource(source_dir=str(tmp)).resolve(settings, table="crm_deal_stage_changes")) == tmp
