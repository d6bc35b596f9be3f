"""Checkpoint interop: HF VJEPA2 parity, official V-JEPA 1 / 2 layouts, native + trainer formats, strictness, CLI.

No downloads: tiny random models built from configs (hidden 64, 2 layers, patch 8, crop 32, 4 frames).
"""
from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import VJEPA2Config, VJEPA2Model

from vjepa.interop import (
    CheckpointMismatchError,
    build_encoder_from_config,
    load_into,
    load_native,
    load_pretrained,
    official,
    save_hf,
    save_native,
)
from vjepa.interop.configs import mlp_ratio_for
from vjepa.models.predictor import Predictor
from vjepa.models.vit import VisionTransformer

TOL = 1e-5
ENC = dict(img_size=32, num_frames=4, patch_size=8, tubelet_size=2, embed_dim=64, depth=2, num_heads=4)
N_TOKENS = 2 * 4 * 4


def perturb(*models, seed=0):
    """Randomise every parameter (LayerNorms, biases and mask tokens too) so that any mix-up shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in models:
            for p in m.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return models


def make_ours(pos="rope", uniform_power=True, rope_variant="vjepa2", seed=0, pred=True):
    torch.manual_seed(seed)
    enc = VisionTransformer(**ENC, pos_embed=pos, uniform_power=uniform_power, rope_variant=rope_variant).eval()
    prd = Predictor(64, 64, embed_dim=32, depth=2, num_heads=4, num_mask_tokens=2, pos_embed=pos,
                    uniform_power=uniform_power, rope_variant=rope_variant).eval() if pred else None
    perturb(*[m for m in (enc, prd) if m is not None], seed=seed)
    return enc, prd


def masks(b=2, n_ctx=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    ctx, tgt = [], []
    for _ in range(b):
        perm = torch.randperm(N_TOKENS, generator=g)
        ctx.append(perm[:n_ctx].sort().values)
        tgt.append(perm[n_ctx:].sort().values)
    return torch.stack(ctx), torch.stack(tgt)


def clip(b=2, t=4, seed=2):
    return torch.randn(b, 3, t, 32, 32, generator=torch.Generator().manual_seed(seed))


def gather(x, ids):
    return x.gather(1, ids[..., None].expand(-1, -1, x.shape[-1]))


def max_diff(a, b):
    return (a - b).abs().max().item()


def same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    torch.manual_seed(0)
    cfg = VJEPA2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, patch_size=8, crop_size=32,
                       frames_per_clip=4, pred_hidden_size=32, pred_num_hidden_layers=2,
                       pred_num_attention_heads=2, pred_num_mask_tokens=3)
    model = VJEPA2Model(cfg).eval()
    perturb(model)
    path = tmp_path_factory.mktemp("hf") / "tiny"
    model.save_pretrained(path)
    return model, path


@pytest.fixture(scope="module")
def hf_loaded(hf):
    return load_pretrained(hf[1])


# ----------------------------------------------------------------------------------------------- HF parity

def test_hf_encoder_parity(hf, hf_loaded):
    model, _ = hf
    x = clip()
    with torch.no_grad():
        ref = model(x.permute(0, 2, 1, 3, 4), skip_predictor=True).last_hidden_state
        ours = hf_loaded.encoder(x)
        img = torch.randn(2, 3, 32, 32)  # a single frame fills one tubelet by repetition in both
        ref_img = model(img[:, None], skip_predictor=True).last_hidden_state
        ours_img = hf_loaded.encoder(img[:, :, None])
    assert hf_loaded.source_format == "hf" and hf_loaded.encoder_config["rope_variant"] == "vjepa2"
    assert hf_loaded.preprocessing["crop_size"] == 32 and hf_loaded.preprocessing["num_frames"] == 4
    assert max_diff(ours, ref) <= TOL
    assert max_diff(ours_img, ref_img) <= TOL


def test_hf_masked_encoder_parity(hf, hf_loaded):
    """Our masked forward (context tokens only) vs HF's own layers run on the gathered tokens with their
    true positions (`position_mask`); and HF's `masked_hidden_state` vs our full features gathered."""
    model, _ = hf
    x, (ctx, tgt) = clip(), masks()
    with torch.no_grad():
        h = gather(model.encoder.embeddings(x.permute(0, 2, 1, 3, 4)), ctx)
        for layer in model.encoder.layer:
            h = layer(h, ctx)[0]
        ref = model.encoder.layernorm(h)
        ours = hf_loaded.encoder(x, masks=ctx)
        out = model(x.permute(0, 2, 1, 3, 4), context_mask=[ctx], target_mask=[tgt])
        full = hf_loaded.encoder(x)
    assert max_diff(ours, ref) <= TOL
    assert max_diff(gather(full, ctx), out.masked_hidden_state) <= TOL


