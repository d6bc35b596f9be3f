"""The paper's claims as experiments: each returns a JSON-able dict of numbers (plots live in plots.py).

Critical time t* of a feature: first time its encoder weight w reaches half its fixed point. It is computed
exactly from the ODE (quadrature) and, where `gd_lr` is given, measured on simulated full-batch gradient descent.
t* = inf (JSON null) means the weight never gets there: with JEPA a feature whose fixed point rho^L lies below
the initial weight eps decays instead of being learned.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import spearmanr

from . import ode
from .data import FeatureSpec, sample_views
from .linear_models import init_balanced, train_gd

# Defaults shared by the two-feature experiments (chosen so that eps^(1/L) < rho for every feature at L <= 4).
DEFAULT_EPS = 0.01
DEPTH_GAP_SPEC = dict(lam=[1.0, 1.0], rho=[0.5, 1.0])  # equal covariance, different regression coefficient
# A: high covariance, low rho (noisy: Var(x_A) = 2); B: lower covariance, high rho (Var(x_B) = 0.9).
ORDERING_SPEC = dict(lam=[1.0, 0.9], rho=[0.5, 1.0])


def crossing_time(times: np.ndarray, values: np.ndarray, level: float) -> float:
    """First time `values` reaches `level` (linear interpolation); inf if it never does."""
    above = np.nonzero(values >= level)[0]
    if above.size == 0:
        return math.inf
    k = above[0]
    if k == 0:
        return float(times[0])
    t0, t1, v0, v1 = times[k - 1], times[k], values[k - 1], values[k]
    return float(t0 + (level - v0) * (t1 - t0) / (v1 - v0))


def learning_time(times: np.ndarray, weights: np.ndarray, fixed_point: float, fraction: float = 0.5) -> float:
    """Measured critical time of one feature, with the same conventions as ode.critical_time: inf when the
    weight starts at or above its fixed point (it decays there, it is never learned)."""
    if weights[0] >= fixed_point:
        return math.inf
    return crossing_time(times, weights, fraction * fixed_point)


def _gd_learning_rate(total_time: float, max_lr: float, min_steps: int) -> float:
    # MAE learns in O(10) time units, deep JEPA in O(1000): a fixed lr is either too coarse or too slow.
    return min(max_lr, total_time / min_steps)


def simulate_features(objective: str, spec: FeatureSpec, depth: int, eps: float, total_time: float,
                      max_lr: float, min_steps: int = 4000, seed: int = 0) -> dict:
    """Full-batch GD on exact-moment samples, compared with the ODE on the same time grid."""
    lr = _gd_learning_rate(total_time, max_lr, min_steps)
    x, y = sample_views(spec, n=max(64, 2 * spec.dim), seed=seed)
    run = train_gd(init_balanced(objective, spec.dim, depth, eps, seed=seed), x, y, lr, total_time)
    predicted = ode.integrate(objective, spec.lam, spec.sigma2, depth, eps, run["time"])
    fixed = np.array([ode.fixed_point_encoder(objective, r, depth) for r in spec.rho])
    measured = [learning_time(run["time"], run["weights"][:, i], fixed[i]) for i in range(spec.dim)]
    return {"lr": lr, "steps": int(round(total_time / lr)), "time": run["time"], "weights": run["weights"],
            "ode_weights": predicted, "critical_times": measured,
            "max_abs_deviation_from_ode": float(np.abs(run["weights"] - predicted).max()),
            "max_off_diagonal_leak": float(run["leak"].max()), "final_weights": run["weights"][-1].tolist()}


def two_feature_study(spec: FeatureSpec, depths, eps: float = DEFAULT_EPS, gd_lr: float | None = 0.1,
                      n_points: int = 400) -> dict:
    """Critical times, fixed points and trajectories of each feature, per objective and depth."""
    result = {"lam": spec.lam.tolist(), "rho": spec.rho.tolist(), "sigma2": spec.sigma2.tolist(),
              "eps": eps, "depths": list(depths), "runs": {}}
    for objective in ode.OBJECTIVES:
        for depth in depths:
            t_crit = ode.critical_times(objective, spec.lam, spec.sigma2, depth, eps)
            finite = t_crit[np.isfinite(t_crit)]
            horizon = 1.5 * float(finite.max()) if finite.size else 1.0
            times = np.linspace(0.0, horizon, n_points)
            run = {"critical_times": t_crit.tolist(),
                   "fixed_points": [ode.fixed_point_encoder(objective, r, depth) for r in spec.rho],
                   "time": times, "ode_weights": ode.integrate(objective, spec.lam, spec.sigma2, depth, eps, times)}
            if gd_lr:
                run["gd"] = simulate_features(objective, spec, depth, eps, horizon, gd_lr)
            result["runs"][f"{objective}_L{depth}"] = run
    return result


def _times(study: dict, objective: str, depth: int, source: str = "ode") -> list[float]:
    run = study["runs"][f"{objective}_L{depth}"]
    return run["gd"]["critical_times"] if source == "gd" else run["critical_times"]


def depth_gap(depths=(1, 2, 3, 4), eps: float = DEFAULT_EPS, gd_lr: float | None = 0.1) -> dict:
    """Experiment 1: equal lam, different rho. Gap = log(t*_low-rho / t*_high-rho), per objective and depth."""
    study = two_feature_study(FeatureSpec(**DEPTH_GAP_SPEC), depths, eps, gd_lr)
    sources = ["ode", "gd"] if gd_lr else ["ode"]
    study["log_gap"] = {src: {obj: [math.log(t[0] / t[1]) for t in (_times(study, obj, L, src) for L in depths)]
                              for obj in ode.OBJECTIVES} for src in sources}
    gaps = study["log_gap"]["ode"]
    study["claims"] = {
        "jepa_gap_grows_with_depth": bool(np.all(np.diff(gaps["jepa"]) > 0)),
        "mae_gap_does_not_grow": bool(np.all(np.diff(np.abs(gaps["mae"])) <= 0)),
    }
    return study


def ordering(depths=(1, 2, 3, 4), eps: float = DEFAULT_EPS, gd_lr: float | None = 0.1) -> dict:
    """Experiment 2: A = high lam / low rho (noisy), B = low lam / high rho. Which is learned first?"""
    study = two_feature_study(FeatureSpec(**ORDERING_SPEC), depths, eps, gd_lr)
    sources = ["ode", "gd"] if gd_lr else ["ode"]
    study["first_learned"] = {src: {obj: ["A" if t[0] < t[1] else "B" for t in
                                          (_times(study, obj, L, src) for L in depths)]
                                    for obj in ode.OBJECTIVES} for src in sources}
    first = study["first_learned"]["ode"]
    study["claims"] = {
        "mae_learns_A_first_at_every_depth": all(f == "A" for f in first["mae"]),
        "jepa_like_mae_at_L1": first["jepa"][depths.index(1)] == "A" if 1 in depths else None,
        "jepa_learns_B_first_for_L_ge_2": all(f == "B" for f, L in zip(first["jepa"], depths) if L >= 2),
    }
    return study


def many_features(depths=(1, 2, 3, 4), n_features: int = 24, eps: float = 0.003, seed: int = 0,
                  lam_range=(0.7, 1.0), gd_lr: float | None = None, gd_depths=(1, 2)) -> dict:
    """Experiment 3: lam and rho drawn independently; Spearman of critical time against each, per depth.

    Negative Spearman(t*, rho) means high-rho features are learned first. rho is drawn from
    [2 eps^(1/L_max), 1] so every feature starts at most at half of its JEPA target (else t* measures where it
    started rather than how fast it learns). lam spans a modest range so that rho's influence can show.
    """
    rng = np.random.default_rng(seed)
    rho_min = min(0.9, max(0.3, 2 * eps ** (1.0 / max(depths))))
    spec = FeatureSpec(lam=np.exp(rng.uniform(np.log(lam_range[0]), np.log(lam_range[1]), n_features)),
                       rho=rng.uniform(rho_min, 1.0, n_features))
    out = {"lam": spec.lam.tolist(), "rho": spec.rho.tolist(), "eps": eps, "depths": list(depths),
           "critical_times": {}, "spearman_vs_rho": {}, "spearman_vs_lam": {}}
    for objective in ode.OBJECTIVES:
        times = [ode.critical_times(objective, spec.lam, spec.sigma2, L, eps) for L in depths]
        out["critical_times"][objective] = [t.tolist() for t in times]
        out["spearman_vs_rho"][objective] = [float(spearmanr(t, spec.rho)[0]) for t in times]
        out["spearman_vs_lam"][objective] = [float(spearmanr(t, spec.lam)[0]) for t in times]
    if gd_lr:  # measured on a d x d network trained by GD (slow for deep JEPA, so only a few depths)
        out["gd"] = {}
        for objective in ode.OBJECTIVES:
            for L in gd_depths:
                horizon = 1.3 * max(out["critical_times"][objective][list(depths).index(L)])
                sim = simulate_features(objective, spec, L, eps, horizon, gd_lr, min_steps=2000)
                out["gd"][f"{objective}_L{L}"] = {
                    "spearman_vs_rho": float(spearmanr(sim["critical_times"], spec.rho)[0]),
                    "spearman_vs_lam": float(spearmanr(sim["critical_times"], spec.lam)[0]),
                    "max_abs_deviation_from_ode": sim["max_abs_deviation_from_ode"], "lr": sim["lr"]}
    rho_j, lam_m = out["spearman_vs_rho"]["jepa"], out["spearman_vs_lam"]["mae"]
    out["claims"] = {
        "jepa_rho_correlation_strengthens_with_depth": bool(np.all(np.diff(rho_j) < 0)),
        "jepa_lam_correlation_weakens_with_depth": bool(np.all(np.diff(out["spearman_vs_lam"]["jepa"]) > 0)),
        "mae_ordered_by_lam_at_every_depth": bool(all(s < -0.9 for s in lam_m)),
    }
    return out


def generative_study(kind: str, depths=(1, 2, 3), eps: float = 0.005, n_samples: int = 20000,
                     gd_lr: float = 0.1, seed: int = 0) -> dict:
    """Static / temporal pixel model: which objective recovers the quiet semantic factor before the loud flicker?

    Trained by GD on the pixels from a random orthogonal init (the theory's coordinates are never given to the
    model). Tracks the encoder gain on the semantic template and on the flicker pattern, their critical times
    (GD and ODE with the sample moments), and the semantic share of the representation's variance.
    """
    import torch

    from .generative import PixelModel, compress_to_moments, patterns

    model_spec = PixelModel(kind, semantic_corr=1.0 if kind == "static" else 0.95)
    x, y = model_spec.sample(n_samples, seed=seed)
    basis = patterns()
    sxx, syx = x.T @ x / len(x), y.T @ x / len(x)
    lam = np.diag(basis.T @ syx @ basis).copy()
    sigma2 = np.diag(basis.T @ sxx @ basis).copy()
    xc, yc = compress_to_moments(x, y)
    sxx_t = torch.as_tensor(sxx)
    semantic_dir = torch.as_tensor(basis[:, 0])

    def semantic_share(model) -> float:
        # Fraction of the representation's variance E||W x||^2 carried by the semantic direction.
        with torch.no_grad():
            w = model.encoder()
            total = torch.trace(w @ sxx_t @ w.T)
            return float((w @ semantic_dir).square().sum() * sigma2[0] / total)

    out = {"kind": kind, "theory": {k: v.tolist() for k, v in model_spec.theory().items()},
           "sample": {"lam": lam.tolist(), "sigma2": sigma2.tolist(), "rho": (lam / sigma2).tolist()},
           "eps": eps, "depths": list(depths), "n_samples": n_samples, "runs": {}}
    for objective in ode.OBJECTIVES:
        for depth in depths:
            predicted = ode.critical_times(objective, lam, sigma2, depth, eps)
            horizon = 1.25 * float(predicted[np.isfinite(predicted)].max())
            lr = _gd_learning_rate(horizon, gd_lr, 4000)
            net = init_balanced(objective, basis.shape[0], depth, eps, seed=seed)
            run = train_gd(net, xc, yc, lr, horizon, basis=basis, probe=semantic_share)
            fixed = [ode.fixed_point_encoder(objective, r, depth) for r in lam / sigma2]
            measured = [learning_time(run["time"], run["weights"][:, i], fixed[i]) for i in range(2)]
            first = "semantic" if measured[0] < measured[1] else "flicker"
            out["runs"][f"{objective}_L{depth}"] = {
                "lr": lr, "critical_times_gd": measured, "critical_times_ode": predicted.tolist(),
                "first_recovered": first, "final_weights": run["weights"][-1].tolist(), "fixed_points": fixed,
                "final_semantic_share": float(run["probe"][-1]), "time": run["time"],
                "weights": run["weights"], "semantic_share": run["probe"],
                "ode_weights": ode.integrate(objective, lam, sigma2, depth, eps, run["time"])}
    firsts = {obj: [out["runs"][f"{obj}_L{L}"]["first_recovered"] for L in depths] for obj in ode.OBJECTIVES}
    out["first_recovered"] = firsts
    out["claims"] = {
        "mae_recovers_flicker_first_at_every_depth": all(f == "flicker" for f in firsts["mae"]),
        "jepa_recovers_semantic_first_for_L_ge_2": all(f == "semantic" for f, L in zip(firsts["jepa"], depths)
                                                       if L >= 2),
    }
    return out
