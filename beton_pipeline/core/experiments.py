"""Experiments as a workflow, pure: the intake of a new experiment and the statuses it moves through.

An experiment defined in the app (``beton serve``: ``/experiments/new`` or ``POST /api/experiments``) is an
:class:`~beton_pipeline.core.playbooks.Experiment` — validated by that model, as beton.yaml's are — plus a
hypothesis and an owner. It starts as Draft and moves through

    Draft → Review → Running → Readout → Shipped or Killed

where a reviewer may send it back (Review → Draft), a readout may continue the experiment (Readout → Running),
and it may be stopped before its readout (Draft, Review or Running → Killed). Shipped and Killed are final.
:func:`check_transition` refuses anything else with a sentence naming the allowed next statuses.

An experiment of beton.yaml is Running for as long as beton.yaml lists it (:data:`CONFIG_STATUS`); its status is
changed by editing beton.yaml, not in the app.

Names and flags are keys: the tracking endpoint and the pages find an experiment by its name or its flag, so a new
experiment's name and flag may be neither the name nor the flag of another (:func:`check_unused`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from beton_pipeline.core.playbooks import SLUG, Experiment

STATUSES = ("Draft", "Review", "Running", "Readout", "Shipped", "Killed")
INITIAL_STATUS = "Draft"
CONFIG_STATUS = "Running"
"""The status of an experiment beton.yaml lists (not changeable in the app)."""
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "Draft": ("Review", "Killed"),
    "Review": ("Draft", "Running", "Killed"),
    "Running": ("Readout", "Killed"),
    "Readout": ("Shipped", "Killed", "Running"),
    "Shipped": (),
    "Killed": (),
}
"""Each status's allowed next statuses."""
READ_OUT_STATUSES = ("Running", "Readout", "Shipped", "Killed")
"""App experiments the `experiment_readouts` asset reads out: those that have started."""

RESERVED_NAMES = ("new",)
"""Names the pages use themselves (`/experiments/new` is the intake form)."""
MAX_OWNER, MAX_HYPOTHESIS = 100, 2000
"""Longest accepted owner and hypothesis (characters)."""


class ExperimentRefused(ValueError):
    """An intake or a status change beton refuses; the message says what to change."""


class TransitionRefused(ExperimentRefused):
    """A status change the workflow does not allow."""


def next_statuses(status: str) -> tuple[str, ...]:
    """The statuses an experiment in `status` may move to (none for Shipped and Killed)."""
    if status not in TRANSITIONS:
        raise TransitionRefused(f"{status!r} is not a status; the statuses are {', '.join(STATUSES)}")
    return TRANSITIONS[status]


def _either(names: Iterable[str]) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def check_transition(current: str, new: str) -> None:
    """Nothing when an experiment in `current` may move to `new`; TransitionRefused with a sentence naming the
    allowed next statuses otherwise."""
    allowed = next_statuses(current)
    if new in allowed:
        return
    if not allowed:
        raise TransitionRefused(f"{current} is final: an experiment that is {current} cannot move to {new}.")
    if new not in STATUSES:
        raise TransitionRefused(f"{new!r} is not a status: from {current} the next status is {_either(allowed)}.")
    raise TransitionRefused(f"{current} → {new} is not allowed: from {current} the next status is {_either(allowed)}.")


@dataclass(frozen=True)
class Intake:
    """A new experiment as asked for: its definition, what it should show (`hypothesis`) and who owns it."""

    experiment: Experiment
    hypothesis: str
    owner: str


def _text(raw: Mapping, key: str, limit: int) -> str | None:
    """A required text field, stripped; None when missing, blank or longer than `limit`."""
    value = raw.get(key)
    text = value.strip() if isinstance(value, str) else ""
    return text if text and len(text) <= limit else None


def _given(raw: Mapping, key: str) -> object:
    """A field's value, text stripped; None when absent or blank (a form sends every field)."""
    value = raw.get(key)
    if isinstance(value, str):
        value = value.strip()
    return None if value in (None, "") else value


def _listed(value: object) -> list:
    """A list from JSON (a list) or a form ("control, test")."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        return [v.strip() if isinstance(v, str) else v for v in value]
    raise ExperimentRefused("variants and weights are lists (or comma-separated text)")


def _problems(exc: ValidationError) -> str:
    """Pydantic's errors of an Experiment as one line per field, the slug rule in words."""
    out = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "experiment"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "string_pattern_mismatch" and err.get("ctx", {}).get("pattern") == SLUG:
            message = "use lowercase letters, digits, - and _ (at most 63, starting with a letter or digit)"
        elif err["type"] == "missing":
            message = "required"
        out.append(f"{field}: {message}")
    return "; ".join(out)


def parse_intake(raw: Mapping) -> Intake:
    """A new experiment from the intake's fields (a form's text or an API's JSON): `name`, `hypothesis`,
    `goal_event` (the primary metric), `variants` (control first; at least two), optional `weights`, `flag`
    (default: the name), `conversion_window_days`, `start`, `end`, and `owner`. The definition is checked by
    `Experiment`, as beton.yaml's experiments are; ExperimentRefused names every problem at once."""
    problems = []
    hypothesis = _text(raw, "hypothesis", MAX_HYPOTHESIS)
    if hypothesis is None:
        problems.append(f"hypothesis: say what the experiment should show (1 to {MAX_HYPOTHESIS:,} characters)")
    owner = _text(raw, "owner", MAX_OWNER)
    if owner is None:
        problems.append(f"owner: say who owns the experiment (1 to {MAX_OWNER} characters)")
    variants = _listed(raw.get("variants"))
    if len(variants) < 2:
        problems.append("variants: name the control first, then at least one variant (e.g. control, test)")
    name = _given(raw, "name")
    if name in RESERVED_NAMES:
        problems.append(f"name: {name!r} is the intake page's address; choose another")
    fields = {
        "name": name,
        "flag": _given(raw, "flag") or name,
        "goal_event": _given(raw, "goal_event"),
        "control": variants[0] if variants else None,
        "variants": variants,
        "weights": _listed(raw.get("weights")),
        "conversion_window_days": _given(raw, "conversion_window_days"),
        "start": _given(raw, "start"),
        "end": _given(raw, "end"),
    }
    try:
        experiment = Experiment.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        problems.append(_problems(exc))
    if problems:
        raise ExperimentRefused("; ".join(problems))
    return Intake(experiment, hypothesis, owner)


def check_unused(experiment: Experiment, others: Iterable[tuple[Experiment, str]]) -> None:
    """Nothing when `experiment`'s name and flag are neither the name nor the flag of another experiment
    (`others`: each with where it is defined, "beton.yaml" or "the app"); ExperimentRefused naming the one
    that has it otherwise."""
    for other, source in others:
        for label, key in (("name", experiment.name), ("flag", experiment.flag)):
            if key in (other.name, other.flag):
                used_as = "name" if key == other.name else "flag"
                raise ExperimentRefused(
                    f"{label}: {key!r} is already the {used_as} of experiment {other.name!r} ({source}); choose another"
                )
