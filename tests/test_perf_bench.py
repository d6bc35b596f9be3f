"""launch.bench: FLOPs are counted from the model (checked against the closed form), the cached case drops
exactly the teacher's forward, and --write replaces only its own section. launch.bench_reference, the parts that
run without a reference checkout: a bad path refused by name, a failing reference process reported, the round loop
and its table on our side, our step on masks drawn elsewhere."""
import os
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from launch import bench
from vjepa.masks import MaskSampler
from vjepa.masks.generators import Mask
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


# ---- launch.bench_reference: what runs without a reference checkout ---------------------------------------------

TINY_STEP = dict(batch=2, frames=4, size=32, pred_width=32, pred_depth=1, steps=1, warmup=0, threads=1)


def test_a_path_that_is_not_a_jepa_checkout_is_refused_by_name(tmp_path):
    from launch import bench_reference

    missing = tmp_path / "no-such-dir"
    with pytest.raises(bench_reference.NotAReferenceCheckout, match=re.escape(str(missing))):
        bench_reference.check_checkout(missing)
    (tmp_path / "src" / "models").mkdir(parents=True)
    with pytest.raises(bench_reference.NotAReferenceCheckout,
                       match=re.escape(f"{tmp_path} is not a checkout of facebookresearch/jepa: "
                                       f"{tmp_path / 'app/vjepa/utils.py'} is missing")):
        bench_reference.check_checkout(tmp_path)
    with pytest.raises(SystemExit, match=re.escape(str(tmp_path))):  # the command line says the same, no traceback
        bench_reference.main([str(tmp_path), "--rounds", "1"])


def test_a_failing_reference_process_is_reported_with_the_checkout_and_its_error(tmp_path):
    """Every file the reference step needs is there but empty: its process fails at import, and the error names the
    checkout and carries the process's own last lines."""
    from launch import bench_reference

    for rel in (*bench_reference.REFERENCE_FILES, bench_reference.REFERENCE_CONFIG):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    settings = bench_reference.StepSettings(**TINY_STEP)
    with pytest.raises(RuntimeError, match=re.escape(f"the reference train step in {tmp_path} failed")) as err:
        bench_reference.time_reference(tmp_path, settings)
    assert "ImportError: cannot import name 'init_opt' from 'app.vjepa.utils'" in str(err.value)
    compile(bench_reference.REFERENCE_STEP, "REFERENCE_STEP", "exec")  # past its imports it is valid Python


def test_the_round_loop_times_our_cases_and_the_table_gives_medians_and_ratios():
    from launch import bench_reference

    settings = bench_reference.StepSettings(**TINY_STEP)
    lines = []
    rounds = bench_reference.run_rounds(None, settings, rounds=2, cases=("salt", "salt-cached"), log=lines.append)
    assert [r["order"] for r in rounds] == [["ours"], ["ours"]] and len(lines) == 2
    assert lines[0].startswith("round 0 (ours; load ") and "salt-cached " in lines[0]
    for r in rounds:
        assert set(r["cases"]) == {"salt", "salt-cached"} and all(c["step"] > 0 for c in r["cases"].values())
    # the token counts are the timed step's masks: step 0 counted the FLOPs, so the timed step drew step 1's
    torch.manual_seed(0)
    method, gens = bench.build("salt", "tiny", "tiny", settings)
    masks = MaskSampler(gens, seed=0).sample(settings.batch, step=1)
    assert rounds[0]["cases"]["salt"]["context_tokens"] == sum(m.context.shape[1] for m in masks)
    assert rounds[0]["cases"]["salt"]["target_tokens"] == sum(m.target.shape[1] for m in masks)

    median, lo, hi = bench_reference.ratio(rounds, "salt-cached", "salt")
    steps = {c: [r["cases"][c]["step"] for r in rounds] for c in ("salt", "salt-cached")}
    assert median == pytest.approx(np.median(steps["salt-cached"]) / np.median(steps["salt"]))
    per_round = [a / b for a, b in zip(steps["salt-cached"], steps["salt"])]
    assert (lo, hi) == (min(per_round), max(per_round))

    text = bench_reference.table(rounds, settings, (1.0, 1.0, 1.0), (2.0, 2.0, 2.0),
                                 "python -m launch.bench_reference X")
    assert "load averages (1, 5, 15 min) 1.00, 1.00, 1.00 at the start, 2.00, 2.00, 2.00 at the end" in text
    assert "Our cases only" in text and "`python -m launch.bench_reference X`" in text
    assert "each side draws its own masks" in text and "The machine was shared" not in text
    over = float(os.cpu_count() + 1)
    busy = bench_reference.table(rounds, settings, (1.0, 1.0, 1.0), (over, over, over), "X")
    assert "The machine was shared (load above its core count)" in busy
    assert f"| salt | frozen | {np.median(steps['salt']):.3f} |" in text
    assert text.count("- round ") == 2 and text.rstrip().endswith("|")  # no reference: no ratio lines under it


def test_our_step_can_run_on_masks_drawn_elsewhere():
    """What the reference comparison does by default (there with the reference collator's draws): every step runs on
    the given masks, so the token counts are theirs, and masks of another number of kinds are refused."""
    from launch import bench_reference

    settings = bench_reference.StepSettings(**{**TINY_STEP, "warmup": 1})
    torch.manual_seed(0)
    _, gens = bench.build("salt", "tiny", "tiny", settings)
    given = [MaskSampler(gens, seed=5).sample(settings.batch, step) for step in range(2)]
    got = bench_reference.time_ours(settings, ("salt",), masks=given)["salt"]
    assert got["context_tokens"] == sum(m.context.shape[1] for m in given[1])  # the timed step: the second
    assert got["target_tokens"] == sum(m.target.shape[1] for m in given[1])
    digest = bench_reference.masks_digest(given)  # what both sides' masks are compared by, every round
    assert digest == bench_reference.masks_digest([list(step) for step in given])
    changed = [given[0], [Mask(given[1][0].context.flip(1), given[1][0].target), given[1][1]]]
    assert bench_reference.masks_digest(changed) != digest
    with pytest.raises(ValueError, match="1 mask kinds given, our salt step has 2"):
        bench_reference.time_ours(settings, ("salt",), masks=[g[:1] for g in given])
    with pytest.raises(ValueError, match=r"1 steps' masks given for 1 \+ 1 steps"):
        bench_reference.time_ours(settings, ("salt",), masks=given[:1])
