"""Bridge from the linear theory to real models: pixel vs latent prediction on flickering digit clips.

Clips (64 x 64, 4 frames) show a coloured sklearn digit moving over a smooth background; on top, every frame
gets an independent random brightness offset per 16 x 16 patch (per-patch flicker): high variance, and
unpredictable from any other patch or frame - the "loud, low-rho" feature of the theory. The digit identity is
the quiet, predictable factor. Two tiny ViTs (same architecture, same tube masks, same optimiser) train with
  pixel:  a narrow decoder reconstructs the raw pixels of the masked tubelets (MAE-style, raw targets: the
          VideoMAE per-patch normalisation would remove the offset flicker by construction);
  latent: a narrow predictor predicts the layer-normed features of the masked tubelets given by an EMA copy of
          the encoder (stop-gradient target, V-JEPA-style).
Every few steps a linear probe (logistic regression on mean-pooled frozen features) measures how decodable the
digit is. Data: the embedded dataset (`data="embedded"`, the default: real H.264 clips of moving digits from
`data.synthetic`, decoded by the data package, flicker added to the decoded frames), or clips rendered in
memory (`data="memory"`: a coloured digit over a smooth background, used by the quick tests).
"""
from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from vjepa.masks import MaskSampler, TubeMask
from vjepa.models import patchify, pixel_decoder, predictor
from vjepa.models.vit import VisionTransformer

SIZE, FRAMES, PATCH, TUBELET = 64, 4, 16, 2
SPRITE = 40  # large digit (2-3 patches wide) so a tiny model can see its shape within a few hundred steps


def _digit_sprites() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.as_tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    sprites = F.interpolate(images, size=(SPRITE, SPRITE), mode="bilinear", align_corners=False)[:, 0]
    return sprites.clamp(0, 1).numpy(), digits.target


def render_clips(n: int, flicker_std: float, seed: int, sprites=None) -> tuple[torch.Tensor, torch.Tensor]:
    """n clips [n, 3, FRAMES, SIZE, SIZE] in roughly [0, 1] (+ flicker) and their digit labels [n]."""
    sprites, labels = sprites if sprites is not None else _digit_sprites()
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(sprites), n)
    yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
    clips = np.empty((n, FRAMES, SIZE, SIZE, 3), dtype=np.float32)
    for k, idx in enumerate(pick):
        gradient = rng.uniform(-1, 1, 2)
        background = 0.3 + 0.15 * (gradient[0] * yy + gradient[1] * xx)  # smooth, varies per clip
        colour = rng.uniform(0.4, 1.0, 3)
        start = rng.uniform(0, SIZE - SPRITE, 2)
        velocity = rng.uniform(-2, 2, 2)
        for t in range(FRAMES):
            frame = np.repeat(background[..., None], 3, axis=2)
            r, c = np.clip(start + t * velocity, 0, SIZE - SPRITE).astype(int)
            alpha = sprites[idx][..., None]
            frame[r:r + SPRITE, c:c + SPRITE] = (1 - alpha) * frame[r:r + SPRITE, c:c + SPRITE] + alpha * colour
            clips[k, t] = frame
    if flicker_std > 0:  # one offset per (clip, frame, patch), shared by the patch's pixels and channels
        g = SIZE // PATCH
        offsets = rng.normal(0, flicker_std, (n, FRAMES, g, g)).astype(np.float32)
        clips += np.kron(offsets, np.ones((PATCH, PATCH), dtype=np.float32))[..., None]
    video = torch.from_numpy(clips).permute(0, 4, 1, 2, 3).contiguous()
    return video, torch.as_tensor(labels[pick])


