"""torch.compile path: bucketed masks are valid, reproducible masks with few distinct lengths, and the compiled
method computes what the eager one does without compiling again for every step.

The compiled test uses backend="aot_eager" (dynamo tracing + AOTAutograd, the parts that can change the
computation) because inductor's C++ code generation takes minutes on the 2 shared CPU cores here; the GPU
check (tests/test_perf_gpu.py, `pytest -m gpu`) compares inductor with eager."""
import copy

import pytest
import torch

from test_train import final_state, make_cfg
from vjepa.masks import MaskSampler, build_masks
from vjepa.methods import LatentPrediction
from vjepa.models import Predictor, vit
from vjepa.train.compile import BucketedMasks, bucket_length, compile_method
from vjepa.train.experiment import run_experiment
from vjepa.train.optim import build_optimizer


def tiny_method(seed=0):
    torch.manual_seed(seed)
    kw = dict(img_size=32, num_frames=4, patch_size=8, depth=2, embed_dim=64, num_heads=4)
    enc, teacher = vit("tiny", **kw), vit("tiny", **kw)
    return LatentPrediction(enc, Predictor(64, 64, embed_dim=32, depth=1, num_heads=2, num_mask_tokens=2),
                            teacher=teacher)


def test_bucketed_masks_cut_to_bucket_lengths_reproducibly():
    grid = (4, 8, 8)  # 256 tokens
    plain = MaskSampler(build_masks("multiblock", grid), seed=3)
    bucketed = BucketedMasks(MaskSampler(build_masks("multiblock", grid), seed=3), 16)
    lengths = set()
    for _ in range(12):
        full, cut = plain(4), bucketed(4)
        for f, c in zip(full, cut):
            for a, b in ((f.context, c.context), (f.target, c.target)):
                assert b.shape[1] == bucket_length(a.shape[1], 16) and b.shape[0] == a.shape[0]
                assert b.shape[1] % 16 == 0 or b.shape[1] < 16
                assert torch.equal(b, b.sort(dim=1).values)  # still sorted
                for row_a, row_b in zip(a, b):  # a subset of each sample's ids
                    assert torch.isin(row_b, row_a).all()
            for ctx, tgt in zip(c.context, c.target):  # still disjoint
                assert not torch.isin(ctx, tgt).any()
            lengths.add((c.context.shape[1], c.target.shape[1]))
    assert len(lengths) < 12 * 2  # fewer distinct shapes than (step, generator) pairs
    # resumable: the state is the sampler's step, and the cut depends only on (seed, step)
    again = BucketedMasks(MaskSampler(build_masks("multiblock", grid), seed=3), 16)
    again.load_state_dict({"step": 11, "seed": 3})
    resumed = BucketedMasks(MaskSampler(build_masks("multiblock", grid), seed=3), 16)
    for _ in range(11):
        resumed(4)
    for a, b in zip(again(4), resumed(4)):
        assert torch.equal(a.context, b.context) and torch.equal(a.target, b.target)


def test_compiled_method_matches_eager_and_compiles_once_per_bucket():
    """Multi-block masks, whose lengths change from step to step: the compiled networks meet only bucketed
    lengths and compile one graph per (network, bucketed shape) they meet, never one per step."""
    from torch._dynamo.utils import counters

    eager = tiny_method()
    compiled = copy.deepcopy(eager)
    assert compile_method(compiled, backend="aot_eager") == ["encoder", "predictor", "teacher"]
    # in-place compile: checkpoints keep their keys
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    opts = [build_optimizer([m.encoder, m.predictor], 1e-3) for m in (eager, compiled)]
    grid, bucket, steps = (2, 4, 4), 8, 5
    plain = MaskSampler(build_masks("multiblock", grid), seed=1)  # the same draws, uncut
    masks = BucketedMasks(MaskSampler(build_masks("multiblock", grid), seed=1), bucket)
    raw = [[(m.context.shape[1], m.target.shape[1]) for m in plain(2)] for _ in range(steps)]
    cut = [[(c if c < bucket else c - c % bucket, t if t < bucket else t - t % bucket) for c, t in s] for s in raw]
    # the graphs a step may add: the encoder one per context length, the predictor one per (mask index,
    # context, target) lengths, the teacher one (whole clips)
    keys = [{("encoder", c) for c, _ in s} | {("predictor", i, c, t) for i, (c, t) in enumerate(s)} for s in cut]
    # the drawn lengths change at every step; cut to buckets, a few of them repeat
    assert len({tuple(s) for s in raw}) == steps and len({c for s in cut for c, _ in s}) >= 2
    video = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    base = counters["stats"]["unique_graphs"]
    graphs, seen = [], {("teacher",)}
    for step in range(steps):
        ms = masks(2)
        assert [(m.context.shape[1], m.target.shape[1]) for m in ms] == cut[step]
        losses = []
        for method, opt in zip((eager, compiled), opts):
            opt.zero_grad(set_to_none=True)
            loss, _ = method(video, ms)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
        seen |= keys[step]
        graphs.append(counters["stats"]["unique_graphs"] - base)
        assert graphs[-1] <= len(seen), f"step {step}: {graphs[-1]} graphs for {len(seen)} shapes {sorted(seen)}"
        if step and not keys[step] - set().union(*keys[:step]):  # no new shape: no new graph
            assert graphs[-1] == graphs[-2], f"step {step} recompiled with known shapes {cut[step]}"
    assert graphs[-1] > graphs[0]  # later steps met new buckets and compiled them, once each
    for (n, a), b in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.slow
def test_trainer_with_perf_compile_matches_the_plain_trainer(embedded_data, tmp_path):
    """The trainer hook: perf.compile (aot_eager; mask_bucket 1 = no cutting, so the runs are comparable)."""
    common = ["experiment=vjepa", "experiment.total_steps=3", "mask=tube"]
    run_experiment(make_cfg(embedded_data, tmp_path / "plain", *common), tmp_path / "plain")
    run_experiment(make_cfg(embedded_data, tmp_path / "compiled", *common, "perf.compile=true",
                            "perf.compile_backend=aot_eager", "perf.mask_bucket=1"), tmp_path / "compiled")
    a, b = final_state(tmp_path / "plain", "student"), final_state(tmp_path / "compiled", "student")
    for name in a:
        assert a[name].keys() == b[name].keys()  # compiled in place: same checkpoint keys
        for key in a[name]:
            torch.testing.assert_close(b[name][key], a[name][key], rtol=1e-4, atol=1e-6, msg=f"{name}.{key}")
