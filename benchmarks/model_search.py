"""The lead-score model's C search against the full grid it replaces, on the demo and on synthetic designs.

    .venv/bin/python benchmarks/model_search.py                        # demo at 2,000 and 8,000 accounts + synthetic
    .venv/bin/python benchmarks/model_search.py --demo-accounts 2000   # one demo size

For each dataset: the training and test accounts as the pipeline builds them (`core.model.training_rows`
and `core.model.model_inputs` on `read_feature_frames` of a warehouse that the ingest job and dbt built
from `generate_demo(n_accounts, seed=7)`), or a synthetic design split 70/30. Two fits on the training
accounts:

* `grid` — what the model did before: `LogisticRegressionCV` over every C of `ModelConfig.cs`, L1,
  liblinear at tol 1e-4, stratified 5-fold CV by log loss, refitted on all training accounts;
* `search` — `core.model.train_logistic` with the default `ModelConfig` (the walk of `search_penalty`).

Reported per fit: the chosen C and its CV log loss from the whole grid's fits (tol 1e-4, so both choices
are scored alike); the CV noise around the choice: the grid's second-best C and how much worse it is,
mean ± standard error of the per-fold difference; for the search, the largest change of a CV log loss it
computed at tol 1e-3 against the grid's at 1e-4 (the same folds and C); the liblinear fits made (CV fits +
the refit); test ROC AUC and PR AUC; the seconds of the whole fit (median of `--repetitions`).
Demo warehouses are kept in `.bench/model_search/` (gitignored) and reused.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from sklearn.linear_model import LogisticRegressionCV  # noqa: E402
from sklearn.metrics import average_precision_score, roc_auc_score  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402

from beton_pipeline.core.model import ModelConfig, model_inputs, n_cv_folds, train_logistic, training_rows  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent
WORK = PROJECT_ROOT / ".bench" / "model_search"


@dataclass(frozen=True)
class Dataset:
    """Training and test rows of one design."""

    label: str
    x_train: sp.csr_matrix
    y_train: np.ndarray
    x_test: sp.csr_matrix
    y_test: np.ndarray


def synthetic_design(
    n: int, n_features: int, n_effects: int, effect: float, base_rate: float, seed: int
) -> tuple[sp.csr_matrix, np.ndarray]:
    """n accounts × n_features independent 0/1 features (prevalence uniform on 3–40 %); the first `n_effects`
    raise the log odds by `effect` each (alternating sign), the intercept is set so the rate is about
    `base_rate` before the centring (the realised rate runs somewhat higher). Returns (x as CSR, y as 0/1 int64)."""
    rng = np.random.default_rng(seed)
    prevalence = rng.uniform(0.03, 0.40, n_features)
    dense = rng.random((n, n_features)) < prevalence
    beta = np.zeros(n_features)
    beta[:n_effects] = effect * np.where(np.arange(n_effects) % 2 == 0, 1.0, -0.5)
    eta = dense @ beta
    eta -= eta.mean()
    logit = np.log(base_rate / (1 - base_rate)) + eta
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return sp.csr_matrix(dense.astype(np.float64)), y


SYNTHETIC = {
    # many weak features, 3 % converting (a different shape from the demo: few strong thermometer features)
    "weak_3pct": dict(n=8000, n_features=400, n_effects=60, effect=0.4, base_rate=0.02, seed=11),
    # a few strong features among noise, 10 % converting
    "strong_10pct": dict(n=6000, n_features=150, n_effects=6, effect=1.0, base_rate=0.10, seed=12),
}


def synthetic_dataset(label: str) -> Dataset:
    x, y = synthetic_design(**SYNTHETIC[label])
    cut = int(0.7 * len(y))
    return Dataset(label, x[:cut], y[:cut], x[cut:], y[cut:])


def demo_dataset(n_accounts: int) -> Dataset:
    """The model's training and test rows on a demo warehouse (built once by the ingest job and dbt)."""
    base = WORK / f"demo_{n_accounts}"
    warehouse = base / "warehouse.duckdb"
    os.environ["BETON_SOURCE_DIR"] = str(base / "src")
    os.environ["BETON_WAREHOUSE"] = str(warehouse)
    os.environ["DAGSTER_HOME"] = str(base / "home")
    if not warehouse.exists():
        import dagster as dg

        from beton_pipeline.definitions import defs
        from beton_pipeline.runner import _execute
        from beton_pipeline.sources.demo import generate_demo

        (base / "home").mkdir(parents=True, exist_ok=True)
        shutil.copy(PROJECT_ROOT / "dagster.yaml", base / "home" / "dagster.yaml")
        generate_demo(base / "src", n_accounts=n_accounts, seed=7)
        _execute(defs.resolve_job_def("daily_ingest_job"), dg.DagsterInstance.get())
    from beton_pipeline.settings import load_settings
    from beton_pipeline.store.tables import read_feature_frames
    from beton_pipeline.warehouse import connect

    settings = load_settings()
    config = settings.lead_score_config()
    with connect(warehouse, read_only=True) as con:
        frames = read_feature_frames(con, settings.feature_windows)
    _, train = training_rows(frames, config.holdout_fraction)
    y, _, _, x = model_inputs(frames, train, settings.feature_spec(), config)
    return Dataset(f"demo_{n_accounts}", x[train], y[train], x[~train], y[~train])


