"""The experiment workflow, pure: which status moves are allowed (the whole table, and random walks through it),
the sentence a refused move gets, and the intake checked by beton.yaml's `Experiment` model."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beton_pipeline.core.experiments import (
    INITIAL_STATUS,
    STATUSES,
    ExperimentRefused,
    TransitionRefused,
    check_transition,
    check_unused,
    next_statuses,
    parse_intake,
)
from beton_pipeline.core.playbooks import Experiment

ALLOWED = {
    ("Draft", "Review"),
    ("Review", "Draft"),
    ("Review", "Running"),
    ("Running", "Readout"),
    ("Readout", "Shipped"),
    ("Readout", "Killed"),
    ("Readout", "Running"),
    ("Draft", "Killed"),
    ("Review", "Killed"),
    ("Running", "Killed"),
}
"""The workflow as the product describes it, written out independently of the code."""
TERMINAL = {"Shipped", "Killed"}


def allowed(current: str, new: str) -> bool:
    try:
        check_transition(current, new)
    except TransitionRefused:
        return False
    return True


def test_every_pair_of_statuses_is_allowed_exactly_as_the_workflow_says():
    pairs = {(a, b) for a in STATUSES for b in STATUSES if allowed(a, b)}
    assert pairs == ALLOWED
    assert len(STATUSES) == 6 and INITIAL_STATUS == "Draft"


def test_a_refused_move_names_the_allowed_next_statuses():
    with pytest.raises(TransitionRefused) as refused:
        check_transition("Draft", "Running")
    assert str(refused.value) == "Draft → Running is not allowed: from Draft the next status is Review or Killed."
    with pytest.raises(TransitionRefused) as refused:
        check_transition("Readout", "Draft")
    assert str(refused.value) == (
        "Readout → Draft is not allowed: from Readout the next status is Shipped, Killed or Running."
    )
    with pytest.raises(TransitionRefused) as refused:
        check_transition("Killed", "Running")
    assert str(refused.value) == "Killed is final: an experiment that is Killed cannot move to Running."
    with pytest.raises(TransitionRefused, match="'Paused' is not a status: from Running the next status is"):
        check_transition("Running", "Paused")
    with pytest.raises(TransitionRefused, match="'Paused' is not a status; the statuses are Draft, Review"):
        next_statuses("Paused")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(STATUSES), max_size=30))
def test_every_reachable_path_starts_at_draft_and_ends_nowhere_after_shipped_or_killed(attempts):
    """Apply random moves to a new experiment, keeping the allowed ones: the path starts at Draft, every step is
    in the table, and once Shipped or Killed nothing moves it again."""
    path = [INITIAL_STATUS]
    for new in attempts:
        if allowed(path[-1], new):
            path.append(new)
        elif path[-1] in TERMINAL:
            with pytest.raises(TransitionRefused, match="is final"):
                check_transition(path[-1], new)
        else:
            with pytest.raises(TransitionRefused, match=f"from {path[-1]} the next status is"):
                check_transition(path[-1], new)
    assert path[0] == "Draft"
    assert all(step in ALLOWED for step in zip(path, path[1:], strict=False))
    assert not any(status in TERMINAL for status in path[:-1])  # nothing follows a final status


def test_every_status_is_reachable_from_draft_and_only_shipped_and_killed_are_final():
    reached, frontier = {INITIAL_STATUS}, [INITIAL_STATUS]
    while frontier:
        for new in next_statuses(frontier.pop()):
            if new not in reached:
                reached.add(new)
                frontier.append(new)
    assert reached == set(STATUSES)
    assert {s for s in STATUSES if not next_statuses(s)} == TERMINAL


INTAKE = {
    "name": "pricing-page-v2",
    "hypothesis": "A shorter pricing page gets more trials started.",
    "goal_event": "trial_started",
    "variants": "control, short",
    "owner": "ana",
}


def test_an_intake_becomes_an_experiment_with_the_control_first_and_the_flag_defaulting_to_the_name():
    intake = parse_intake({**INTAKE, "weights": "", "conversion_window_days": "14", "start": "2025-03-01", "end": ""})
    assert intake.experiment == Experiment(
        name="pricing-page-v2",
        flag="pricing-page-v2",
        goal_event="trial_started",
        control="control",
        variants=("control", "short"),
        conversion_window_days=14,
        start=date(2025, 3, 1),
    )
    assert (intake.hypothesis, intake.owner) == ("A shorter pricing page gets more trials started.", "ana")
    as_json = parse_intake({**INTAKE, "variants": ["base", "a", "b"], "weights": [2, 1, 1], "flag": "pp2"})
    assert as_json.experiment.control == "base" and as_json.experiment.weights == (2.0, 1.0, 1.0)
    assert as_json.experiment.flag == "pp2"


def test_an_intake_is_checked_by_the_experiment_model_and_every_problem_is_named():
    with pytest.raises(ExperimentRefused) as refused:
        parse_intake({"name": "Pricing Page", "variants": "control", "goal_event": " "})
    assert str(refused.value) == (
        "hypothesis: say what the experiment should show (1 to 2,000 characters); "
        "owner: say who owns the experiment (1 to 100 characters); "
        "variants: name the control first, then at least one variant (e.g. control, test); "
        "name: use lowercase letters, digits, - and _ (at most 63, starting with a letter or digit); "
        "goal_event: required"
    )
    # the model's own rules, unchanged: weights as many as variants, an end after the start
    with pytest.raises(ExperimentRefused, match="^experiment: weights need variants of the same length$"):
        parse_intake({**INTAKE, "weights": "1, 2, 3"})
    with pytest.raises(ExperimentRefused, match="^experiment: end must be after start$"):
        parse_intake({**INTAKE, "start": "2025-03-01", "end": "2025-02-01"})
    with pytest.raises(ExperimentRefused, match="intake page's address"):
        parse_intake({**INTAKE, "name": "new"})


def test_a_name_or_flag_another_experiment_has_is_refused():
    mine = parse_intake(INTAKE).experiment
    yaml_one = Experiment(name="new-onboarding", flag="onboarding-flag", goal_event="x")
    app_one = Experiment(name="checkout", flag="checkout", goal_event="x")
    check_unused(mine, [(yaml_one, "beton.yaml"), (app_one, "the app")])
    with pytest.raises(ExperimentRefused) as refused:
        check_unused(mine.model_copy(update={"flag": "onboarding-flag"}), [(yaml_one, "beton.yaml")])
    assert str(refused.value) == (
        "flag: 'onboarding-flag' is already the flag of experiment 'new-onboarding' (beton.yaml); choose another"
    )
    with pytest.raises(ExperimentRefused, match="name: 'checkout' is already the name of experiment 'checkout'"):
        check_unused(mine.model_copy(update={"name": "checkout"}), [(app_one, "the app")])
    with pytest.raises(ExperimentRefused, match="name: 'onboarding-flag' is already the flag of experiment"):
        check_unused(mine.model_copy(update={"name": "onboarding-flag"}), [(yaml_one, "beton.yaml")])


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"weights": "nan, 1"}, "weights must be positive numbers"),
        ({"weights": [1, float("inf")]}, "weights must be positive numbers"),
        ({"variants": "control, control"}, "variants must be distinct"),
        ({"conversion_window_days": "200000000"}, "conversion_window_days: Input should be less than or equal to 3650"),
        ({"conversion_window_days": True}, "give a number of days, not true or false"),
        ({"goal_event": "$feature_flag_called"}, "goal_event cannot be $feature_flag_called"),
        ({"flag": "a\nb"}, "flag: String should match pattern"),
        ({"flag": "f" * 257}, "flag: String should have at most 256 characters"),
        ({"variants": ["control", *(f"v{i}" for i in range(20))]}, "variants: Tuple should have at most 20 items"),
    ],
)
def test_an_intake_a_readout_could_not_use_is_refused(change, says):
    """What once passed and broke the readout (NaN weights, repeated variants, a window past any date) or could
    never be tracked (a flag the spool refuses) is refused at the intake, by the rules beton.yaml's follow too."""
    with pytest.raises(ExperimentRefused) as refused:
        parse_intake({**INTAKE, **change})
    assert says in str(refused.value)
