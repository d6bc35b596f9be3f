"""The frozen-backbone attentive-probe protocol (V-JEPA / V-JEPA 2).

- Each video gives `num_segments x num_views` clips (the loader's `num_clips` x `eval_crops`, clip-major). With
  `attend_across_segments` (V-JEPA 2's default) the tokens of a view's segments are concatenated, so the probe
  attends over the whole video; the softmax outputs of the spatial views are averaged. Without it every
  (segment, view) clip is a view of its own.
- A grid of heads (learning rates x weight decays) per label is trained at once on the same frozen features:
  one AdamW with a parameter group per head, one backward for all heads (they share no parameters).
- The encoder runs once per clip view per epoch at most. Without training augmentation the features are
  extracted once and cached (`cache="memory"` or `"disk"`, a numpy memmap) and reused by every epoch and head;
  `cache="none"` re-extracts every epoch (only to measure what the cache saves).
- Reported per head: top-1 / top-5 on the validation set; for the best head (by top-1, as the reference
  reports the maximum over heads -- an optimistic choice made on the validation set): per-class accuracy and
  the confusion matrix. `vjepa.eval.protocol` trains the same grid (`train_heads`) on part of the train set and
  chooses heads on the rest instead, over several seeds.
- Depth-1 heads attend over the tokens together (`attentive.stacked_logits`): same numbers, fewer small ops.
"""
from __future__ import annotations

import json
import logging
import math
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vjepa.eval.attentive import AttentiveClassifier, normalize_tokens, stackable, stacked_logits

log = logging.getLogger(__name__)

V_JEPA2_LRS = (5e-3, 3e-3, 1e-3, 3e-4, 1e-4)
V_JEPA2_WDS = (0.01, 0.1, 0.4, 0.8)


@dataclass
class ProbeSettings:
    depth: int = 4                     # (depth - 1) self-attention blocks + 1 cross-attention block
    num_heads: int | None = None       # attention heads of the probe; None = the encoder's
    num_queries: int = 1
    epochs: int = 20
    batch_size: int = 32
    lrs: tuple = V_JEPA2_LRS
    wds: tuple = V_JEPA2_WDS
    warmup: float = 0.0                # fraction of the steps with a linear warm-up; then cosine to final_lr
    final_lr: float = 0.0
    num_segments: int = 1
    num_views: int = 1                 # spatial views per segment at test time (3 = three crops)
    attend_across_segments: bool = True
    augment: bool = False              # True: the train loader augments, features are recomputed every epoch
    cache: str = "memory"              # memory | disk | none (without augmentation)
    cache_dir: str | None = None       # disk cache folder (default: a temporary one)
    cache_dtype: str = "float16"
    cpu_threads: int | None = 1        # torch threads of the heads on CPU (None: unchanged); see head_threads
    seed: int = 0

    def check(self) -> None:
        if self.cache not in ("memory", "disk", "none"):
            raise ValueError(f"probe cache must be memory, disk or none, got {self.cache!r}")
        if not self.lrs or not self.wds:
            raise ValueError("the probe grid needs at least one learning rate and one weight decay")
        if self.depth < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError("probe depth/epochs/batch_size must be >= 1 "
                             f"({self.depth}/{self.epochs}/{self.batch_size})")

    @property
    def grid(self) -> list[tuple[float, float]]:
        return [(float(lr), float(wd)) for lr in self.lrs for wd in self.wds]


# ---- features ---------------------------------------------------------------------------------------------------

def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def encode_views(encoder, video, num_segments: int, num_views: int, attend_across_segments: bool,
                 device: torch.device) -> torch.Tensor:
    """A loader batch's video (a tensor, or a clip-major list of S*V tensors) -> features [B, views, L, D]."""
    clips = video if isinstance(video, (list, tuple)) else [video]
    if len(clips) != num_segments * num_views:
        raise ValueError(f"the loader gives {len(clips)} clip(s) per video but the probe expects num_segments x "
                         f"num_views = {num_segments} x {num_views}: match the loader's num_clips / eval_crops")
    with _autocast(device):  # one call per clip position, as the reference (S x V clips at once may not fit)
        tokens = torch.stack([encoder(c.to(device, non_blocking=True)).float() for c in clips])  # [S*V, B, N, D]
    tokens = tokens.unflatten(0, (num_segments, num_views))  # [S, V, B, N, D]
    if attend_across_segments:
        tokens = tokens.permute(2, 1, 0, 3, 4).flatten(2, 3)  # [B, V, S*N, D]
    else:
        tokens = tokens.permute(2, 0, 1, 3, 4).flatten(1, 2)  # [B, S*V, N, D]
    return tokens


