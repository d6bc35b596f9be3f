"""SALT's model-selection claim: does a stage's training loss predict the probe accuracy of its checkpoints?

`python -m vjepa.eval.selection RUN_DIR [--stage student]` probes every kept checkpoint
(`RUN_DIR/<stage>/checkpoints/step_*.pt`, written with `keep_every=N`) and reports, per label, the
Pearson correlation and R^2 between the training loss around each checkpoint and its probe accuracy.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from vjepa.eval.linear import probe_encoder
from vjepa.train.build import load_teacher
from vjepa.train.data import build_probe_loaders
from vjepa.train.metrics import read_metrics


def checkpoints(stage_dir: Path) -> list[tuple[int, Path]]:
    found = [(int(re.search(r"step_(\d+)\.pt$", p.name).group(1)), p)
             for p in (stage_dir / "checkpoints").glob("step_*.pt")]
    return sorted(found)


def loss_near(rows: list[dict], step: int, window: int) -> float:
    """Mean logged loss over the `window` steps up to `step` (the logged rows are window means already)."""
    near = [r["loss"] for r in rows if step - window < r["step"] <= step]
    if not near:
        raise ValueError(f"no logged loss within {window} steps before step {step}")
    return float(np.mean(near))


def model_selection(run_dir: str | Path, stage: str = "student", window: int = 20, device: str = "cpu") -> dict:
    run_dir = Path(run_dir)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    ckpts = checkpoints(run_dir / stage)
    if len(ckpts) < 3:
        raise ValueError(f"{run_dir / stage / 'checkpoints'} holds {len(ckpts)} step_*.pt files; need >= 3 "
                         "(train with keep_every=N)")
    rows = read_metrics(run_dir / stage / "metrics.csv")
    train_loader, val_loader = build_probe_loaders(cfg, device)
    points = []
    for step, path in ckpts:
        acc = probe_encoder(load_teacher(path).to(device), train_loader, val_loader, torch.device(device))
        points.append({"step": step, "loss": loss_near(rows, step, window), "probe": acc})
    labels = sorted(points[0]["probe"])
    losses = np.array([p["loss"] for p in points])
    stats = {}
    for label in labels + ["mean"]:
        acc = np.array([np.mean(list(p["probe"].values())) if label == "mean" else p["probe"][label] for p in points])
        # constant values have no correlation (nan); ptp, not std: the std of equal floats can be a rounding error
        r = float(np.corrcoef(losses, acc)[0, 1]) if np.ptp(acc) > 0 and np.ptp(losses) > 0 else float("nan")
        stats[label] = {"pearson_r": r, "r2": r * r}
    return {"stage": stage, "points": points, "loss_vs_probe": stats}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--stage", default="student")
    p.add_argument("--window", type=int, default=20)
    a = p.parse_args(argv)
    out = model_selection(a.run_dir, a.stage, a.window)
    (Path(a.run_dir) / f"selection_{a.stage}.json").write_text(json.dumps(out, indent=2))
    print(f"{'step':>6} {'loss':>8}  " + "  ".join(f"{k:>9}" for k in out["points"][0]["probe"]))
    for pt in out["points"]:
        print(f"{pt['step']:>6} {pt['loss']:>8.4f}  " + "  ".join(f"{v:>9.1f}" for v in pt["probe"].values()))
    for label, s in out["loss_vs_probe"].items():
        print(f"loss vs {label} probe: pearson r = {s['pearson_r']:+.3f}, R^2 = {s['r2']:.3f}")


if __name__ == "__main__":
    main()
