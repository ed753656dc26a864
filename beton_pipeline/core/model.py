"""The lead-score model: a logistic regression on the candidate features, backtested in time.

Method (README, "Lead-score model"):

1. **Features.** The accounts × candidates 0/1 matrix discovery tests (`core.candidates`): event E
   ≥ t times in the first d days for every configured window and threshold (a "thermometer" coding
   of the counts, so a linear model can learn a step function of each count), property values,
   attributes one-hot (industry, employee band, plan interval) and intent flags. A candidate becomes
   a feature when it fired for at least `min_candidate_support` training accounts and did not fire
   for as many (`min_property_support` for property values): the same outcome-blind filter as
   discovery. Pairs are left out (the model adds effects itself).
2. **Temporal split.** The same as discovery (`core.discovery.temporal_split`): eligible cohort
   months in order; the latest months holding ≥ `holdout_fraction` of eligible accounts are the
   *test* set, the earlier ones the *training* set. The model never sees a test account.
3. **Model.** L1-penalised logistic regression (scikit-learn, liblinear), P(convert) =
   1 / (1 + exp(−(b + Σⱼ wⱼ xⱼ))), with the penalty strength C chosen by 5-fold stratified
   cross-validation on the training cohorts by log loss (C on the grid 10^-3 … 1, 7 points), then
   refitted on all training cohorts at C. The search (`search_penalty`) walks the grid up from the
   strongest penalty and stops once the CV log loss has risen past its minimum, so the largest Cs
   (the slowest fits: the most non-zero coefficients) are fitted only when the loss is still falling;
   its CV fits stop at liblinear tolerance 1e-3 instead of 1e-4 (on the demo at 2,000 and 8,000
   accounts each CV log loss moves by < 1e-3, less than the CV noise between neighbouring grid
   points), the refit keeps 1e-4. On a CV loss curve with one minimum over the grid it picks the same
   C as cross-validating every grid point (`LogisticRegressionCV`; k-fold CV: Hastie, Tibshirani &
   Friedman, *The Elements of Statistical Learning*, 2nd ed., §7.10). Starting at the strongest penalty
   and weakening it is how glmnet walks its regularisation path (Friedman, Hastie & Tibshirani 2010,
   *J. Stat. Softw.* 33(1)); unlike glmnet no warm start is used, because liblinear always starts from
   zero (scikit-learn: `warm_start` is "useless for liblinear"). On large training sets the search
   cross-validates a stratified random subsample (`search_sample`: proportional to the outcome, seeded) of
   `search_max_accounts` (20,000) accounts, enlarged to hold `search_min_per_class` (1,000) of the rarer
   outcome, and the refit at its C uses every training account (`search_penalty`; Klein et al. 2017): on
   the 10M-event benchmark (54,093 training accounts) it picks the same C as the search on all of them and
   training takes 71 s instead of 128 s (the refit on all of them, unchanged, is now about half of it).
   Why L1 and no class weights: hundreds of nested, correlated 0/1 features against a few hundred conversions; L1 keeps a few
   dozen (each coefficient is a log odds ratio a reader can check against `beton.signals`), and on
   the demo it ranks the test cohorts better than L2 (ROC AUC 0.74 vs 0.72). Class weights
   ("balanced") would move the intercept and break calibration without changing the ranking
   much; fitting plain log loss keeps the probabilities calibrated on the training cohorts, so no
   separate calibrator is fitted (a calibrator trained on the same cohorts cannot correct a
   base-rate shift that happens after them; the calibration table shows that shift if there is
   one).
4. **Scorers compared on the test cohorts:** `model` (the probability above), `signals` (the number
   of enabled signals from `beton.signals` that fired), `signals_weighted` (Σ log lift of the
   enabled signals that fired; pairs fire when both parts do), `base_rate` (every account gets the
   training conversion rate). For the Brier score and the calibration table the signal scores are
   turned into probabilities by isotonic regression on the training cohorts; their ranking metrics
   use the raw scores. Note that discovery enables a signal only if it replicates on its holdout,
   which is this test set: the signal scores have seen the test cohorts, the model has not.
5. **Metrics** (scikit-learn where it has them): ROC AUC (`roc_auc_score`), PR AUC
   (`average_precision_score`), Brier score (`brier_score_loss`), precision and recall at k, where
   k is the number of accounts sales can work (`sales_capacity` per month × test months, else the
   top 10 % of test accounts). Precision at k is tie-aware: accounts tied at the k-th score are
   taken in proportion, i.e. the expected precision of a random tie-break. Calibration ("win rate by
   confidence bucket"): test accounts in score deciles, the mean predicted probability against the
   observed conversion rate with a Wilson interval. Confusion matrix (`confusion_matrix`) at the
   top-k threshold t = the k-th highest score: an account is *qualified* when its score ≥ t (with
   ties at t more than k accounts can qualify; the table says how many).
6. **CRM comparison.** Test accounts with at least one CRM deal: qualified by the model (as above)
   against "the deal progressed beyond the first stage" (a stage other than the first one and the
   lost stages, or status won; computed per account by the dbt mart `account_deal_progress`):
   confusion matrix, precision/recall, and the false positives and false negatives with the AE's
   latest stage-change reason.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, confusion_matrix, log_loss, roc_auc_score
from sklearn.model_selection import StratifiedKFold

from beton_pipeline.core.candidates import (
    CandidateMatrix,
    FeatureFrames,
    FeatureSpec,
    candidate_matrix,
    pair_parts,
)
from beton_pipeline.core.discovery import HoldoutSplit, cohort_labels, temporal_split
from beton_pipeline.core.stats import wilson_interval

SCORERS = ("model", "signals", "signals_weighted", "base_rate")
"""The scorers compared on the test cohorts, in report order."""

INTERCEPT_KEY = "(intercept)"
"""The `feature_key` of the intercept row in `beton.model_features`."""


REFIT_TOL = 1e-4
"""liblinear's stopping tolerance for the refit on all training accounts (scikit-learn's default)."""


class ModelDataError(ValueError):
    """Not enough data to train or test the model; the message says what is missing."""


@dataclass(frozen=True)
class ModelConfig:
    """Training and evaluation settings (defaults documented in the module docstring)."""

    cs: tuple[float, ...] = tuple(float(c) for c in np.logspace(-3, 0, 7))
    cv_folds: int = 5
    cv_tol: float = 1e-3
    """liblinear's stopping tolerance in the CV fits of the C search (the refit uses `REFIT_TOL`)."""
    search_patience: int = 1
    """The C search stops after the CV log loss rose above the best at this many consecutive grid points."""
    search_max_accounts: int | None = 20_000
    """The C search cross-validates on a stratified random subsample of this many training accounts
    (`search_sample`; more when `search_min_per_class` needs them, see `search_size`); the refit at the
    chosen C uses all of them. None: always search on all of them."""
    search_min_per_class: int = 1_000
    """The subsample is made large enough to hold this many accounts of the rarer outcome (all of them when
    there are fewer): with a few hundred conversions the CV choice of C is noisy."""
    random_state: int = 0
    min_candidate_support: int = 10
    min_property_support: int = 20
    holdout_fraction: float = 0.3
    sales_capacity: int | None = None
    default_capacity_fraction: float = 0.10
    n_buckets: int = 10
    confidence_level: float = 0.95
    min_crm_accounts: int = 10
    """Fewest test accounts with a CRM deal, with at least one that progressed and one that did not, for
    the CRM comparison; with fewer (a new CRM with a few deals) it is skipped with the counts, not run."""