def grid_reference(x: sp.csr_matrix, y: np.ndarray, config: ModelConfig, tol: float = 1e-4) -> LogisticRegressionCV:
    """The search this replaces: every C of the grid, k-fold CV (scikit-learn's own), at liblinear's default
    tolerance unless `tol` is given. The tests check the new search against it too."""
    return LogisticRegressionCV(
        Cs=list(config.cs),
        l1_ratios=(1.0,),
        solver="liblinear",
        cv=StratifiedKFold(n_cv_folds(y, config.cv_folds), shuffle=True, random_state=config.random_state),
        scoring="neg_log_loss",
        tol=tol,
        max_iter=5000,
        random_state=config.random_state,
        use_legacy_attributes=False,
    ).fit(x, y)


def timed(fn, repetitions: int):
    seconds, result = [], None
    for _ in range(repetitions):
        started = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - started)
    return result, statistics.median(seconds)


def compare(data: Dataset, config: ModelConfig, repetitions: int) -> list[str]:
    grid, grid_s = timed(lambda: grid_reference(data.x_train, data.y_train, config), repetitions)
    fit, search_s = timed(lambda: train_logistic(data.x_train, data.y_train, config), repetitions)
    fold_loss = -grid.scores_[:, 0, :]  # folds × Cs (in the order of grid.Cs_), tol 1e-4
    mean_loss = fold_loss.mean(axis=0)
    cs = [float(c) for c in grid.Cs_]
    g = cs.index(float(np.ravel(grid.C_)[0]))
    runner_up = int(np.argsort(mean_loss)[1])
    diff = fold_loss[:, runner_up] - fold_loss[:, g]
    noise = f"{cs[runner_up]:.3g}: +{diff.mean():.4f} ± {diff.std(ddof=1) / np.sqrt(len(diff)):.4f}"
    tried = np.asarray(fit.search.cv_log_loss)
    shift = np.nanmax(np.abs(tried - mean_loss))  # the same folds and Cs: the tolerance's effect
    rows = []
    for name, c, estimator, fits, moved, seconds in [
        ("grid", cs[g], grid, len(cs) * fold_loss.shape[0] + 1, "", grid_s),
        ("search", fit.search.c, fit.estimator, fit.search.n_tried * fit.search.n_folds + 1, f"{shift:.5f}", search_s),
    ]:
        p = estimator.predict_proba(data.x_test)[:, 1]
        rows.append(
            f"| {data.label} | {data.x_train.shape[0]:,} × {data.x_train.shape[1]} ({data.y_train.mean():.1%}) | {name} "
            f"| {c:.4g} | {mean_loss[cs.index(c)]:.5f} | {noise} | {moved} | {fits} "
            f"| {roc_auc_score(data.y_test, p):.4f} | {average_precision_score(data.y_test, p):.4f} | {seconds:.2f} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-accounts", type=int, nargs="*", default=[2000, 8000])
    parser.add_argument("--synthetic", nargs="*", default=list(SYNTHETIC), choices=list(SYNTHETIC))
    parser.add_argument("--repetitions", type=int, default=3)
    args = parser.parse_args()
    config = ModelConfig()
    print(
        "| dataset | training rows × features (converted) | fit | C | CV log loss | runner-up C: Δ ± SE "
        "| max Δ from tol 1e-3 | fits | test ROC AUC | test PR AUC | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    datasets = [lambda n=n: demo_dataset(n) for n in args.demo_accounts]
    datasets += [lambda label=label: synthetic_dataset(label) for label in args.synthetic]
    for make in datasets:
        for row in compare(make(), config, args.repetitions):
            print(row, flush=True)


if __name__ == "__main__":
    main()
