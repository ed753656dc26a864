"""Statistical power of discovery: the smallest lift a data set can detect.

`beton check` says whether an export has enough eligible accounts for discovery to find anything: the
smallest lift (conversion rate of the accounts with a signal ÷ that of the accounts without it, as
discovery defines it) detectable at the configured alpha with 80 % power, for a signal held by a given
share of the accounts (10 % by default).

The test is the two-sided comparison of two independent proportions on Cohen's arcsine scale, with
the normal approximation (Cohen 1988, *Statistical Power Analysis for the Behavioral Sciences*, 2nd
ed., ch. 6; the same computation as statsmodels' `NormalIndPower` with `proportion_effectsize`).
Discovery's real bar is stricter (Benjamini–Hochberg over many candidates, a minimum lift, a holdout),
so the figure is a floor: a smaller lift will not be found, a larger one may still be missed.
"""

from __future__ import annotations

import math

from scipy import optimize, special

REFERENCE_SIGNAL_SHARE = 0.10
"""Share of accounts holding the reference signal in `beton check`'s power figure: a behaviour one
account in ten shows."""

REFERENCE_POWER = 0.80
"""The power of `beton check`'s figure: the conventional 80 % (Cohen 1988)."""

_ARC_LIMIT = math.pi
"""Cohen's h is at most π (proportions 0 and 1)."""


def _validate(n_with: float, n_without: float, alpha: float) -> None:
    if not (n_with > 0 and n_without > 0):
        raise ValueError(f"group sizes must be positive, got {n_with} and {n_without}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def two_proportion_power(h: float, n_with: float, n_without: float, alpha: float) -> float:
    """Power of the two-sided z-test of two independent proportions at effect size `h` (Cohen's h).

    power = Φ(|h|·√n_eff − z) + Φ(−|h|·√n_eff − z), with n_eff = 1 / (1/n_with + 1/n_without) and
    z = Φ⁻¹(1 − alpha/2) (Cohen 1988, §6.3; statsmodels `NormalIndPower.power` with
    `nobs1=n_with, ratio=n_without/n_with`).
    """
    _validate(n_with, n_without, alpha)
    shift = abs(h) * math.sqrt(1.0 / (1.0 / n_with + 1.0 / n_without))
    z = -float(special.ndtri(alpha / 2))
    return float(special.ndtr(shift - z) + special.ndtr(-z - shift))


def min_detectable_h(n_with: float, n_without: float, alpha: float, power: float) -> float | None:
    """The smallest Cohen's h the two-sided test detects with probability `power`: the root of
    `two_proportion_power(h, …) = power` on [0, π], or None when even h = π falls short.

    Solved to machine precision (Brent's method), so the power at the returned h equals `power`
    to about 1e-15."""
    _validate(n_with, n_without, alpha)
    if not alpha < power < 1:
        raise ValueError(f"power must be in (alpha, 1), got {power}")

    def gap(h: float) -> float:
        return two_proportion_power(h, n_with, n_without, alpha) - power

    if gap(_ARC_LIMIT) < 0:
        return None
    return float(optimize.brentq(gap, 0.0, _ARC_LIMIT, xtol=1e-15, rtol=1e-15, maxiter=200))


def min_detectable_lift(
    n_accounts: int,
    base_rate: float,
    alpha: float,
    power: float = REFERENCE_POWER,
    signal_share: float = REFERENCE_SIGNAL_SHARE,
) -> float | None:
    """The smallest lift p₁/p₀ detectable among `n_accounts` (two-sided, `alpha`, `power`) for a signal
    held by `signal_share` of them, where p₀ = `base_rate` is the conversion rate without the signal.

    With n₁ = share·n and n₀ = (1 − share)·n, h = `min_detectable_h(n₁, n₀, alpha, power)`;
    p₁ = sin²(arcsin √p₀ + h/2) inverts Cohen's h = 2 arcsin √p₁ − 2 arcsin √p₀ (Cohen 1988, §6.2),
    and the lift is p₁ / p₀. None when no lift is detectable: fewer than one account in a group, a base
    rate of 0 or 1, or a required p₁ above 1.
    """
    if not 0 < signal_share < 1:
        raise ValueError(f"signal_share must be in (0, 1), got {signal_share}")
    n_with, n_without = signal_share * n_accounts, (1 - signal_share) * n_accounts
    if n_with < 1 or n_without < 1 or not 0 < base_rate < 1:
        return None
    h = min_detectable_h(n_with, n_without, alpha, power)
    if h is None:
        return None
    angle = math.asin(math.sqrt(base_rate)) + h / 2
    if angle > math.pi / 2:
        return None
    return math.sin(angle) ** 2 / base_rate