def test_hf_predictor_parity(hf, hf_loaded):
    model, _ = hf
    x, (ctx, tgt) = clip(), masks()
    ctx2, tgt2 = masks(n_ctx=20, seed=5)
    with torch.no_grad():
        out = model(x.permute(0, 2, 1, 3, 4), context_mask=[ctx], target_mask=[tgt])
        out2 = model(x.permute(0, 2, 1, 3, 4), context_mask=[ctx2], target_mask=[tgt2])
        feats = hf_loaded.encoder(x)
        grid = hf_loaded.encoder.grid
        m = hf_loaded.predictor_mask_index
        p1 = hf_loaded.predictor(gather(feats, ctx), ctx, tgt, grid, mask_index=m)
        p2 = hf_loaded.predictor(gather(feats, ctx2), ctx2, tgt2, grid, mask_index=m)
    assert max_diff(p1, out.predictor_output.last_hidden_state) <= TOL
    assert max_diff(p2, out2.predictor_output.last_hidden_state) <= TOL
    assert max_diff(out.predictor_output.target_hidden_state, gather(feats, tgt)) <= TOL


def test_rope_variant_is_what_makes_hf_match(hf, tmp_path):
    """Negative control: the standard rotation (`rotary`) on the same weights does not reproduce HF."""
    model, path = hf
    p = load_pretrained(path, predictor=False)
    p.encoder.rope.variant = "rotary"
    x = clip()
    with torch.no_grad():
        ref = model(x.permute(0, 2, 1, 3, 4), skip_predictor=True).last_hidden_state
        assert max_diff(p.encoder(x), ref) > 1e-3


def test_ours_to_hf_to_ours_exact(tmp_path):
    enc, prd = make_ours()
    save_hf(tmp_path / "hf", enc, prd)
    model, info = VJEPA2Model.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    x, (ctx, tgt) = clip(), masks()
    with torch.no_grad():
        out = model.eval()(x.permute(0, 2, 1, 3, 4), context_mask=[ctx], target_mask=[tgt])
        feats = enc(x)
        pred = prd(gather(feats, ctx), ctx, tgt, enc.grid, mask_index=1)
    assert max_diff(feats, out.last_hidden_state) <= TOL
    assert max_diff(pred, out.predictor_output.last_hidden_state) <= TOL
    back = load_pretrained(tmp_path / "hf")
    same_state(back.encoder, enc)
    same_state(back.predictor, prd)


def test_hf_encoder_only_export(tmp_path):
    enc, _ = make_ours(pred=False)
    save_hf(tmp_path / "hf", enc)
    _, info = VJEPA2Model.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    back = load_pretrained(tmp_path / "hf")
    assert back.predictor is None
    same_state(back.encoder, enc)


def test_hf_export_refuses_what_hf_cannot_compute(tmp_path):
    for kw in (dict(pos="sincos"), dict(rope_variant="rotary")):
        enc, prd = make_ours(**kw)
        with pytest.raises(ValueError, match="vjepa2"):
            save_hf(tmp_path / "x", enc, prd)


# ----------------------------------------------------------------------------------------------- official

def official_sincos_table(dim, grid_depth, grid_size, uniform_power):
    """The V-JEPA 1 table, written independently from the reference description (numpy, float64)."""
    d, h, w = np.meshgrid(np.arange(grid_depth, dtype=float), np.arange(grid_size, dtype=float),
                          np.arange(grid_size, dtype=float), indexing="ij")
    if uniform_power:
        dd = dh = dw = int(np.ceil(dim / 6) * 2)
    else:
        dd, dh, dw = dim // 2, dim // 4, dim // 4

    def one(n, pos):
        omega = 1.0 / 10000 ** (np.arange(n // 2, dtype=float) / (n / 2.0))
        out = pos.reshape(-1)[:, None] * omega[None]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one(dd, d), one(dh, h), one(dw, w)], axis=1)[:, :dim]


@pytest.mark.parametrize("uniform_power", [True, False])
def test_sincos_table_equals_reference_formula(uniform_power):
    from vjepa.models.pos import sincos_3d
    for dim, grid in ((64, (2, 4, 4)), (1024, (8, 14, 14))):
        ref = torch.from_numpy(official_sincos_table(dim, grid[0], grid[1], uniform_power)).float()
        assert max_diff(sincos_3d(dim, grid, uniform_power), ref) <= 1e-6


