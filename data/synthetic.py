"""Embedded default dataset: moving handwritten digits, encoded as real video files.

Each clip shows one digit from ``sklearn.datasets.load_digits`` (scaled up so a small ViT at
64x64 can read it) moving in a straight line over a coloured gradient background.
Labels need appearance (``digit``, 10 classes) and motion (``direction``, 4 or 8 classes;
``speed``, 3 classes); every clip has two captions describing both.

    python -m data.synthetic --out DIR [--num-videos 1600 --frames 16 --size 64 --seed 0 --codec h264|vp9]

writes ``DIR/videos/*.mp4`` (or ``.webm``), ``DIR/train.jsonl``, ``DIR/val.jsonl`` and
``DIR/classes.json``. Everything is a pure function of the arguments (x264/vp9 run
single-threaded), so the same seed gives the same pixels.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import math
import os
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from data.decoders import pyav_reformatter

log = logging.getLogger(__name__)

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIRECTIONS_8 = ["right", "up-right", "up", "up-left", "left", "down-left", "down", "down-right"]
SPEEDS = ["slowly", "steadily", "quickly"]
# fraction of the free room the sprite crosses over the clip, per speed class
SPEED_FRACTIONS = [0.3, 0.6, 0.95]
CODECS = {"h264": ("libx264", ".mp4"), "vp9": ("libvpx-vp9", ".webm")}
# 1000 train clips (pretraining, and the probe's fit + held-out parts) and 600 val clips, so that one binomial
# standard error of a probe accuracy is at most 2 points (100 sqrt(0.25 / 600) = 2.04)
DEFAULTS = dict(num_videos=1600, frames=16, size=64, seed=0, codec="h264", directions=4, val_fraction=0.375)


def direction_names(num_directions: int) -> list[str]:
    if num_directions not in (4, 8):
        raise ValueError(f"directions must be 4 or 8, got {num_directions}")
    return DIRECTIONS_8[:: 8 // num_directions]


def _digit_sprites(sprite_px: int) -> tuple[np.ndarray, np.ndarray]:
    """All 1797 sklearn digits as float masks in [0, 1], upscaled to sprite_px (bilinear)."""
    import torch
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    big = torch.nn.functional.interpolate(images, size=(sprite_px, sprite_px), mode="bilinear", align_corners=False)
    return big[:, 0].clamp(0, 1).numpy(), digits.target.astype(np.int64)


def _render_clip(sprite: np.ndarray, rng: np.random.Generator, frames: int, size: int,
                 angle: float, speed_fraction: float) -> np.ndarray:
    """uint8 [T, H, W, 3]: a coloured digit crossing a smooth background along a straight line."""
    s = sprite.shape[0]
    room = size - s
    travel = speed_fraction * room
    dx, dy = math.cos(angle) * travel, -math.sin(angle) * travel  # image y grows downwards
    # choose a start so that the whole path stays inside the frame
    x0 = rng.uniform(max(0.0, -dx), min(room, room - dx)) if room > abs(dx) else room / 2 - dx / 2
    y0 = rng.uniform(max(0.0, -dy), min(room, room - dy)) if room > abs(dy) else room / 2 - dy / 2

    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    c_a, c_b = rng.uniform(0, 110, 3), rng.uniform(0, 110, 3)
    horizontal = rng.random() < 0.5
    t = ramp[None, :, None] if horizontal else ramp[:, None, None]
    background = c_a * (1 - t) + c_b * t
    background = np.broadcast_to(background, (size, size, 3)).astype(np.float32)
    colour = rng.uniform(170, 255, 3).astype(np.float32)

    video = np.empty((frames, size, size, 3), np.uint8)
    for i in range(frames):
        f = i / max(frames - 1, 1)
        x, y = int(round(x0 + f * dx)), int(round(y0 + f * dy))
        frame = background.copy()
        alpha = sprite[:, :, None]
        patch = frame[y:y + s, x:x + s]
        frame[y:y + s, x:x + s] = patch * (1 - alpha) + colour * alpha
        video[i] = np.clip(frame, 0, 255).astype(np.uint8)
    return video


def encode_video(frames: np.ndarray, path: Path, codec: str = "h264", fps: int = 30) -> None:
    """Write uint8 [T, H, W, 3] frames as a real encoded file (single-threaded, deterministic)."""
    encoder, _ = CODECS[codec]
    options = {}
    if codec == "h264":
        # psy and mb-tree rate control made x264's bytes differ run to run (float paths) even single-threaded
        options.update(preset="veryfast", crf="18", **{"x264-params": "psy=0:mbtree=0"})
    else:
        options.update(crf="24", **{"b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "0"})
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(encoder, rate=Fraction(fps, 1), options=options)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # one encoder thread, set on the context (the auto thread count also changes the bytes)
        stream.codec_context.thread_count = 1
        to_yuv = pyav_reformatter("yuv420p")  # one thread, one reused context: same bytes, 1.8x faster here
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = i
            for packet in stream.encode(to_yuv(frame)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def captions_for(digit: int, direction: str, speed: int) -> list[str]:
    return [
        f"a {digit} moving {direction} {SPEEDS[speed]}",
        f"the handwritten digit {DIGIT_WORDS[digit]} drifts {direction}, {SPEEDS[speed]}",
    ]


def generate(out: str | Path, num_videos: int = 320, frames: int = 16, size: int = 64, seed: int = 0,
             codec: str = "h264", directions: int = 4, val_fraction: float = 0.2) -> Path:
    """Write the dataset into ``out`` (created) and return it."""
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {sorted(CODECS)}, got {codec!r}")
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    names = direction_names(directions)
    sprite_px = int(round(size * 0.45))  # ~28 px at 64: big enough to read the digit
    sprites, digit_of = _digit_sprites(sprite_px)
    rng = np.random.default_rng(seed)
    ext = CODECS[codec][1]
    num_val = int(round(num_videos * val_fraction))
    rows = []
    for i in range(num_videos):
        # balanced labels: cycle digits/directions/speeds, random sprite instance per clip
        digit = i % 10
        direction = (i // 10) % directions
        speed = (i // (10 * directions)) % len(SPEEDS)
        candidates = np.flatnonzero(digit_of == digit)
        sprite = sprites[rng.choice(candidates)]
        clip = _render_clip(sprite, rng, frames, size, angle=direction * 2 * math.pi / directions,
                            speed_fraction=SPEED_FRACTIONS[speed])
        rel = f"videos/{i:06d}{ext}"
        encode_video(clip, out / rel, codec)
        rows.append({"path": rel, "labels": {"digit": digit, "direction": direction, "speed": speed},
                     "captions": captions_for(digit, names[direction], speed)})
    # deterministic split that keeps classes balanced: every k-th clip goes to val
    order = np.random.default_rng(seed + 1).permutation(num_videos)
    val_ids = set(order[:num_val].tolist())
    for name, keep in (("train.jsonl", lambda j: j not in val_ids), ("val.jsonl", lambda j: j in val_ids)):
        with open(out / name, "w") as f:
            for j, row in enumerate(rows):
                if keep(j):
                    f.write(json.dumps(row) + "\n")
    classes = {"digit": [str(d) for d in range(10)], "direction": names, "speed": SPEEDS}
    meta = dict(num_videos=num_videos, frames=frames, size=size, seed=seed, codec=codec,
                directions=directions, val_fraction=val_fraction, fps=30)
    (out / "classes.json").write_text(json.dumps({"classes": classes, "params": meta}, indent=1))
    return out


def _complete(root: Path, params: dict) -> bool:
    """The dataset under `root` is whole and was generated with `params` (only the keys given)."""
    if not ((root / "train.jsonl").exists() and (root / "val.jsonl").exists() and (root / "classes.json").exists()):
        return False
    made = json.loads((root / "classes.json").read_text()).get("params", {})
    return all(made.get(k) == v for k, v in params.items())


def ensure_synthetic(root: str | Path, **kw) -> Path:
    """Return ``root`` holding the embedded dataset, generating it first (DEFAULTS overridden by ``kw``) if it is
    missing, or if it was made with other values of the parameters given in ``kw``. Without ``kw`` any complete
    dataset under ``root`` is used as it is (the trainer's default root names the default's size).

    Safe when several ranks call it at once: one generates under a file lock into a temporary
    folder and moves the result into place; the others wait and then find it.
    """
    root = Path(root)
    if _complete(root, kw):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _complete(root, kw):
            if (root / "train.jsonl").exists():  # made with other parameters: replace it
                log.warning("embedded dataset %s was generated with other parameters; regenerating it with %s",
                            root, kw)
                for name in ("train.jsonl", "val.jsonl"):
                    (root / name).unlink(missing_ok=True)
                shutil.rmtree(root / "videos", ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
            try:
                generate(tmp, **{**DEFAULTS, **kw})
                root.mkdir(exist_ok=True)
                for child in tmp.iterdir():  # move into place; manifests last so readers see complete data
                    if not child.name.endswith(".jsonl"):
                        os.replace(child, root / child.name)
                for child in sorted(tmp.glob("*.jsonl")):
                    os.replace(child, root / child.name)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return root


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--num-videos", type=int, default=DEFAULTS["num_videos"])
    p.add_argument("--frames", type=int, default=DEFAULTS["frames"])
    p.add_argument("--size", type=int, default=DEFAULTS["size"])
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--codec", choices=sorted(CODECS), default=DEFAULTS["codec"])
    p.add_argument("--directions", type=int, choices=(4, 8), default=DEFAULTS["directions"])
    p.add_argument("--val-fraction", type=float, default=DEFAULTS["val_fraction"])
    a = p.parse_args(argv)
    out = generate(a.out, a.num_videos, a.frames, a.size, a.seed, a.codec, a.directions, a.val_fraction)
    size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
    print(f"wrote {a.num_videos} clips ({a.codec}) to {out} ({size_mb:.1f} MB): train.jsonl, val.jsonl")


if __name__ == "__main__":
    main()
