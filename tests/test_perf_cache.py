"""Teacher-target caching: the cached targets are the online teacher's (up to fp16 rounding), on exactly the
views the student trains on; a cached SALT run trains like the online one on the same fixed views."""
import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from data.decoders import open_video
from data.loader import build_loader
from data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from test_train import final_state, make_cfg
from vjepa.masks import MaskSampler, build_masks
from vjepa.methods import LatentPrediction
from vjepa.methods.base import layer_norm_targets
from vjepa.models import Predictor, vit
from vjepa.train.data import EndlessLoader
from vjepa.train.experiment import run_experiment
from vjepa.train.target_cache import TargetCache, TargetCacheError, build_target_cache, fixed_views

CLIP = dict(frames_per_clip=4, frame_step=1, size=32, num_workers=0, seed=11)


def tiny_vit():
    return vit("tiny", img_size=32, num_frames=4, patch_size=8, depth=2, embed_dim=64, num_heads=4)


@pytest.fixture(scope="module")
def cache_and_teacher(embedded_data, tmp_path_factory):
    torch.manual_seed(0)
    teacher = tiny_vit().eval()
    manifest = [str(embedded_data / "train.jsonl")]
    builder = build_loader(manifest, train=True, shuffle=False, drop_last=False, batch_size=8, **CLIP)
    key = {"views": 2, "seed": CLIP["seed"], "teacher": "t0"}
    path = tmp_path_factory.mktemp("cache") / "targets"
    cache = build_target_cache(path, teacher, builder, key, torch.device("cpu"), shard_items=16)
    return cache, teacher, manifest, key


def test_cached_targets_are_the_online_teachers_on_the_training_views(cache_and_teacher):
    cache, teacher, manifest, _ = cache_and_teacher
    items = len(Path(manifest[0]).read_text().splitlines())  # 30 of the 48 clips (val: 18)
    shards = -(-items // 16)
    assert cache.items == items and cache.views == 2 and len(list(cache.path.glob("targets_v*_s*.npy"))) == 2 * shards
    loader = fixed_views(build_loader(manifest, train=True, batch_size=8, **CLIP), 2)
    it = iter(EndlessLoader(loader))  # the trainer's loop over epochs
    seen_views = set()
    torch.manual_seed(1)
    enc = tiny_vit()
    gens = build_masks("multiblock", enc.grid)
    method = LatentPrediction(enc, Predictor(64, 64, embed_dim=32, depth=1, num_heads=2, num_mask_tokens=2),
                              teacher=teacher)
    sampler = MaskSampler(gens, seed=0)
    for _ in range(len(loader) + 2):  # all of epoch 0 (view 0) and the start of epoch 1 (view 1)
        batch = next(it)
        view = loader.epoch % 2
        seen_views.add(view)
        cache.verify(batch["video"], batch["index"], view)  # the exact views the cache was computed on
        cached = cache.targets(batch["index"], view)
        assert cached.dtype == torch.float16
        with torch.no_grad():
            online = layer_norm_targets(teacher(batch["video"]))
        # fp16 storage: relative error <= 2^-11
        torch.testing.assert_close(cached.float(), online, rtol=1e-3, atol=1e-6)
        masks = sampler(8)
        with torch.no_grad():
            loss_online, _ = method(batch["video"], masks)
            loss_cached, _ = method(batch["video"], masks, targets=cached)
        torch.testing.assert_close(loss_cached, loss_online, rtol=1e-3, atol=0)
    assert seen_views == {0, 1}
    # another view of the same clips is a different clip: verification refuses it
    with pytest.raises(TargetCacheError, match="not the clip the cache was computed on"):
        cache.verify(batch["video"], batch["index"], 1 - view)


def test_stored_view_parameters_rebuild_the_view(cache_and_teacher):
    cache, _, manifest, _ = cache_and_teacher
    ds = build_loader(manifest, train=True, batch_size=8, **CLIP).dataset
    for index, view in [(0, 0), (5, 1), (17, 1)]:
        p = cache.params(index, view)
        frames = open_video(ds.items[index].path).get_frames(p["frames"])  # uint8 [T, H, W, 3]
        video = torch.from_numpy(frames).permute(0, 3, 1, 2)
        top, left, h, w = p["box"]
        video = v2.functional.resized_crop(video, top, left, h, w, [32, 32], antialias=True)
        if p["flip"]:
            video = v2.functional.horizontal_flip(video)
        video = v2.functional.normalize(video.float() / 255, IMAGENET_MEAN, IMAGENET_STD).permute(1, 0, 2, 3)
        loaded = normalize(ds[(index, view, index)]["video"][0])  # key fixed_views gives view `view` of `index`
        torch.testing.assert_close(video, loaded, rtol=0, atol=1e-6)
    flips = np.load(cache.path / "flips.npy")
    assert 0 < flips.mean() < 1  # both flipped and plain views were drawn


def test_a_cache_for_other_settings_is_refused_naming_the_key(cache_and_teacher):
    cache, _, _, key = cache_and_teacher
    with pytest.raises(TargetCacheError, match="teacher="):
        TargetCache(cache.path, {**key, "teacher": "another"})
    with pytest.raises(TargetCacheError, match="no meta.json"):
        TargetCache(cache.path / "missing")


@pytest.mark.slow
def test_cached_salt_run_trains_like_the_online_teacher_on_the_same_views(embedded_data, tmp_path, monkeypatch):
    # student: 5 steps (round(8 x 0.57)) over 2 epochs of 3 batches (views 0 and 1); the pixel teacher stage trains
    # on the same fixed views
    common = ["experiment=salt", "experiment.total_steps=8", "data.batch_size=8", "perf.fixed_views=2"]
    # the cache stores targets in float16: the online run rounds its teacher's targets the same way, so that the
    # two runs must agree bit for bit (unrounded, 5 AdamW steps of the RoPE student amplify the rounding to ~1e-3)
    online_targets = LatentPrediction.teacher_targets
    monkeypatch.setattr(LatentPrediction, "teacher_targets",
                        lambda self, video, targets=None: online_targets(self, video, targets).half().float())
    online = run_experiment(make_cfg(embedded_data, tmp_path / "online", *common),
                            tmp_path / "online")
    monkeypatch.undo()
    cached = run_experiment(make_cfg(embedded_data, tmp_path / "cached", *common, "perf.target_cache.enabled=true",
                                     "perf.target_cache.views=2"), tmp_path / "cached")
    assert online["complete"] and cached["complete"]
    assert (tmp_path / "cached" / "student" / "target_cache" / "meta.json").is_file()
    assert not (tmp_path / "online" / "student" / "target_cache").exists()

    def losses(run):
        with open(tmp_path / run / "student" / "metrics.csv") as f:
            return [float(r["loss"]) for r in csv.DictReader(f)]

    a, b = losses("online"), losses("cached")
    assert len(a) == len(b) == 5
    assert b == a
    sa, sb = final_state(tmp_path / "online", "student"), final_state(tmp_path / "cached", "student")
    assert sa.keys() == sb.keys() == {"encoder", "predictor"}
    for name in sa:
        for k in sa[name]:
            assert torch.equal(sb[name][k], sa[name][k]), f"{name}.{k}"
