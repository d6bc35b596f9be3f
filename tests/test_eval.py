"""Attentive-probe evaluation: the probe learns what is there and nothing else, multi-view averaging, the
reference / transformers state-dict layouts, the feature cache, the k-NN quick probe, and `launch.eval`."""
import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from vjepa.eval.attentive import (
    AttentiveClassifier,
    config_from_state,
    from_hf,
    load_reference_probes,
    to_hf,
    to_reference,
)
from vjepa.eval.knn import knn_top1
from vjepa.eval.probe import HeadGrid, ProbeSettings, encode_views, predict_views, probe_features, run_probe
from vjepa.models import vit

TINY_ENCODER = dict(img_size=32, num_frames=4, patch_size=8, tubelet_size=2, embed_dim=64, depth=2, num_heads=4)


def features(n, num_classes, tokens=8, dim=32, views=1, separable=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = torch.randn(n, views, tokens, dim, generator=g)
    if separable:  # class c shifts feature c of every token: linearly separable, but not by a wide margin
        x[..., :num_classes] += 2.0 * torch.nn.functional.one_hot(y, num_classes)[:, None, None, :].float()
    return x, y


@pytest.mark.parametrize("depth", [1, 2])
def test_probe_on_linearly_separable_features_reaches_100(depth):
    tx, ty = features(128, 4, seed=0)
    vx, vy = features(64, 4, seed=1)
    s = ProbeSettings(depth=depth, num_heads=4, epochs=12, batch_size=16, lrs=(1e-3, 1e-2), wds=(0.01,))
    r = probe_features(tx, {"a": ty}, vx, {"a": vy}, s)["labels"]["a"]
    assert len(r["heads"]) == 2
    assert r["best"]["top1"] == 100.0
    assert r["best"]["top1"] == max(h["top1"] for h in r["heads"])
    assert r["best"]["per_class_top1"] == [100.0] * 4
    assert sum(map(sum, r["confusion"])) == 64


def test_probe_on_random_features_stays_at_chance():
    tx, ty = features(128, 4, separable=False, seed=2)
    vx, vy = features(600, 4, separable=False, seed=3)  # chance 25%, binomial sd 1.8% on 600 samples
    s = ProbeSettings(depth=1, num_heads=4, epochs=10, batch_size=16, lrs=(1e-3, 1e-2), wds=(0.01,))
    r = probe_features(tx, {"a": ty}, vx, {"a": vy}, s)["labels"]["a"]
    for head in r["heads"]:
        assert abs(head["top1"] - 25.0) < 8.0, head
        assert head["top5"] == 100.0  # 4 classes: top-5 is every class


def test_one_grid_per_label_with_missing_labels_ignored():
    tx, ty = features(128, 3, seed=4)
    vx, vy = features(64, 3, seed=5)
    other = torch.randint(0, 2, (128,))
    other[:10] = -1  # items without this label are left out of its loss and its accuracy
    v_other = torch.randint(0, 2, (64,))
    v_other[:4] = -1
    s = ProbeSettings(depth=1, num_heads=4, epochs=8, batch_size=16, lrs=(1e-2,), wds=(0.01, 0.1))
    r = probe_features(tx, {"a": ty, "b": other}, vx, {"a": vy, "b": v_other}, s)["labels"]
    assert set(r) == {"a", "b"} and r["a"]["num_classes"] == 3 and r["b"]["num_classes"] == 2
    assert r["b"]["num_val"] == 60 and len(r["b"]["heads"]) == 2
    assert r["a"]["best"]["top1"] == 100.0


def test_multi_view_average_is_exactly_the_mean():
    torch.manual_seed(0)
    head = AttentiveClassifier(32, 5, num_heads=4, depth=2).eval()
    x = torch.randn(6, 3, 8, 32)
    with torch.no_grad():
        got = predict_views(head, x)
        per_view = [torch.softmax(head(x[:, v]), dim=-1) for v in range(3)]
    torch.testing.assert_close(got, (per_view[0] + per_view[1] + per_view[2]) / 3, atol=1e-7, rtol=0)
    # the grid does the same for every head
    grid = HeadGrid(32, {"a": 5}, ProbeSettings(depth=2, num_heads=4, lrs=(1e-3,), wds=(0.0,)), 1)
    grid.heads["a"][0].load_state_dict(head.state_dict())
    torch.testing.assert_close(grid.predict(x)["a"][0], got, atol=1e-7, rtol=0)


def test_segments_are_concatenated_and_views_kept_apart():
    torch.manual_seed(0)
    enc = vit("tiny", **TINY_ENCODER).eval()
    clips = [torch.randn(2, 3, 4, 32, 32) for _ in range(6)]  # 2 segments x 3 crops, clip-major as the loader
    out = encode_views(enc, clips, 2, 3, True, torch.device("cpu"))
    n = enc(clips[0]).shape[1]
    assert out.shape == (2, 3, 2 * n, 64)
    with torch.no_grad():
        for v in range(3):
            torch.testing.assert_close(out[:, v], torch.cat([enc(clips[v]), enc(clips[3 + v])], dim=1))
    separate = encode_views(enc, clips, 2, 3, False, torch.device("cpu"))
    assert separate.shape == (2, 6, n, 64)
    with pytest.raises(ValueError, match="num_segments x num_views"):
        encode_views(enc, clips, 1, 3, True, torch.device("cpu"))


# ---- layouts ----------------------------------------------------------------------------------------------------

def reference_keys(depth):
    """The V-JEPA 2 AttentiveClassifier names (src/models/attentive_pooler.py), as saved through DDP."""
    keys = ["pooler.query_tokens", "linear.weight", "linear.bias"]
    for i in range(depth - 1):
        keys += [f"pooler.blocks.{i}.{m}.{p}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
                 for p in ("weight", "bias")]
    keys += [f"pooler.cross_attention_block.{m}.{p}" for m in ("norm1", "xattn.q", "xattn.kv", "norm2", "mlp.fc1",
                                                               "mlp.fc2") for p in ("weight", "bias")]
    return {f"module.{k}" for k in keys}


def randomised(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module.eval()


def test_reference_layout_gives_the_same_logits(tmp_path):
    ours = [randomised(AttentiveClassifier(64, 7, num_heads=4, depth=4), seed=i) for i in range(2)]
    ref = {"classifiers": [to_reference(c.state_dict()) for c in ours], "opt": [{}, {}], "epoch": 20}
    assert set(ref["classifiers"][0]) == reference_keys(4)
    torch.save(ref, tmp_path / "probe.pt")
    loaded = load_reference_probes(tmp_path / "probe.pt", num_heads=4)
    x = torch.randn(3, 20, 64)
    with torch.no_grad():
        for a, b in zip(ours, loaded):
            assert torch.equal(a(x), b(x))
    assert config_from_state({k[7:]: v for k, v in ref["classifiers"][0].items()}, 4)["depth"] == 4
    with pytest.raises(KeyError, match="classifiers"):
        load_reference_probes({"encoder": {}}, num_heads=4)


def test_vjepa1_layout_loads_with_its_order():
    v1 = randomised(AttentiveClassifier(32, 3, num_heads=4, depth=2, variant="vjepa1"))
    state = to_reference(v1.state_dict())
    assert "module.pooler.cross_attention_block.xattn.proj.weight" in state
    (loaded,) = load_reference_probes({"classifiers": [state]}, num_heads=4)
    assert loaded.pooler.variant == "vjepa1"
    x = torch.randn(2, 10, 32)
    with torch.no_grad():
        q = v1.pooler.cross_attention_block(v1.pooler.query_tokens.expand(2, -1, -1), x)  # queries first, then blocks
        expected = v1.linear(v1.pooler.blocks[0](q).squeeze(1))
        assert torch.equal(loaded(x), expected)
    with pytest.raises(ValueError, match="no transformers equivalent"):
        to_hf(v1.state_dict())


def hf_head(num_labels=7, width=64, heads=4, pooler_layers=3):
    from transformers import VJEPA2Config
    from transformers.models.vjepa2.modeling_vjepa2 import VJEPA2AttentivePooler

    cfg = VJEPA2Config(hidden_size=width, num_attention_heads=heads, num_pooler_layers=pooler_layers,
                       num_labels=num_labels, layer_norm_eps=1e-5)
    cfg._attn_implementation = "eager"
    return torch.nn.ModuleDict({"pooler": VJEPA2AttentivePooler(cfg), "classifier": torch.nn.Linear(width, num_labels)})


def test_transformers_pooler_names_both_ways():
    ours = randomised(AttentiveClassifier(64, 7, num_heads=4, depth=4))
    hf = hf_head()
    hf.load_state_dict(to_hf(ours.state_dict()), strict=True)
    x = torch.randn(3, 20, 64)
    with torch.no_grad():  # transformers projects every token; ours absorbs the projections: same numbers
        torch.testing.assert_close(hf["classifier"](hf["pooler"](x)), ours(x), atol=1e-5, rtol=1e-5)
    randomised(hf, seed=1)
    back = AttentiveClassifier(64, 7, num_heads=4, depth=4)
    back.load_state_dict(from_hf({**hf.state_dict(), "vjepa2.encoder.layernorm.weight": torch.ones(64)}))
    with torch.no_grad():
        torch.testing.assert_close(back(x), hf["classifier"](hf["pooler"](x)), atol=1e-5, rtol=1e-5)
    assert {k: v.shape for k, v in to_hf(back.state_dict()).items()} == {k: v.shape for k, v in hf.state_dict().items()}


# ---- k-NN -------------------------------------------------------------------------------------------------------

def test_knn_on_separable_and_random_features():
    g = torch.Generator().manual_seed(6)
    y, vy = torch.randint(0, 5, (200,), generator=g), torch.randint(0, 5, (100,), generator=g)

    def clustered(labels):
        return (torch.nn.functional.one_hot(labels, 16).float() * 3  # one direction per class
                + 0.3 * torch.randn(len(labels), 16, generator=g))

    assert knn_top1(clustered(y), y, clustered(vy), vy, k=10) == 100.0
    rx, ry = features(200, 5, tokens=1, dim=16, separable=False, seed=8)
    rvx, rvy = features(500, 5, tokens=1, dim=16, separable=False, seed=9)
    assert abs(knn_top1(rx.flatten(1), ry, rvx.flatten(1), rvy, k=10) - 20.0) < 8.0


# ---- on real clips ----------------------------------------------------------------------------------------------

def tiny_loaders(data, segments=1, views=1, batch_size=8):
    from data.loader import build_loader

    kw = dict(frames_per_clip=4, frame_step=1, size=32, batch_size=batch_size, num_workers=0, num_clips=segments)
    return (build_loader([str(data / "train.jsonl")], train=False, **kw),
            build_loader([str(data / "val.jsonl")], train=False, eval_crops=views, **kw))


def test_cache_memory_disk_and_none_agree_and_the_cache_saves_encoder_passes(embedded_data, tmp_path):
    torch.manual_seed(0)
    enc = vit("tiny", **TINY_ENCODER)
    train, val = tiny_loaders(embedded_data)
    common = dict(depth=1, epochs=3, batch_size=8, lrs=(3e-3,), wds=(0.01,), cache_dtype="float32")  # none: no rounding
    runs = {kind: run_probe(enc, train, val, ProbeSettings(cache=kind, cache_dir=str(tmp_path / kind), **common),
                            torch.device("cpu")) for kind in ("memory", "disk", "none")}
    assert (tmp_path / "disk" / "train.npy").exists()
    assert runs["memory"]["timing"]["encoder_passes"] == 2  # val once + train once
    assert runs["none"]["timing"]["encoder_passes"] == 1 + 3  # val once + train every epoch
    ref = runs["memory"]["labels"]
    assert set(ref) == {"digit", "direction", "speed"}
    for label in ref:  # the same features in the same shuffled order: the same heads
        assert runs["disk"]["labels"][label]["heads"] == ref[label]["heads"], label
    # without a cache the heads see the loader's own (unshuffled) order: the same protocol, other batches, so
    # close but not equal numbers (at most 3 of the val clips apart)
    n_val = ref["digit"]["num_val"]
    for label in ref:
        gap = abs(runs["none"]["labels"][label]["best"]["top1"] - ref[label]["best"]["top1"])
        assert gap <= 300 / n_val + 1e-6, (label, gap)


def eval_cfg(checkpoint, data, run_dir, *overrides):
    from hydra import compose, initialize_config_dir

    import launch.eval  # noqa: F401  (registers the schema)

    with initialize_config_dir(str(REPO / "configs"), version_base=None):
        return compose("eval", overrides=[f"checkpoint={checkpoint}", f"data.root={data}", f"run_dir={run_dir}",
                                          "data.frames_per_clip=4", "data.crop_size=32", "data.batch_size=8",
                                          "data.num_workers=0", "probe.epochs=2", *overrides])


def stage_checkpoint(path):
    torch.manual_seed(0)
    kwargs = dict(size="tiny", **TINY_ENCODER)
    enc = vit(**kwargs)
    torch.save({"format": "vjepa-stage", "model_configs": {"encoder": kwargs}, "models": {"encoder": enc.state_dict()}},
               path)
    return path


def test_launch_eval_writes_report_for_multi_view_protocol(embedded_data, tmp_path):
    from launch.eval import evaluate

    ckpt = stage_checkpoint(tmp_path / "final.pt")
    cfg = eval_cfg(ckpt, embedded_data, tmp_path / "run", "probe.num_segments=2", "probe.num_views=3",
                   "probe.labels=[direction]", "probe.lrs=[1e-3,3e-3]", "probe.wds=[0.01,0.1,0.4]")
    report = evaluate(cfg, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert saved == report and list(saved["labels"]) == ["direction"]
    r = saved["labels"]["direction"]
    assert len(r["heads"]) == 6 and r["best"]["top1"] == max(h["top1"] for h in r["heads"])
    assert saved["best_top1"] == {"direction": r["best"]["top1"]}
    assert sum(map(sum, r["confusion"])) == r["num_val"] == saved["num_val"]
    assert len(r["best"]["per_class_top1"]) == r["num_classes"]
    assert saved["settings"]["num_segments"] == 2 and saved["settings"]["num_views"] == 3
    assert (tmp_path / "run" / r["confusion_png"]).stat().st_size > 1000
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        evaluate(eval_cfg(tmp_path / "missing.pt", embedded_data, tmp_path / "run2"), tmp_path / "run2")


@pytest.mark.slow
def test_python_m_launch_eval(embedded_data, tmp_path):
    ckpt = stage_checkpoint(tmp_path / "final.pt")
    run = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "launch.eval", f"checkpoint={ckpt}", f"data.root={embedded_data}",
                    "data.frames_per_clip=4", "data.crop_size=32", "data.num_workers=0", "probe.epochs=1",
                    f"hydra.run.dir={run}"], check=True, cwd=REPO, timeout=300)
    report = json.loads((run / "eval.json").read_text())
    assert set(report["labels"]) == {"digit", "direction", "speed"}
    assert all((run / f"confusion_{n}.png").exists() for n in report["labels"])


def test_training_pipeline_probe_runs_the_protocol_with_baseline_rows(embedded_data, tmp_path):
    from collections import Counter

    from test_train import make_cfg
    from vjepa.eval.attentive import AttentivePooler
    from vjepa.models.layers import Block
    from vjepa.train.experiment import format_table, probe_all

    depth = 2  # not the default 1: one self-attention block before the cross-attention, in every head
    cfg = make_cfg(embedded_data, tmp_path, "experiment.probe.epochs=2", "experiment.probe.seeds=2",
                   f"experiment.probe.depth={depth}")
    assert cfg.experiment.probe.families == ["linear", "knn", "attentive"]
    # what the attentive heads ran while they trained (the encoders extract features without gradients)
    ran = Counter()

    def count_training_forwards(module, args, output):
        if torch.is_grad_enabled() and isinstance(module, (AttentivePooler, Block)):
            ran[type(module).__name__] += 1

    hook = torch.nn.modules.module.register_module_forward_hook(count_training_forwards)
    info = {}
    try:
        out = probe_all(cfg, {}, torch.device("cpu"), info)
    finally:
        hook.remove()
    assert ran["AttentivePooler"] > 0 and ran["Block"] == (depth - 1) * ran["AttentivePooler"], ran
    assert info["settings"]["attentive"]["depth"] == depth
    assert list(out) == ["random-init", "raw-pixels"]
    for row in out.values():
        assert list(row) == ["linear", "knn", "attentive"]
        for labels in row.values():
            assert set(labels) == {"digit", "direction", "speed"}
            for r in labels.values():
                assert 0.0 <= r["mean"] <= 100.0 and len(r["seeds"]) == 2 and r["n_val"] > 0
                assert r["binomial_se"] >= 0 and len(r["chosen"]) == 2
    assert info["settings"]["seeds"] == 2 and info["settings"]["pixel_dim"] == 64  # the encoder's width
    assert set(info["timing"]["raw-pixels"]) >= {"extract_s", "linear_s", "knn_s", "attentive_s"}
    table = format_table({"run_dir": str(tmp_path), "stages": {}, "probe": out, "probe_settings": info["settings"]})
    assert table.count("raw pixels") == 3 and "held-out 20% of train" in table


def test_periodic_quick_probe_logs_and_leaves_training_untouched(embedded_data, tmp_path):
    from test_train import make_cfg
    from vjepa.eval.knn import PeriodicProbe

    cfg = make_cfg(embedded_data, tmp_path, "experiment.probe.every=2", "experiment.probe.quick_linear=false")
    probe = PeriodicProbe(cfg, tmp_path / "stage", torch.device("cpu"))
    enc = vit("tiny", **TINY_ENCODER).train()
    rng = torch.get_rng_state()
    assert probe(1, 10, enc) == {}  # not a probing step
    metrics = probe(2, 10, enc)
    assert set(metrics) == {"knn/digit", "knn/direction", "knn/speed"}
    assert enc.training and torch.equal(torch.get_rng_state(), rng)
    probe(4, 10, enc)
    probe(4, 10, enc)  # a resumed run repeats step 4: its rows are replaced, not duplicated
    rows = (tmp_path / "stage" / "quick_probe.csv").read_text().splitlines()
    assert rows[0] == "step,probe,top1" and len(rows) == 1 + 2 * 3
    assert PeriodicProbe(make_cfg(embedded_data, tmp_path), tmp_path, torch.device("cpu"))(2, 10, enc) == {}