@dataclass(frozen=True)
class LeadScoreModel:
    """A fitted model, serialisable without pickle: P = expit(intercept + X[:, feature_keys] · coefficients)."""

    feature_keys: tuple[str, ...]
    coefficients: np.ndarray
    intercept: float
    spec: FeatureSpec
    regularization_c: float
    qualify_threshold: float
    trained_months: tuple[str, ...]
    n_train: int
    n_train_converted: int

    def __post_init__(self) -> None:
        if len(self.feature_keys) != len(self.coefficients):
            raise ValueError(f"{len(self.feature_keys)} feature keys but {len(self.coefficients)} coefficients")


@dataclass(frozen=True)
class DesignMatrix:
    """Accounts × features: `matrix[i, j]` = 1 when feature `feature_keys[j]` fired for `account_ids[i]`."""

    account_ids: np.ndarray
    feature_keys: tuple[str, ...]
    matrix: sp.csr_matrix


METRIC_NAMES = (
    "roc_auc",
    "pr_auc",
    "precision_at_k",
    "recall_at_k",
    "lift_at_k",
    "brier",
    "mean_predicted",
    "observed_rate",
)
"""The metrics every scorer is measured by, in the order `beton.model_backtest` and the asset metadata list them."""


@dataclass(frozen=True)
class ScorerMetrics:
    """One scorer's record on the test cohorts (see the module docstring for each metric)."""

    scorer: str
    roc_auc: float
    pr_auc: float
    precision_at_k: float
    recall_at_k: float
    lift_at_k: float
    brier: float
    mean_predicted: float
    observed_rate: float
    k: int

    def as_rows(self) -> list[dict]:
        return [{"scorer": self.scorer, "metric": n, "value": float(getattr(self, n))} for n in METRIC_NAMES]


@dataclass(frozen=True)
class Confusion:
    """A 2×2 table of qualified (score ≥ threshold) against the truth, with precision and recall."""

    scorer: str
    truth: str
    threshold: float
    k: int
    n_accounts: int
    n_qualified: int
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float:
        """tp / (tp + fp); NaN when nobody qualified."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def recall(self) -> float:
        """tp / (tp + fn); NaN when there is no positive."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    def as_row(self) -> dict:
        return {
            "scorer": self.scorer,
            "truth": self.truth,
            "threshold": self.threshold,
            "k": self.k,
            "n_accounts": self.n_accounts,
            "n_qualified": self.n_qualified,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "tn": self.tn,
            "precision": self.precision,
            "recall": self.recall,
        }


@dataclass(frozen=True)
class LeadScoreBacktest:
    """The model trained on the earlier cohorts and every scorer measured on the later ones.

    metrics: scorer, metric, value (one row per metric × scorer)
    calibration: scorer, bucket, n_accounts, conversions, predicted_mean, observed_rate, observed_ci_low, observed_ci_high, score_min, score_max
    confusion: `Confusion.as_row` per scorer (truth = converted)
    test_scores: account_id, cohort_month, converted, one column per scorer (probability), signals_count, signals_log_lift
    features: `model_to_frame(model)` (the `beton.model_features` rows)
    """

    model: LeadScoreModel
    split: HoldoutSplit
    metrics: pl.DataFrame
    calibration: pl.DataFrame
    confusion: pl.DataFrame
    test_scores: pl.DataFrame
    features: pl.DataFrame
    k: int
    training_seconds: float
    n_candidate_features: int
    scorer_metrics: dict[str, ScorerMetrics] = field(default_factory=dict)
    penalty_search: PenaltySearch | None = None
    fit: FittedLogistic | None = None
    """The fit, to keep for the next run (`backtest_lead_score`'s `last_fit`)."""
    fit_reused: bool = False
    """Whether the fit was the last run's (same `training_key`) instead of a new one."""

    def metric(self, scorer: str, name: str) -> float:
        """One metric's value, e.g. `metric("model", "roc_auc")`."""
        return float(getattr(self.scorer_metrics[scorer], name))


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------
def select_columns(matrix: CandidateMatrix, keys: tuple[str, ...] | list[str]) -> sp.csr_matrix:
    """`matrix` restricted to `keys`, in that order; a key that never fired gives a zero column.

    One sparse product X · P with P[source column, position] = 1, not a loop over keys.
    """
    known = pl.DataFrame({"key": matrix.candidates.get_column("key")}).with_row_index("_src")
    wanted = pl.DataFrame({"key": list(keys)}, schema={"key": pl.String}).with_row_index("_dst")
    pairs = wanted.join(known, on="key", how="inner")
    select = sp.csr_matrix(
        (np.ones(pairs.height), (pairs.get_column("_src").to_numpy(), pairs.get_column("_dst").to_numpy())),
        shape=(matrix.n_candidates, len(keys)),
    )
    return (matrix.matrix @ select).tocsr()


