"""The probe protocol of the experiment table (vjepa/eval/protocol.py): standard errors, the seeded fit /
held-out split, selection that never sees the validation split, the raw-pixels baseline encoder, the whole
protocol on synthetic features, the clip cache, the tables and the config keys."""
import dataclasses
import math

import pytest
import torch

from vjepa.eval import protocol
from vjepa.eval.baselines import PixelEncoder, token_positions
from vjepa.eval.probe import ProbeSettings
from vjepa.eval.protocol import (
    Features,
    ProtocolSettings,
    binomial_se,
    format_tables,
    heldout_split,
    mean_se,
    run_protocol,
    select_best,
)
from vjepa.models import vit

TINY_ENCODER = dict(img_size=32, num_frames=4, patch_size=8, tubelet_size=2, embed_dim=64, depth=2, num_heads=4)
FAST = ProbeSettings(depth=1, num_heads=4, epochs=6, batch_size=16, lrs=(1e-3, 1e-2), wds=(0.01,))


def synthetic(n, seed, tokens=8, dim=32, classes=4, shift=3.0):
    """Label "signal" shifts feature c of every token (a deterministic function of the features: class c has
    the largest of features 0..3, up to noise); label "noise" is independent of the features; "part" is
    missing (-1) on a fifth of the items."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, tokens, dim, generator=g)
    x[..., :classes] += shift * torch.nn.functional.one_hot(y, classes)[:, None, :].float()
    noise = torch.randint(0, 2, (n,), generator=g)
    part = y.clone()
    part[torch.arange(n) % 5 == 0] = -1
    return Features(x.half(), {"signal": y, "noise": noise, "part": part})


# ---- statistics -------------------------------------------------------------------------------------------------

def test_mean_and_standard_error_match_a_hand_computation():
    # 70, 72, 77: mean 73; squared deviations 9 + 1 + 16 = 26; sample variance 26 / 2 = 13; SE sqrt(13 / 3)
    mean, se = mean_se([70.0, 72.0, 77.0])
    assert mean == 73.0
    assert se == pytest.approx(math.sqrt(13 / 3), abs=1e-12) and se == pytest.approx(2.0817, abs=1e-4)
    assert mean_se([5.0, 5.0]) == (5.0, 0.0)
    m1, se1 = mean_se([61.5])
    assert m1 == 61.5 and math.isnan(se1)
    # binomial: 80% on 400 items -> 100 sqrt(0.8 * 0.2 / 400) = 2.0 points; 50% on 600 -> 2.04
    assert binomial_se(80.0, 400) == pytest.approx(2.0, abs=1e-12)
    assert binomial_se(50.0, 600) == pytest.approx(100 * math.sqrt(0.25 / 600), abs=1e-12)
    assert binomial_se(100.0, 50) == 0.0 and math.isnan(binomial_se(50.0, 0))


def test_heldout_split_is_seeded_disjoint_and_covers_train():
    fit, held = heldout_split(1000, 0.2, seed=3)
    again_fit, again_held = heldout_split(1000, 0.2, seed=3)
    assert torch.equal(fit, again_fit) and torch.equal(held, again_held)
    assert len(held) == 200 and len(fit) == 800
    assert not set(fit.tolist()) & set(held.tolist())
    assert sorted(fit.tolist() + held.tolist()) == list(range(1000))
    _, other = heldout_split(1000, 0.2, seed=4)
    assert not torch.equal(held, other)
    assert [len(p) for p in heldout_split(3, 0.01, 0)] == [2, 1]  # never an empty part
    assert select_best([50.0, 70.0, 70.0, float("nan")]) == 1  # the first of the best; nan never wins


# ---- selection never sees val -----------------------------------------------------------------------------------

def test_selection_never_receives_val_and_ignores_val_labels(monkeypatch):
    train, val = synthetic(160, seed=0), synthetic(120, seed=1)
    # seeds one by one, so the calls come in order (threaded seeds give the same numbers: the next-but-one test)
    settings = ProtocolSettings(seeds=2, attentive=FAST, seed_workers=1)
    seen = []
    real_select, real_fit = protocol.select_heads, protocol.fit_family

    def spy_select(fitted, heldout):
        seen.append(("select", heldout))
        return real_select(fitted, heldout)

    def spy_fit(family, fit, *args, **kw):
        seen.append(("fit", fit))
        return real_fit(family, fit, *args, **kw)

    monkeypatch.setattr(protocol, "select_heads", spy_select)
    monkeypatch.setattr(protocol, "fit_family", spy_fit)
    clean = run_protocol(train, val, settings, num_heads=4)
    assert len(seen) == 2 * 3 * 2  # fit + select, per family per seed
    for i, (what, feats) in enumerate(seen):
        seed = settings.seed + (i // 2) % 2
        fit_rows, held_rows = heldout_split(len(train), settings.heldout_fraction, seed)
        rows = fit_rows if what == "fit" else held_rows
        assert torch.equal(feats.tokens, train.tokens[rows]), what  # the fit / held-out rows of train, not val
        assert feats.tokens.data_ptr() != val.tokens.data_ptr()
        for name, y in feats.labels.items():
            assert torch.equal(y, train.labels[name][rows])

    # corrupt every val label: the chosen heads and their held-out scores stay, only the val numbers move
    g = torch.Generator().manual_seed(9)
    corrupt = Features(val.tokens, {n: y[torch.randperm(len(y), generator=g)] if n != "signal" else (y + 1) % 4
                                    for n, y in val.labels.items()})
    bad = run_protocol(train, corrupt, settings, num_heads=4)
    for family in settings.families:
        for name in clean[family]:
            assert clean[family][name]["chosen"] == bad[family][name]["chosen"], (family, name)
            assert clean[family][name]["heldout_top1"] == bad[family][name]["heldout_top1"], (family, name)
        assert clean[family]["signal"]["mean"] > 90 and bad[family]["signal"]["mean"] < 10, family


# ---- the protocol on synthetic features ------------------------------------------------------------------------

def test_protocol_learns_the_signal_and_stays_at_chance_on_noise():
    train, val = synthetic(240, seed=2), synthetic(400, seed=3)
    settings = ProtocolSettings(seeds=3, attentive=FAST)
    r = run_protocol(train, val, settings, num_heads=4)
    assert set(r) == {"linear", "knn", "attentive"}
    for family in ("linear", "attentive"):
        assert r[family]["signal"]["mean"] >= 99.0, (family, r[family]["signal"])
        assert r[family]["part"]["mean"] >= 99.0
    assert r["knn"]["signal"]["mean"] >= 90.0
    for family, labels in r.items():
        noise = labels["noise"]  # binary, independent of the features: chance 50%, binomial se 2.5 on 400
        assert abs(noise["mean"] - 50.0) < 12.0, (family, noise)
        assert len(noise["seeds"]) == 3 and noise["n_val"] == 400
        assert noise["mean"] == pytest.approx(sum(noise["seeds"]) / 3, abs=1e-3)
        assert noise["se"] == pytest.approx(mean_se(noise["seeds"])[1], abs=1e-3)
        assert noise["binomial_se"] == pytest.approx(binomial_se(noise["mean"], 400), abs=1e-3)
        assert labels["part"]["n_val"] == 400 - 80  # the missing labels are left out
        assert len(labels["signal"]["chosen"]) == 3
    assert {c["lr"] for c in r["attentive"]["noise"]["chosen"]} <= {1e-3, 1e-2}
    assert {c["c"] for c in r["linear"]["noise"]["chosen"]} <= {0.01, 0.1, 1.0}
    assert {c["k"] for c in r["knn"]["noise"]["chosen"]} <= {5, 20}
    one = run_protocol(train, val, ProtocolSettings(seeds=1, families=("knn",)))
    assert math.isnan(one["knn"]["signal"]["se"]) and list(one) == ["knn"]


def test_probe_seeds_change_split_shuffle_and_init_and_repeat_exactly():
    train, val = synthetic(120, seed=4), synthetic(60, seed=5)
    settings = ProtocolSettings(seeds=2, families=("attentive",), attentive=ProbeSettings(
        depth=1, num_heads=4, epochs=2, batch_size=16, lrs=(1e-3,), wds=(0.01,)))
    a = run_protocol(train, val, settings, num_heads=4)["attentive"]["noise"]
    b = run_protocol(train, val, settings, num_heads=4)["attentive"]["noise"]
    assert a["seeds"] == b["seeds"]  # deterministic
    fits = [protocol.AttentiveFit(train, {"noise": 2}, dataclasses.replace(settings.attentive, seed=s),
                                  torch.device("cpu")) for s in (0, 1)]
    w = [f.grid.heads["noise"][0].linear.weight for f in fits]
    assert not torch.equal(w[0], w[1])  # another seed, another initialisation (and shuffle)


def test_attentive_epochs_are_candidates_chosen_on_held_out_and_only_the_chosen_snapshot_sees_val():
    train, val = synthetic(120, seed=4), synthetic(60, seed=5)
    head = ProbeSettings(depth=1, num_heads=4, epochs=3, batch_size=16, lrs=(1e-3, 1e-2), wds=(0.01,))
    fit = protocol.AttentiveFit(train, {"signal": 4, "noise": 2}, head, torch.device("cpu"), epochs=[1, 3])
    assert fit.candidates == [{"lr": 1e-3, "wd": 0.01, "epoch": 1}, {"lr": 1e-2, "wd": 0.01, "epoch": 1},
                              {"lr": 1e-3, "wd": 0.01, "epoch": 3}, {"lr": 1e-2, "wd": 0.01, "epoch": 3}]
    # the last snapshot is the trained grid; the epoch-1 one is the same heads two epochs earlier
    final = {k: v.clone() for k, v in fit.grid.heads.state_dict().items()}
    assert all(torch.equal(fit.snapshots[1][k], v) for k, v in final.items())
    assert not torch.equal(fit.snapshots[0]["signal.1.linear.weight"], final["signal.1.linear.weight"])
    # the same heads trained without snapshots end with the same weights (keeping them changes nothing)
    plain = protocol.AttentiveFit(train, {"signal": 4, "noise": 2}, head, torch.device("cpu"))
    assert all(torch.equal(plain.grid.heads.state_dict()[k], v) for k, v in final.items())
    assert plain.candidates == [{"lr": 1e-3, "wd": 0.01}, {"lr": 1e-2, "wd": 0.01}]

    every = fit.predict(val)  # [4 candidates, N]: the epoch-3 half is the trained grid's own prediction
    assert every["signal"].shape == (4, len(val))
    assert torch.equal(every["signal"][2:], plain.predict(val)["signal"])
    # a chosen epoch-1 candidate predicts with the epoch-1 weights, a chosen epoch-3 one with the last
    one = fit.predict(val, {"signal": 1, "noise": 2})
    assert torch.equal(one["signal"], every["signal"][1]) and torch.equal(one["noise"], every["noise"][2])
    with pytest.raises(ValueError, match="end at 3"):
        protocol.AttentiveFit(train, {"signal": 4}, head, torch.device("cpu"), epochs=[1, 2])

    settings = ProtocolSettings(seeds=2, families=("attentive",), attentive=head, attentive_select_epochs=(1,))
    r = run_protocol(train, val, settings, num_heads=4)["attentive"]["signal"]
    assert [c["epoch"] for c in r["chosen"]] and {c["epoch"] for c in r["chosen"]} <= {1, 3}
    assert settings.describe()["attentive"]["select_epochs"] == [1, 3]
    assert dataclasses.replace(settings, attentive_select_epochs=None).candidate_epochs() == [1, 2, 3]  # thirds
    assert dataclasses.replace(settings, attentive_select_epochs=()).candidate_epochs() == [3]
    assert ProtocolSettings().candidate_epochs() == [15, 30, 45]
    with pytest.raises(ValueError, match="select_epochs"):
        dataclasses.replace(settings, attentive_select_epochs=(4,)).check()


def test_attentive_seeds_in_threads_give_the_numbers_of_seeds_one_by_one():
    train, val = synthetic(120, seed=4), synthetic(60, seed=5)
    settings = ProtocolSettings(seeds=3, families=("attentive",), attentive=ProbeSettings(
        depth=1, num_heads=4, epochs=3, batch_size=16, lrs=(1e-3, 1e-2), wds=(0.01,)), seed_workers=1)
    threads = torch.get_num_threads()
    one_by_one = run_protocol(train, val, settings, num_heads=4)
    at_once = run_protocol(train, val, dataclasses.replace(settings, seed_workers=3), num_heads=4)
    assert at_once == one_by_one  # the same chosen heads, held-out and val numbers, to the last digit
    assert torch.get_num_threads() == threads  # the heads' thread setting is undone once every seed is done
    with pytest.raises(ValueError, match="seed_workers"):
        dataclasses.replace(settings, seed_workers=0).check()


# ---- the raw-pixels baseline ------------------------------------------------------------------------------------

def test_pixel_encoder_tokens_are_the_patchified_clip_and_positions():
    torch.manual_seed(0)
    video = torch.randn(2, 3, 4, 8, 12)  # [B, C, T, H, W]; tubelet 2, patch 4 -> a 2 x 2 x 3 grid
    enc = PixelEncoder(patch_size=4, tubelet_size=2, in_chans=3)
    tokens = enc(video)
    assert tokens.shape == (2, 12, 3 * 2 * 4 * 4 + 3) and enc.embed_dim == tokens.shape[-1]
    n = 0
    for t in range(2):
        for h in range(2):
            for w in range(3):
                block = video[:, :, 2 * t:2 * t + 2, 4 * h:4 * h + 4, 4 * w:4 * w + 4]  # [B, C, 2, 4, 4]
                by_hand = block.permute(0, 2, 3, 4, 1).reshape(2, -1)  # frame, row, column, channel
                torch.testing.assert_close(tokens[:, n, :-3], by_hand, rtol=0, atol=0)
                expected = torch.tensor([-1.0 + 2.0 * t, -1.0 + 2.0 * h, -1.0 + w])  # each axis scaled to [-1, 1]
                torch.testing.assert_close(tokens[:, n, -3:], expected.expand(2, 3), rtol=0, atol=1e-7)
                n += 1
    assert torch.equal(token_positions(1, 1, 2), torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, 1.0]]))


def test_pixel_encoder_matches_the_encoder_grid_and_projects():
    torch.manual_seed(0)
    encoder = vit("tiny", **TINY_ENCODER).eval()
    video = torch.randn(2, 3, 4, 32, 32)
    raw = PixelEncoder.like(encoder)
    with torch.no_grad():
        n = encoder(video).shape[1]
    assert raw(video).shape == (2, n, 3 * 2 * 8 * 8 + 3) and n == 2 * 4 * 4
    assert (raw.patch_size, raw.tubelet_size) == (8, 2) and raw.embed_dim % raw.num_heads == 0
    narrow = PixelEncoder.like(encoder, dim=64)
    out = narrow(video)
    assert out.shape == (2, n, 64) and narrow.embed_dim == 64 and narrow.num_heads == 4
    p = narrow.projection
    torch.testing.assert_close(p.T @ p, torch.eye(61), atol=1e-5, rtol=0)  # orthonormal columns
    torch.testing.assert_close(out[..., :-3], raw(video)[..., :-3] @ p, atol=1e-4, rtol=0)
    torch.testing.assert_close(out[..., -3:], raw(video)[..., -3:])
    assert torch.equal(PixelEncoder.like(encoder, dim=64).projection, p)  # fixed by the seed
    single = PixelEncoder(8, 2)(torch.randn(1, 3, 1, 16, 16))  # one frame fills a tubelet, as the encoder does
    assert single.shape == (1, 4, 3 * 2 * 64 + 3)
    with pytest.raises(ValueError, match="tubelets"):
        raw(torch.randn(1, 3, 4, 30, 32))


# ---- clips decoded once; features extracted once ----------------------------------------------------------------

def test_clip_set_decodes_once_and_feeds_encoders_like_the_loader(embedded_data):
    from data.loader import build_loader

    loader = build_loader([str(embedded_data / "val.jsonl")], train=False, frames_per_clip=4, frame_step=1,
                          size=32, batch_size=4, num_workers=0)
    clips = protocol.ClipSet(loader)
    assert clips.uint8 and loader.normalize and clips.batches[0]["video"].dtype == torch.uint8
    direct = list(loader)
    assert len(direct) == len(clips)
    for a, b in zip(direct, clips):
        assert torch.equal(a["video"], b["video"]) and torch.equal(a["index"], b["index"])
        assert all(torch.equal(a["labels"][k], b["labels"][k]) for k in a["labels"])
    torch.manual_seed(0)
    encoder = vit("tiny", **TINY_ENCODER)
    feats = protocol.extract_features(encoder, clips, torch.device("cpu"))
    assert feats.tokens.dtype == torch.float16 and feats.tokens.shape == (len(loader.dataset), 32, 64)
    with torch.no_grad():
        first = encoder(direct[0]["video"])
    torch.testing.assert_close(feats.tokens[:4].float(), first, atol=2e-3, rtol=2e-3)
    assert set(feats.labels) == {"digit", "direction", "speed"}


# ---- tables and config ------------------------------------------------------------------------------------------

def test_tables_have_the_baseline_rows_and_say_how_heads_were_chosen():
    def cell(m, se):
        return {"mean": m, "se": se, "seeds": [m] * 3, "n_val": 600, "binomial_se": binomial_se(m, 600)}

    probe = {row: {fam: {"digit": cell(10.0 + i, 0.5), "speed": cell(50.0, float("nan"))}
                   for fam in ("linear", "knn", "attentive")}
             for i, row in enumerate(["random-init", "raw-pixels", "teacher", "student"])}
    text = "\n".join(format_tables(probe, {"heldout_fraction": 0.2}))
    assert text.count("heads chosen on a held-out 20% of train") == 3
    for family in ("linear", "knn", "attentive"):
        assert f"{family} probe: val top-1 % (mean ± se over 3 seeds)" in text
    assert "n_val digit 600, speed 600" in text and "binomial se" in text
    lines = text.splitlines()
    rows = [line.split()[0] for line in lines if line.startswith(("random-init", "raw pixels", "teacher", "student"))]
    assert rows == ["random-init", "raw", "teacher", "student"] * 3
    assert any(line.startswith("raw pixels") and "11.0 ± 0.5" in line and "50.0 ± -" in line for line in lines)

    from vjepa.train.experiment import format_table

    summary = {"run_dir": "runs/x", "probe": probe, "probe_settings": {"heldout_fraction": 0.25},
               "stages": {"student": {"steps": 4, "final_loss": 0.5, "wall_seconds": 1.0}}}
    out = format_table(summary)
    assert "student" in out and "held-out 25% of train" in out and out.rstrip().endswith("runs/x")


def test_probe_config_keys(embedded_data, tmp_path):
    from test_train import make_cfg
    from vjepa.train.experiment import probe_settings

    s = probe_settings(make_cfg(embedded_data, tmp_path))
    assert s.families == ("linear", "knn", "attentive") and s.seeds == 3 and s.heldout_fraction == 0.2
    assert s.linear_cs == (0.01, 0.1, 1.0) and s.knn_ks == (5, 20) and s.attentive.depth == 1
    assert s.attentive.epochs == 45 and s.candidate_epochs() == [15, 30, 45] and s.attentive.lrs == (1e-3, 3e-3, 1e-2)
    assert probe_settings(make_cfg(embedded_data, tmp_path, "experiment.probe.kind=linear")).families == ("linear",)
    assert probe_settings(make_cfg(embedded_data, tmp_path, "experiment.probe.families=[knn]",
                                   "experiment.probe.seeds=5")).seeds == 5
    with pytest.raises(ValueError, match="experiment.probe.kind"):
        probe_settings(make_cfg(embedded_data, tmp_path, "experiment.probe.kind=svm"))
    with pytest.raises(ValueError, match="experiment.probe.families"):
        probe_settings(make_cfg(embedded_data, tmp_path, "experiment.probe.families=[linear,svm]"))
    with pytest.raises(ValueError, match="experiment.probe.heldout_fraction"):
        probe_settings(make_cfg(embedded_data, tmp_path, "experiment.probe.heldout_fraction=1.0"))
    picked = probe_settings(make_cfg(embedded_data, tmp_path, "experiment.probe.epochs=9",
                                     "experiment.probe.select_epochs=[3,6]"))
    assert picked.candidate_epochs() == [3, 6, 9]
    with pytest.raises(ValueError, match="experiment.probe.select_epochs"):
        probe_settings(make_cfg(embedded_data, tmp_path, "experiment.probe.select_epochs=[50]"))


def test_stacked_heads_give_the_numbers_of_each_head():
    from vjepa.eval.attentive import normalize_tokens, stackable, stacked_logits
    from vjepa.eval.probe import HeadGrid

    torch.manual_seed(0)
    grid = HeadGrid(32, {"a": 5, "b": 3}, ProbeSettings(depth=1, num_heads=4, lrs=(1e-3, 1e-2), wds=(0.0,)), 1)
    assert grid.stacked and not HeadGrid(32, {"a": 5}, ProbeSettings(depth=2, num_heads=4), 1).stacked
    for p in grid.parameters():  # away from the near-zero initialisation, so every part of a head matters
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(6, 10, 32)
    x_hat = normalize_tokens(x, grid.eps)
    heads = [h for n in grid.labels for h in grid.heads[n]]
    assert all(stackable(h) for h in heads)
    with torch.no_grad():
        for got, head in zip(stacked_logits(heads, x_hat), heads):
            torch.testing.assert_close(got, head(x), atol=1e-5, rtol=1e-5)