class FeatureStore:
    """Features [num_items, views, L, D] and labels of a whole loader, in memory or in a memmap on disk."""

    def __init__(self, num_items: int, kind: str = "memory", path: Path | None = None, dtype: str = "float16"):
        self.num_items, self.kind, self.path, self.dtype = num_items, kind, path, np.dtype(dtype)
        self.data = None
        self.labels: dict[str, torch.Tensor] = {}
        self.filled = torch.zeros(num_items, dtype=torch.bool)

    def write(self, index: torch.Tensor, feats: torch.Tensor, labels: dict) -> None:
        if self.data is None:
            shape = (self.num_items, *feats.shape[1:])
            if self.kind == "disk":
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.data = np.lib.format.open_memmap(self.path, mode="w+", dtype=self.dtype, shape=shape)
            else:
                self.data = torch.empty(shape, dtype=getattr(torch, self.dtype.name))
        idx = torch.as_tensor(index, dtype=torch.long)
        if self.kind == "disk":
            self.data[idx.numpy()] = feats.cpu().numpy().astype(self.dtype)
        else:
            self.data[idx] = feats.cpu().to(self.data.dtype)
        for name, y in labels.items():
            self.labels.setdefault(name, torch.full((self.num_items,), -1, dtype=torch.long))[idx] = torch.as_tensor(y)
        self.filled[idx] = True

    @classmethod
    def of(cls, feats: torch.Tensor, labels: dict, rows: torch.Tensor | None = None) -> "FeatureStore":
        """A memory store over ready features [N, V, L, D] (not copied) and labels {name: [N]}; only `rows`
        (default: all) are read by `indices()` / `cached_batches`."""
        store = cls(len(feats), "memory")
        store.data = feats
        store.labels = {n: torch.as_tensor(y).long() for n, y in labels.items()}
        store.filled[torch.arange(len(feats)) if rows is None else torch.as_tensor(rows, dtype=torch.long)] = True
        return store

    def read(self, idx: torch.Tensor) -> torch.Tensor:
        if self.kind == "disk":
            return torch.from_numpy(np.ascontiguousarray(self.data[idx.numpy()])).float()
        return self.data[idx].float()

    def indices(self) -> torch.Tensor:
        return torch.nonzero(self.filled).flatten()


def extract(encoder, loader, settings: ProbeSettings, device: torch.device, num_views: int, kind: str = "memory",
            path: Path | None = None) -> FeatureStore:
    """Run the frozen encoder once over a loader; rows are placed by the batch's dataset `index`."""
    encoder.eval()
    num_items = getattr(loader, "num_items", None) or len(loader.dataset)  # a ClipSet, or a loader
    store = FeatureStore(num_items, kind, path, settings.cache_dtype)
    for batch in loader:
        feats = encode_views(encoder, batch["video"], settings.num_segments, num_views,
                             settings.attend_across_segments, device)
        store.write(batch["index"], feats, batch["labels"])
    if not store.filled.any():
        raise ValueError("the loader gave no batch")
    return store


# ---- the head grid ----------------------------------------------------------------------------------------------