def design_matrix(frames: FeatureFrames, spec: FeatureSpec, feature_keys: tuple[str, ...]) -> DesignMatrix:
    """The model's inputs for `frames.accounts` (row order kept), columns in `feature_keys` order."""
    candidates = candidate_matrix(frames, spec)
    return DesignMatrix(candidates.account_ids, tuple(feature_keys), select_columns(candidates, feature_keys))


def supported_features(
    matrix: CandidateMatrix, rows: np.ndarray, min_candidate_support: int, min_property_support: int
) -> tuple[str, ...]:
    """Keys of candidates that fired for ≥ `need` of `rows` and did not fire for ≥ `need` (outcome-blind).

    need = `min_property_support` for property values, else `min_candidate_support` (as in discovery).
    """
    n_rows = int(np.count_nonzero(rows)) if rows.dtype == bool else len(rows)
    support = np.asarray(matrix.matrix[rows].sum(axis=0)).ravel()
    kinds = matrix.candidates.get_column("kind").to_numpy()
    need = np.where(kinds == "event_property", min_property_support, min_candidate_support)
    keep = (kinds != "pair") & (support >= need) & (n_rows - support >= need)
    return tuple(matrix.candidates.get_column("key").to_numpy()[keep].tolist())


# --------------------------------------------------------------------------------------------
# Training and scoring
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PenaltySearch:
    """The choice of C: the grid in increasing order, the CV log loss of each C tried (NaN where the walk
    stopped before it), the chosen C, the number of folds, and the accounts it cross-validated on out of the
    training accounts (fewer when `search_sample` subsampled them)."""

    cs: tuple[float, ...]
    cv_log_loss: tuple[float, ...]
    c: float
    n_folds: int
    n_searched: int = 0
    n_training: int = 0

    @property
    def subsampled(self) -> bool:
        """Whether the search cross-validated on a subsample of the training accounts."""
        return self.n_searched < self.n_training

    @property
    def n_tried(self) -> int:
        """Grid points whose CV log loss was computed (each costs `n_folds` fits)."""
        return int(np.count_nonzero(~np.isnan(np.asarray(self.cv_log_loss, dtype=np.float64))))


@dataclass(frozen=True)
class LogisticFit:
    """The refitted estimator (scikit-learn `LogisticRegression`, L1, liblinear) and how its C was chosen."""

    estimator: LogisticRegression
    search: PenaltySearch


def _l1_logistic(c: float, config: ModelConfig, tol: float) -> LogisticRegression:
    return LogisticRegression(
        C=c, l1_ratio=1.0, solver="liblinear", tol=tol, max_iter=5000, random_state=config.random_state
    )


def cv_log_loss(x: sp.csr_matrix, y: np.ndarray, c: float, folds: list, config: ModelConfig) -> float:
    """Mean over `folds` of the held-out log loss (`sklearn.metrics.log_loss`) of the L1 fit at C on the rest,
    with liblinear's tolerance `config.cv_tol`: what `LogisticRegressionCV(scoring="neg_log_loss")` averages."""
    losses = []
    for fit_rows, held_out in folds:
        fitted = _l1_logistic(c, config, config.cv_tol).fit(x[fit_rows], y[fit_rows])
        losses.append(log_loss(y[held_out], fitted.predict_proba(x[held_out])[:, 1], labels=[0, 1]))
    return float(np.mean(losses))


def n_cv_folds(y: np.ndarray, cv_folds: int) -> int:
    """min(cv_folds, conversions, non-conversions): each stratified fold needs both classes; raises
    `ModelDataError` below 2."""
    n_pos = int(np.sum(y))
    n_neg = len(y) - n_pos
    k = min(cv_folds, n_pos, n_neg)
    if k < 2:
        raise ModelDataError(
            f"the training cohorts have {n_pos} conversion(s) and {n_neg} non-conversion(s): need at least 2 of each"
        )
    return k


def walk_up(loss_at: Callable[[int], float], n_points: int, patience: int) -> np.ndarray:
    """`loss_at(i)` for i = 0, 1, … until it has been above the lowest value so far at `patience` consecutive
    points (a tie with the lowest resets the count) or the points run out; NaN for the points not reached.

    The first minimum of the returned values is the first minimum of all n points whenever the losses are
    non-increasing up to their minimum and non-decreasing after it (one minimum; plateaus allowed).
    """
    if patience < 1:
        raise ValueError(f"patience must be at least 1, got {patience}")
    losses = np.full(n_points, np.nan)
    best, rises = 0, 0
    for i in range(n_points):
        losses[i] = loss_at(i)
        if losses[i] < losses[best]:
            best, rises = i, 0
        elif losses[i] > losses[best]:
            rises += 1
            if rises >= patience:
                break
        else:  # a tie with the lowest: the first one stays the minimum, as in `LogisticRegressionCV`
            rises = 0
    return losses


