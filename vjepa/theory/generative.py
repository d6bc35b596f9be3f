"""Linear generative models of images where the nuisance is loud and the semantic factor is quiet.

Pixels (a 4 x 4 image, D = 16) are a sum of three parts:
  semantic factor s times a fixed template a (a ring, "the digit"): low variance, shared by both views;
  flicker f times the flat pattern b (global brightness):             high variance, barely shared;
  independent per-pixel noise of variance tau2:                        not shared at all.
a and b are orthonormal, so in the basis (a, b, rest) Sigma_xx and Sigma_yx are diagonal and the per-feature
theory applies with (per direction)
  semantic: lam = Cov(y, x) along a,  rho = lam / Var(x along a)   -> low lam, high rho
  flicker:  lam = c sigma_f^2,        rho ~ c                      -> high lam, low rho
Static model: x, y are two views of one image (the semantic factor is identical, the flicker correlates c).
Temporal model: x, y are consecutive frames; s is a slow AR(1) process, f a fast one (correlation = persistence).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIDE = 4  # 4 x 4 pixels keeps the deep-JEPA runs (tens of thousands of GD steps) fast on a CPU
CHAIN_LENGTH = 16


def patterns(side: int = SIDE) -> np.ndarray:
    """Columns: semantic template a (a centred ring), flicker pattern b (flat); orthonormal, shape [D, 2]."""
    yy, xx = np.mgrid[:side, :side] - (side - 1) / 2
    radius = np.hypot(yy, xx)
    ring = np.exp(-((radius - side / 3) ** 2) / 0.5).ravel()
    flat = np.ones(side * side)
    flat /= np.linalg.norm(flat)
    ring -= ring @ flat * flat  # orthogonal to the flicker direction, so the two are separate features
    return np.stack([ring / np.linalg.norm(ring), flat], axis=1)


@dataclass(frozen=True)
class PixelModel:
    kind: str  # "static" or "temporal"
    semantic_var: float = 0.8
    flicker_var: float = 6.0
    flicker_corr: float = 0.16  # static: corr(f, f') across views; temporal: AR(1) persistence of f
    semantic_corr: float = 1.0  # static: 1 (same object in both views); temporal: AR(1) persistence of s
    pixel_noise_var: float = 0.05

    def theory(self) -> dict:
        """Population lam, rho, sigma2 of the (semantic, flicker) directions."""
        var = np.array([self.semantic_var, self.flicker_var])
        corr = np.array([self.semantic_corr, self.flicker_corr])
        sigma2 = var + self.pixel_noise_var
        lam = corr * var
        return {"lam": lam, "sigma2": sigma2, "rho": lam / sigma2}

    def sample(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """n pairs (x, y) of flattened images, shape [n, SIDE * SIDE] each."""
        rng = np.random.default_rng(seed)
        basis = patterns()
        d = basis.shape[0]
        std = np.sqrt([self.semantic_var, self.flicker_var])
        corr = np.array([self.semantic_corr, self.flicker_corr])
        if self.kind == "static":
            factors_x = rng.standard_normal((n, 2)) * std
            fresh = rng.standard_normal((n, 2)) * std
            factors_y = corr * factors_x + np.sqrt(1 - corr ** 2) * fresh
        elif self.kind == "temporal":
            # Independent stationary AR(1) chains z_{t+1} = phi z_t + sqrt(1 - phi^2) std e_t, each CHAIN_LENGTH
            # frames long; every consecutive pair (frame t, frame t+1) is one sample.
            chains = -(-n // CHAIN_LENGTH)
            frames = np.empty((chains, CHAIN_LENGTH + 1, 2))
            frames[:, 0] = rng.standard_normal((chains, 2)) * std
            for t in range(CHAIN_LENGTH):
                step = rng.standard_normal((chains, 2)) * std * np.sqrt(1 - corr ** 2)
                frames[:, t + 1] = corr * frames[:, t] + step
            factors_x = frames[:, :-1].reshape(-1, 2)[:n]
            factors_y = frames[:, 1:].reshape(-1, 2)[:n]
        else:
            raise ValueError(f"kind must be 'static' or 'temporal', got {self.kind!r}")
        noise = np.sqrt(self.pixel_noise_var)
        x = factors_x @ basis.T + noise * rng.standard_normal((n, d))
        y = factors_y @ basis.T + noise * rng.standard_normal((n, d))
        return x, y


def compress_to_moments(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2D rows (x', y') with exactly the second moments of (x, y).

    Full-batch GD on a quadratic loss depends on the data only through these moments, so training on the
    compressed rows is the same GD on all n samples, at a fraction of the cost.
    """
    z = np.concatenate([x, y], axis=1)
    moments = z.T @ z / len(z)
    evals, evecs = np.linalg.eigh(moments)
    root = (evecs * np.sqrt(np.clip(evals, 0, None))) @ evecs.T  # symmetric square root
    rows = np.sqrt(len(root)) * root
    d = x.shape[1]
    return rows[:, :d], rows[:, d:]