@pytest.mark.parametrize("uniform_power", [True, False])
def test_official_vjepa1_layout_roundtrip(uniform_power):
    enc, prd = make_ours(pos="sincos", uniform_power=uniform_power)
    ckpt = official.export_state(enc, prd)
    sd = ckpt["encoder"]
    assert "module.backbone.pos_embed" in sd and "module.backbone.blocks.0.attn.qkv.weight" in sd
    assert {"module.backbone.mask_tokens.0", "module.backbone.predictor_embed.weight",
            "module.backbone.predictor_blocks.1.mlp.fc2.bias", "module.backbone.predictor_pos_embed"} <= set(
        ckpt["predictor"])
    # the buffer is the reference table: replace ours by the independent implementation
    ref = official_sincos_table(64, 2, 4, uniform_power)
    for k in ("encoder", "target_encoder"):
        ckpt[k]["module.backbone.pos_embed"] = torch.from_numpy(ref).float()[None]
    p = load_pretrained(ckpt, num_heads=4)
    assert p.source_format == "vjepa1" and p.checkpoint_key == "target_encoder"
    c = p.encoder_config
    assert (c["img_size"], c["num_frames"], c["pos_embed"], c["uniform_power"]) == (32, 4, "sincos", uniform_power)
    assert p.predictor_config["num_heads"] == 4 and p.predictor_config["uniform_power"] == uniform_power
    same_state(p.encoder, enc)
    same_state(p.predictor, prd)
    assert any("pos_embed" in k for k in p.ignored_keys)
    x, (ctx, tgt) = clip(), masks()
    with torch.no_grad():
        assert max_diff(p.encoder(x, masks=ctx), enc(x, masks=ctx)) == 0
        f = enc(x, masks=ctx)
        assert max_diff(p.predictor(f, ctx, tgt, enc.grid, 0), prd(f, ctx, tgt, enc.grid, 0)) == 0


def test_official_vjepa2_layout_roundtrip_and_key_choice():
    enc, prd = make_ours()
    ema, _ = make_ours(seed=7, pred=False)
    ckpt = official.export_state(enc, prd, target_encoder=ema)
    assert not any(k.endswith("pos_embed") for k in ckpt["encoder"])
    ckpt["opt"] = {"state": {}, "param_groups": []}
    p = load_pretrained(ckpt, num_heads=4, pred_num_heads=4, img_size=32, num_frames=4)
    assert p.source_format == "vjepa2" and p.encoder_config["rope_variant"] == "vjepa2"
    same_state(p.encoder, ema)  # default: target_encoder
    same_state(p.predictor, prd)
    q = load_pretrained(ckpt, format="vjepa2", checkpoint_key="encoder", num_heads=4, pred_num_heads=4)
    same_state(q.encoder, enc)
    assert any("256 px" in n for n in q.notes)  # assumed clip size is said out loud
    x = clip()
    with torch.no_grad():
        assert max_diff(q.encoder(x), enc(x)) == 0


def test_official_head_count_defaults():
    """Released widths need no num_heads; unknown widths must be explicit."""
    enc, _ = make_ours(pred=False)
    with pytest.raises(ValueError, match="num_heads"):
        load_pretrained(official.export_state(enc))
    with torch.device("meta"):
        big = VisionTransformer(img_size=32, num_frames=4, patch_size=16, embed_dim=1408, depth=1, num_heads=22,
                                mlp_ratio=48 / 11, pos_embed="rope", rope_variant="vjepa2")
    sd = {"module.backbone." + k: torch.zeros(v.shape) for k, v in big.state_dict().items()}
    p = load_pretrained({"encoder": sd}, predictor=False)
    assert p.encoder_config["num_heads"] == 22 and p.encoder.blocks[0].mlp.fc1.out_features == 6144


def test_mlp_ratio_inference():
    for dim, hidden in ((1408, 6144), (1664, 8192), (64, 256), (1280, 5120)):
        assert int(dim * mlp_ratio_for(hidden, dim)) == hidden


# ----------------------------------------------------------------------------------------------- strictness

def test_strict_errors_list_every_key():
    enc, prd = make_ours()
    ckpt = official.export_state(enc, prd)
    sd = ckpt["target_encoder"]
    sd["module.backbone.extra.weight"] = torch.zeros(3)
    del sd["module.backbone.blocks.1.norm2.bias"]
    sd["module.backbone.norm.weight"] = torch.zeros(65)
    with pytest.raises(CheckpointMismatchError) as e:
        load_pretrained(ckpt, num_heads=4, pred_num_heads=4)
    msg = str(e.value)
    assert "extra.weight" in msg and "blocks.1.norm2.bias" in msg and "norm.weight" in msg and "(65,)" in msg
    assert e.value.unexpected == ["extra.weight"] and e.value.missing == ["blocks.1.norm2.bias"]
    # an explicit allowance accepts the known extra (and only it)
    sd["module.backbone.blocks.1.norm2.bias"] = enc.blocks[1].norm2.bias.detach().clone()
    sd["module.backbone.norm.weight"] = enc.norm.weight.detach().clone()
    p = load_pretrained(ckpt, num_heads=4, pred_num_heads=4, allow_missing=["extra.*"])
    assert "extra.weight" in p.ignored_keys
    same_state(p.encoder, enc)


