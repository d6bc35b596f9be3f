"""Evidence of learning: what trivial predictors score on a method's own targets, the loss ratio the trainer
logs against them, and the stage table that flags a stage which does not beat them."""
import csv
import logging

import pytest
import torch
import torch.nn.functional as F

from test_train import make_cfg
from vjepa.masks import Mask
from vjepa.methods import LatentPrediction, PixelReconstruction
from vjepa.methods.base import layer_norm_targets, trivial_losses
from vjepa.models import Predictor, normalized_pixel_targets, pixel_decoder, vit
from vjepa.train.checkpoint import load_file
from vjepa.train.experiment import run_experiment
from vjepa.train.metrics import LEARNING_RATIO, mean_diagnostics, stage_lines

# B = 2 clips, N = 3 positions, D = 2 features; the per-position batch means are n0 [2, 1], n1 [1, 0], n2 [1, 3]
TARGETS = torch.tensor([[[1., 2.], [3., -1.], [0., 4.]],
                        [[3., 0.], [-1., 1.], [2., 2.]]])
IDS = [torch.tensor([[0, 2], [1, 2]]),  # mask A: clip 0 predicts n0, n2; clip 1 predicts n1, n2
       torch.tensor([[1], [0]])]        # mask B: clip 0 predicts n1; clip 1 predicts n0


def mse(pred, target):
    return (pred - target).pow(2).mean()


def l1(pred, target):
    return (pred - target).abs().mean()


@pytest.mark.parametrize("distance,zero,position", [
    # mask A targets 1 2 0 4 -1 1 2 2; errors of the position means -1 1 -1 1 -2 1 1 -1
    # mask B targets 3 -1 3 0;          errors of the position means  2 -1 1 -1
    (mse, ((1 + 4 + 0 + 16 + 1 + 1 + 4 + 4) / 8 + (9 + 1 + 9 + 0) / 4) / 2,
          ((1 + 1 + 1 + 1 + 4 + 1 + 1 + 1) / 8 + (4 + 1 + 1 + 1) / 4) / 2),
    (l1, ((1 + 2 + 0 + 4 + 1 + 1 + 2 + 2) / 8 + (3 + 1 + 3 + 0) / 4) / 2,
         ((1 + 1 + 1 + 1 + 2 + 1 + 1 + 1) / 8 + (2 + 1 + 1 + 1) / 4) / 2),
])
def test_trivial_losses_by_hand(distance, zero, position):
    out = trivial_losses(TARGETS, IDS, distance)
    assert set(out) == {"trivial_zero", "trivial_position"}
    assert out["trivial_zero"].item() == pytest.approx(zero)  # 69/16 (MSE), 27/16 (L1)
    assert out["trivial_position"].item() == pytest.approx(position)  # 25/16, 19/16
    assert not out["trivial_zero"].requires_grad


def hand_trivials(targets, masks, distance):
    """The same two baselines written out per item and per position, without the helper."""
    b, n, _ = targets.shape
    means = [sum(targets[i, p] for i in range(b)) / b for p in range(n)]
    zero, position = [], []
    for m in masks:
        target = torch.stack([torch.stack([targets[i, p] for p in m.target[i].tolist()]) for i in range(b)])
        guess = torch.stack([torch.stack([means[p] for p in m.target[i].tolist()]) for i in range(b)])
        zero.append(distance(torch.zeros_like(target), target))
        position.append(distance(guess, target))
    return sum(zero) / len(zero), sum(position) / len(position)


# a grid of 2 x 2 x 2 tokens; two masks with different target positions per clip
MASKS = [Mask(torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]]), torch.tensor([[4, 5, 6], [0, 1, 3]])),
         Mask(torch.tensor([[1, 3, 5, 7], [0, 3, 5, 6]]), torch.tensor([[0, 2], [1, 7]]))]