def search_sample(y: np.ndarray, max_rows: int | None, random_state: int, min_per_class: int = 0) -> np.ndarray:
    """Row indices (increasing) of a stratified random subsample of `max_rows` of `y`'s rows; all rows when
    there are no more than `max_rows` (or `max_rows` is None).

    Stratified by outcome with proportional allocation (Cochran, *Sampling Techniques*, 3rd ed., 1977,
    §5.3): class c with N_c of the N rows gets n_c = ⌊max_rows · N_c / N⌋ rows, and the rows left over
    go one each to the classes with the largest remainders (Hamilton's largest-remainder rounding; ties
    to the smaller label), so each class keeps its share to within one row and Σ n_c = max_rows. A class
    then gets at least min(N_c, `min_per_class`) rows (e.g. a fold's worth for stratified k-fold), taken
    from the largest class. Within each class the rows are drawn without replacement by
    `numpy.random.default_rng(random_state)`: the same inputs give the same rows.
    """
    y = np.asarray(y)
    n = len(y)
    if max_rows is None or n <= max_rows:
        return np.arange(n)
    labels, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    if max_rows < len(labels) * min_per_class or max_rows < 1:
        raise ValueError(f"max_rows = {max_rows} cannot hold {min_per_class} row(s) of each of {len(labels)} classes")
    quota = max_rows * counts / n
    take = np.floor(quota).astype(np.int64)
    by_remainder = np.argsort(-(quota - take), kind="stable")
    take[by_remainder[: max_rows - int(take.sum())]] += 1
    floor = np.minimum(counts, min_per_class)
    lifted = np.maximum(take, floor)
    largest = int(np.argmax(counts))
    lifted[largest] -= int(lifted.sum()) - max_rows
    rng = np.random.default_rng(random_state)
    rows = [rng.choice(np.flatnonzero(inverse == c), size=int(lifted[c]), replace=False) for c in range(len(labels))]
    return np.sort(np.concatenate(rows))


def search_size(y: np.ndarray, config: ModelConfig) -> int | None:
    """The accounts the C search cross-validates on: `config.search_max_accounts`, raised to
    ⌈search_min_per_class · n / n_rarer⌉ so that a proportional subsample holds `search_min_per_class`
    accounts of the rarer outcome; None (all accounts) when the bound is None or reaches n."""
    n = len(y)
    if config.search_max_accounts is None:
        return None
    n_pos = int(np.sum(y))
    rarer = min(n_pos, n - n_pos)
    need = int(np.ceil(config.search_min_per_class * n / rarer)) if rarer else n
    size = max(config.search_max_accounts, need)
    return None if size >= n else size


def search_penalty(x: sp.csr_matrix, y: np.ndarray, config: ModelConfig) -> PenaltySearch:
    """C on `config.cs` by stratified k-fold CV log loss, walking up from the strongest penalty, on at most
    `search_size` of the rows (`config.search_max_accounts`, raised to keep `config.search_min_per_class`
    accounts of the rarer outcome).

    Above that size the search runs on a stratified subsample (`search_sample`, seeded by
    `config.random_state`) and the caller refits at its C on all rows: tuning a hyperparameter on a subset
    of a large training set and training the final model on all of it (Klein, Falkner, Bartels, Hennig &
    Hutter 2017, "Fast Bayesian optimization of machine learning hyperparameters on large datasets",
    *AISTATS*, who show the best settings on subsets lie close to the full set's). C is used as chosen, as
    cross-validation already does between its fits on (k − 1)/k of the rows and the refit on all of them.
    The CV cost grows faster than the rows (each liblinear fit is superlinear in them), so the bound caps
    the search's time; at or below it the search is the one on all rows.

    The grid is sorted increasingly and walked by `walk_up` (CV log loss by `cv_log_loss`, the same folds
    for every C): it stops once the loss has risen above the lowest so far at `config.search_patience`
    consecutive grid points. The chosen C is the first one with the lowest CV log loss tried: the whole
    grid's choice whenever the CV loss curve over the grid has one minimum (the tests check it against
    `LogisticRegressionCV` on the whole grid). The points skipped are the largest Cs, the slowest fits
    (the most non-zero coefficients). Folds: `StratifiedKFold(k, shuffle=True, random_state)`,
    k = min(cv_folds, conversions, non-conversions) ≥ 2 (`n_cv_folds`).
    """
    y = np.asarray(y).astype(np.int64)
    n_training = len(y)
    rows = search_sample(y, search_size(y, config), config.random_state, min_per_class=config.cv_folds)
    if len(rows) < n_training:
        x, y = x[rows], y[rows]
    k = n_cv_folds(y, config.cv_folds)
    folds = list(StratifiedKFold(k, shuffle=True, random_state=config.random_state).split(np.zeros(len(y)), y))
    cs = tuple(sorted(float(c) for c in config.cs))
    losses = walk_up(lambda i: cv_log_loss(x, y, cs[i], folds, config), len(cs), config.search_patience)
    best = int(np.nanargmin(losses))
    return PenaltySearch(
        cs=cs, cv_log_loss=tuple(losses.tolist()), c=cs[best], n_folds=k, n_searched=len(y), n_training=n_training
    )


def train_logistic(x: sp.csr_matrix, y: np.ndarray, config: ModelConfig) -> LogisticFit:
    """L1 logistic regression, C chosen by `search_penalty`, refitted on all of `x` at liblinear's default
    tolerance (1e-4): the same coefficients as `LogisticRegression(C, l1_ratio=1, solver="liblinear")`."""
    y = np.asarray(y).astype(np.int64)
    n_cv_folds(y, config.cv_folds)
    if x.shape[1] == 0:
        raise ModelDataError("no candidate feature has enough support in the training cohorts (min_candidate_support)")
    search = search_penalty(x, y, config)
    return LogisticFit(estimator=_l1_logistic(search.c, config, REFIT_TOL).fit(x, y), search=search)


@dataclass(frozen=True)
class FittedLogistic:
    """What a fit leaves that the next run can reuse: the coefficients, the intercept and the C search, under
    the `training_key` of the data and settings it was fitted on."""

    key: str
    coefficients: np.ndarray
    intercept: float
    search: PenaltySearch

    @staticmethod
    def of(key: str, fit: LogisticFit) -> FittedLogistic:
        estimator = fit.estimator
        coefficients = np.asarray(estimator.coef_, dtype=np.float64).ravel()
        return FittedLogistic(key, coefficients, float(np.ravel(estimator.intercept_)[0]), fit.search)


