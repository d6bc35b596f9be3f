"""Deep linear theory: the per-feature ODEs against gradient descent on the actual losses."""
import math

import numpy as np
import pytest
import torch

from vjepa.theory import ode
from vjepa.theory.data import FeatureSpec, sample_views
from vjepa.theory.linear_models import init_balanced, loss, train_gd

SPEC = FeatureSpec(lam=[1.0, 0.9], rho=[0.5, 1.0])
EPS = 0.05  # moderate init keeps the deep-JEPA plateau (and the number of GD steps) short


def test_sample_views_have_exact_moments():
    spec = FeatureSpec(lam=[1.0, 0.3, 0.7], rho=[0.5, 0.9, 1.4])
    x, y = sample_views(spec, n=50, seed=3)
    np.testing.assert_allclose(x.T @ x / 50, np.diag(spec.sigma2), atol=1e-12)
    np.testing.assert_allclose(y.T @ x / 50, np.diag(spec.lam), atol=1e-12)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("rho", [0.6, 0.9, 1.3])
def test_jepa_fixed_point_is_rho_to_the_L(depth, rho):
    lam, eps = 0.8, 0.5 * 0.2 ** depth
    horizon = 20 * ode.critical_time("jepa", lam, lam / rho, depth, eps)
    w = ode.integrate("jepa", [lam], [lam / rho], depth, eps, times=[0.0, horizon])[-1, 0]
    assert ode.fixed_point_encoder("jepa", rho, depth) == pytest.approx(rho ** depth)
    assert w == pytest.approx(rho ** depth, rel=1e-6)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_mae_fixed_point_reconstructs_rho(depth):
    rho, lam = 0.7, 0.8
    w = ode.integrate("mae", [lam], [lam / rho], depth, eps=1e-3, times=[0.0, 500.0])[-1, 0]
    assert w == pytest.approx(rho ** (depth / (depth + 1)), rel=1e-6)
    # end-to-end map V W = u^(L+1) equals the least-squares coefficient rho
    assert (w ** (1 / depth)) ** (depth + 1) == pytest.approx(rho, rel=1e-6)


@pytest.mark.parametrize("objective,depth,lr,tol", [
    ("jepa", 1, 0.01, 3e-3), ("jepa", 2, 0.01, 3e-3), ("jepa", 3, 0.01, 3e-3),
    ("mae", 1, 0.002, 1.2e-3), ("mae", 2, 0.002, 1.2e-3), ("mae", 3, 0.002, 1.2e-3)])
def test_gradient_descent_follows_the_ode(objective, depth, lr, tol):
    x, y = sample_views(SPEC, n=64, seed=1)
    horizon = 1.5 * ode.critical_times(objective, SPEC.lam, SPEC.sigma2, depth, EPS).max()
    run = train_gd(init_balanced(objective, 2, depth, EPS, seed=1), x, y, lr, horizon)
    predicted = ode.integrate(objective, SPEC.lam, SPEC.sigma2, depth, EPS, run["time"])
    assert np.abs(run["weights"] - predicted).max() < tol
    assert run["leak"].max() < 1e-10  # features stay decoupled
    if objective == "mae":  # MAE is a true gradient descent: its loss never goes up at this step size
        assert np.all(np.diff(run["loss"]) <= 1e-12)


@pytest.mark.parametrize("objective", ode.OBJECTIVES)
def test_gradient_descent_settles_at_the_fixed_points(objective):
    x, y = sample_views(SPEC, n=64, seed=2)
    horizon = 4 * ode.critical_times(objective, SPEC.lam, SPEC.sigma2, 2, EPS).max()
    lr = 0.05 if objective == "jepa" else 0.01
    run = train_gd(init_balanced(objective, 2, 2, EPS, seed=2), x, y, lr, horizon, n_records=2)
    fixed = [ode.fixed_point_encoder(objective, r, 2) for r in SPEC.rho]
    assert fixed == pytest.approx(SPEC.rho ** 2 if objective == "jepa" else SPEC.rho ** (2 / 3))
    assert run["weights"][-1] == pytest.approx(fixed, abs=1e-3)


