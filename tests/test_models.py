"""Encoder, predictor, position encodings and heads of vjepa.models."""
import math

import pytest
import torch

from vjepa.models import PRESETS, normalized_pixel_targets, patchify, pixel_decoder, predictor, vit
from vjepa.models.heads import pixel_targets
from vjepa.models.layers import initialise
from vjepa.models.pos import RoPE3D, sincos_3d

# encoder parameter counts of the reference family (millions); gigantic is the released code's 1.60B
# (its mlp ratio falls through to 4), not the nominal 1.84B of the paper.
REFERENCE_PARAMS_M = {"tiny": 5.5, "small": 22, "base": 86, "large": 303, "huge": 632, "giant": 1010,
                      "gigantic": 1598}


@pytest.mark.parametrize("size", list(PRESETS))
def test_preset_parameter_counts_match_reference(size):
    with torch.device("meta"):
        model = vit(size)
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert n == pytest.approx(REFERENCE_PARAMS_M[size], rel=0.03)


def test_large_preset_has_303M_parameters():
    with torch.device("meta"):
        n = sum(p.numel() for p in vit("large").parameters())
    assert 302e6 < n < 305e6


@pytest.fixture(params=["sincos", "rope"])
def small_video_model(request):
    torch.manual_seed(0)
    return vit("tiny", img_size=32, num_frames=4, patch_size=8, depth=2, pos_embed=request.param).eval()


@pytest.mark.parametrize("batch", [1, 4])
def test_shapes_video_and_image_masked_and_unmasked(small_video_model, batch):
    m = small_video_model
    video = torch.randn(batch, 3, 4, 32, 32)
    image = torch.randn(batch, 3, 32, 32)
    assert m.grid == (2, 4, 4)
    assert m(video).shape == (batch, 32, 192)
    assert m(image).shape == (batch, 16, 192)  # one tubelet of a repeated frame
    assert m(image.unsqueeze(2)).shape == (batch, 16, 192)
    ids = torch.stack([torch.randperm(32)[:7].sort().values for _ in range(batch)])
    assert m(video, masks=ids).shape == (batch, 7, 192)
    img_ids = torch.stack([torch.randperm(16)[:5] for _ in range(batch)])
    assert m(image, masks=img_ids).shape == (batch, 5, 192)