def training_key(x: sp.csr_matrix, y: np.ndarray, feature_keys: tuple[str, ...], config: ModelConfig) -> str:
    """SHA-256 of everything `train_logistic` depends on: the training rows' features (the sparse matrix in
    canonical form: sorted indices, duplicates summed), the outcomes, what each column means, the model
    settings, the training code (this module's source: the search, the subsample, the refit) and the
    versions of scikit-learn, NumPy (the subsample's random stream) and SciPy. Equal keys, equal fits:
    liblinear is deterministic for a fixed `random_state`, so a fit kept under this key is the fit
    `train_logistic` would make again."""
    import scipy
    import sklearn

    x = sp.csr_matrix(x, dtype=np.float64, copy=True)
    x.sum_duplicates()
    x.sort_indices()
    versions = [sklearn.__version__, np.__version__, scipy.__version__]
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(json.dumps([x.shape, list(feature_keys), repr(config), REFIT_TOL, versions]).encode())
    for part in (x.indptr.astype(np.int64), x.indices.astype(np.int64), x.data, np.asarray(y, dtype=np.int64)):
        digest.update(np.ascontiguousarray(part).tobytes())
    return digest.hexdigest()


def linear_probability(x: sp.spmatrix, coefficients: np.ndarray, intercept: float) -> np.ndarray:
    """P = expit(intercept + x · coefficients) = 1 / (1 + exp(−z)), the logistic model's probability."""
    return expit(np.asarray(x @ np.asarray(coefficients, dtype=np.float64)).ravel() + float(intercept))


def score_accounts(model: LeadScoreModel, frames: FeatureFrames) -> np.ndarray:
    """Calibrated conversion probabilities for `frames.accounts` (row order) from a fitted model.

    Rebuilds the model's features with its own `FeatureSpec`; a feature no account has is zero.
    """
    design = design_matrix(frames, model.spec, model.feature_keys)
    return linear_probability(design.matrix, model.coefficients, model.intercept)


def model_to_frame(
    model: LeadScoreModel, candidates: pl.DataFrame | None = None, support: np.ndarray | None = None
) -> pl.DataFrame:
    """`beton.model_features`: one row per feature with a non-zero coefficient, plus the intercept row.

    Columns: feature_key, kind, definition, coefficient, odds_ratio (= exp(coefficient)),
    n_train_with, rank (by |coefficient|), and the model-level columns repeated on every row:
    intercept, regularization_c, qualify_threshold, feature_spec (JSON), trained_months (JSON),
    n_train, n_train_converted. `model_from_frame` rebuilds the model from it.
    """
    keys = np.array(model.feature_keys, dtype=object)
    coef = np.asarray(model.coefficients, dtype=np.float64)
    nonzero = coef != 0
    frame = pl.DataFrame(
        {
            "feature_key": pl.Series(keys[nonzero].tolist(), dtype=pl.String),
            "coefficient": coef[nonzero],
            "n_train_with": (
                np.asarray(support, dtype=np.int64)[nonzero]
                if support is not None
                else np.zeros(int(nonzero.sum()), np.int64)
            ),
        }
    )
    if candidates is not None:
        frame = frame.join(
            candidates.select(pl.col("key").alias("feature_key"), "kind", "definition"), on="feature_key", how="left"
        )
    else:
        frame = frame.with_columns(pl.lit(None, pl.String).alias("kind"), pl.lit(None, pl.String).alias("definition"))
    frame = frame.sort([pl.col("coefficient").abs(), "feature_key"], descending=[True, False]).with_row_index(
        "rank", offset=1
    )
    intercept_row = pl.DataFrame(
        {
            "rank": [0],
            "feature_key": [INTERCEPT_KEY],
            "coefficient": [float(model.intercept)],
            "n_train_with": [model.n_train],
            "kind": ["intercept"],
            "definition": ["intercept: log odds of conversion with no feature"],
        },
        schema=frame.schema,
    )
    frame = pl.concat([intercept_row, frame.cast(frame.schema)])
    return frame.with_columns(
        pl.col("rank").cast(pl.Int64),
        pl.col("coefficient").exp().alias("odds_ratio"),
        pl.lit(float(model.intercept)).alias("intercept"),
        pl.lit(float(model.regularization_c)).alias("regularization_c"),
        pl.lit(float(model.qualify_threshold)).alias("qualify_threshold"),
        pl.lit(model.spec.to_json()).alias("feature_spec"),
        pl.lit(json.dumps(list(model.trained_months))).alias("trained_months"),
        pl.lit(int(model.n_train), pl.Int64).alias("n_train"),
        pl.lit(int(model.n_train_converted), pl.Int64).alias("n_train_converted"),
    ).select(
        "rank",
        "feature_key",
        "kind",
        "definition",
        "coefficient",
        "odds_ratio",
        "n_train_with",
        "intercept",
        "regularization_c",
        "qualify_threshold",
        "feature_spec",
        "trained_months",
        "n_train",
        "n_train_converted",
    )


def model_from_frame(frame: pl.DataFrame) -> LeadScoreModel:
    """Rebuild a `LeadScoreModel` from its `beton.model_features` rows (inverse of `model_to_frame`)."""
    if frame.is_empty():
        raise ModelDataError("beton.model_features is empty: train the model first (asset lead_score_model)")
    first = frame.row(0, named=True)
    features = frame.filter(pl.col("feature_key") != INTERCEPT_KEY).sort("rank")
    return LeadScoreModel(
        feature_keys=tuple(features.get_column("feature_key").to_list()),
        coefficients=features.get_column("coefficient").to_numpy().astype(np.float64),
        intercept=float(first["intercept"]),
        spec=FeatureSpec.from_json(first["feature_spec"]),
        regularization_c=float(first["regularization_c"]),
        qualify_threshold=float(first["qualify_threshold"]),
        trained_months=tuple(json.loads(first["trained_months"])),
        n_train=int(first["n_train"]),
        n_train_converted=int(first["n_train_converted"]),
    )