@pytest.mark.parametrize("objective,lr", [("jepa", 0.02), ("mae", 0.004)])
def test_gd_error_is_first_order_in_the_learning_rate(objective, lr):
    x, y = sample_views(SPEC, n=64, seed=1)
    horizon = 1.5 * ode.critical_times(objective, SPEC.lam, SPEC.sigma2, 2, EPS).max()
    errors = []
    for step in (lr, lr / 2):
        run = train_gd(init_balanced(objective, 2, 2, EPS, seed=1), x, y, step, horizon)
        errors.append(np.abs(run["weights"] - ode.integrate(objective, SPEC.lam, SPEC.sigma2, 2, EPS,
                                                            run["time"])).max())
    assert errors[0] / errors[1] == pytest.approx(2.0, rel=0.15)


def test_balancedness_is_conserved_by_gradient_descent():
    x, y = sample_views(SPEC, n=64, seed=0)
    model = init_balanced("jepa", 2, 3, EPS, seed=0)
    train_gd(model, x, y, 0.02, 60.0)
    layers = [w.detach() for w in model.layers]
    for lower, upper in zip(layers, layers[1:]):
        torch.testing.assert_close(upper.T @ upper, lower @ lower.T, atol=1e-3, rtol=0)
    head = model.head.detach()
    torch.testing.assert_close(head.T @ head, layers[-1] @ layers[-1].T, atol=1e-3, rtol=0)


def test_stop_gradient_is_what_the_ode_describes():
    # Without the stop-gradient the target branch also pulls W towards zero: the JEPA ODE must then fail.
    x, y = sample_views(SPEC, n=64, seed=0)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    model = init_balanced("jepa", 2, 1, EPS, seed=0)
    with_sg = torch.autograd.grad(loss(model, xt, yt), model.layers)[0]
    w = model.encoder()
    no_sg = 0.5 * ((xt @ w.T @ model.head.T - yt @ w.T) ** 2).sum(1).mean()
    assert not torch.allclose(with_sg, torch.autograd.grad(no_sg, model.layers)[0])


@pytest.mark.parametrize("objective", ode.OBJECTIVES)
@pytest.mark.parametrize("depth", [1, 2, 4])
def test_critical_time_quadrature_matches_the_integrated_trajectory(objective, depth):
    lam, rho, eps = 0.8, 0.9, 1e-3
    t_star = ode.critical_time(objective, lam, lam / rho, depth, eps)
    half = 0.5 * ode.fixed_point_encoder(objective, rho, depth)
    w = ode.integrate(objective, [lam], [lam / rho], depth, eps, [0.0, t_star * 0.999, t_star * 1.001])[:, 0]
    assert w[1] < half < w[2]


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_jepa_critical_time_small_eps_series(depth):
    # The series drops O(log 1/eps) terms only: relative error must shrink as eps -> 0.
    lam, rho = 0.7, 0.6
    errors = [abs(ode.jepa_critical_time_series(lam, rho, depth, eps) /
                  ode.critical_time("jepa", lam, lam / rho, depth, eps) - 1) for eps in (1e-4, 1e-8)]
    assert errors[1] < errors[0] and errors[1] < 0.01


def test_feature_that_starts_above_its_jepa_fixed_point_is_never_learned():
    # rho^L < eps: the weight decays to rho^L instead of growing.
    assert math.isinf(ode.critical_time("jepa", 0.2, 1.0, 3, eps=0.05))
    w = ode.integrate("jepa", [0.2], [1.0], 3, 0.05, [0.0, 1e5])[:, 0]
    assert w[1] < w[0] and w[1] == pytest.approx(0.2 ** 3, rel=1e-3)


@pytest.mark.parametrize("lam,rho,eps", [(0.8, 0.9, 1e-3), (0.3, 0.5, 1e-2)])
def test_depth_one_closed_forms(lam, rho, eps):
    # JEPA L=1: du/dt = u^2 (lam - sigma2 u); partial fractions give t* in closed form (target u* = rho / 2).
    jepa = (1 / eps - 2 / rho + math.log((rho - eps) / eps) / rho) / lam
    assert ode.critical_time("jepa", lam, lam / rho, 1, eps) == pytest.approx(jepa, rel=1e-8)
    # MAE L=1: z = u^2 is logistic, dz/dt = 2 z (lam - sigma2 z); target w = sqrt(rho) / 2, i.e. z = rho / 4.
    mae = math.log((rho / eps ** 2 - 1) / 3) / (2 * lam)
    assert ode.critical_time("mae", lam, lam / rho, 1, eps) == pytest.approx(mae, rel=1e-8)