def embedded_clips(root, flicker_std: float, seed: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The embedded dataset's clips ([n, 3, FRAMES, SIZE, SIZE], centre view, ImageNet-normalised) and digit
    labels, decoded from its H.264 files, with the same per-patch flicker as `render_clips` added."""
    from data.loader import build_loader

    loader = build_loader([str(root / f"{split}.jsonl")], train=False, batch_size=64, frames_per_clip=FRAMES,
                          frame_step=2, size=SIZE, eval_resize_ratio=1.0, num_workers=0, seed=seed)
    batches = list(loader)
    video = torch.cat([b["video"] for b in batches])
    labels = torch.cat([b["labels"]["digit"] for b in batches])
    if flicker_std > 0:
        g = torch.Generator().manual_seed(seed)
        n, grid = video.shape[0], SIZE // PATCH
        offsets = torch.randn(n, 1, FRAMES, grid, grid, generator=g) * flicker_std / 0.226  # in normalised units
        video = video + offsets.repeat_interleave(PATCH, 3).repeat_interleave(PATCH, 4)
    return video, labels


def tiny_encoder() -> VisionTransformer:
    return VisionTransformer(img_size=SIZE, num_frames=FRAMES, patch_size=PATCH, tubelet_size=TUBELET,
                             embed_dim=96, depth=4, num_heads=3)


def _fit_probe(train_x, train_y, test_x, test_y, ridge: float = 1.0) -> float:
    """Ridge-regression classifier on one-hot labels (a linear probe with a closed form: milliseconds, where
    logistic regression on ~1500-d features took tens of seconds on the shared CPU); test accuracy."""
    train_x, test_x = torch.as_tensor(train_x, dtype=torch.float64), torch.as_tensor(test_x, dtype=torch.float64)
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    a, b = (train_x - mean) / std, (test_x - mean) / std
    targets = F.one_hot(torch.as_tensor(train_y), 10).double()
    # dual form: fewer samples than features
    gram = a @ a.T + ridge * a.shape[1] * torch.eye(len(a), dtype=torch.float64)
    weights = a.T @ torch.linalg.solve(gram, targets - targets.mean(0))
    return float(((b @ weights).argmax(1) == torch.as_tensor(test_y)).double().mean())


@torch.no_grad()
def probe_accuracy(encoder, train, test, batch: int = 100) -> float:
    """Linear probe (logistic regression) on frozen features averaged over time but kept per spatial position
    (a mean over all tokens would discard the digit's shape); test accuracy."""
    def features(video):
        encoder.eval()
        out = torch.cat([encoder(video[i:i + batch]) for i in range(0, len(video), batch)])
        encoder.train()
        t, h, w = encoder.grid
        return out.reshape(len(video), t, h * w, -1).mean(dim=1).flatten(1).numpy()

    return _fit_probe(features(train[0]), train[1], features(test[0]), test[1])


def pixel_probe_accuracy(train, test) -> float:
    """Reference: the same probe on raw pixels (time-averaged, 16 x 16 downsampled)."""
    def features(video):
        return F.avg_pool2d(video.mean(dim=2), 4).flatten(1).numpy()

    return _fit_probe(features(train[0]), train[1], features(test[0]), test[1])


def train_objective(objective: str, clips, probe_sets, steps: int, eval_every: int, seed: int,
                    batch_size: int = 32, lr: float = 1e-3, ema: float = 0.99) -> dict:
    torch.manual_seed(seed)
    encoder = tiny_encoder()
    grid = encoder.grid
    if objective == "pixel":
        head = pixel_decoder(encoder, embed_dim=64, depth=2, num_heads=2, num_mask_tokens=1)
    else:
        head = predictor(encoder.embed_dim, embed_dim=64, depth=2, num_heads=2, num_mask_tokens=1)
        target_encoder = copy.deepcopy(encoder).requires_grad_(False)
    params = [*encoder.parameters(), *head.parameters()]
    optim = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    masks = MaskSampler([TubeMask(grid, ratio=0.5)], seed=seed)
    rng = torch.Generator().manual_seed(seed)
    curve = {"step": [0], "accuracy": [probe_accuracy(encoder, *probe_sets)], "loss": [None]}
    start = time.time()
    for step in range(1, steps + 1):
        video = clips[torch.randint(0, len(clips), (batch_size,), generator=rng)]
        mask = masks(batch_size)[0]
        context = encoder(video, masks=mask.context)
        prediction = head(context, mask.context, mask.target, grid)
        if objective == "pixel":
            pixels = patchify(video, TUBELET, PATCH).flatten(-2)
            target = torch.gather(pixels, 1, mask.target.unsqueeze(-1).expand(-1, -1, pixels.shape[-1]))
        else:
            with torch.no_grad():
                full = target_encoder(video)
                full = F.layer_norm(full, full.shape[-1:])
                target = torch.gather(full, 1, mask.target.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
        loss = F.mse_loss(prediction, target)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        sched.step()
        if objective == "latent":
            with torch.no_grad():
                for p_t, p in zip(target_encoder.parameters(), encoder.parameters()):
                    p_t.lerp_(p, 1 - ema)
        if step % eval_every == 0 or step == steps:
            curve["step"].append(step)
            curve["accuracy"].append(probe_accuracy(encoder, *probe_sets))
            curve["loss"].append(float(loss.detach()))
    curve["train_seconds"] = time.time() - start
    return curve


def steps_to_reach(curve: dict, level: float) -> int | None:
    for step, acc in zip(curve["step"], curve["accuracy"]):
        if acc >= level:
            return step
    return None


def run_bridge(steps: int = 300, seed: int = 0, flicker_std: float = 0.5,
               n_train_clips: int = 2000, n_probe_train: int = 600, n_probe_test: int = 400,
               eval_every: int | None = None, conditions=("flicker", "clean"), data: str = "embedded",
               data_root: str = "runs/bridge-data", num_videos: int = 1200) -> dict:
    torch.set_num_threads(1)  # tiny model: one thread is fastest, and extra threads thrash on a shared CPU
    if data not in ("embedded", "memory"):
        raise ValueError(f"bridge data must be 'embedded' or 'memory', got {data!r}")
    sprites = _digit_sprites()
    root = None
    if data == "embedded":
        from pathlib import Path

        from data.synthetic import ensure_synthetic

        root = Path(ensure_synthetic(data_root, num_videos=num_videos, frames=8))
    eval_every = eval_every or max(1, steps // 6)
    described = (f"embedded dataset ({root}, H.264, {FRAMES} frames at 64x64)" if data == "embedded"
                 else "in-memory sklearn digit clips (64x64, 4 frames)")
    result = {"steps": steps, "flicker_std": flicker_std, "data": described,
              "conditions": {}}
    for condition in conditions:
        std = flicker_std if condition == "flicker" else 0.0
        if data == "embedded":  # SSL on the train split; the probe fits on train, scores on val
            train_set = embedded_clips(root, std, seed, "train")
            clips, probe_sets = train_set[0], (train_set, embedded_clips(root, std, seed + 2, "val"))
        else:
            clips, _ = render_clips(n_train_clips, std, seed, sprites)
            probe_sets = (render_clips(n_probe_train, std, seed + 1, sprites),
                          render_clips(n_probe_test, std, seed + 2, sprites))
        pixels = probe_sets[0][0].flatten(1).numpy()
        runs = {obj: train_objective(obj, clips, probe_sets, steps, eval_every, seed) for obj in ("pixel", "latent")}
        result["conditions"][condition] = {
            "runs": runs,
            "final_accuracy": {k: v["accuracy"][-1] for k, v in runs.items()},
            "mean_accuracy_over_training": {k: float(np.mean(v["accuracy"][1:])) for k, v in runs.items()},
            "pixel_std": float(pixels.std()), "raw_pixel_probe_accuracy": pixel_probe_accuracy(*probe_sets)}
    return result
