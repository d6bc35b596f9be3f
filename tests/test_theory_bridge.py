"""Bridge to real models: flickering digit clips and a (very) short pixel-vs-latent run."""
import math

import numpy as np
import pytest
import torch

from vjepa.theory import bridge


def test_flicker_is_per_patch_per_frame_and_loud():
    sprites = bridge._digit_sprites()
    clean, labels = bridge.render_clips(16, 0.0, seed=3, sprites=sprites)
    noisy, labels2 = bridge.render_clips(16, 0.5, seed=3, sprites=sprites)
    assert torch.equal(labels, labels2) and clean.shape == (16, 3, bridge.FRAMES, bridge.SIZE, bridge.SIZE)
    offset = (noisy - clean)[:, 0]  # [n, T, H, W]; same offset for all channels
    torch.testing.assert_close(noisy - clean, offset.unsqueeze(1).expand_as(noisy - clean))
    patches = offset.unfold(2, bridge.PATCH, bridge.PATCH).unfold(3, bridge.PATCH, bridge.PATCH)
    assert torch.allclose(patches.std(dim=(-1, -2)), torch.zeros(1), atol=1e-5)  # constant inside a patch
    per_patch = patches[..., 0, 0].flatten(2)  # [n, T, patches]
    assert 0.4 < per_patch.std() < 0.6 and per_patch.std() > 3 * clean.std()  # louder than the clip itself
    frame_corr = np.corrcoef(per_patch[:, 0].flatten(), per_patch[:, 1].flatten())[0, 1]
    assert abs(frame_corr) < 0.2  # unpredictable from the previous frame


@pytest.mark.slow
def test_bridge_runs_both_objectives_end_to_end():
    result = bridge.run_bridge(steps=6, eval_every=3, n_train_clips=64, n_probe_train=60, n_probe_test=40,
                               conditions=("flicker",), data="memory")
    runs = result["conditions"]["flicker"]["runs"]
    for objective in ("pixel", "latent"):
        assert runs[objective]["step"] == [0, 3, 6]
        assert all(0.0 <= a <= 1.0 for a in runs[objective]["accuracy"])
        assert all(math.isfinite(loss) for loss in runs[objective]["loss"][1:])
    # the two objectives start from the same initial encoder (same seed): same step-0 probe
    assert runs["pixel"]["accuracy"][0] == runs["latent"]["accuracy"][0]


def test_embedded_clips_are_the_decoded_videos_plus_patch_flicker(embedded_data):
    clean, labels = bridge.embedded_clips(embedded_data, 0.0, seed=0, split="val")
    noisy, labels2 = bridge.embedded_clips(embedded_data, 0.5, seed=0, split="val")
    assert torch.equal(labels, labels2) and clean.shape[1:] == (3, bridge.FRAMES, bridge.SIZE, bridge.SIZE)
    offset = noisy - clean
    patches = offset.unfold(3, bridge.PATCH, bridge.PATCH).unfold(4, bridge.PATCH, bridge.PATCH)
    assert torch.allclose(patches.std(dim=(-1, -2)), torch.zeros(1), atol=1e-4)  # one offset per patch
    assert offset.std() > 1.5 * clean.std()  # the flicker is the loud part of the signal
