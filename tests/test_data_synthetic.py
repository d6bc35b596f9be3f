"""The embedded dataset: real encoded files, deterministic, labels visible in the pixels."""

import json
import math

import numpy as np

from data.decoders import open_video
from data.synthetic import ensure_synthetic, generate


def test_deterministic_small_and_labelled(tmp_path):
    a = generate(tmp_path / "a", num_videos=24, seed=3)
    b = generate(tmp_path / "b", num_videos=24, seed=3)
    c = generate(tmp_path / "c", num_videos=24, seed=4)
    files = sorted((a / "videos").glob("*.mp4"))
    assert len(files) == 24
    assert all(f.read_bytes() == (b / "videos" / f.name).read_bytes() for f in files)
    assert files[5].read_bytes() != (c / "videos" / files[5].name).read_bytes()
    assert sum(f.stat().st_size for f in files) < 24 * 20_000
    rows = [json.loads(line) for m in ("train.jsonl", "val.jsonl") for line in (a / m).read_text().splitlines()]
    assert len(rows) == 24 and len({r["path"] for r in rows}) == 24
    classes = json.loads((a / "classes.json").read_text())["classes"]
    for r in rows:
        lab = r["labels"]
        assert set(lab) == {"digit", "direction", "speed"}
        assert r["captions"][0] == (f"a {lab['digit']} moving {classes['direction'][lab['direction']]} "
                                    f"{classes['speed'][lab['speed']]}")


def test_motion_in_pixels_matches_labels(tmp_path):
    root = generate(tmp_path, num_videos=120, seed=0)
    rows = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines()]
    travel = {0: [], 1: [], 2: []}
    for r in rows:
        frames = open_video(root / r["path"], "decord").get_frames([0, 15]).max(-1).astype(float)
        # the sprite is bright (>= 170) on a dark background (<= 110): track its centroid
        cy, cx = [np.array([(np.nonzero(f > 150)[k]).mean() for f in frames]) for k in (0, 1)]
        dx, dy = cx[1] - cx[0], -(cy[1] - cy[0])
        angle = r["labels"]["direction"] * math.pi / 2
        assert dx * math.cos(angle) + dy * math.sin(angle) > 0.8 * math.hypot(dx, dy) - 1.0, r
        travel[r["labels"]["speed"]].append(math.hypot(dx, dy))
    means = [np.mean(travel[s]) for s in range(3)]
    assert means[0] < means[1] < means[2]


def test_ensure_synthetic_generates_once(tmp_path):
    root = ensure_synthetic(tmp_path / "emb", num_videos=10)
    assert (root / "train.jsonl").exists() and (root / "val.jsonl").exists()
    stamp = (root / "train.jsonl").stat().st_mtime_ns
    assert ensure_synthetic(tmp_path / "emb", num_videos=10) == root
    assert (root / "train.jsonl").stat().st_mtime_ns == stamp


def test_ensure_synthetic_regenerates_a_dataset_made_with_other_parameters(tmp_path):
    """An older default's dataset under the same root is replaced, not silently reused."""
    root = ensure_synthetic(tmp_path / "emb", num_videos=10, frames=8)
    assert len((root / "val.jsonl").read_text().splitlines()) == 4  # round(10 * 0.375)
    ensure_synthetic(tmp_path / "emb", num_videos=12, frames=8)
    rows = [line for m in ("train.jsonl", "val.jsonl") for line in (root / m).read_text().splitlines()]
    assert len(rows) == 12 and len(list((root / "videos").glob("*.mp4"))) == 12
    assert json.loads((root / "classes.json").read_text())["params"]["num_videos"] == 12
