"""Which settings and custom signals a run loads: the committed defaults are generic, the demo's own
playbook, experiments and example signals apply only on demo data, and BETON_CONFIG / BETON_SIGNALS_DIR
override everything."""

import json
from pathlib import Path

import pytest
import yaml

from beton_pipeline import settings as settings_module
from beton_pipeline.settings import (
    PROJECT_ROOT,
    Settings,
    SettingsError,
    load_settings,
    merge_demo_settings,
    on_demo_data,
    signal_dirs,
)
from beton_pipeline.sources import demo_config
from beton_pipeline.sources.demo import EVENT_NAMES, FLAGS, generate_demo
from beton_pipeline.store.custom_signals import signal_files

DEMO_NAMES = sorted({e for e in EVENT_NAMES if not e.startswith("$")} | set(FLAGS))
"""Names only the demo generator writes ($-prefixed PostHog events are every export's)."""


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("BETON_CONFIG", "BETON_SIGNALS_DIR", "BETON_SOURCE_DIR"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def customer_export(tmp_path) -> Path:
    """A folder that is not a demo export (its TRUTH.json, if any, is someone else's)."""
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "TRUTH.json").write_text(json.dumps({"generator": "another generator", "planted": []}))
    return folder


def _loaded_text(settings: Settings) -> str:
    """Everything a run loads as configuration: the settings and every custom signal file it would read."""
    files = [p.read_text() for d in signal_dirs() for p in signal_files(d)]
    return json.dumps(settings.model_dump(mode="json")) + "\n".join(files)


def test_a_customers_run_loads_nothing_that_names_a_demo_event(clean_env, customer_export):
    clean_env.setenv("BETON_SOURCE_DIR", str(customer_export))
    assert not on_demo_data()
    settings = load_settings()
    assert settings.playbooks == () and settings.experiments == ()
    assert signal_dirs() == [(PROJECT_ROOT / "signals").resolve()]
    text = _loaded_text(settings)
    assert [name for name in DEMO_NAMES if name in text] == []


def test_the_scan_would_see_demo_names_on_demo_data(clean_env):
    """The same scan on the embedded demo finds the demo's names: the test above can fail."""
    assert on_demo_data()
    settings = load_settings()
    found = [name for name in DEMO_NAMES if name in _loaded_text(settings)]
    assert {"invited_teammate", "api_key_created", "new-onboarding", "ai-assistant"} <= set(found)
    assert [p["name"] for p in settings.playbooks] == ["hot-accounts"]
    assert [e["name"] for e in settings.experiments] == ["new-onboarding", "ai-assistant"]
    assert signal_dirs()[-1] == demo_config.SIGNALS_DIR and signal_files(demo_config.SIGNALS_DIR)


def test_the_committed_files_are_generic():
    raw = yaml.safe_load((PROJECT_ROOT / "beton.yaml").read_text())
    assert raw["playbooks"] == [] and raw["experiments"] == []
    text = (PROJECT_ROOT / "beton.yaml").read_text() + "".join(
        p.read_text() for p in (PROJECT_ROOT / "signals").iterdir() if p.is_file()
    )
    assert [name for name in DEMO_NAMES if name in text] == []
    assert signal_files(PROJECT_ROOT / "signals") == []


def test_a_folder_beton_demo_wrote_counts_as_demo_data(clean_env, tmp_path):
    out = tmp_path / "demo"
    generate_demo(out, n_accounts=5, seed=3, months=1)
    assert json.loads((out / "TRUTH.json").read_text())["generator"] == demo_config.GENERATOR
    clean_env.setenv("BETON_SOURCE_DIR", str(out))
    assert on_demo_data()
    assert [p["name"] for p in load_settings().playbooks] == ["hot-accounts"]