# --------------------------------------------------------------------------------------------
# The enabled-signals score
# --------------------------------------------------------------------------------------------
def signal_membership(matrix: CandidateMatrix, signal_keys: list[str]) -> sp.csr_matrix:
    """Accounts × signals 0/1: singles are columns of `matrix`, a pair is the product of its parts' columns.

    A pair whose parts are unknown here (never fired in these accounts) is a zero column.
    """
    singles = [k for k in signal_keys if not k.startswith("pair:")]
    known = set(matrix.candidates.get_column("key").to_list()) | set(singles)
    parts = {k: pair_parts(k, known) for k in signal_keys if k.startswith("pair:")}
    single_cols = select_columns(matrix, signal_keys)  # singles; pair keys are never candidate keys → zero
    pairs = [k for k, ab in parts.items() if ab is not None]
    if not pairs:
        return single_cols
    a = select_columns(matrix, [parts[k][0] for k in pairs])
    b = select_columns(matrix, [parts[k][1] for k in pairs])
    both = a.multiply(b).tocsc()
    position = {k: i for i, k in enumerate(signal_keys)}
    place = sp.csr_matrix(
        (np.ones(len(pairs)), (np.arange(len(pairs)), [position[k] for k in pairs])),
        shape=(len(pairs), len(signal_keys)),
    )
    return (single_cols + both @ place).tocsr()