def test_pixel_metrics_are_the_trivial_losses_of_its_normalised_pixel_targets():
    torch.manual_seed(0)
    enc = vit("tiny", img_size=32, num_frames=4, patch_size=16, depth=1)
    method = PixelReconstruction(enc, pixel_decoder(enc, embed_dim=32, depth=1, num_heads=2))
    video = torch.randn(2, 3, 4, 32, 32)
    loss, metrics = method(video, MASKS)
    assert metrics["loss"] == loss.detach()
    targets = normalized_pixel_targets(video, enc.tubelet_size, enc.patch_size)
    zero, position = hand_trivials(targets, MASKS, mse)
    torch.testing.assert_close(metrics["trivial_zero"], zero)
    torch.testing.assert_close(metrics["trivial_position"], position)
    # each tubelet is normalised by its own mean and unbiased std: zeros score (n - 1) / n, n = 2 * 16 * 16
    assert metrics["trivial_zero"].item() == pytest.approx(511 / 512, rel=1e-4)


@pytest.mark.parametrize("teacher,loss_name", [(False, "l1"), (True, "smooth_l1"), (True, "l2")])
def test_latent_metrics_are_the_trivial_losses_of_the_teacher_targets(teacher, loss_name):
    """vjepa (EMA teacher) and salt (frozen teacher) with each latent distance."""
    torch.manual_seed(0)
    kw = dict(img_size=32, num_frames=4, patch_size=16, depth=1, embed_dim=32, num_heads=2)
    enc = vit("tiny", **kw)
    method = LatentPrediction(enc, Predictor(32, 32, embed_dim=32, depth=1, num_heads=2, num_mask_tokens=2),
                              teacher=vit("tiny", **kw) if teacher else None, loss=loss_name)
    video = torch.randn(2, 3, 4, 32, 32)
    _, metrics = method(video, MASKS)
    with torch.no_grad():
        targets = layer_norm_targets(method.teacher(video))
    distance = {"l1": l1, "smooth_l1": F.smooth_l1_loss, "l2": mse}[loss_name]
    zero, position = hand_trivials(targets, MASKS, distance)
    torch.testing.assert_close(metrics["trivial_zero"], zero)
    torch.testing.assert_close(metrics["trivial_position"], position)
    if loss_name == "l2":  # layer-normed targets have a mean square of 1 per token
        assert metrics["trivial_zero"].item() == pytest.approx(1.0, abs=1e-3)
    # cached targets give the same baselines as the online teacher
    _, cached = method(video, MASKS, targets=targets)
    torch.testing.assert_close(cached["trivial_position"], metrics["trivial_position"])


def test_tcjepa_reports_the_baselines_of_its_prediction_term():
    from vjepa.methods.tcjepa import TextConditionedPrediction
    from vjepa.models.text import TextEncoder

    torch.manual_seed(0)
    kw = dict(img_size=32, num_frames=4, patch_size=16, depth=1, embed_dim=32, num_heads=2)
    method = TextConditionedPrediction(vit("tiny", **kw), Predictor(32, 32, embed_dim=32, depth=1, num_heads=2,
                                                                   num_mask_tokens=2), TextEncoder(max_tokens=8))
    video = torch.randn(2, 3, 4, 32, 32)
    _, metrics = method(video, MASKS, [["a digit"], []])
    with torch.no_grad():
        targets = layer_norm_targets(method.teacher(video))
    zero, position = hand_trivials(targets, MASKS, mse)  # TC-JEPA's default distance: l2
    torch.testing.assert_close(metrics["trivial_zero"], zero)
    torch.testing.assert_close(metrics["trivial_position"], position)
    assert "predict" in metrics and not any(k.startswith("text/trivial") for k in method.after_step(0, 1))


STAGE = ["experiment=vjepa", "experiment.total_steps=4", "log_every=2", "optim.lr=0", "optim.start_lr=0",
         "optim.final_lr=0"]