def test_beton_config_is_read_alone_even_on_demo_data(clean_env, tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("windows: {observation_days: 7}\n")
    clean_env.setenv("BETON_CONFIG", str(config))
    assert on_demo_data()
    settings = load_settings()
    assert settings.windows.observation_days == 7 and settings.playbooks == () and settings.experiments == ()
    assert load_settings(config) == settings
    clean_env.setenv("BETON_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(SettingsError, match="missing.yaml: settings file not found"):
        load_settings()


def test_beton_signals_dir_replaces_every_other_folder(clean_env, tmp_path):
    clean_env.setenv("BETON_SIGNALS_DIR", str(tmp_path))
    assert on_demo_data() and signal_dirs() == [tmp_path.resolve()]


def test_the_projects_sections_win_over_the_demos(clean_env, tmp_path):
    """On demo data, a section beton.yaml fills is kept as written; only empty or missing ones come from the demo."""
    root = tmp_path / "project"
    root.mkdir()
    mine = {"name": "mine", "when": {"top_n": 5}, "then": [{"type": "slack", "channel": "#mine"}]}
    (root / "beton.yaml").write_text(yaml.safe_dump({"playbooks": [mine], "experiments": []}))
    clean_env.setattr(settings_module, "PROJECT_ROOT", root)
    settings = load_settings()
    assert [p["name"] for p in settings.playbooks] == ["mine"]
    assert [e["name"] for e in settings.experiments] == ["new-onboarding", "ai-assistant"]
    (root / "beton.yaml").unlink()  # no beton.yaml: defaults, plus the demo's sections on demo data
    assert [p["name"] for p in load_settings().playbooks] == ["hot-accounts"]
    assert merge_demo_settings({"playbooks": None, "windows": {}, "revenue": {"acv": 5}}, {"playbooks": [1]}) == {
        "playbooks": [1],
        "revenue": {"acv": 5},
    }


def test_signals_strict_is_a_checked_setting(tmp_path):
    path = tmp_path / "beton.yaml"
    path.write_text("signals: {strict: true}\n")
    assert load_settings(path).signals.strict is True
    assert Settings().signals.strict is False
    path.write_text("signals: {strickt: true}\n")
    with pytest.raises(SettingsError, match=r"signals\.strickt: Extra inputs are not permitted"):
        load_settings(path)


def test_the_command_line_and_settings_load_without_the_statistics_stack():
    """`beton --help`, `beton signals` and every error paragraph start from `beton_pipeline.cli`, which
    reads settings: neither may import scipy.stats or scikit-learn (1-3 s of start-up on 2 cores). The core
    configs are imported where settings build them."""
    import subprocess
    import sys

    code = (
        "import sys, beton_pipeline.cli\n"
        "from beton_pipeline.settings import load_settings\n"
        "load_settings()\n"
        "print(','.join(m for m in ('scipy.stats', 'sklearn') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "", f"imported at start-up: {done.stdout.strip()}"


def test_connectors_are_settings_and_a_run_pulling_them_is_not_on_demo_data(clean_env, tmp_path):
    """`sources:` validates each connector; an enabled connector without BETON_SOURCE_DIR is a customer's run
    (no demo playbooks, no demo signals), and its tables are read from its landing folder."""
    root = tmp_path / "project"
    root.mkdir()
    clean_env.setattr(settings_module, "PROJECT_ROOT", root)
    assert on_demo_data() and Settings().sources.enabled == () and Settings().sources.pulled_tables() == {}
    (root / "beton.yaml").write_text(
        yaml.safe_dump({"sources": {"stripe": {"enabled": True}, "attio": {"enabled": True, "page_size": 50}}})
    )
    assert not on_demo_data()
    settings = load_settings()
    assert settings.playbooks == () and signal_dirs() == [(root / "signals").resolve()]
    assert settings.sources.enabled == ("attio", "stripe")
    assert settings.sources.pulled_tables() == {
        "crm_companies": "attio",
        "crm_people": "attio",
        "crm_deals": "attio",
        "crm_deal_stage_changes": "attio",
        "billing_customers": "stripe",
        "billing_subscriptions": "stripe",
        "billing_invoices": "stripe",
    }
    assert settings.sources.landing() == (root / "data" / "pulled").resolve()
    attio = settings.connector_config("attio")  # every setting reaches the connector's config, by the same name
    assert (type(attio).__name__, attio.page_size, attio.api_base) == ("AttioConfig", 50, "https://api.attio.com")
    assert settings.connector_config("stripe").page_size == 100
    (root / "beton.yaml").write_text("sources: {posthog: {enabled: true, batch_export: {bucket: acme-export}}}\n")
    export = load_settings().connector_config("posthog")  # a batch export alone queries nothing: no project id
    assert (type(export.batch_export).__name__, export.batch_export.bucket) == ("BatchExportConfig", "acme-export")
    (root / "beton.yaml").write_text("sources: {landing_dir: elsewhere/pulled, posthog: {enabled: false}}\n")
    assert on_demo_data() and load_settings().sources.landing() == (root / "elsewhere" / "pulled").resolve()
    for text, message in (
        ("sources: {posthog: {enabled: true}}", "posthog.project_id is required"),
        ("sources: {posthog: {enabled: true, batch_export: {bucket: b-1, top_up: true}}}", "project_id is required"),
        ("sources: {posthog: {batch_export: {bucket: B}}}", r"batch_export\.bucket: String should match"),
        ("sources: {posthog: {batch_export: {bucket: abc, prefix: 'x/{year}/'}}}", r"holds a \{variable\}"),
        ("sources: {stripe: {api_base: 'ftp://x'}}", r"sources\.stripe\.api_base: .*not an http\(s\) URL"),
        ("sources: {stripe: {page_size: 500}}", r"sources\.stripe\.page_size: Input should be less than or equal"),
        ("sources: {hubspot: {enabled: true}}", r"sources\.hubspot: Extra inputs are not permitted"),
    ):
        (root / "beton.yaml").write_text(text + "\n")
        with pytest.raises(SettingsError, match=message):
            load_settings()
