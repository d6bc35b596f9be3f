"""`python -m launch.bench`: train-step time per method, split into its parts.

Default: the reference's "tiny-video" configuration (ViT-tiny, 16 x 128 x 128 clips, 2x16x16 tubelets =
512 tokens, predictor width 96 depth 4, multi-block masks, batch 8, fp32 on CPU / bf16 on CUDA), for
`vjepa` (EMA teacher), `salt` (frozen teacher of the same size), `salt` with a smaller teacher, and `salt`
with cached teacher targets (`-cached`: targets read from an fp16 memory-mapped file, as
vjepa/train/target_cache.py does, instead of running the teacher).

Per case: clips/s; the step split into data wait (next batch + cached-target read, host to device),
teacher forward, student forward (encoder + predictor + loss), backward, optimiser and EMA; peak memory
(CUDA: allocator peak of the case; CPU: the process's peak RSS so far); FLOPs per clip counted from the
model with torch.utils.flop_counter (forward + backward, teacher forward included when it runs); on CUDA
the MFU against a measured dense bf16 matmul rate; the context and target tokens per clip of the timed steps'
masks (the work the step did). `--data embedded` times real decoded clips from the embedded dataset (data wait =
loader), default random clips (data wait ~ 0). Against the reference's own step: launch/bench_reference.py.

Prints a table and, with --write, replaces the `--section` ("Train step") section of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from vjepa.masks import MaskSampler, build_masks
from vjepa.methods import LatentPrediction, PixelReconstruction
from vjepa.models import Predictor, vit
from vjepa.models.heads import pixels_per_token
from vjepa.train.optim import build_optimizer

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def build(method: str, student: str, teacher: str | None, args):
    kw = dict(img_size=args.size, num_frames=args.frames, patch_size=16, tubelet_size=2,
              grad_checkpointing=getattr(args, "grad_checkpointing", False))
    enc = vit(student, **kw)
    gens = build_masks("multiblock", enc.grid)
    if method == "pixel":
        dec = Predictor(enc.embed_dim, pixels_per_token(enc), embed_dim=args.pred_width, depth=args.pred_depth,
                        num_heads=4, num_mask_tokens=len(gens))
        return PixelReconstruction(enc, dec), gens
    t = vit(teacher, **kw) if method in ("salt", "salt-cached") else None
    out = t.embed_dim if t is not None else enc.embed_dim
    pred = Predictor(enc.embed_dim, out, embed_dim=args.pred_width, depth=args.pred_depth,
                     num_heads=max(args.pred_width // 64, 4) if args.pred_width >= 256 else 4,
                     num_mask_tokens=len(gens))
    return LatentPrediction(enc, pred, teacher=t), gens


class TargetFile:
    """Cached-target stand-in: an fp16 memory-mapped [rows, N, D] file read per step like a target cache
    shard (random rows; values do not matter for timing)."""

    def __init__(self, tokens: int, dim: int, rows: int):
        self.dir = tempfile.TemporaryDirectory(prefix="bench-targets-")
        path = Path(self.dir.name) / "targets.npy"
        arr = np.lib.format.open_memmap(path, "w+", np.float16, (rows, tokens, dim))
        arr[:] = np.random.default_rng(0).standard_normal((rows, tokens, dim), dtype=np.float32)
        arr.flush()
        self.data = np.load(path, mmap_mode="r")
        self.rng = np.random.default_rng(1)

    def read(self, batch: int) -> torch.Tensor:
        idx = np.sort(self.rng.choice(len(self.data), batch, replace=False))
        return torch.from_numpy(np.stack([self.data[i] for i in idx]))


def cpu_sdpa_flops():
    """FlopCounterMode counts the CUDA attention kernels; add the CPU flash kernel (same formula)."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    def fwd(query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query, key, value)

    def bwd(grad_out, query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_backward_flop_count(grad_out, query, key, value)

    return {aten._scaled_dot_product_flash_attention_for_cpu: fwd,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: bwd}


def count_flops(method, masks, video, autocast, targets=None) -> tuple[float, float]:
    """(FLOPs of one train step's forward + backward, of which the teacher's forward), counted by op."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=cpu_sdpa_flops())
    with counter:
        with autocast:
            extra = {"targets": targets} if targets is not None else {}
            loss, _ = method(video, masks, **extra)
        loss.backward()
    method.zero_grad(set_to_none=True)
    per_module = counter.get_flop_counts()
    teacher = sum(sum(v.values()) for k, v in per_module.items() if k.endswith(".teacher"))
    return float(counter.get_total_flops()), float(teacher)


def matmul_rate(device: torch.device, seconds: float = 1.0) -> float | None:
    """Measured dense bf16 matmul FLOP/s on CUDA (8192^3 products); None on CPU."""
    if device.type != "cuda":
        return None
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    iters, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            a @ b
        torch.cuda.synchronize()
        iters += 10
    return 2 * n**3 * iters / (time.perf_counter() - t0)


def real_batches(args):
    """Endless real clips of the embedded dataset (decoded, augmented) at the bench's clip size."""
    from data.loader import build_loader
    from data.synthetic import ensure_synthetic

    root = ensure_synthetic(args.data_root)
    loader = build_loader([str(Path(root) / "train.jsonl")], train=True, batch_size=args.batch,
                          frames_per_clip=args.frames, frame_step=1, size=args.size, num_workers=args.workers,
                          seed=0)
    try:
        while True:
            yield from loader
    finally:  # generator closed: stop the workers now, not at garbage collection
        loader.close()


def time_steps(method, gens, args, device, cached: bool = False, batches=None, peak_flops=None,
               trace: Path | None = None, masks: list | None = None) -> dict:
    """Mean seconds per step of each part over args.steps steps after args.warmup; with ``trace``, two more
    steps profiled into ``trace``.json (chrome trace) and ``trace``.txt (the top ops). ``masks``: each step's
    masks (a list of Mask lists, warm-up steps first) drawn elsewhere, instead of drawing them from ``gens``
    (launch.bench_reference runs our step on the masks the reference's collator drew)."""
    if masks is not None and len(masks) < args.warmup + args.steps:
        raise ValueError(f"{len(masks)} steps' masks given for {args.warmup} + {args.steps} steps")
    if masks is not None and getattr(args, "compile", None):
        raise ValueError("given masks are not cut to the compiled lengths: time them without --compile")
    method.to(device).train()
    opt = build_optimizer(list(method.trained_modules().values()), 1e-4)
    sampler = MaskSampler(gens, seed=0)
    fixed_video = torch.randn(args.batch, 3, args.frames, args.size, args.size, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    targets_file = None
    if cached:
        tokens = int(np.prod(method.encoder.grid))
        targets_file = TargetFile(tokens, method.teacher.embed_dim, rows=max(4 * args.batch, 32))
        method.release_teacher()  # what the trainer does once the cache exists
    teacher_time = [0.0]
    teacher = getattr(method, "teacher", None)
    if teacher is not None:
        plain = teacher.forward

        def timed(*a, **k):
            sync()
            t0 = time.perf_counter()
            out = plain(*a, **k)
            sync()
            teacher_time[0] += time.perf_counter() - t0
            return out

        teacher.forward = timed

    def next_inputs():
        video = fixed_video if batches is None else next(batches)["video"].to(device, non_blocking=True)
        extra = {}
        if targets_file is not None:
            extra["targets"] = targets_file.read(args.batch).to(device, non_blocking=True)
        return video, extra

    # FLOPs of one step, counted on a separate (untimed) step
    video, extra = next_inputs()
    counted = sampler(args.batch) if masks is None else masks[args.warmup]  # given masks: a timed step's
    flops, teacher_flops = count_flops(method, [m.to(device) for m in counted], video, autocast,
                                       extra.get("targets"))
    if getattr(args, "compile", None):  # after counting: the counter sees the plain modules' ops
        from vjepa.train.compile import BucketedMasks, compile_method

        compile_method(method, backend=args.compile)
        sampler = BucketedMasks(sampler, args.mask_bucket)
    parts = {"data": 0.0, "teacher_fwd": 0.0, "student_fwd": 0.0, "backward": 0.0, "optimizer": 0.0, "ema": 0.0,
             "step": 0.0, "context_tokens": 0.0, "target_tokens": 0.0}
    mask_lengths = [0, 0]  # the last step's (context, target) tokens per clip over its masks: the work it did
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    def step(i):
        """One training step; the times at its boundaries (synchronised)."""
        sync()
        t_d = time.perf_counter()
        video, extra = next_inputs()
        drawn = sampler(args.batch) if masks is None else masks[i % len(masks)]  # (traced steps: given ones again)
        step_masks = [m.to(device) for m in drawn]
        mask_lengths[:] = [sum(m.context.shape[1] for m in step_masks), sum(m.target.shape[1] for m in step_masks)]
        teacher_time[0] = 0.0
        sync()
        t0 = time.perf_counter()
        with autocast:
            loss, _ = method(video, step_masks, **extra)
        sync()
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync()
        t2 = time.perf_counter()
        opt.step()
        sync()
        t3 = time.perf_counter()
        method.after_step(i, 1000)
        sync()
        return t_d, t0, t1, t2, t3, time.perf_counter()

    for i in range(args.warmup + args.steps):
        t_d, t0, t1, t2, t3, t4 = step(i)
        if i >= args.warmup:
            parts["data"] += t0 - t_d
            parts["teacher_fwd"] += teacher_time[0]
            parts["student_fwd"] += (t1 - t0) - teacher_time[0]
            parts["backward"] += t2 - t1
            parts["optimizer"] += t3 - t2
            parts["ema"] += t4 - t3
            parts["step"] += t4 - t_d
            parts["context_tokens"] += mask_lengths[0]
            parts["target_tokens"] += mask_lengths[1]
    if trace is not None:  # two more steps under the profiler: where the step's time goes, kernel by kernel
        from torch.profiler import ProfilerActivity, profile, record_function

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        # record_shapes: the ops' input dtypes (launch.trace_summary counts the matmuls per dtype); the
        # ProfilerStep#N marks let it report per step (profile() adds them itself only under a schedule)
        with profile(activities=activities, record_shapes=True) as prof:
            for i in range(2):
                with record_function(f"ProfilerStep#{i}"):
                    step(args.warmup + args.steps + i)
        trace.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace.with_suffix(".json")))
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        trace.with_suffix(".txt").write_text(prof.key_averages().table(sort_by=sort, row_limit=30))
    out = {k: v / args.steps for k, v in parts.items()}
    out["clips_per_s"] = args.batch / out["step"]
    out["gflop_per_clip"] = flops / args.batch / 1e9
    out["teacher_gflop_per_clip"] = teacher_flops / args.batch / 1e9
    compute = out["step"] - out["data"]
    out["achieved_tflops"] = flops / compute / 1e12
    out["mfu"] = flops / compute / peak_flops if peak_flops else None
    if device.type == "cuda":
        out["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
    else:
        out["peak_mem_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB, process peak
    return out


CASES = {
    "vjepa": ("vjepa", "tiny", None),
    "salt": ("salt", "tiny", "tiny"),
    "salt-cached": ("salt-cached", "tiny", "tiny"),
    "pixel": ("pixel", "tiny", None),
    "vjepa-small": ("vjepa", "small", None),
    "salt-small": ("salt", "small", "small"),
    "salt-small-cached": ("salt-cached", "small", "small"),
    "salt-small/tiny-teacher": ("salt", "small", "tiny"),
    "salt-large": ("salt", "large", "large"),
    "salt-large-cached": ("salt-cached", "large", "large"),
    "vjepa-large": ("vjepa", "large", None),
}


def table(rows: dict, args, device, peak_flops=None) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    dtype = "bf16 autocast" if device.type == "cuda" else "fp32"
    peak = f"; measured dense bf16 matmul {peak_flops / 1e12:.0f} TFLOP/s (the MFU denominator)" if peak_flops else ""
    extras = "".join(f", {x}" for x in (f"torch.compile ({args.compile})" if getattr(args, "compile", None) else "",
                                         "activation checkpointing" if getattr(args, "grad_checkpointing", False)
                                         else "") if x)
    data = (f"real embedded clips ({args.workers} loader workers)" if getattr(args, "data", "random") == "embedded"
            else "random clips")
    lines = [f"Measured {datetime.date.today()} on {device} ({platform.processor() or platform.machine()}, "
             f"{torch.get_num_threads()} threads, torch {torch.__version__}, load average {load:.1f}): batch "
             f"{args.batch}, {args.frames}x{args.size}x{args.size} clips, 2x16x16 tubelets, predictor "
             f"{args.pred_width}x{args.pred_depth}, multi-block masks, {dtype}{extras}, {data}; mean of "
             f"{args.steps} steps after {args.warmup} warm-up{peak}. Times in seconds per step; GFLOP/clip = "
             "forward + backward counted by op (teacher forward included where it runs).", "",
             "| case | student / teacher | step (s) | data wait | teacher fwd | student fwd | backward | optimiser | "
             "EMA | clips/s | GFLOP/clip | peak mem (GiB) | MFU |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        method, student, teacher = CASES[name]
        who = f"{student} / " + ("cached " + teacher if method == "salt-cached" else
                                 teacher or ("EMA " + student if method == "vjepa" else "-"))
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        mem = f"{r['peak_mem_gb']:.2f}" + ("" if device.type == "cuda" else " (RSS)")
        lines.append(f"| {name} | {who} | {r['step']:.3f} | {r['data']:.3f} | {r['teacher_fwd']:.3f} | "
                     f"{r['student_fwd']:.3f} | {r['backward']:.3f} | {r['optimizer']:.3f} | {r['ema']:.4f} | "
                     f"{r['clips_per_s']:.1f} | {r['gflop_per_clip']:.1f} | {mem} | {mfu} |")
    pairs = [(n, n.replace("-cached", "")) for n in rows if n.endswith("-cached") and n.replace("-cached", "") in rows]
    for cached, online in pairs:
        a, b = rows[online], rows[cached]
        lines.append("")
        lines.append(f"Cached vs online teacher ({online}): {b['step']:.3f} vs {a['step']:.3f} s/step = "
                     f"{a['step'] / b['step']:.2f}x clips/s; the teacher forward ({a['teacher_fwd']:.3f} s, "
                     f"{a['teacher_gflop_per_clip']:.1f} GFLOP/clip) is replaced by a {b['data'] - a['data']:+.3f} s "
                     "target read.")
    return "\n".join(lines)


def write_section(title: str, body: str, path: Path = DOCS) -> None:
    """Replace (or append) the `## title` section of docs/benchmarks.md (data.bench's writer: the heading
    matched as a whole line, other sections left alone)."""
    from data.bench import write_section as write

    write(f"## {title}\n\n{body}\n", path)


# Written under the tiny-video CPU table. No reference time goes here: one from another session is no baseline
# (reference.md §8: the same machine kind ran the reference's step 25% faster on 2026-12-01 than on 2026-11-29).
REFERENCE = ("Against the reference: section \"Train step vs the reference\" (`python -m launch.bench_reference "
             "CHECKOUT`: the public V-JEPA 1 code's own step and these cases, in alternating rounds of one session). "
             "History: until 2026-12-02 this table stood beside the reference's 1.54 s/step (EMA teacher; 1.45 s "
             "frozen) of 2026-11-29, measured in another session, as 0.46-0.50x against a goal of <= 0.8x (1.23 s); "
             "that ratio compared two days, not two codes. Side by side on 2026-12-01, by hand (the reference's "
             "times in reference.md §8): reference 1.196 s (its main()), 1.243 s frozen; ours vjepa 1.120, salt "
             "1.083, salt-cached 0.627 s.")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=["vjepa", "salt", "salt-cached", "salt-small", "salt-small-cached",
                                                  "salt-small/tiny-teacher"], choices=list(CASES))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--pred-width", type=int, default=96)
    p.add_argument("--pred-depth", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data", choices=["random", "embedded"], default="random",
                   help="random clips, or real decoded clips of the embedded dataset (data wait = loader)")
    p.add_argument("--data-root", default="runs/embedded-data-1600")
    p.add_argument("--workers", type=int, default=2, help="loader workers with --data embedded")
    p.add_argument("--compile", choices=["inductor", "aot_eager"], default=None,
                   help="torch.compile encoder/predictor/teacher (mask lengths bucketed)")
    p.add_argument("--mask-bucket", type=int, default=32)
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--trace", type=Path, default=None,
                   help="folder: per case, two extra steps profiled (CASE.json chrome trace, CASE.txt top ops); "
                        "summary.md compares the first two cases (launch/trace_summary.py)")
    p.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    p.add_argument("--section", default="Train step", help="the docs/benchmarks.md section --write replaces")
    p.add_argument("--docs", type=Path, default=DOCS, help="the markdown file --write edits")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    peak = matmul_rate(device)
    if peak:
        print(f"dense bf16 matmul: {peak / 1e12:.0f} TFLOP/s", flush=True)
    rows = {}
    for name in args.cases:
        torch.manual_seed(0)
        # a fresh stream per case: every case steps through the same clips (a shared one would hand later
        # cases later batches, and the traced steps shift them further)
        batches = real_batches(args) if args.data == "embedded" else None
        kind, student, teacher = CASES[name]
        method, gens = build(kind, student, teacher, args)
        trace = args.trace / name.replace("/", "_") if args.trace else None
        try:
            rows[name] = time_steps(method, gens, args, device, cached=kind == "salt-cached", batches=batches,
                                    peak_flops=peak, trace=trace)
        finally:
            if batches is not None:
                batches.close()
        r = rows[name]
        mfu = f", MFU {100 * r['mfu']:.1f}%" if r["mfu"] is not None else ""
        print(f"{name}: {r['step']:.3f} s/step, {r['clips_per_s']:.1f} clips/s{mfu}", flush=True)
        del method
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out = table(rows, args, device, peak)
    print(out)
    if args.write:
        tiny_cpu = device.type == "cpu" and args.size == 128 and args.frames == 16
        write_section(args.section, out + ("\n\n" + REFERENCE if tiny_cpu else ""), args.docs)
    if args.trace and len(rows) >= 2:  # after the table: a failure here loses no measurement
        from launch.trace_summary import compare

        first_two = list(rows)[:2]
        summary = compare([args.trace / (n.replace("/", "_") + ".json") for n in first_two], first_two)
        (args.trace / "summary.md").write_text(summary)
        print(f"trace comparison of {' and '.join(first_two)}: {args.trace / 'summary.md'}", flush=True)
    return rows


if __name__ == "__main__":
    main()