class HeadGrid(torch.nn.Module):
    """One attentive classifier per (label, lr, wd), trained together with one optimiser."""

    def __init__(self, embed_dim: int, num_classes: dict[str, int], settings: ProbeSettings, total_steps: int):
        super().__init__()
        self.settings, self.total_steps, self.step_count = settings, max(total_steps, 1), 0
        self.labels = list(num_classes)
        self.grid = settings.grid
        self.heads = torch.nn.ModuleDict({
            name: torch.nn.ModuleList(AttentiveClassifier(embed_dim, n, num_heads=settings.num_heads,
                                                          depth=settings.depth, num_queries=settings.num_queries)
                                      for _ in self.grid)
            for name, n in num_classes.items()})
        groups = []
        for name in self.labels:
            for (lr, wd), head in zip(self.grid, self.heads[name]):
                decay = [p for n, p in head.named_parameters() if p.ndim > 1 and "query_tokens" not in n]
                no_decay = [p for n, p in head.named_parameters() if p.ndim <= 1 or "query_tokens" in n]
                groups += [{"params": decay, "weight_decay": wd, "base_lr": lr},
                           {"params": no_decay, "weight_decay": 0.0, "base_lr": lr}]
        try:  # the fused kernel: one call per group instead of a dozen small ops (CPU: torch >= 2.4)
            self.optimizer = torch.optim.AdamW(groups, lr=settings.lrs[0], fused=True)
        except (RuntimeError, ValueError):
            self.optimizer = torch.optim.AdamW(groups, lr=settings.lrs[0], foreach=True)
        self.eps = next(iter(self.heads.values()))[0].pooler.cross_attention_block.norm1.eps
        # depth-1 heads attend over the tokens together (attentive.stacked_logits); deeper ones one by one
        self.stacked = all(stackable(h) for name in self.labels for h in self.heads[name])

    def logits(self, x: torch.Tensor, x_hat: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """x [B, L, D] and its shared normalisation x_hat -> {label: [logits [B, classes] of every head]}."""
        if not self.stacked:
            return {name: [head(x, x_hat) for head in self.heads[name]] for name in self.labels}
        flat = iter(stacked_logits([h for name in self.labels for h in self.heads[name]], x_hat))
        return {name: [next(flat) for _ in self.heads[name]] for name in self.labels}

    def lr_factor(self) -> float:
        t = self.step_count / self.total_steps
        w = self.settings.warmup
        if t < w:
            return (t + 1 / self.total_steps) / w
        progress = (t - w) / max(1 - w, 1e-8)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    def train_step(self, feats: torch.Tensor, labels: dict[str, torch.Tensor]) -> float:
        """feats [B, V, L, D]: every view is a training sample with its video's label."""
        self.train()
        factor = self.lr_factor()
        for g in self.optimizer.param_groups:
            g["lr"] = self.settings.final_lr + (g["base_lr"] - self.settings.final_lr) * factor
        x = feats.flatten(0, 1)
        views = feats.shape[1]
        loss = feats.new_zeros(())
        with _autocast(feats.device):
            x_hat = normalize_tokens(x, self.eps)  # shared by every head (see attentive.CrossAttention)
            logits = self.logits(x, x_hat)
            for name in self.labels:
                y = labels[name].to(feats.device).repeat_interleave(views)
                if not (y >= 0).any():
                    continue
                for out in logits[name]:
                    loss = loss + F.cross_entropy(out.float(), y, ignore_index=-1)
        self.step_count += 1
        if not loss.requires_grad:  # no labelled item in this batch
            return float("nan")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item() / max(len(self.labels) * len(self.grid), 1)

    @torch.no_grad()
    def predict(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        """{label: probabilities [num_heads, B, C]} averaged over the views."""
        self.eval()
        b, v = feats.shape[:2]
        with _autocast(feats.device):
            x = feats.flatten(0, 1)
            logits = self.logits(x, normalize_tokens(x, self.eps))
            return {name: torch.stack([mean_view_probs(out, b, v) for out in logits[name]]) for name in self.labels}


def mean_view_probs(logits: torch.Tensor, b: int, v: int) -> torch.Tensor:
    """logits [B * V, C] (view-minor) -> the mean over the V views of their softmax: [B, C]."""
    return F.softmax(logits.float(), dim=-1).unflatten(0, (b, v)).mean(dim=1)


def predict_views(head: torch.nn.Module, feats: torch.Tensor, x_hat: torch.Tensor | None = None) -> torch.Tensor:
    """feats [B, V, L, D] -> the mean over the V views of softmax(head(view)): [B, C]."""
    b, v = feats.shape[:2]
    return mean_view_probs(head(feats.flatten(0, 1), None if x_hat is None else x_hat.flatten(0, 1)), b, v)


# ---- the protocol -----------------------------------------------------------------------------------------------

def num_classes_of(*label_sets: dict) -> dict[str, int]:
    """{label: max label + 1} over several {label: LongTensor} sets (-1 = missing)."""
    names = sorted(set().union(*[set(s) for s in label_sets]))
    return {n: int(max(int(torch.as_tensor(s[n]).max()) for s in label_sets if n in s)) + 1 for n in names}


def _dataset_labels(loader) -> dict[str, torch.Tensor] | None:
    """Labels straight from the manifest items (no decoding), when the loader exposes them."""
    items = getattr(getattr(loader, "dataset", None), "items", None)
    if items is None:
        return None
    names = sorted({k for it in items for k in it.labels})
    return {n: torch.tensor([it.labels.get(n, -1) for it in items]) for n in names}


def cached_batches(store: FeatureStore, batch_size: int, generator: torch.Generator, timing: dict | None = None):
    """One epoch of shuffled (features, labels) batches read from a feature store."""
    idx_all = store.indices()
    order = idx_all[torch.randperm(len(idx_all), generator=generator)]
    for i in range(0, len(order), batch_size):
        t = time.perf_counter()
        idx = order[i:i + batch_size]
        batch = store.read(idx), {n: y[idx] for n, y in store.labels.items()}
        if timing is not None:
            timing["cache_read_s"] = timing.get("cache_read_s", 0.0) + time.perf_counter() - t
        yield batch


def streamed_batches(encoder, loader, settings: ProbeSettings, device: torch.device, timing: dict,
                     num_views: int = 1, timer: str = "extract_train_s"):
    """One pass of (features, labels) batches computed by the encoder: the training set when augmenting (or
    without cache), and the validation set."""
    encoder.eval()
    t = time.perf_counter()
    for batch in loader:
        feats = encode_views(encoder, batch["video"], settings.num_segments, num_views,
                             settings.attend_across_segments, device)
        timing[timer] += time.perf_counter() - t
        yield feats, batch["labels"]
        t = time.perf_counter()
    timing["encoder_passes"] += 1


_head_threads_lock = threading.Lock()
_head_threads_users = 0
_head_threads_before = 1
# the heads' initialisation draws from torch's global generator: one grid at a time (see train_heads)
_head_init_lock = threading.Lock()


@contextmanager
def head_threads(settings: ProbeSettings, device: torch.device):
    """Torch threads while the heads compute on CPU. They run many small ops (and AdamW over small tensors); on a
    shared CPU extra threads mostly wait on each other (measured 0.25 s vs 12 s per step, 1 vs 2 threads, on a
    busy 2-core machine). The encoder keeps the process's setting. Nestable and shared by Python threads that
    train grids at once (the protocol's parallel seeds): the first to enter sets the count, the last to leave
    restores it."""
    global _head_threads_users, _head_threads_before
    if device.type != "cpu" or not settings.cpu_threads:
        yield
        return
    with _head_threads_lock:
        if _head_threads_users == 0:
            _head_threads_before = torch.get_num_threads()
            torch.set_num_threads(settings.cpu_threads)
        _head_threads_users += 1
    try:
        yield
    finally:
        with _head_threads_lock:
            _head_threads_users -= 1
            if _head_threads_users == 0:
                torch.set_num_threads(_head_threads_before)


def train_heads(epoch_batches, steps_per_epoch: int, embed_dim: int, num_classes: dict[str, int],
                settings: ProbeSettings, device: torch.device, timing: dict | None = None,
                on_epoch_end=None) -> tuple[HeadGrid, list]:
    """Train a head grid (seeded by `settings.seed`) for `settings.epochs` epochs of `epoch_batches(epoch)` (an
    iterable of (features [B, V, L, D], {label: [B]})); `on_epoch_end(epochs done, grid)` is called after each.
    Returns (the grid, the mean head loss of every epoch)."""
    timing = timing if timing is not None else {}
    timing.setdefault("heads_s", 0.0)
    with _head_init_lock:  # seeded from the global generator, which another thread's grid may be drawing from
        torch.manual_seed(settings.seed)
        grid = HeadGrid(embed_dim, num_classes, settings, steps_per_epoch * settings.epochs).to(device)
    losses = []
    for epoch in range(settings.epochs):
        epoch_losses = []
        for feats, labels in epoch_batches(epoch):  # cache reads or encoder passes: timed by their producers
            t = time.perf_counter()
            feats = feats.to(device, non_blocking=True)
            with head_threads(settings, device):
                epoch_losses.append(grid.train_step(feats, _labels_for(labels, num_classes, feats.shape[0])))
            timing["heads_s"] += time.perf_counter() - t
        losses.append(float(np.nanmean(epoch_losses)) if epoch_losses else float("nan"))
        log.info("probe epoch %d/%d: mean head loss %.4f", epoch + 1, settings.epochs, losses[-1])
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, grid)
    return grid, losses


def predict_heads(grid: HeadGrid, batches, num_classes: dict[str, int], settings: ProbeSettings,
                  device: torch.device, timing: dict | None = None) -> tuple[dict, dict]:
    """Every head of the grid on `batches` (an iterable of (features [B, V, L, D], {label: [B]}); V views
    averaged): ({label: probabilities [num_heads, N, C]}, {label: targets [N]})."""
    timing = timing if timing is not None else {}
    timing.setdefault("heads_s", 0.0)
    probs, targets = {n: [] for n in num_classes}, {n: [] for n in num_classes}
    for feats, labels in batches:
        t = time.perf_counter()
        with head_threads(settings, device):
            out = grid.predict(feats.to(device))
        for n, y in _labels_for(labels, num_classes, feats.shape[0]).items():
            probs[n].append(out[n].float().cpu())
            targets[n].append(y)
        timing["heads_s"] += time.perf_counter() - t
    return ({n: torch.cat(p, dim=1) for n, p in probs.items()}, {n: torch.cat(y) for n, y in targets.items()})


def fit_probe(epoch_batches, steps_per_epoch: int, val_batches, embed_dim: int, num_classes: dict[str, int],
              settings: ProbeSettings, device: torch.device, timing: dict | None = None) -> dict:
    """Train a head grid (`train_heads`), then evaluate every head once on `val_batches()` (`predict_heads`)."""
    timing = timing if timing is not None else {}
    grid, losses = train_heads(epoch_batches, steps_per_epoch, embed_dim, num_classes, settings, device, timing)
    # the validation set is seen once, at the end: its features are never stored
    probs, targets = predict_heads(grid, val_batches(), num_classes, settings, device, timing)
    results = {n: summarise(probs[n], targets[n], settings.grid) for n in num_classes}
    return {"labels": results, "timing": timing, "epoch_losses": losses, "settings": asdict(settings),
            "num_val": len(next(iter(targets.values()))), "heads": grid}


def _labels_for(labels: dict, num_classes: dict[str, int], n: int) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(labels[k]) if k in labels else torch.full((n,), -1) for k in num_classes}


