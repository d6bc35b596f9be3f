"""Data for the deep linear theory: views (x, y) with exactly prescribed second moments.

Per feature i we prescribe lam_i = E[y_i x_i] (Sigma_yx, diagonal) and rho_i = lam_i / sigma2_i, so
sigma2_i = E[x_i^2] = lam_i / rho_i (Sigma_xx, diagonal). Samples are built from orthonormal columns, so the
*sample* moments equal the prescribed ones to machine precision: full-batch gradient descent on the samples is
then exactly gradient descent on the population loss, and GD can be compared with the ODEs without sampling noise.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FeatureSpec:
    """lam = Cov(y_i, x_i), rho = lam / Var(x_i); sigma2 = Var(x_i) follows."""

    lam: np.ndarray
    rho: np.ndarray

    def __post_init__(self):
        lam = np.atleast_1d(np.asarray(self.lam, dtype=np.float64))
        rho = np.atleast_1d(np.asarray(self.rho, dtype=np.float64))
        if lam.shape != rho.shape or np.any(lam <= 0) or np.any(rho <= 0):
            raise ValueError("lam and rho must be positive arrays of equal shape")
        object.__setattr__(self, "lam", lam)
        object.__setattr__(self, "rho", rho)

    @property
    def sigma2(self) -> np.ndarray:
        return self.lam / self.rho

    @property
    def dim(self) -> int:
        return self.lam.size


def _orthonormal_columns(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, k)))
    return q * np.sign(np.diag(r))  # sign fix makes the draw a proper Haar sample


def sample_views(spec: FeatureSpec, n: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x, y of shape [n, d] with x^T x / n = diag(sigma2) and y^T x / n = diag(lam) exactly.

    y_i = rho_i x_i + e_i with e_i orthogonal to every x_j; e_i has the variance that makes Var(y_i) = Var(x_i)
    when rho_i <= 1 (two views of one stationary signal). The residual never enters the gradients.
    """
    d = spec.dim
    if n < 2 * d:
        raise ValueError(f"need n >= 2 d = {2 * d} samples for exact moments, got {n}")
    q = _orthonormal_columns(n, 2 * d, np.random.default_rng(seed)) * np.sqrt(n)
    sigma = np.sqrt(spec.sigma2)
    x = q[:, :d] * sigma
    residual_std = sigma * np.sqrt(np.clip(1.0 - spec.rho ** 2, 0.0, None))
    y = spec.rho * x + q[:, d:] * residual_std
    return x, y