def enabled_signal_scores(matrix: CandidateMatrix, enabled: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(count, Σ log lift) of the enabled signals that fired, per account of `matrix`.

    `enabled` has `candidate_key` and `lift` (the discovery lift); a signal without a finite lift
    above 0 counts in the count but adds nothing to the weighted sum.
    """
    if enabled.is_empty():
        zeros = np.zeros(len(matrix.account_ids))
        return zeros, zeros.copy()
    keys = enabled.get_column("candidate_key").to_list()
    membership = signal_membership(matrix, keys)
    lift = enabled.get_column("lift").cast(pl.Float64).fill_null(np.nan).to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = np.where(np.isfinite(lift) & (lift > 0), np.log(lift), 0.0)
    count = np.asarray(membership.sum(axis=1)).ravel()
    return count, np.asarray(membership @ weight).ravel()


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------
def capacity_k(n_test: int, n_test_months: int, sales_capacity: int | None, default_fraction: float = 0.10) -> int:
    """Accounts sales can work in the test period: `sales_capacity` per month × test months, else
    ceil(default_fraction × n_test); at least 1 and at most n_test (0 when there is no test account)."""
    if n_test <= 0:
        return 0
    k = sales_capacity * max(n_test_months, 1) if sales_capacity else int(np.ceil(default_fraction * n_test))
    return int(min(max(k, 1), n_test))


def top_k_threshold(scores: np.ndarray, k: int) -> float:
    """The k-th highest score: qualifying `score ≥ threshold` takes the top k (more with ties)."""
    scores = np.asarray(scores, dtype=np.float64)
    if k <= 0 or scores.size == 0:
        return float("inf")
    return float(np.sort(scores)[::-1][min(k, scores.size) - 1])


def expected_hits_at_k(y: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Expected positives among the top k under a random tie-break.

    With t the k-th highest score: all accounts above t, plus (k − n_above) / n_tied of the
    positives tied at t.
    """
    y = np.asarray(y).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if k <= 0 or scores.size == 0:
        return 0.0
    k = min(k, scores.size)
    t = top_k_threshold(scores, k)
    above, tied = scores > t, scores == t
    n_above = int(above.sum())
    return float(y[above].sum() + y[tied].sum() * (k - n_above) / tied.sum())


def precision_at_k(y: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Tie-aware precision at k: expected positives in the top k / k (NaN when k = 0)."""
    k = min(k, len(scores))
    return expected_hits_at_k(y, scores, k) / k if k > 0 else float("nan")


def recall_at_k(y: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Tie-aware recall at k: expected positives in the top k / all positives (NaN without positives)."""
    positives = int(np.asarray(y).astype(bool).sum())
    return expected_hits_at_k(y, scores, k) / positives if positives else float("nan")


def _both_classes(y: np.ndarray) -> bool:
    return 0 < int(np.sum(y)) < len(y)


def scorer_metrics(scorer: str, y: np.ndarray, scores: np.ndarray, probability: np.ndarray, k: int) -> ScorerMetrics:
    """ROC AUC, PR AUC, precision/recall/lift at k (by `scores`), Brier and mean prediction (by `probability`).

    ROC and PR AUC are NaN when the test set holds only one class. lift_at_k = precision_at_k / observed_rate.
    """
    y = np.asarray(y).astype(np.int64)
    observed = float(y.mean()) if len(y) else float("nan")
    both = _both_classes(y)
    p_at_k = precision_at_k(y, scores, k)
    return ScorerMetrics(
        scorer=scorer,
        roc_auc=float(roc_auc_score(y, scores)) if both else float("nan"),
        pr_auc=float(average_precision_score(y, scores)) if both else float("nan"),
        precision_at_k=p_at_k,
        recall_at_k=recall_at_k(y, scores, k),
        lift_at_k=p_at_k / observed if observed > 0 else float("nan"),
        brier=float(brier_score_loss(y, probability)) if len(y) else float("nan"),
        mean_predicted=float(np.mean(probability)) if len(y) else float("nan"),
        observed_rate=observed,
        k=int(k),
    )


def score_buckets(scores: np.ndarray, n_buckets: int = 10) -> np.ndarray:
    """Bucket 1..n_buckets by score rank: floor(n_buckets × (r − 1) / n) + 1, r the lowest rank among ties.

    Accounts with equal scores share a bucket (so a bucket can be empty); bucket n_buckets holds the
    highest scores. With n divisible by n_buckets and no ties every bucket holds n / n_buckets.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    first = np.searchsorted(sorted_scores, sorted_scores, side="left")  # 0-based lowest rank of each tie group
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = first
    return (n_buckets * ranks) // n + 1


def calibration_table(
    scorer: str,
    y: np.ndarray,
    scores: np.ndarray,
    probability: np.ndarray,
    n_buckets: int = 10,
    confidence_level: float = 0.95,
) -> pl.DataFrame:
    """Win rate by confidence bucket: per score bucket (`score_buckets`), the mean predicted probability,
    the observed conversion rate and its Wilson interval (`core.stats.wilson_interval`)."""
    frame = pl.DataFrame(
        {
            "bucket": score_buckets(scores, n_buckets),
            "y": np.asarray(y).astype(np.int64),
            "p": np.asarray(probability, np.float64),
            "s": np.asarray(scores, np.float64),
        }
    )
    table = (
        frame.group_by("bucket")
        .agg(
            pl.len().cast(pl.Int64).alias("n_accounts"),
            pl.col("y").sum().cast(pl.Int64).alias("conversions"),
            pl.col("p").mean().alias("predicted_mean"),
            pl.col("s").min().alias("score_min"),
            pl.col("s").max().alias("score_max"),
        )
        .sort("bucket")
    )
    conv = table.get_column("conversions").to_numpy()
    n = table.get_column("n_accounts").to_numpy()
    low, high = wilson_interval(conv, n, confidence_level)
    return table.with_columns(
        pl.lit(scorer).alias("scorer"),
        pl.col("bucket").cast(pl.Int64),
        (pl.col("conversions") / pl.col("n_accounts")).alias("observed_rate"),
        pl.Series("observed_ci_low", low),
        pl.Series("observed_ci_high", high),
    ).select(
        "scorer",
        "bucket",
        "n_accounts",
        "conversions",
        "predicted_mean",
        "observed_rate",
        "observed_ci_low",
        "observed_ci_high",
        "score_min",
        "score_max",
    )


def confusion_at(scorer: str, truth: str, y: np.ndarray, scores: np.ndarray, threshold: float, k: int) -> Confusion:
    """The 2×2 table of qualified = score ≥ threshold against `y` (scikit-learn `confusion_matrix`)."""
    y = np.asarray(y).astype(bool)
    qualified = np.asarray(scores, dtype=np.float64) >= threshold
    if y.size == 0:  # scikit-learn refuses empty input; an empty table is all zeros
        tn = fp = fn = tp = 0
    else:
        tn, fp, fn, tp = confusion_matrix(y, qualified, labels=[False, True]).ravel()
    return Confusion(
        scorer=scorer,
        truth=truth,
        threshold=float(threshold),
        k=int(k),
        n_accounts=int(y.size),
        n_qualified=int(qualified.sum()),
        tp=int(tp),
        fp=int(fp),
        fn=int(fn),
        tn=int(tn),
    )


def monotone_probability(train_scores: np.ndarray, train_y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """A score turned into a probability: isotonic regression of y on the score over the training
    accounts (non-decreasing, clipped outside the training range)."""
    iso = IsotonicRegression(increasing=True, out_of_bounds="clip", y_min=0.0, y_max=1.0)
    iso.fit(np.asarray(train_scores, np.float64), np.asarray(train_y, np.float64))
    return iso.predict(np.asarray(scores, np.float64))


# --------------------------------------------------------------------------------------------
# The backtest
# --------------------------------------------------------------------------------------------
def training_rows(frames: FeatureFrames, holdout_fraction: float) -> tuple[HoldoutSplit, np.ndarray]:
    """Discovery's temporal split of `frames.accounts` (`core.discovery.temporal_split`) and the training-row mask."""
    months = cohort_labels(frames)
    split = temporal_split(months, holdout_fraction)
    return split, np.isin(months, list(split.discovery_months))


def model_inputs(
    frames: FeatureFrames, train: np.ndarray, spec: FeatureSpec, config: ModelConfig
) -> tuple[np.ndarray, CandidateMatrix, tuple[str, ...], sp.csr_matrix]:
    """(y, every candidate, the feature keys supported on the `train` rows, accounts × features) for `frames`."""
    y = frames.accounts.get_column("converted").fill_null(False).to_numpy().astype(np.int64)
    candidates = candidate_matrix(frames, spec)
    keys = supported_features(candidates, train, config.min_candidate_support, config.min_property_support)
    return y, candidates, keys, select_columns(candidates, keys)


def backtest_lead_score(
    frames: FeatureFrames,
    enabled_signals: pl.DataFrame,
    spec: FeatureSpec,
    config: ModelConfig,
    last_fit: FittedLogistic | None = None,
) -> LeadScoreBacktest:
    """Train on the earlier cohorts, score the later ones with every scorer, and measure them.

    `frames` holds the eligible accounts (outcome known); `enabled_signals` has `candidate_key` and
    `lift` of the enabled signals. Raises `ModelDataError` when a side of the split is empty or the
    training cohorts hold fewer than two accounts of a class.

    `last_fit`: the fit of an earlier run. When its key is this training data's `training_key` (the same
    training accounts, features, outcomes and settings: a daily run whose new day changed no training
    account), it is used as is instead of fitting again; the result is the same.
    """
    if frames.accounts.is_empty():
        raise ModelDataError("no eligible account (outcome window closed) yet")
    split, train = training_rows(frames, config.holdout_fraction)
    test = ~train
    if not split.holdout_months or not test.any():
        raise ModelDataError(
            f"the eligible accounts span {len(split.discovery_months)} cohort month(s): need at least 2 to hold later ones out "
            "(windows.holdout_fraction > 0)"
        )
    y, candidates, keys, x = model_inputs(frames, train, spec, config)

    started = time.perf_counter()
    x_train, y_train = x[train], y[train]
    key = training_key(x_train, y_train, keys, config)
    reused = last_fit is not None and last_fit.key == key
    fit = last_fit if reused else FittedLogistic.of(key, train_logistic(x_train, y_train, config))
    training_seconds = time.perf_counter() - started
    coef, intercept = fit.coefficients, fit.intercept
    model_prob = linear_probability(x, coef, intercept)

    count, log_lift = enabled_signal_scores(candidates, enabled_signals)
    base = float(y_train.mean())
    raw = {"model": model_prob, "signals": count, "signals_weighted": log_lift, "base_rate": np.full(len(y), base)}
    probability = {
        "model": model_prob,
        "signals": monotone_probability(count[train], y_train, count),
        "signals_weighted": monotone_probability(log_lift[train], y_train, log_lift),
        "base_rate": raw["base_rate"],
    }

    n_test = int(test.sum())
    k = capacity_k(n_test, len(split.holdout_months), config.sales_capacity, config.default_capacity_fraction)
    yt = y[test]
    metrics, calibration, confusion = {}, [], []
    for scorer in SCORERS:  # four scorers, each fully vectorised
        s, p = raw[scorer][test], probability[scorer][test]
        metrics[scorer] = scorer_metrics(scorer, yt, s, p, k)
        calibration.append(calibration_table(scorer, yt, s, p, config.n_buckets, config.confidence_level))
        confusion.append(confusion_at(scorer, "converted", yt, s, top_k_threshold(s, k), k).as_row())

    support = np.asarray(x_train.sum(axis=0)).ravel().astype(np.int64)
    model = LeadScoreModel(
        feature_keys=keys,
        coefficients=coef,
        intercept=intercept,
        spec=spec,
        regularization_c=fit.search.c,
        qualify_threshold=top_k_threshold(model_prob[test], k),
        trained_months=tuple(split.discovery_months),
        n_train=int(train.sum()),
        n_train_converted=int(y_train.sum()),
    )
    months = cohort_labels(frames)
    test_scores = pl.DataFrame(
        {
            "account_id": frames.accounts.get_column("account_id").to_numpy()[test],
            "cohort_month": months[test],
            "converted": yt.astype(bool),
            **{scorer: probability[scorer][test] for scorer in SCORERS},
            "signals_count": count[test],
            "signals_log_lift": log_lift[test],
        }
    )
    return LeadScoreBacktest(
        model=model,
        split=split,
        metrics=pl.DataFrame([row for scorer in SCORERS for row in metrics[scorer].as_rows()]),
        calibration=pl.concat(calibration),
        confusion=pl.DataFrame(confusion),
        test_scores=test_scores,
        features=model_to_frame(model, candidates.candidates, support),
        k=k,
        training_seconds=training_seconds,
        n_candidate_features=len(keys),
        scorer_metrics=metrics,
        penalty_search=fit.search,
        fit=fit,
        fit_reused=reused,
    )


# --------------------------------------------------------------------------------------------
# CRM comparison
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CrmComparison:
    """Qualified by a scorer against deals that progressed, on the test accounts that have a deal.

    accounts: account_id, cohort_month, score, qualified, progressed, outcome (true_positive,
    false_positive, false_negative, true_negative), converted, n_deals, latest_stage,
    latest_changed_at, latest_reason, reason_stage.
    """

    confusion: Confusion
    accounts: pl.DataFrame
    qualified_without_deal: int

    @property
    def false_positives(self) -> pl.DataFrame:
        """Qualified, but no deal progressed beyond the first stage (highest score first)."""
        return self.accounts.filter(pl.col("outcome") == "false_positive").sort("score", descending=True)

    @property
    def false_negatives(self) -> pl.DataFrame:
        """A deal progressed, but the scorer did not qualify the account (highest score first)."""
        return self.accounts.filter(pl.col("outcome") == "false_negative").sort("score", descending=True)


def crm_comparison(
    test_scores: pl.DataFrame,
    progress: pl.DataFrame,
    scorer: str,
    threshold: float,
    k: int,
    min_accounts: int = ModelConfig.min_crm_accounts,
) -> CrmComparison:
    """Compare `scorer` ≥ `threshold` with `progress.progressed` on the test accounts that have a deal.

    `progress`: one row per account with a deal (the `account_deal_progress` mart): account_id,
    n_deals, progressed, latest_stage, latest_changed_at, latest_reason, reason_stage. Raises
    `ModelDataError` (with the counts) when fewer than `min_accounts` test accounts have a deal, or
    none of them progressed or all did: a CRM with a few deals has nothing to compare with yet.
    """
    scored = test_scores.select("account_id", "cohort_month", "converted", pl.col(scorer).alias("score")).with_columns(
        (pl.col("score") >= threshold).alias("qualified")
    )
    with_deal = scored.join(progress, on="account_id", how="inner")
    n_progressed = int(with_deal.get_column("progressed").sum())
    if with_deal.height < min_accounts or not 0 < n_progressed < with_deal.height:
        raise ModelDataError(
            f"not enough CRM deals to compare with: {with_deal.height} test account(s) have a deal "
            f"({n_progressed} progressed beyond the first stage; {progress.height} account(s) with a deal in all), "
            f"need at least {min_accounts} with both outcomes"
        )
    qualified_without_deal = scored.filter(pl.col("qualified")).join(progress, on="account_id", how="anti").height
    y = with_deal.get_column("progressed").to_numpy().astype(bool)
    confusion = confusion_at(scorer, "deal_progressed", y, with_deal.get_column("score").to_numpy(), threshold, k)
    outcome = (
        pl.when(pl.col("qualified") & pl.col("progressed"))
        .then(pl.lit("true_positive"))
        .when(pl.col("qualified"))
        .then(pl.lit("false_positive"))
        .when(pl.col("progressed"))
        .then(pl.lit("false_negative"))
        .otherwise(pl.lit("true_negative"))
    )
    accounts = (
        with_deal.with_columns(outcome.alias("outcome"))
        .select(
            "account_id",
            "cohort_month",
            "score",
            "qualified",
            "progressed",
            "outcome",
            "converted",
            "n_deals",
            "latest_stage",
            "latest_changed_at",
            "latest_reason",
            "reason_stage",
        )
        .sort(["outcome", "score"], descending=[False, True])
    )
    return CrmComparison(confusion=confusion, accounts=accounts, qualified_without_deal=qualified_without_deal)
