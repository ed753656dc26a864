"""The demo's own configuration: its playbook, experiments and example custom signals.

They name the demo generator's events and feature flags (`invited_teammate`, `api_key_created`,
`new-onboarding` ...), so they apply only when beton runs on demo data: with `BETON_SOURCE_DIR`
unset (the embedded demo), or pointing at a folder `beton demo` wrote (its `TRUTH.json` says
`"generator": "beton demo"`). On any other export none of this is loaded (README, "Configuration").
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
SETTINGS_FILE = CONFIG_DIR / "beton.yaml"
"""Settings sections the demo fills where beton.yaml leaves them empty (playbooks, experiments)."""
SIGNALS_DIR = CONFIG_DIR / "signals"
"""Example custom signals, loaded after the project's `signals/` on demo data."""
GENERATOR = "beton demo"
"""The `generator` value of a demo export's TRUTH.json."""
TRUTH_FILE = "TRUTH.json"


def is_demo_export(source_dir: Path) -> bool:
    """Whether `source_dir` was written by `beton demo` (its TRUTH.json names the demo generator)."""
    truth = Path(source_dir) / TRUTH_FILE
    if not truth.is_file():
        return False
    try:
        return json.loads(truth.read_text(encoding="utf-8")).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        return False