def test_masked_tokens_keep_their_true_positions(small_video_model):
    """Encoding all tokens in a shuffled order equals the full encoding, shuffled: positions follow ids."""
    m = small_video_model
    video = torch.randn(2, 3, 4, 32, 32)
    perm = torch.stack([torch.randperm(32), torch.randperm(32)])
    full = m(video)
    shuffled = m(video, masks=perm)
    expected = torch.gather(full, 1, perm.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
    torch.testing.assert_close(shuffled, expected, atol=1e-5, rtol=1e-5)


def test_other_resolution_and_frame_count(small_video_model):
    m = small_video_model
    out = m(torch.randn(1, 3, 8, 48, 40))  # built for 4x32x32
    assert out.shape == (1, 4 * 6 * 5, 192)
    if m.pos_embed_type == "sincos":
        table = m.sincos_table((4, 6, 5), "cpu")
        torch.testing.assert_close(table, sincos_3d(192, (4, 6, 5)))


def test_intermediate_layers_and_checkpointing_match():
    torch.manual_seed(0)
    m = vit("tiny", img_size=32, num_frames=4, patch_size=8, depth=3)
    x = torch.randn(2, 3, 4, 32, 32)
    out, layers = m(x, out_layers=[0, 2])
    assert len(layers) == 2 and layers[0].shape == out.shape
    torch.testing.assert_close(m.norm(layers[1]), out)
    m.grad_checkpointing = True
    out_ckpt = m(x.requires_grad_())
    torch.testing.assert_close(out_ckpt, out)
    out_ckpt.sum().backward()
    assert m.blocks[0].attn.qkv.weight.grad is not None


def closed_form_sincos(dim, t, h, w, uniform_power=True):
    d = 2 * math.ceil(dim / 6) if uniform_power else None
    dims = (d, d, d) if uniform_power else (dim // 2, dim // 4, dim // 4)
    row = []
    for axis_dim, p in zip(dims, (t, h, w)):
        half = axis_dim // 2
        row += [math.sin(p / 10000 ** (k / half)) for k in range(half)]
        row += [math.cos(p / 10000 ** (k / half)) for k in range(half)]
    return row[:dim]


@pytest.mark.parametrize("uniform_power", [True, False])
def test_sincos_table_matches_closed_form(uniform_power):
    dim, grid = 40, (3, 4, 5)
    table = sincos_3d(dim, grid, uniform_power)
    assert table.shape == (60, dim)
    for token in [0, 7, 23, 59]:
        t, h, w = token // 20, (token % 20) // 5, token % 5
        expected = torch.tensor(closed_form_sincos(dim, t, h, w, uniform_power), dtype=torch.float32)
        torch.testing.assert_close(table[token], expected, atol=1e-6, rtol=0)


def test_rope_scores_depend_only_on_relative_positions():
    torch.manual_seed(0)
    rope = RoPE3D(head_dim=64, variant="rotary")
    grid = (8, 16, 16)
    q, k = torch.randn(1, 1, 1, 64), torch.randn(1, 1, 1, 64)

    def score(iq, ik):
        cq, sq = rope.tables(torch.tensor([iq]), grid, torch.float32)
        ck, sk = rope.tables(torch.tensor([ik]), grid, torch.float32)
        return (rope.apply(q, cq, sq) * rope.apply(k, ck, sk)).sum().item()

    def tok(t, h, w):
        return t * 256 + h * 16 + w

    base = score(tok(1, 2, 3), tok(2, 5, 4))
    for shift in [(1, 1, 1), (3, 0, 5), (0, 7, 2), (4, 3, 0)]:
        a = tok(1 + shift[0], 2 + shift[1], 3 + shift[2])
        b = tok(2 + shift[0], 5 + shift[1], 4 + shift[2])
        assert score(a, b) == pytest.approx(base, abs=1e-4)
    assert abs(score(tok(1, 2, 3), tok(2, 9, 4)) - base) > 1e-3  # and they do depend on the offset


def test_rope_leaves_remainder_dims_and_preserves_norm():
    rope = RoPE3D(head_dim=64)
    assert rope.axis_dim == 20
    x = torch.randn(2, 3, 10, 64)
    cos, sin = rope.tables(torch.randint(0, 512, (2, 10)), (8, 8, 8), torch.float32)
    y = rope.apply(x, cos, sin)
    torch.testing.assert_close(y[..., 60:], x[..., 60:])
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))


@pytest.mark.parametrize("pos", ["sincos", "rope"])
def test_predictor_output_width_and_positions(pos):
    torch.manual_seed(0)
    enc = vit("tiny", img_size=32, num_frames=4, patch_size=8, depth=1, pos_embed=pos)
    pred = predictor(192, out_dim=320, embed_dim=64, depth=2, num_heads=4, pos_embed=pos)
    x = torch.randn(3, 3, 4, 32, 32)
    ctx = torch.arange(0, 20).expand(3, -1)
    tgt = torch.arange(20, 32).expand(3, -1)
    out = pred(enc(x, ctx), ctx, tgt, enc.grid)
    assert out.shape == (3, 12, 320)
    # mask tokens at different positions give different predictions (they carry their positions)
    assert (out[:, 0] - out[:, 1]).abs().max() > 1e-4
    # second mask token is a separate parameter
    assert pred.mask_tokens.shape == (2, 1, 1, 64)


def test_predictor_conditioning_hook_runs_per_layer():
    pred = predictor(32, embed_dim=32, depth=3, num_heads=4)
    calls = []

    class Recorder(torch.nn.Module):
        def __init__(self, i):
            super().__init__()
            self.i = i

        def forward(self, x, condition):
            calls.append(self.i)
            return x + condition

    pred.conditioners = torch.nn.ModuleList(Recorder(i) for i in range(3))
    ctx, ids, tgt = torch.randn(1, 4, 32), torch.arange(4)[None], torch.arange(4, 8)[None]
    a = pred(ctx, ids, tgt, (2, 2, 2))
    assert calls == []  # no condition given: unconditioned
    b = pred(ctx, ids, tgt, (2, 2, 2), condition=torch.ones(1, 1, 32))
    assert calls == [0, 1, 2]
    assert not torch.allclose(a, b)


