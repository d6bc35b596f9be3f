"""Deep linear JEPA and MAE trained by full-batch gradient descent in float64 (autograd on the losses).

Encoder W = W_L ... W_1 (square d x d layers). Head V is
  JEPA: a linear predictor in latent space; loss 1/2 E || V W x - sg(W y) ||^2 (target through the same
        encoder, gradient stopped);
  MAE:  a linear decoder to input space;      loss 1/2 E || V W x - y ||^2.

Small balanced orthogonal initialisation: W_a(0) = eps^(1/L) U_a with U_a random orthogonal, so W(0) = eps R
with R = U_L ... U_1. The head is aligned with it (JEPA: V = eps^(1/L) I; MAE: V = eps^(1/L) R^T), which makes
every layer's singular value equal to eps^(1/L) and keeps the dynamics decoupled per input feature. The encoder
stays of the form W = Q diag(w) (Q orthogonal) for all time, so the column norm w_i = ||W e_i|| is the
per-feature weight the ODEs predict.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .ode import OBJECTIVES


@dataclass
class DeepLinearModel:
    objective: str
    layers: list[torch.Tensor]  # W_1 ... W_L, applied in that order
    head: torch.Tensor  # V
    latent_basis: torch.Tensor  # R = U_L ... U_1: maps feature i to its latent direction

    @property
    def depth(self) -> int:
        return len(self.layers)

    def parameters(self) -> list[torch.Tensor]:
        return [*self.layers, self.head]

    def encoder(self) -> torch.Tensor:
        w = self.layers[0]
        for layer in self.layers[1:]:
            w = layer @ w
        return w

    def feature_weights(self, basis: torch.Tensor | None = None) -> np.ndarray:
        """Per-feature encoder weights w_i = ||W p_i|| for the columns p_i of `basis` (default: the input axes).

        A column norm rather than (R^T W)_ii because JEPA's loss is invariant to rotating the latent space
        (W -> Q W, V -> Q V Q^T): once several features are learned their latent directions drift and mix
        (rounding errors seed it), while the column norms keep following the per-feature ODE.
        """
        with torch.no_grad():
            w = self.encoder() if basis is None else self.encoder() @ basis
            return torch.linalg.vector_norm(w, dim=0).numpy().copy()

    def off_diagonal_leak(self, basis: torch.Tensor | None = None) -> float:
        """Largest |cos| between the encodings of two different features: 0 while the dynamics are decoupled."""
        with torch.no_grad():
            w = self.encoder() if basis is None else self.encoder() @ basis
            w = w / torch.linalg.vector_norm(w, dim=0).clamp_min(1e-300)
            gram = w.T @ w
            return float((gram - torch.diag(torch.diagonal(gram))).abs().max())


def random_orthogonal(d: int, generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def init_balanced(objective: str, dim: int, depth: int, eps: float, seed: int = 0) -> DeepLinearModel:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    g = torch.Generator().manual_seed(seed)
    scale = eps ** (1.0 / depth)
    rotations = [random_orthogonal(dim, g) for _ in range(depth)]
    basis = torch.eye(dim, dtype=torch.float64)
    for u in rotations:
        basis = u @ basis
    layers = [(scale * u).requires_grad_() for u in rotations]
    head0 = torch.eye(dim, dtype=torch.float64) if objective == "jepa" else basis.T.clone()
    return DeepLinearModel(objective, layers, (scale * head0).requires_grad_(), basis)


def loss(model: DeepLinearModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Full-batch loss on rows x, y of shape [n, d] (1/2 mean over samples of the squared error)."""
    w = model.encoder()
    prediction = x @ w.T @ model.head.T
    target = (y @ w.T).detach() if model.objective == "jepa" else y  # detach = stop-gradient
    return 0.5 * ((prediction - target) ** 2).sum(dim=1).mean()


def train_gd(model: DeepLinearModel, x: np.ndarray, y: np.ndarray, lr: float, total_time: float,
             n_records: int = 200, basis: np.ndarray | None = None,
             probe=None) -> dict[str, np.ndarray]:
    """Plain full-batch gradient descent for total_time / lr steps; time after k steps is k * lr.

    Returns times [T], per-feature weights [T, d], loss [T] and the off-diagonal leak [T] at ~n_records
    evenly spaced steps (step 0 included). `basis` (columns = feature directions in input space) defaults to
    the input axes. `probe(model) -> float`, if given, is recorded alongside (key "probe").
    """
    basis_t = None if basis is None else torch.as_tensor(basis, dtype=torch.float64)
    xt = torch.as_tensor(x, dtype=torch.float64)
    yt = torch.as_tensor(y, dtype=torch.float64)
    steps = int(round(total_time / lr))
    record_at = set(np.linspace(0, steps, min(n_records, steps + 1)).round().astype(int).tolist())
    times, weights, losses, leaks, probes = [], [], [], [], []
    params = model.parameters()
    for step in range(steps + 1):
        value = loss(model, xt, yt)
        if step in record_at:
            times.append(step * lr)
            weights.append(model.feature_weights(basis_t))
            losses.append(float(value.detach()))
            leaks.append(model.off_diagonal_leak(basis_t))
            if probe is not None:
                probes.append(probe(model))
        if step == steps:
            break
        grads = torch.autograd.grad(value, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= lr * g
    return {"time": np.array(times), "weights": np.array(weights), "loss": np.array(losses),
            "leak": np.array(leaks), "probe": np.array(probes)}