def run_probe(encoder, train_loader, val_loader, settings: ProbeSettings, device: torch.device,
              label_names: list[str] | None = None) -> dict:
    """The whole protocol on a frozen encoder: features, head grid, evaluation. Returns the results
    ({"labels": {label: summarise(...)}, "timing", "settings", "heads": the trained HeadGrid, ...})."""
    settings.check()
    encoder = encoder.to(device).eval()  # features are computed under no_grad
    if settings.num_heads is None:
        settings = replace(settings, num_heads=getattr(encoder, "num_heads", None) or 1)
    timing = {"extract_train_s": 0.0, "extract_val_s": 0.0, "heads_s": 0.0, "cache_read_s": 0.0, "encoder_passes": 0}
    stream = settings.augment or settings.cache == "none"
    classes = num_classes_of(*(s for s in (_dataset_labels(train_loader), _dataset_labels(val_loader)) if s))
    with tempfile.TemporaryDirectory(prefix="probe-cache-") as tmp:
        if stream:
            def epoch_batches(epoch):
                return streamed_batches(encoder, train_loader, settings, device, timing)
            steps = len(train_loader)
        else:
            t = time.perf_counter()
            # one view per segment: the loader's evaluation transform (centre crop) without augmentation
            train = extract(encoder, train_loader, settings, device, 1, settings.cache,
                            Path(settings.cache_dir or tmp) / "train.npy")
            timing["extract_train_s"] = time.perf_counter() - t
            timing["encoder_passes"] += 1
            classes = classes or num_classes_of(train.labels)
            gen = torch.Generator().manual_seed(settings.seed)

            def epoch_batches(epoch):
                return cached_batches(train, settings.batch_size, gen, timing)
            steps = math.ceil(len(train.indices()) / settings.batch_size)
        if label_names is not None:
            missing = sorted(set(label_names) - set(classes))
            if missing:
                raise ValueError(f"labels {missing} are not in the manifests (they have {sorted(classes)})")
            classes = {k: v for k, v in classes.items() if k in label_names}
        if not classes:
            raise ValueError("the train/val manifests have no labels to probe")

        def val_batches():
            return streamed_batches(encoder, val_loader, settings, device, timing, settings.num_views, "extract_val_s")
        results = fit_probe(epoch_batches, steps, val_batches, encoder.embed_dim, classes, settings, device, timing)
        epoch_batches = train = None  # close the memmap before its folder goes
    results["num_train"] = len(train_loader.dataset)
    return results