def test_strict_sincos_buffer_and_flavour_checks():
    enc, prd = make_ours(pos="sincos")
    ckpt = official.export_state(enc, prd)
    ckpt["target_encoder"]["module.backbone.pos_embed"] += 1e-3
    with pytest.raises(ValueError, match="matches no fixed 3-D sin-cos table"):
        load_pretrained(ckpt, num_heads=4)
    ckpt = official.export_state(enc, prd)
    with pytest.raises(ValueError, match="pos_embed buffer in a RoPE"):
        load_pretrained(ckpt, format="vjepa2", num_heads=4)


def test_untrusted_files_are_read_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"encoder": {"x": torch.zeros(1)}, "payload": argparse.Namespace(a=1)}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_pretrained(path)
    # numpy data (a trainer's RNG state) is accepted, and the models load
    enc, prd = make_ours()
    from vjepa.interop import encoder_config, predictor_config
    torch.save({"models": {"encoder": enc.state_dict(), "predictor": prd.state_dict()},
                "model_configs": {"encoder": encoder_config(enc), "predictor": predictor_config(prd)},
                "rng": {"numpy": np.random.get_state(), "loss": np.float64(0.5)}}, tmp_path / "resume.pt")
    same_state(load_pretrained(tmp_path / "resume.pt").encoder, enc)


# ----------------------------------------------------------------------------------------------- native / trainer

def test_native_roundtrip_and_load_into(tmp_path):
    enc, prd = make_ours(pos="sincos", uniform_power=False)
    save_native(tmp_path / "m.pt", enc, prd)
    e2, p2 = load_native(tmp_path / "m.pt")
    same_state(e2, enc)
    same_state(p2, prd)
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    assert raw["format"] == "vjepa" and raw["version"] == 1 and raw["encoder"]["config"]["uniform_power"] is False
    fresh = build_encoder_from_config(raw["encoder"]["config"])
    load_into(fresh, tmp_path / "m.pt")
    same_state(fresh, enc)
    wrong = VisionTransformer(**ENC, pos_embed="rope")
    with pytest.raises(ValueError, match="pos_embed"):
        load_into(wrong, tmp_path / "m.pt")


def test_trainer_checkpoint_layout():
    enc, prd = make_ours()
    ema, _ = make_ours(seed=3, pred=False)
    from vjepa.interop import predictor_config
    ckpt = {"models": {"encoder": enc.state_dict(), "target_encoder": ema.state_dict(), "predictor": prd.state_dict()},
            "model_configs": {"encoder": dict(size="tiny", **ENC, pos_embed="rope", rope_variant="vjepa2"),
                              "predictor": predictor_config(prd), "decoder": {}}, "step": 10}
    p = load_pretrained(ckpt)
    assert p.source_format == "trainer" and p.checkpoint_key == "target_encoder"
    same_state(p.encoder, ema)
    same_state(p.predictor, prd)
    q = load_pretrained(ckpt, checkpoint_key="encoder", predictor=False)
    same_state(q.encoder, enc)
    assert q.predictor is None
    with pytest.raises(KeyError, match="teacher"):
        load_pretrained(ckpt, checkpoint_key="teacher")


# ----------------------------------------------------------------------------------------------- command line

def test_cli_conversions(hf, tmp_path):
    from vjepa.convert import main
    _, path = hf
    assert main([str(path), str(tmp_path / "a.pt"), "--verify"]) == 0          # hf -> native
    assert main([str(tmp_path / "a.pt"), str(tmp_path / "b"), "--verify"]) == 0  # native -> hf
    assert main([str(tmp_path / "b"), str(tmp_path / "c.pt"), "--to", "vjepa2", "--verify"]) == 0
    same_state(load_pretrained(tmp_path / "b").encoder, load_pretrained(path).encoder)
    enc, prd = make_ours(pos="sincos")
    torch.save(official.export_state(enc, prd), tmp_path / "v1.pt")
    assert main([str(tmp_path / "v1.pt"), str(tmp_path / "d.pt"), "--num-heads", "4", "--verify"]) == 0
    assert main([str(tmp_path / "v1.pt"), str(tmp_path / "e.pt")]) == 2  # width 64: heads must be given
    assert main([str(tmp_path / "d.pt"), str(tmp_path / "f"), "--to", "hf"]) == 2  # sin-cos has no HF layout


def test_cli_module_entry_point(tmp_path):
    enc, prd = make_ours()
    save_native(tmp_path / "m.pt", enc, prd)
    r = subprocess.run([sys.executable, "-m", "vjepa.convert", str(tmp_path / "m.pt"), str(tmp_path / "hf")],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert "wrote hf" in r.stdout and (tmp_path / "hf" / "model.safetensors").is_file()
