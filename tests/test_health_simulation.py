"""The health simulation command: every rule's tables from a small run (the full run prints the README's table)."""

import numpy as np

from benchmarks import health_simulation


def test_tables_have_a_row_per_volume_and_drift_and_a_column_per_rule():
    alarms, delays = health_simulation.run((20.0,), n_signals=20, n_drifting=10, drift_day=60, days=120, seed=1)
    rules = len(health_simulation.RULES)
    assert rules == 3 and "risk_set" in alarms.splitlines()[0]
    alarm_rows = alarms.splitlines()[2:]
    delay_rows = delays.splitlines()[2:]
    assert len(alarm_rows) == 1 and alarm_rows[0].startswith("| 20 (2.2) |") and alarm_rows[0].count("%") == rules
    assert len(delay_rows) == len(health_simulation.DRIFTS)
    assert all(row.count(" / ") == rules for row in delay_rows)


def test_percentiles_read_never_when_most_signals_are_not_flagged():
    assert health_simulation._days(np.array([3.0, np.inf, np.inf]), 50) == "never"
    assert health_simulation._days(np.array([3.0, 5.0, np.inf]), 50) == "5"
    assert health_simulation._days(np.array([-4.0, -2.0, 7.0]), 50) == "-2"


def test_a_scenario_is_reproducible_from_its_seed():
    scenario = health_simulation.Scenario(accounts_per_day=20.0)
    a = health_simulation.delays(scenario, 1.0, 10, 4, 60, 120)
    b = health_simulation.delays(scenario, 1.0, 10, 4, 60, 120)
    assert set(a) == set(health_simulation.RULES)
    for rule in a:
        np.testing.assert_array_equal(a[rule], b[rule])