def probe_features(train_feats: torch.Tensor, train_labels: dict, val_feats: torch.Tensor, val_labels: dict,
                   settings: ProbeSettings, device: torch.device | None = None) -> dict:
    """The head grid on ready features [N, V, L, D] (no encoder): what `run_probe` does after extraction.
    `device` defaults to the CPU."""
    device = torch.device("cpu") if device is None else device
    settings.check()
    if settings.num_heads is None:
        settings = replace(settings, num_heads=1)
    train = FeatureStore(len(train_feats), "memory", dtype=settings.cache_dtype)
    train.write(torch.arange(len(train_feats)), train_feats, train_labels)
    gen = torch.Generator().manual_seed(settings.seed)
    step = settings.batch_size

    def val_batches():
        for i in range(0, len(val_feats), step):
            yield val_feats[i:i + step], {n: torch.as_tensor(y)[i:i + step] for n, y in val_labels.items()}
    return fit_probe(lambda epoch: cached_batches(train, settings.batch_size, gen),
                     math.ceil(len(train_feats) / settings.batch_size), val_batches, train_feats.shape[-1],
                     num_classes_of(train_labels, val_labels), settings, device)


def topk_accuracy(probs: torch.Tensor, y: torch.Tensor, k: int) -> float:
    """% of the labelled rows whose label is among the k most probable classes."""
    keep = y >= 0
    k = min(k, probs.shape[-1])
    hit = (probs[keep].topk(k, dim=-1).indices == y[keep, None]).any(dim=-1)
    return round(hit.double().mean().item() * 100, 4) if keep.any() else float("nan")


