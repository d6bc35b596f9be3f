"""Per-feature ODEs of deep linear JEPA and MAE under gradient flow (derivation: docs/theory.md).

Notation (the paper's): for feature i, sigma2_i = Var(x_i) (diagonal of Sigma_xx), lam_i = Cov(y_i, x_i)
(diagonal of Sigma_yx) and rho_i = lam_i / sigma2_i (regression coefficient of y_i on x_i).

With small balanced orthogonal initialisation every layer of the depth-L encoder and the predictor/decoder
share one singular value u_i per feature for all time, so the encoder weight of feature i is w_i = u_i^L and

    JEPA:  du/dt = u^(2L) (lam - sigma2 u)          fixed point u = rho,            w = rho^L
    MAE:   du/dt = u^L    (lam - sigma2 u^(L+1))    fixed point u = rho^(1/(L+1)),  w = rho^(L/(L+1))

Both start at u(0) = eps^(1/L) (the encoder product starts at eps).
"""
from __future__ import annotations

import math

import numpy as np
from scipy.integrate import quad, solve_ivp

OBJECTIVES = ("jepa", "mae")


def _check(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")


def layer_rate(objective: str, u, lam, sigma2, depth: int):
    """du/dt for the shared per-layer singular value u of one feature."""
    _check(objective)
    if objective == "jepa":
        return u ** (2 * depth) * (lam - sigma2 * u)
    return u ** depth * (lam - sigma2 * u ** (depth + 1))


def fixed_point_layer(objective: str, rho: float, depth: int) -> float:
    _check(objective)
    return rho if objective == "jepa" else rho ** (1.0 / (depth + 1))


def fixed_point_encoder(objective: str, rho: float, depth: int) -> float:
    """Encoder weight w = u^L at the stable fixed point (JEPA: rho^L; MAE: rho^(L/(L+1)))."""
    return fixed_point_layer(objective, rho, depth) ** depth


def initial_layer_value(eps: float, depth: int) -> float:
    return eps ** (1.0 / depth)


def integrate(objective: str, lam, sigma2, depth: int, eps: float, times) -> np.ndarray:
    """Encoder weights w_i(t) = u_i(t)^L at the requested times, shape [len(times), n_features]."""
    lam = np.atleast_1d(np.asarray(lam, dtype=np.float64))
    sigma2 = np.atleast_1d(np.asarray(sigma2, dtype=np.float64))
    times = np.asarray(times, dtype=np.float64)
    u0 = np.full_like(lam, initial_layer_value(eps, depth))
    # Integrate log u: the plateau near u0 spans many orders of magnitude of time, log-space keeps it stiff-free.
    def rhs(_t, log_u):
        u = np.exp(log_u)
        return layer_rate(objective, u, lam, sigma2, depth) / u

    sol = solve_ivp(rhs, (0.0, float(times[-1])), np.log(u0), t_eval=times, method="LSODA",
                    rtol=1e-10, atol=1e-12)
    if not sol.success:
        raise RuntimeError(sol.message)
    return np.exp(sol.y.T) ** depth


def critical_time(objective: str, lam: float, sigma2: float, depth: int, eps: float,
                  fraction: float = 0.5) -> float:
    """Time for the encoder weight w = u^L to reach `fraction` of its fixed point (exact quadrature).

    t* = integral from u0 to u* of du / (du/dt), with u* = fraction^(1/L) * u_fixed. Returns 0 if the feature
    starts beyond u* and inf if it never gets there (it starts above its fixed point and decays).
    """
    u_fix = fixed_point_layer(objective, lam / sigma2, depth)
    u0 = initial_layer_value(eps, depth)
    u_target = fraction ** (1.0 / depth) * u_fix
    if u0 >= u_fix:
        return math.inf
    if u0 >= u_target:
        return 0.0
    # Substitute u = exp(s): dt = u ds / rate(u); integrand is smooth in s.
    def integrand(s):
        u = math.exp(s)
        return u / layer_rate(objective, u, lam, sigma2, depth)

    value, _ = quad(integrand, math.log(u0), math.log(u_target), limit=400, epsabs=0.0, epsrel=1e-11)
    return value


def jepa_critical_time_series(lam: float, rho: float, depth: int, eps: float) -> float:
    """Leading small-eps expansion of JEPA's critical time (our derivation, docs/theory.md):

        t* ~ (1/lam) * sum_{n=1}^{2L-1} eps^(-n/L) / (n rho^(2L-1-n))

    It drops O(log) terms, so it is only checked against critical_time for small eps. It shows why depth
    brings rho in: for L = 1 only the n = 1 term exists and it does not depend on rho.
    """
    return sum(eps ** (-n / depth) / (n * rho ** (2 * depth - 1 - n)) for n in range(1, 2 * depth)) / lam


def critical_times(objective: str, lam, sigma2, depth: int, eps: float, fraction: float = 0.5) -> np.ndarray:
    return np.array([critical_time(objective, float(a), float(b), depth, eps, fraction)
                     for a, b in zip(np.atleast_1d(lam), np.atleast_1d(sigma2))])
