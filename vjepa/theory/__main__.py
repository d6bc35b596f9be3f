"""CLI: python -m vjepa.theory --experiment NAME [--depths 1 2 3 4] [--eps E] [--gd-lr LR] --out DIR

Writes DIR/NAME.png and DIR/NAME.json. Experiments: depth_gap, ordering, many_features, static, temporal, bridge.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from . import experiments, plots

# Time series go to the PNG; the JSON keeps the numbers a reader compares.
TRAJECTORY_KEYS = {"time", "weights", "ode_weights", "semantic_share", "probe", "leak"}


def to_json(value):
    """numpy -> lists, inf/nan -> null (strict JSON), trajectories dropped."""
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items() if k not in TRAJECTORY_KEYS}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_json(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def run_experiment(name: str, args) -> dict:
    depths = tuple(args.depths) if args.depths else None
    gd_lr = None if args.no_gd else args.gd_lr
    kw = {} if args.eps is None else {"eps": args.eps}
    if name == "depth_gap":
        return experiments.depth_gap(depths or (1, 2, 3, 4), gd_lr=gd_lr, **kw)
    if name == "ordering":
        return experiments.ordering(depths or (1, 2, 3, 4), gd_lr=gd_lr, **kw)
    if name == "many_features":
        return experiments.many_features(depths or (1, 2, 3, 4), n_features=args.features, seed=args.seed,
                                         gd_lr=gd_lr, **kw)
    if name in ("static", "temporal"):
        return experiments.generative_study(name, depths or (1, 2, 3), gd_lr=args.gd_lr, seed=args.seed, **kw)
    if name == "bridge":
        from .bridge import run_bridge

        return run_bridge(steps=args.steps, seed=args.seed)
    raise ValueError(name)


PLOTTERS = {"depth_gap": plots.plot_depth_gap, "ordering": plots.plot_ordering,
            "many_features": plots.plot_many_features, "static": plots.plot_generative,
            "temporal": plots.plot_generative, "bridge": plots.plot_bridge}
EXPERIMENTS = list(PLOTTERS)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vjepa.theory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", required=True, choices=[*EXPERIMENTS, "all"])
    parser.add_argument("--depths", type=int, nargs="+")
    parser.add_argument("--eps", type=float, help="initial scale of the encoder product (default per experiment)")
    parser.add_argument("--gd-lr", type=float, default=0.1, help="largest GD learning rate (time = lr x steps)")
    parser.add_argument("--no-gd", action="store_true", help="ODE only, skip the gradient-descent cross-check")
    parser.add_argument("--features", type=int, default=24, help="many_features: number of features")
    parser.add_argument("--steps", type=int, default=300, help="bridge: training steps per objective")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    # "all" = the linear experiments; the bridge trains ViTs (minutes) and runs only when asked for.
    names = [n for n in EXPERIMENTS if n != "bridge"] if args.experiment == "all" else [args.experiment]
    for name in names:
        start = time.time()
        result = run_experiment(name, args)
        PLOTTERS[name](result, args.out / f"{name}.png")
        result["wall_seconds"] = time.time() - start
        (args.out / f"{name}.json").write_text(json.dumps(to_json(result), indent=1))
        print(f"{name}: wrote {args.out / name}.png/.json ({result['wall_seconds']:.1f}s); "
              f"claims: {to_json(result.get('claims'))}")


if __name__ == "__main__":
    main()
