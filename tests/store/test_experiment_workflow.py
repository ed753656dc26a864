"""Which app experiments the run reads out: started ones, and a killed one only if it ran."""

from __future__ import annotations

import duckdb

from beton_pipeline.core.experiments import parse_intake
from beton_pipeline.core.playbooks import parse_playbook_config
from beton_pipeline.store.experiments import change_status, create_experiment, started_app_experiments


def test_a_killed_experiment_is_read_out_only_if_it_ran(tmp_path):
    config = parse_playbook_config()
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        for name in ("idea", "ran", "live"):
            intake = {"name": name, "hypothesis": "h", "goal_event": "g", "variants": ["a", "b"], "owner": "ana"}
            create_experiment(con, config, parse_intake(intake), "ana")
        change_status(con, config, "idea", "Killed", "ana", "not worth it")  # Draft → Killed: never ran
        for step in ("Review", "Running", "Killed"):
            change_status(con, config, "ran", step, "ana", "go")
        for step in ("Review", "Running"):
            change_status(con, config, "live", step, "ana", "go")
        assert sorted(e.name for e in started_app_experiments(con, config)) == ["live", "ran"]
