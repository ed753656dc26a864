"""The benchmark's demo datasets: generated once into `.bench/data/`, reused while their parameters match."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from beton_pipeline.sources import demo

EVENTS_PER_ACCOUNT = 107
"""Events the demo generator writes per account (999,845 for 9,300 accounts and 9,965,170 for 93,000, seed 7)."""


@dataclass(frozen=True)
class DatasetSpec:
    """One benchmark dataset: `label` (e.g. "1M") and the `generate_demo` arguments that produce it."""

    label: str
    n_accounts: int
    seed: int = 7
    start_date: str = "2025-01-01"
    months: int = 12

    def params(self) -> dict:
        """What must match for an existing directory to be reused: the arguments and the generator's source."""
        return {**asdict(self), "generator_sha256": generator_fingerprint()}


def generator_fingerprint() -> str:
    """SHA-256 of `beton_pipeline/sources/demo.py`: a changed generator invalidates cached datasets."""
    return hashlib.sha256(Path(demo.__file__).read_bytes()).hexdigest()


PARAMS_FILE = "bench-params.json"


def ensure_dataset(spec: DatasetSpec, root: Path, log=print) -> tuple[Path, bool]:
    """The dataset's source directory under `root`, generated unless present with the same parameters.

    Returns (directory, generated). The parameters are written last, so an interrupted generation is
    redone on the next run.
    """
    out = root / f"demo-{spec.n_accounts}-seed{spec.seed}"
    stamp = out / PARAMS_FILE
    wanted = spec.params()
    if stamp.exists() and (out / "TRUTH.json").exists():
        try:
            have = json.loads(stamp.read_text())
            if {k: v for k, v in have.items() if k != "n_events"} == wanted:
                return out, False
        except json.JSONDecodeError:
            pass
    if out.exists():
        shutil.rmtree(out)
    log(f"generating {spec.label} dataset ({spec.n_accounts:,} accounts) in {out} …")
    summary = demo.generate_demo(
        out, n_accounts=spec.n_accounts, seed=spec.seed, start_date=spec.start_date, months=spec.months
    )
    stamp.write_text(json.dumps({**wanted, "n_events": summary.n_events}, indent=1) + "\n")
    return out, True


def dataset_events(directory: Path) -> int | None:
    """Event rows written to the dataset (bad rows included), from its parameters file."""
    try:
        return int(json.loads((directory / PARAMS_FILE).read_text())["n_events"])
    except (OSError, KeyError, ValueError):
        return None