def test_pixel_targets_are_normalised_tubelets():
    video = torch.rand(2, 3, 4, 16, 16)
    patches = patchify(video, 2, 8)
    assert patches.shape == (2, 2 * 2 * 2, 2 * 8 * 8, 3)
    # token 3 = (t 0, h 1, w 1): frames 0-1, rows 8-15, cols 8-15
    torch.testing.assert_close(patches[0, 3, 0], video[0, :, 0, 8, 8])
    torch.testing.assert_close(patches[0, 3, -1], video[0, :, 1, 15, 15])
    targets = normalized_pixel_targets(video, 2, 8).reshape(2, 8, 128, 3)
    torch.testing.assert_close(targets.mean(2), torch.zeros(2, 8, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(targets.std(2), torch.ones(2, 8, 3), atol=1e-3, rtol=0)
    dec = pixel_decoder(vit("tiny", img_size=16, num_frames=4, patch_size=8, depth=1), depth=1)
    assert dec.out_dim == 2 * 8 * 8 * 3


def test_reference_initialisation():
    torch.manual_seed(0)
    m = vit("small", img_size=32, num_frames=2, patch_size=8, depth=4)
    fc1 = m.blocks[0].mlp.fc1.weight
    assert fc1.std().item() == pytest.approx(0.02, rel=0.05)
    assert m.blocks[0].attn.qkv.bias.abs().max() == 0
    # depth-rescaled residual projections: layer 4's fc2 is sqrt(8)/sqrt(2) = 2x smaller than layer 1's
    ratio = m.blocks[0].mlp.fc2.weight.std() / m.blocks[3].mlp.fc2.weight.std()
    assert ratio.item() == pytest.approx(2.0, rel=0.05)


def test_xavier_initialisation_matches_the_formula_and_leaves_the_reference_alone():
    torch.manual_seed(0)
    ref = vit("tiny", img_size=32, num_frames=2, patch_size=8, depth=2)
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    initialise(ref, "trunc_normal")
    assert all(torch.equal(before[k], v) for k, v in ref.state_dict().items())
    m = initialise(vit("tiny", img_size=32, num_frames=2, patch_size=8, depth=2), "xavier")
    # xavier-uniform: std sqrt(2 / (fan_in + fan_out)); fc1 192 -> 768; the patch embedding 3*2*8*8 = 384 -> 192
    assert m.blocks[1].mlp.fc1.weight.std().item() == pytest.approx(math.sqrt(2 / (192 + 768)), rel=0.05)
    assert m.patch_embed.proj.weight.std().item() == pytest.approx(math.sqrt(2 / (384 + 192)), rel=0.05)
    assert m.blocks[0].attn.qkv.bias.abs().max() == 0
    with pytest.raises(ValueError, match="init scheme 'he'"):
        initialise(m, "he")


def test_raw_pixel_targets_are_the_patchified_input():
    video = torch.randn(2, 3, 4, 16, 16)
    raw = pixel_targets(video, 2, 8, "raw")
    torch.testing.assert_close(raw, patchify(video, 2, 8).flatten(-2))
    torch.testing.assert_close(pixel_targets(video, 2, 8, "patch_norm", 0.1),
                               normalized_pixel_targets(video, 2, 8, 0.1))
    with pytest.raises(ValueError, match="pixel target 'pca'"):
        pixel_targets(video, 2, 8, "pca")


def test_gradient_step_through_encoder_and_predictor_reduces_loss():
    torch.manual_seed(0)
    enc = vit("tiny", img_size=32, num_frames=4, patch_size=8, depth=2)
    pred = predictor(192, embed_dim=64, depth=2, num_heads=4)
    params = list(enc.parameters()) + list(pred.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    x = torch.randn(4, 3, 4, 32, 32)
    ctx, tgt = torch.arange(0, 16).expand(4, -1), torch.arange(16, 32).expand(4, -1)
    target = torch.randn(4, 16, 192)
    losses = []
    for _ in range(5):
        loss = (pred(enc(x, ctx), ctx, tgt, enc.grid) - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.01
