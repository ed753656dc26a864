"""The lead-score model's C search against the full grid it replaces, on the demo and on synthetic designs,
and the search on a stratified subsample against the search on all training accounts.

    .venv/bin/python benchmarks/model_search.py                        # demo at 2,000 and 8,000 accounts + synthetic
    .venv/bin/python benchmarks/model_search.py --demo-accounts 2000   # one demo size
    .venv/bin/python benchmarks/model_search.py --demo-accounts --synthetic large_9pct --repetitions 1
    BETON_CONFIG=run/beton.yaml .venv/bin/python benchmarks/model_search.py --demo-accounts --synthetic \
        --warehouse run/warehouse.duckdb --no-grid --repetitions 1      # a pipeline's warehouse (read only)

For each dataset: the training and test accounts as the pipeline builds them (`core.model.training_rows`
and `core.model.model_inputs` on `read_feature_frames` of a warehouse that the ingest job and dbt built
from `generate_demo(n_accounts, seed=7)`, or of `--warehouse`), or a synthetic design split 70/30. Up to
three fits on the training accounts:

* `grid` — what the model did before: `LogisticRegressionCV` over every C of `ModelConfig.cs`, L1,
  liblinear at tol 1e-4, stratified 5-fold CV by log loss, refitted on all training accounts (left out
  with `--no-grid`: at 50,000 accounts it takes many minutes);
* `search` — `core.model.train_logistic`, the walk of `search_penalty` cross-validating all training
  accounts (`search_max_accounts=None`);
* `subsample` — the same with the search on a stratified subsample (`--search-max-accounts`, default
  `ModelConfig`'s; the size is enlarged to keep `--search-min-per-class` of the rarer outcome). Left out
  when that size covers every training account (it would be the `search` row).

Reported per fit: the accounts cross-validated; the chosen C and its CV log loss from the whole grid's fits
(tol 1e-4, so all choices are scored alike; without the grid, from the all-accounts search at tol 1e-3);
the CV noise around the choice: the grid's second-best C and how much worse it is, mean ± standard error
of the per-fold difference; for the searches, the largest change of a CV log loss computed at tol 1e-3
against the grid's at 1e-4 (the same folds and C; on a subsample the folds differ, so it is left blank);
the liblinear fits made (CV fits + the refit); test ROC AUC, PR AUC and log loss; the seconds of the
whole fit (median of `--repetitions`). Demo warehouses are kept in `.bench/model_search/` (gitignored)
and reused.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from sklearn.linear_model import LogisticRegressionCV  # noqa: E402
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402

from beton_pipeline.core.model import (  # noqa: E402
    ModelConfig,
    model_inputs,
    n_cv_folds,
    search_size,
    train_logistic,
    training_rows,
)

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
    # large enough for the default subsample bound to matter (56,000 training accounts, about 9 % converting)
    "large_9pct": dict(n=80000, n_features=100, n_effects=10, effect=0.6, base_rate=0.08, seed=51),
}


def synthetic_dataset(label: str) -> Dataset:
    x, y = synthetic_design(**SYNTHETIC[label])
    cut = int(0.7 * len(y))
    return Dataset(label, x[:cut], y[:cut], x[cut:], y[cut:])


def warehouse_dataset(warehouse: Path, label: str) -> Dataset:
    """The model's training and test rows on a built warehouse (opened read only), with `load_settings()`."""
    from beton_pipeline.settings import load_settings
    from beton_pipeline.store.tables import read_feature_frames
    from beton_pipeline.warehouse import connect

    settings = load_settings()
    config = settings.lead_score_config()
    with connect(warehouse, read_only=True) as con:
        frames = read_feature_frames(con, settings.feature_windows)
    _, train = training_rows(frames, config.holdout_fraction)
    y, _, _, x = model_inputs(frames, train, settings.feature_spec(), config)
    return Dataset(label, x[train], y[train], x[~train], y[~train])


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
    return warehouse_dataset(warehouse, f"demo_{n_accounts}")


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


