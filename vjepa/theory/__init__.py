"""Deep linear JEPA vs MAE (Littwin et al. 2024, arXiv 2407.03475) as runnable, tested experiments.

ode.py           per-feature ODEs, fixed points, critical times (derivation in docs/theory.md)
linear_models.py deep linear encoder + predictor/decoder, balanced orthogonal init, full-batch GD (float64)
data.py          views with exactly prescribed per-feature (lam, rho)
generative.py    static and temporal linear pixel models (quiet semantic factor, loud flicker)
experiments.py   depth_gap, ordering, many_features, generative_study
bridge.py        the same question on tiny ViTs and flickering digit clips
CLI: python -m vjepa.theory --experiment NAME --out DIR
"""
