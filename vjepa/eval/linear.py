"""Quick probes on frozen, mean-pooled encoder features: a linear (logistic-regression) probe per label.

Cheap enough to run after every stage (and periodically during pretraining) for model selection; the
attentive probe is the full protocol.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


@torch.no_grad()
def extract_features(encoder: torch.nn.Module, loader,
                     device: torch.device) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Mean-pooled token features [N, D] and labels {name: [N]} over a loader of {"video", "labels"} batches."""
    encoder.eval()
    feats, labels = [], {}
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else torch.autocast("cpu", enabled=False))
    for batch in loader:
        with autocast:
            z = encoder(batch["video"].to(device, non_blocking=True))
        feats.append(z.float().mean(dim=1).cpu())
        for name, y in batch["labels"].items():
            labels.setdefault(name, []).append(torch.as_tensor(y).cpu())
    return torch.cat(feats).numpy(), {k: torch.cat(v).numpy() for k, v in labels.items()}


def fit_linear(train_x: np.ndarray, train_y: np.ndarray, c: float = 1.0, max_iter: int = 2000):
    """A standardised multinomial logistic regression fitted on (train_x, train_y): a fitted sklearn pipeline
    (`.predict(x)` -> labels)."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, C=c)).fit(train_x, train_y)


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                 max_iter: int = 2000, c: float = 1.0) -> float:
    """Top-1 accuracy (%) of a standardised multinomial logistic regression."""
    clf = fit_linear(train_x, train_y, c, max_iter)
    return float((clf.predict(val_x) == val_y).mean() * 100.0)


def probe_encoder(encoder, train_loader, val_loader, device) -> dict[str, float]:
    """{label name: top-1 %} of a linear probe per label."""
    tx, ty = extract_features(encoder, train_loader, device)
    vx, vy = extract_features(encoder, val_loader, device)
    return {name: linear_probe(tx, ty[name], vx, vy[name]) for name in ty}
