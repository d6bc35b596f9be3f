"""Clip transforms: one draw of random parameters per clip, applied to every frame."""
import torch

from data.transforms import apply, train_transform


def test_randaugment_applies_the_same_ops_to_every_frame():
    g = torch.Generator().manual_seed(0)
    frame = torch.randint(0, 256, (1, 48, 64, 3), dtype=torch.uint8, generator=g)
    clip = frame.expand(4, -1, -1, -1).contiguous()  # 4 identical frames
    changed = 0
    for seed in range(8):
        plain = apply(train_transform(32, flip=0.0), clip, seed)[0]
        augmented = apply(train_transform(32, flip=0.0, randaugment=True), clip, seed)[0]
        assert augmented.shape == (3, 4, 32, 32)
        for t in range(1, 4):  # the frames stay identical: the ops were drawn once for the clip
            assert torch.equal(augmented[:, t], augmented[:, 0])
        assert torch.equal(apply(train_transform(32, flip=0.0, randaugment=True), clip, seed)[0], augmented)
        changed += not torch.equal(plain, augmented)
    assert changed >= 4  # and it does change the pixels
