"""The health simulation command: both rules' tables from a small run (the full run prints the README's table)."""

import numpy as np

from benchmarks import health_simulation
from beton_pipeline.core.monitoring import HealthConfig


def test_tables_have_a_row_per_volume_and_drift():
    alarms, delays = health_simulation.run((20.0,), n_signals=60, n_drifting=40, drift_day=60, days=200, seed=1)
    alarm_rows = alarms.splitlines()[2:]
    delay_rows = delays.splitlines()[2:]
    assert len(alarm_rows) == 1 and alarm_rows[0].startswith("| 20 (2.2) |") and alarm_rows[0].count("%") == 2
    assert len(delay_rows) == len(health_simulation.DRIFTS)
    assert all(row.count(" / ") == 3 for row in delay_rows)


def test_percentiles_read_never_when_most_signals_are_not_flagged():
    assert health_simulation._days(np.array([3.0, np.inf, np.inf]), 50) == "never"
    assert health_simulation._days(np.array([3.0, 5.0, np.inf]), 50) == "5"


def test_a_scenario_is_reproducible_from_its_seed():
    scenario = health_simulation.Scenario(accounts_per_day=20.0)
    a = health_simulation.delays(scenario, HealthConfig(method="bonferroni"), 1.0, 30, 4, 60, 200)
    b = health_simulation.delays(scenario, HealthConfig(method="bonferroni"), 1.0, 30, 4, 60, 200)
    np.testing.assert_array_equal(a, b)
