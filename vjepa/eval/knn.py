"""Cheap quick probes for model selection during pretraining: k-NN (and the linear probe of linear.py) on
mean-pooled frozen features, run every `experiment.probe.every` steps and logged to TensorBoard and
`quick_probe.csv` in the stage folder."""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def knn_predict(train_x, train_y, query_x, k: int = 20, temperature: float = 0.07) -> torch.Tensor:
    """Predicted labels [Q] of a cosine-similarity k-NN with exp(sim / T)-weighted votes over the labelled
    (label >= 0) training rows."""
    tx = torch.as_tensor(np.asarray(train_x), dtype=torch.float32)
    qx = torch.as_tensor(np.asarray(query_x), dtype=torch.float32)
    ty = torch.as_tensor(np.asarray(train_y)).long()
    tx, ty = tx[ty >= 0], ty[ty >= 0]
    if len(tx) == 0:
        raise ValueError("k-NN: no labelled training row")
    k = min(k, len(tx))
    sims = F.normalize(qx, dim=1) @ F.normalize(tx, dim=1).T  # [Q, T]
    top, idx = sims.topk(k, dim=1)
    votes = torch.zeros(len(qx), int(ty.max()) + 1).scatter_add_(1, ty[idx], (top / temperature).exp())
    return votes.argmax(dim=1)


def knn_top1(train_x, train_y, val_x, val_y, k: int = 20, temperature: float = 0.07) -> float:
    """Top-1 % of a cosine-similarity k-NN with exp(sim / T)-weighted votes (the DINO / I-JEPA recipe).

    Rows with a negative label (missing) are left out on both sides."""
    vx, vy = torch.as_tensor(np.asarray(val_x), dtype=torch.float32), torch.as_tensor(np.asarray(val_y)).long()
    vx, vy = vx[vy >= 0], vy[vy >= 0]
    if not (torch.as_tensor(np.asarray(train_y)) >= 0).any() or len(vx) == 0:
        return float("nan")
    return float((knn_predict(train_x, train_y, vx, k, temperature) == vy).float().mean() * 100)


def quick_probe(encoder, train_loader, val_loader, device, k: int = 20, linear: bool = True) -> dict[str, float]:
    """{"knn/<label>": top-1 %, "linear/<label>": top-1 %} on mean-pooled features of a frozen encoder."""
    from vjepa.eval.linear import extract_features, linear_probe

    tx, ty = extract_features(encoder, train_loader, device)
    vx, vy = extract_features(encoder, val_loader, device)
    out = {}
    for name in sorted(ty):
        out[f"knn/{name}"] = knn_top1(tx, ty[name], vx, vy[name], k)
        if linear:
            keep_t, keep_v = ty[name] >= 0, vy[name] >= 0
            out[f"linear/{name}"] = linear_probe(tx[keep_t], ty[name][keep_t], vx[keep_v], vy[name][keep_v],
                                                 max_iter=500)
    return out


class PeriodicProbe:
    """Runs `quick_probe` on the training encoder every `every` steps (main process only); restores the
    encoder's train mode and leaves the training RNG untouched, so runs stay resumable bit for bit."""

    def __init__(self, cfg, stage_dir: str | Path, device, enabled: bool = True):
        self.every = int(cfg.experiment.probe.every or 0)
        self.enabled = enabled and self.every > 0
        self.cfg, self.device, self.path = cfg, device, Path(stage_dir) / "quick_probe.csv"
        self.k, self.linear = cfg.experiment.probe.knn_k, cfg.experiment.probe.quick_linear
        self.loaders = None

    def __call__(self, step: int, total: int, encoder, logger=None) -> dict[str, float]:
        if not self.enabled or (step % self.every and step != total):
            return {}
        if self.loaders is None:
            from vjepa.train.data import build_probe_loaders

            self.loaders = build_probe_loaders(self.cfg, self.device)
        was_training = encoder.training
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            metrics = quick_probe(encoder, *self.loaders, self.device, self.k, self.linear)
        encoder.train(was_training)
        self._append(step, metrics)
        if logger is not None and getattr(logger, "writer", None) is not None:
            for name, value in metrics.items():
                logger.writer.add_scalar(f"{logger.stage}/probe/{name}", value, step)
        log.info("quick probe at step %d: %s", step, {k: round(v, 1) for k, v in metrics.items()})
        return metrics

    def _append(self, step: int, metrics: dict[str, float]) -> None:
        rows = []
        if self.path.exists():  # a resumed run rewrites the steps from its checkpoint on
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) < step]
        rows += [{"step": step, "probe": name, "top1": f"{v:.4f}"} for name, v in metrics.items()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["step", "probe", "top1"])
            w.writeheader()
            w.writerows(rows)
