"""Mask generators and the batch mask sampler."""
import pytest
import torch

from vjepa.masks import MaskSampler, MultiBlock2D, MultiBlock3D, TubeMask, build_masks


def _check_disjoint_sorted(mask, n_tokens):
    for c, t in zip(mask.context, mask.target):
        assert len(set(c.tolist()) & set(t.tolist())) == 0
        assert (c.diff() > 0).all() and (t.diff() > 0).all()
        assert c.min() >= 0 and t.max() < n_tokens


@pytest.mark.parametrize("kind,grid", [("multiblock", (8, 8, 8)), ("tube", (8, 8, 8)), ("ijepa", (1, 14, 14))])
def test_context_and_target_are_disjoint_and_stack(kind, grid):
    sampler = MaskSampler(build_masks(kind, grid), seed=3)
    n = grid[0] * grid[1] * grid[2]
    for step in range(20):
        for mask in sampler.sample(4, step):
            assert mask.context.shape[0] == mask.target.shape[0] == 4
            assert mask.context.dtype == torch.long
            assert mask.context.shape[1] >= 1 and mask.target.shape[1] >= 1
            _check_disjoint_sorted(mask, n)


@pytest.mark.parametrize("gen", [MultiBlock3D((4, 6, 6), num_blocks=3, spatial_scale=(0.1, 0.3)),
                                 TubeMask((4, 6, 6), 0.75)])
def test_single_sample_masks_cover_every_token(gen):
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        m = gen(g, [g])
        assert sorted(m.context[0].tolist() + m.target[0].tolist()) == list(range(4 * 36))


def test_tube_mask_ratio_and_tubes():
    m = TubeMask((8, 14, 14), 0.9)(None, [torch.Generator().manual_seed(i) for i in range(16)])
    assert m.target.shape[1] / (8 * 196) == pytest.approx(0.9, abs=0.005)
    for ctx in m.context:
        spatial = ctx % 196
        frames = ctx // 196
        # the same spatial positions are kept in every frame
        per_frame = [set(spatial[frames == t].tolist()) for t in range(8)]
        assert all(s == per_frame[0] for s in per_frame)


def test_multiblock_block_area_matches_spatial_scale():
    """One block of scale s covers s of the frame (up to rounding), over the drawn temporal extent."""
    gen = MultiBlock3D((8, 16, 16), num_blocks=1, spatial_scale=(0.15, 0.15), temporal_scale=(0.5, 0.5))
    ratios = []
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        ratios.append(gen(g, [g]).target.shape[1] / (8 * 256))
    mean = sum(ratios) / len(ratios)
    assert mean == pytest.approx(0.15 * 0.5, rel=0.15)


def test_reference_multiblock_masks_most_tokens():
    """V-JEPA's long-range generator (2 x 0.7) hides most of the clip; the short-range one less."""
    sampler = MaskSampler(build_masks("multiblock", (8, 14, 14)), seed=0)
    short, long = [], []
    for step in range(100):
        short_masks, long_masks = sampler.sample(2, step)
        short.append(short_masks.target.shape[1] / 1568)
        long.append(long_masks.target.shape[1] / 1568)
    assert 0.45 < sum(short) / 100 < 0.75
    assert 0.65 < sum(long) / 100 < 0.9
    assert sum(long) > sum(short)


def test_ijepa_context_avoids_targets_and_keeps_min():
    gen = MultiBlock2D((1, 14, 14), min_keep=10)
    g = torch.Generator().manual_seed(1)
    m = gen(g, [torch.Generator().manual_seed(i) for i in range(8)])
    assert m.context.shape[1] >= 10
    with pytest.raises(ValueError, match="single-frame"):
        MultiBlock2D((2, 14, 14))


def test_sampler_is_deterministic_and_resumable():
    def run(seed, n):
        s = MaskSampler(build_masks("multiblock", (4, 8, 8)), seed=seed)
        return [s(2) for _ in range(n)], s

    a, _ = run(0, 6)
    b, _ = run(0, 6)
    c, _ = run(1, 6)
    for ma, mb in zip(a, b):
        for x, y in zip(ma, mb):
            assert torch.equal(x.context, y.context) and torch.equal(x.target, y.target)
    assert any(not torch.equal(x[0].context, y[0].context) or x[0].context.shape != y[0].context.shape
               for x, y in zip(a, c))
    # restore after 3 batches: the next 3 are the same as the uninterrupted run's
    _, s3 = run(0, 3)
    resumed = MaskSampler(build_masks("multiblock", (4, 8, 8)), seed=0)
    resumed.load_state_dict(s3.state_dict())
    for expected in a[3:]:
        got = resumed(2)
        for x, y in zip(got, expected):
            assert torch.equal(x.context, y.context) and torch.equal(x.target, y.target)
    with pytest.raises(ValueError, match="seed"):
        MaskSampler(build_masks("tube", (4, 8, 8)), seed=5).load_state_dict(s3.state_dict())


def test_ranks_draw_different_masks_that_interleave_into_the_global_batch():
    whole = MaskSampler(build_masks("tube", (4, 8, 8)), seed=0).sample(4, 7)[0]
    r0 = MaskSampler(build_masks("tube", (4, 8, 8)), seed=0, rank=0, world_size=2).sample(2, 7)[0]
    r1 = MaskSampler(build_masks("tube", (4, 8, 8)), seed=0, rank=1, world_size=2).sample(2, 7)[0]
    assert not torch.equal(r0.context, r1.context)
    assert torch.equal(whole.context[0::2], r0.context) and torch.equal(whole.context[1::2], r1.context)
