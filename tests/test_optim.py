"""The optimiser and its per-step schedules against their closed forms (V-JEPA's WarmupCosineSchedule,
CosineWDSchedule and linear EMA momentum), and AdamW's no-decay group really not decaying."""
import math

import pytest
import torch

from vjepa.methods import LatentPrediction
from vjepa.models import Predictor, vit
from vjepa.train.optim import Schedule, build_optimizer, momentum_at, param_groups

# 10 steps, warmup round(10 x 0.2) = 2 steps: lr 2e-4 -> 1e-3, then cosine to 1e-6; wd 0.04 -> 0.4
SCHEDULE = Schedule(total_steps=10, lr=1e-3, start_lr=2e-4, final_lr=1e-6, warmup_steps=2, weight_decay=0.04,
                    final_weight_decay=0.4)


@pytest.mark.parametrize("step,lr", [
    (0, 2e-4),                                                           # start of warmup
    (1, 6e-4),                                                           # halfway up
    (2, 1e-3),                                                           # end of warmup: the peak
    (6, 1e-6 + 0.5 * (1e-3 - 1e-6)),                                     # middle of the cosine (4 of its 8 steps)
    (9, 1e-6 + 0.5 * (1e-3 - 1e-6) * (1 + math.cos(math.pi * 7 / 8))),  # last step: 7 of 8 cosine steps done
])
def test_learning_rate_warms_up_linearly_then_follows_the_cosine(step, lr):
    assert SCHEDULE.lr_at(step) == pytest.approx(lr, rel=1e-12)


@pytest.mark.parametrize("step,wd", [
    (0, 0.04),
    (5, 0.22),                                                         # middle: the mean of the two ends
    (9, 0.4 + 0.5 * (0.04 - 0.4) * (1 + math.cos(math.pi * 9 / 10))),  # last step, no warmup for wd
])
def test_weight_decay_follows_the_cosine_over_the_whole_run(step, wd):
    assert SCHEDULE.wd_at(step) == pytest.approx(wd, rel=1e-12)


@pytest.mark.parametrize("step,m", [(0, 0.998), (5, 0.999), (9, 0.998 + 0.002 * 9 / 10)])
def test_ema_momentum_rises_linearly_from_start_to_end(step, m):
    assert momentum_at(step, 10, 0.998, 1.0) == pytest.approx(m, rel=1e-12)


def test_without_warmup_the_first_step_is_at_the_peak():
    s = Schedule(10, lr=1e-3, start_lr=2e-4, final_lr=0.0, warmup_steps=0, weight_decay=0.0, final_weight_decay=0.0)
    assert s.lr_at(0) == pytest.approx(1e-3) and s.lr_at(5) == pytest.approx(5e-4)


def test_adamw_decays_weights_but_not_biases_or_norms():
    torch.manual_seed(0)
    kw = dict(img_size=32, num_frames=4, patch_size=8, depth=2, embed_dim=64, num_heads=4)
    method = LatentPrediction(vit("tiny", **kw), Predictor(64, 64, embed_dim=32, depth=1, num_heads=2,
                                                           num_mask_tokens=2))  # EMA teacher: not trained
    modules = [method.encoder, method.predictor]
    names = {id(p): f"{m}.{n}" for m, mod in (("encoder", method.encoder), ("predictor", method.predictor))
             for n, p in mod.named_parameters()}
    decay, no_decay = ({names[id(p)] for p in g["params"]} for g in param_groups(modules))
    assert decay | no_decay == set(names.values()) and not decay & no_decay  # every trained weight, once
    assert no_decay == {n for n in names.values() if n.endswith(".bias") or ".norm" in n}
    assert {"encoder.blocks.0.attn.qkv.weight", "predictor.mask_tokens", "encoder.patch_embed.proj.weight"} <= decay

    opt = build_optimizer(modules, lr=1.0)
    lr, wd = SCHEDULE.apply(opt, 5)
    assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == [(lr, wd), (lr, 0.0)]
    # a zero gradient leaves Adam's update at 0: what moves is the decoupled decay, p <- p (1 - lr wd)
    before = {id(p): p.detach().clone() for p in method.parameters()}
    for p in method.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    opt.step()
    for p in method.parameters():  # the teacher's copies included: frozen, never in a group
        expected = before[id(p)] * (1 - lr * wd) if names.get(id(p)) in decay else before[id(p)]
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=0, msg=names.get(id(p), "teacher"))