def summarise(probs: torch.Tensor, y: torch.Tensor, grid: list[tuple[float, float]]) -> dict:
    """probs [num_heads, N, C] -> per-head top-1/top-5, the best head, its per-class accuracy and confusion matrix."""
    heads = [{"lr": lr, "wd": wd, "top1": topk_accuracy(p, y, 1), "top5": topk_accuracy(p, y, 5)}
             for (lr, wd), p in zip(grid, probs)]
    best = max(range(len(heads)), key=lambda i: (heads[i]["top1"], heads[i]["top5"]))
    keep = y >= 0
    pred = probs[best].argmax(dim=-1)[keep]
    yk = y[keep]
    c = probs.shape[-1]
    confusion = torch.zeros(c, c, dtype=torch.long)
    confusion.index_put_((yk, pred), torch.ones_like(yk), accumulate=True)
    support = confusion.sum(dim=1)
    per_class = [round(confusion[i, i].item() / support[i].item() * 100, 4) if support[i] else None for i in range(c)]
    return {"num_classes": c, "num_val": int(keep.sum()), "heads": heads,
            "best": {"index": best, **heads[best], "per_class_top1": per_class},
            "confusion": confusion.tolist()}


def best_top1(results: dict) -> dict[str, float]:
    """{label: top-1 % of the best head}."""
    return {n: r["best"]["top1"] for n, r in results["labels"].items()}


def write_report(results: dict, out_dir: str | Path, extra: dict | None = None) -> Path:
    """eval.json (everything but the heads) and one confusion-matrix PNG per label; returns eval.json's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {k: v for k, v in results.items() if k != "heads"}
    report.update(extra or {})
    for name, r in results["labels"].items():
        r["confusion_png"] = plot_confusion(r["confusion"], out_dir / f"confusion_{name}.png",
                                            f"{name}: best head lr {r['best']['lr']:g} wd {r['best']['wd']:g}, "
                                            f"top-1 {r['best']['top1']:.1f}%").name
    path = out_dir / "eval.json"
    path.write_text(json.dumps(report, indent=2))
    return path


def plot_confusion(confusion, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(confusion, dtype=float)
    rows = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    size = min(4 + 0.3 * len(m), 20)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=9)
    if len(m) <= 30:
        ax.set_xticks(range(len(m)))
        ax.set_yticks(range(len(m)))
        for i in range(len(m)):
            for j in range(len(m)):
                if m[i, j]:
                    ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rows[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