def compare(data: Dataset, config: ModelConfig, repetitions: int, with_grid: bool = True) -> list[str]:
    everything = replace(config, search_max_accounts=None)
    fits = []  # (name, C, estimator, accounts searched, CV losses at tol 1e-3 on all rows' folds or None, fits, s)
    if with_grid:
        grid, grid_s = timed(lambda: grid_reference(data.x_train, data.y_train, config), repetitions)
        fold_loss = -grid.scores_[:, 0, :]  # folds × Cs (in the order of grid.Cs_), tol 1e-4
        cs = [float(c) for c in grid.Cs_]
        c = float(np.ravel(grid.C_)[0])
        fits.append(("grid", c, grid, data.y_train.size, None, len(cs) * fold_loss.shape[0] + 1, grid_s))
    full, full_s = timed(lambda: train_logistic(data.x_train, data.y_train, everything), repetitions)
    n_fits = full.search.n_tried * full.search.n_folds + 1
    fits.append(("search", full.search.c, full.estimator, full.search.n_searched, full.search, n_fits, full_s))
    if search_size(data.y_train, config) is not None:
        sub, sub_s = timed(lambda: train_logistic(data.x_train, data.y_train, config), repetitions)
        n_fits = sub.search.n_tried * sub.search.n_folds + 1
        fits.append(("subsample", sub.search.c, sub.estimator, sub.search.n_searched, sub.search, n_fits, sub_s))
    if with_grid:
        mean_loss = fold_loss.mean(axis=0)
        g = cs.index(c)
        runner_up = int(np.argsort(mean_loss)[1])
        diff = fold_loss[:, runner_up] - fold_loss[:, g]
        noise = f"{cs[runner_up]:.3g}: +{diff.mean():.4f} ± {diff.std(ddof=1) / np.sqrt(len(diff)):.4f}"
    else:  # the all-accounts search's own CV log losses (tol 1e-3) score every choice
        cs, mean_loss, noise = list(full.search.cs), np.asarray(full.search.cv_log_loss), ""
    rows = []
    for name, chosen, estimator, searched, search, n_fits, seconds in fits:
        moved = ""
        if with_grid and search is not None and search.n_searched == data.y_train.size:
            moved = f"{np.nanmax(np.abs(np.asarray(search.cv_log_loss) - mean_loss)):.5f}"  # the tolerance's effect
        p = estimator.predict_proba(data.x_test)[:, 1]
        loss = mean_loss[cs.index(chosen)]
        rows.append(
            f"| {data.label} | {data.x_train.shape[0]:,} × {data.x_train.shape[1]} ({data.y_train.mean():.1%}) | {name} "
            f"| {searched:,} | {chosen:.4g} | {'not tried' if np.isnan(loss) else f'{loss:.5f}'} | {noise} | {moved} "
            f"| {n_fits} | {roc_auc_score(data.y_test, p):.4f} | {average_precision_score(data.y_test, p):.4f} "
            f"| {log_loss(data.y_test, p):.5f} | {seconds:.2f} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-accounts", type=int, nargs="*", default=[2000, 8000])
    parser.add_argument("--synthetic", nargs="*", default=list(SYNTHETIC), choices=list(SYNTHETIC))
    parser.add_argument("--warehouse", type=Path, nargs="*", default=[], help="built warehouses (read only)")
    parser.add_argument("--no-grid", action="store_true", help="leave out the whole-grid LogisticRegressionCV fit")
    parser.add_argument("--search-max-accounts", type=int, default=ModelConfig.search_max_accounts)
    parser.add_argument("--search-min-per-class", type=int, default=ModelConfig.search_min_per_class)
    parser.add_argument("--repetitions", type=int, default=3)
    args = parser.parse_args()
    config = ModelConfig(search_max_accounts=args.search_max_accounts, search_min_per_class=args.search_min_per_class)
    print(
        "| dataset | training rows × features (converted) | fit | accounts searched | C | CV log loss "
        "| runner-up C: Δ ± SE | max Δ from tol 1e-3 | fits | test ROC AUC | test PR AUC | test log loss | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    datasets = [lambda n=n: demo_dataset(n) for n in args.demo_accounts]
    datasets += [lambda label=label: synthetic_dataset(label) for label in args.synthetic]
    datasets += [lambda path=path: warehouse_dataset(path, path.parent.name) for path in args.warehouse]
    for make in datasets:
        for row in compare(make(), config, args.repetitions, with_grid=not args.no_grid):
            print(row, flush=True)


if __name__ == "__main__":
    main()
