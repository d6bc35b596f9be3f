"""launch.bench: FLOPs are counted from the model (checked against the closed form), the cached case drops
exactly the teacher's forward, and --write replaces only its own section."""
from types import SimpleNamespace

import torch

from launch import bench
from vjepa.masks import MaskSampler
from vjepa.methods.base import layer_norm_targets


def vit_forward_flops(tokens: int, dim: int, depth: int, mlp: float, patch_in: int) -> int:
    """Closed-form multiply-add x 2 count of a ViT forward over `tokens` tokens (no masking)."""
    per_block = 2 * tokens * dim * 3 * dim + 2 * tokens * dim * dim + 2 * 2 * tokens * dim * int(mlp * dim)
    attention = 2 * 2 * tokens * tokens * dim  # q k^T and attn v
    return depth * (per_block + attention) + 2 * tokens * patch_in * dim


def test_flops_are_counted_from_the_model_and_the_cache_removes_the_teacher_forward():
    args = SimpleNamespace(size=32, frames=4, pred_width=32, pred_depth=1, batch=2)
    torch.manual_seed(0)
    method, gens = bench.build("salt", "tiny", "tiny", args)
    video = torch.randn(2, 3, 4, 32, 32)
    masks = MaskSampler(gens, seed=0)(2)
    total, teacher = bench.count_flops(method, masks, video, torch.autocast("cpu", enabled=False))
    tokens = 2 * 2 * 2  # 4 frames / tubelet 2, 32 / 16 squared
    assert teacher == 2 * vit_forward_flops(tokens, 192, 12, 4.0, 3 * 2 * 16 * 16)  # a batch of 2 clips
    with torch.no_grad():
        targets = layer_norm_targets(method.teacher(video))
    method.release_teacher()
    cached, cached_teacher = bench.count_flops(method, masks, video, torch.autocast("cpu", enabled=False), targets)
    assert cached_teacher == 0 and cached == total - teacher


def test_write_replaces_only_its_section(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Data loader\n\nkeep me\n\n## Train step\n\nold\n\n## Performance\n\nmine\n")
    bench.write_section("Train step", "new table", docs)
    text = docs.read_text()
    assert "old" not in text and "new table" in text
    assert "## Data loader\n\nkeep me" in text and "## Performance\n\nmine" in text
    assert text.index("## Data loader") < text.index("## Train step") < text.index("## Performance")


def test_each_case_gets_its_own_stream_of_the_same_real_clips(embedded_data):
    """--data embedded: two streams start at the same batch, so main's fresh stream per case hands every case
    the same clips (one shared stream handed later cases later clips)."""
    args = SimpleNamespace(data_root=embedded_data, batch=2, frames=4, size=32, workers=0)
    first, second = bench.real_batches(args), bench.real_batches(args)
    a, b = next(first), next(second)
    assert torch.equal(a["index"], b["index"]) and torch.equal(a["video"], b["video"])
    assert not torch.equal(next(first)["index"], a["index"])  # the stream does move on
    first.close()
    second.close()