def test_train_stage_logs_the_baselines_and_summarises_the_tail(embedded_data, tmp_path, caplog):
    # 4 steps logged every 2: the tail (10% of the steps, at least one log window) is the last window.
    # lr 0: the predictor stays at its initialisation, far from beating the per-position mean target
    cfg = make_cfg(embedded_data, tmp_path, *STAGE)
    with caplog.at_level(logging.WARNING, logger="vjepa.train.trainer"):
        summary = run_experiment(cfg, tmp_path)["stages"]["student"]
    assert summary["learning"] is False and summary["final_loss_ratio"] >= LEARNING_RATIO
    assert [r.message for r in caplog.records if "NOT LEARNING" in r.message][0].startswith("student: NOT LEARNING")
    with open(tmp_path / "student" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2, 4]
    for r in rows:
        loss, zero, position, ratio = (float(r[k]) for k in ("loss", "trivial_zero", "trivial_position", "loss_ratio"))
        assert 0 < position <= zero * 1.5 and loss > 0
        assert ratio == pytest.approx(loss / min(zero, position), rel=1e-9)
    last = rows[-1]
    assert summary["tail_loss"] == pytest.approx(float(last["loss"]), rel=1e-9)
    assert summary["final_trivial"] == {"zero": pytest.approx(float(last["trivial_zero"]), rel=1e-9),
                                        "position": pytest.approx(float(last["trivial_position"]), rel=1e-9)}
    assert summary["final_loss_ratio"] == pytest.approx(float(last["loss_ratio"]), rel=1e-9)
    assert summary["final_loss"] > 0  # still the last step's loss
    assert list((tmp_path / "student" / "tb").glob("events.out.tfevents.*"))
    # final.pt keeps them: a rerun of the finished stage reports the same summary
    stored = load_file(tmp_path / "student" / "final.pt")["diagnostics"]
    assert stored["final_loss_ratio"] == summary["final_loss_ratio"]
    again = run_experiment(cfg, tmp_path)["stages"]["student"]
    for key in ("final_loss", "tail_loss", "final_trivial", "final_loss_ratio", "learning"):
        assert again[key] == summary[key], key
    # stopped after step 3 and resumed: the tail (steps 3 and 4) spans the interruption (kept in latest.pt)
    other = tmp_path / "resumed"
    run_experiment(make_cfg(embedded_data, other, *STAGE, "stop_at_step=3"), other)
    resumed = run_experiment(make_cfg(embedded_data, other, *STAGE), other)["stages"]["student"]
    assert resumed["tail_loss"] == pytest.approx(summary["tail_loss"], rel=1e-6)
    assert resumed["final_loss_ratio"] == pytest.approx(summary["final_loss_ratio"], rel=1e-6)


def test_stage_lines_flag_a_stage_that_does_not_beat_the_trivial_predictors():
    def stage(tail, zero, position, steps=100):
        d = mean_diagnostics([(tail, tail, zero, position)])
        return {"steps": steps, "final_loss": tail, "tail_loss": d["loss"], "wall_seconds": 12.5,
                "final_trivial": {"zero": d["trivial_zero"], "position": d["trivial_position"]},
                "final_loss_ratio": d["loss_ratio"],
                "learning": None if d["loss_ratio"] is None else d["loss_ratio"] < LEARNING_RATIO}

    summary = {"stages": {"teacher": stage(0.31, 0.33, 0.32),      # ratio 0.97: not learning
                          "student": stage(0.10, 0.90, 0.185),     # ratio 0.54
                          "edge": stage(0.45, 0.90, 0.50),         # ratio exactly 0.9: not learning
                          "clip": stage(2.0, float("nan"), float("nan"))}}  # no baselines (contrastive)
    assert summary["stages"]["edge"]["learning"] is False and summary["stages"]["clip"]["learning"] is None
    header, *lines = stage_lines(summary)
    for column in ("stage", "steps", "tail loss", "trivial zero", "trivial position", "ratio", "wall"):
        assert column in header
    by_name = {line.split()[0]: line for line in lines}
    assert set(by_name) == {"teacher", "student", "edge", "clip"}
    assert "NOT LEARNING (ratio 0.969 >= 0.9)" in by_name["teacher"]
    assert "NOT LEARNING (ratio 0.900 >= 0.9)" in by_name["edge"]
    assert "NOT LEARNING" not in by_name["student"] and "NOT LEARNING" not in by_name["clip"]
    assert "0.3100" in by_name["teacher"] and "0.3300" in by_name["teacher"] and "0.541" in by_name["student"]
    assert by_name["clip"].split()[3:6] == ["-", "-", "-"]


