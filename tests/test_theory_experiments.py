"""Deep linear theory: the paper's claims, checked on the experiments the CLI runs."""
import json
import math

import numpy as np
import pytest

from vjepa.theory import experiments, ode
from vjepa.theory.__main__ import main
from vjepa.theory.data import FeatureSpec


def test_depth_gap_grows_for_jepa_not_for_mae():
    result = experiments.depth_gap(depths=(1, 2, 3, 4), gd_lr=None)
    jepa, mae = result["log_gap"]["ode"]["jepa"], result["log_gap"]["ode"]["mae"]
    assert np.all(np.diff(jepa) > 0.1)  # low-rho feature falls further behind at every extra layer
    assert abs(jepa[0]) < 0.05  # at L = 1 rho barely matters (equal lambda -> nearly equal times)
    assert np.all(np.diff(np.abs(mae)) < 0) and max(abs(g) for g in mae) < 0.1
    assert result["claims"] == {"jepa_gap_grows_with_depth": True, "mae_gap_does_not_grow": True}


def test_ordering_flips_for_jepa_from_depth_two():
    result = experiments.ordering(depths=(1, 2, 3, 4), gd_lr=None)
    assert result["first_learned"]["ode"] == {"jepa": ["A", "B", "B", "B"], "mae": ["A", "A", "A", "A"]}
    # B's head start under JEPA widens with depth
    ratios = [t[1] / t[0] for t in (result["runs"][f"jepa_L{L}"]["critical_times"] for L in (1, 2, 3, 4))]
    assert np.all(np.diff(ratios) < 0)


def test_ordering_holds_in_simulated_gradient_descent():
    spec = FeatureSpec(**experiments.ORDERING_SPEC)
    for objective, depth, expected in [("jepa", 1, "A"), ("jepa", 2, "B"), ("mae", 2, "A")]:
        predicted = ode.critical_times(objective, spec.lam, spec.sigma2, depth, experiments.DEFAULT_EPS)
        sim = experiments.simulate_features(objective, spec, depth, experiments.DEFAULT_EPS,
                                            1.2 * predicted.max(), max_lr=0.1, min_steps=1500)
        measured = sim["critical_times"]
        assert ("A" if measured[0] < measured[1] else "B") == expected
        assert measured == pytest.approx(predicted, rel=0.01)


def test_many_features_spearman_signs():
    result = experiments.many_features(depths=(1, 2, 3, 4), n_features=24, seed=0)
    rho_j, lam_j = result["spearman_vs_rho"]["jepa"], result["spearman_vs_lam"]["jepa"]
    assert np.all(np.diff(rho_j) < 0) and rho_j[-1] < -0.4  # high-rho features increasingly first
    assert np.all(np.diff(lam_j) > 0) and lam_j[0] < -0.95  # L = 1: lambda sets the order, less so deeper
    assert all(s < -0.95 for s in result["spearman_vs_lam"]["mae"])  # MAE: lambda at every depth
    assert all(abs(s) < 0.2 for s in result["spearman_vs_rho"]["mae"][1:])


def test_static_model_jepa_finds_the_semantic_factor_first():
    result = experiments.generative_study("static", depths=(1, 2), n_samples=8000)
    assert result["first_recovered"] == {"jepa": ["flicker", "semantic"], "mae": ["flicker", "flicker"]}
    jepa2, mae2 = result["runs"]["jepa_L2"], result["runs"]["mae_L2"]
    # GD on pixels agrees with the decoupled ODE where the theory is exact enough to say
    assert jepa2["critical_times_gd"][0] == pytest.approx(jepa2["critical_times_ode"][0], rel=0.02)
    assert mae2["critical_times_gd"] == pytest.approx(mae2["critical_times_ode"], rel=0.02)
    # and the semantic factor dominates JEPA's representation, not MAE's
    assert jepa2["final_semantic_share"] > 0.9 > mae2["final_semantic_share"]


@pytest.mark.slow
def test_temporal_model_deep_jepa_never_learns_the_flicker():
    result = experiments.generative_study("temporal", depths=(1, 2, 3), n_samples=20000)
    assert result["claims"]["mae_recovers_flicker_first_at_every_depth"]
    assert result["claims"]["jepa_recovers_semantic_first_for_L_ge_2"]
    rho_flicker = result["sample"]["rho"][1]
    assert rho_flicker ** 3 < result["eps"]  # its JEPA fixed point lies below the initial weight ...
    assert math.isinf(result["runs"]["jepa_L3"]["critical_times_gd"][1])  # ... so it decays, never learned


def test_cli_writes_png_and_strict_json(tmp_path):
    main(["--experiment", "ordering", "--depths", "1", "2", "--no-gd", "--out", str(tmp_path)])
    assert (tmp_path / "ordering.png").stat().st_size > 10_000
    data = json.loads((tmp_path / "ordering.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert data["first_learned"]["ode"] == {"jepa": ["A", "B"], "mae": ["A", "A"]}
    assert data["runs"]["jepa_L2"]["fixed_points"] == pytest.approx([0.25, 1.0])