def test_context_loss_adds_the_weighted_error_at_the_visible_positions_and_keeps_the_prediction_term():
    """stage.context_loss w: loss = masked-target term + w * (the predictor's outputs at the context positions vs
    the teacher's features there), by hand; the logged prediction term (what the baselines compare with) is the
    masked-only loss of the same weights; the target outputs are those of the plain forward."""
    torch.manual_seed(0)
    kw = dict(img_size=32, num_frames=4, patch_size=16, depth=1, embed_dim=32, num_heads=2)
    enc, teacher = vit("tiny", **kw), vit("tiny", **kw)
    predictor = Predictor(32, 32, embed_dim=32, depth=1, num_heads=2, num_mask_tokens=2)
    masked_only = LatentPrediction(enc, predictor, teacher=teacher)
    with_context = LatentPrediction(enc, predictor, teacher=teacher, context_loss=0.5)
    video = torch.randn(2, 3, 4, 32, 32)
    plain_loss, plain = masked_only(video, MASKS)
    loss, metrics = with_context(video, MASKS)
    torch.testing.assert_close(metrics["predict"], plain_loss.detach())
    torch.testing.assert_close(plain["predict"], plain_loss.detach())
    with torch.no_grad():
        targets = layer_norm_targets(teacher(video))
        grid = enc.patch_embed_grid(video)
        context_terms = []
        for i, m in enumerate(MASKS):
            z = enc(video, m.context)
            at_target, at_context = predictor(z, m.context, m.target, grid, mask_index=i, with_context=True)
            torch.testing.assert_close(at_target, predictor(z, m.context, m.target, grid, mask_index=i))
            assert at_context.shape == (2, m.context.shape[1], 32)
            seen = torch.stack([targets[j, m.context[j]] for j in range(2)])
            context_terms.append(l1(at_context, seen))
    context = sum(context_terms) / len(context_terms)
    torch.testing.assert_close(metrics["context"], context)
    torch.testing.assert_close(loss.detach(), plain_loss.detach() + 0.5 * context)
    assert context > 0.1  # a real term, not a vanishing one
    # its gradient reaches the student's encoder
    enc.zero_grad()
    (loss - plain_loss).backward()
    assert enc.patch_embed.proj.weight.grad.abs().sum() > 0


def test_context_loss_is_configured_per_stage_and_checked(tmp_path):
    from vjepa.train.build import build_method
    from vjepa.train.config import check

    cfg = make_cfg(tmp_path, tmp_path / "run", "experiment=vjepa", "experiment.stages.0.context_loss=0.25")
    method, _, _ = build_method(cfg, cfg.experiment.stages[0])
    assert method.context_loss == 0.25
    with pytest.raises(ValueError, match=r"experiment.stages\[0\].context_loss: -1.0 is negative"):
        check(make_cfg(tmp_path, tmp_path / "run", "experiment=vjepa", "experiment.stages.0.context_loss=-1"))
    with pytest.raises(ValueError, match=r"experiment.stages\[0\].context_loss: a pixel stage has no context loss"):
        check(make_cfg(tmp_path, tmp_path / "run", "experiment.stages.0.context_loss=1"))
