"""`python -m launch.bench_reference CHECKOUT`: the reference's own train step, back to back with ours.

A train-step time measured on another day is no baseline: the same machine kind ran the reference's tiny-video
step in 1.54 s on 2026-11-29 and in 1.20 s on 2026-12-01 (reference.md §8). This is what
`data/calibrate_reference.py` is for the loader: the public V-JEPA 1 code (facebookresearch/jepa, a checkout
of it, installed apart) runs its step in the same session, in alternating rounds with our cases, on the same
settings as `python -m launch.bench` (tiny-video: batch 8, 16x128x128 clips, 2x16x16 tubelets, ViT-tiny,
predictor 96 x 4, multi-block masks, fp32, 2 threads, random clips).

The reference side runs in its own process, with the checkout as working directory and as PYTHONPATH; nothing of
ours is imported there and nothing of the reference here. Its step is made of the reference's own pieces:
`app.vjepa.utils.init_video_model` (`src/models` vit_tiny + vit_predictor), `init_opt` (AdamW, its parameter
groups, LR and WD schedules), the `src.masks.multiblock3d.MaskCollator`, `apply_masks` and
`repeat_interleave_batch`, with the mask, loss and optimisation settings of the checkout's
`configs/pretrain/vitl16.yaml`; the step calls them in the order of `train_step()` in `app/vjepa/train.py`
(that function is local to its `main()`, which needs a video dataset and a process group, so it cannot be
called alone): target encoder under no_grad, layer norm, target tokens; encoder + predictor on the context;
L1 loss (loss_exp, reg_coeff of the config); backward; AdamW step; EMA update of the target encoder. Two cases:
`reference-ema` (as `train_step()`) and `reference-frozen` (the same without the EMA update: a frozen teacher,
the SALT stage 2 situation). Its per-step statistics (`grad_logger`, `adamw_logger`) are timed apart and
left out of its step time, as our bench has no logging in its step. One CPU process, so no DDP wrapper.

Same work on both sides: the reference's collator draws the masks once (a fresh collator draws the same masks
for every case and round), and our steps run on those draws (`--own-masks`: our sampler's, as launch.bench; its
masks differ, e.g. 131 against the reference's 168 context tokens per clip over the 5 timed steps at the defaults).
Each round runs both sides (the side that goes first alternates), each case mean of `--steps` steps after
`--warmup`; printed: one line per round, then the medians over rounds and ours / reference per pair.

    git clone https://github.com/facebookresearch/jepa /tmp/jepa_ref    # needs torch, numpy, pyyaml
    python -m launch.bench_reference /tmp/jepa_ref --rounds 3 [--write]
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from launch import bench
from vjepa.masks.generators import Mask

# what the reference step imports, relative to the checkout: missing ones mean the path is not a jepa checkout
REFERENCE_FILES = ("app/vjepa/utils.py", "src/models/vision_transformer.py", "src/models/predictor.py",
                   "src/masks/multiblock3d.py", "src/masks/utils.py", "src/utils/tensors.py", "src/utils/logging.py")
REFERENCE_CONFIG = "configs/pretrain/vitl16.yaml"  # mask recipe (8 x 0.15 + 2 x 0.7), loss, AdamW + schedules
REFERENCE_CASES = ("reference-ema", "reference-frozen")
# our case -> the reference case doing the same work (salt-cached does less: no teacher forward)
COUNTERPART = {"vjepa": "reference-ema", "salt": "reference-frozen", "salt-cached": "reference-frozen"}
SAME_WORK = {"vjepa", "salt"}
GOAL = 0.8  # reference.md §8: "train step <= 0.8x the reference at this config"

# Run as `python -c REFERENCE_STEP SETTINGS_JSON` in the checkout; the last stdout line is the result (JSON).
REFERENCE_STEP = r'''
import copy
import hashlib
import json
import logging
import sys
import time

import torch
import torch.nn.functional as F
import yaml

from app.vjepa.utils import init_opt, init_video_model
from src.masks.multiblock3d import MaskCollator
from src.masks.utils import apply_masks
from src.utils.logging import adamw_logger, grad_logger
from src.utils.tensors import repeat_interleave_batch


def setup(s, cfg):
    """Models, a fresh mask collator (its draw counter from 0) and the clips, from seed 0. The collator places its
    blocks with the global RNG, so whatever draws masks after this setup draws the same ones."""
    torch.manual_seed(0)
    model = cfg["model"]
    encoder, predictor = init_video_model(
        device=torch.device("cpu"), patch_size=16, num_frames=s["frames"], tubelet_size=2, model_name="vit_tiny",
        crop_size=s["size"], pred_depth=s["pred_depth"], pred_embed_dim=s["pred_width"],
        uniform_power=model.get("uniform_power", True), use_mask_tokens=model.get("use_mask_tokens", True),
        num_mask_tokens=len(cfg["mask"]), zero_init_mask_tokens=model.get("zero_init_mask_tokens", True),
        use_sdpa=cfg["meta"].get("use_sdpa", False))
    target_encoder = copy.deepcopy(encoder)
    for p in target_encoder.parameters():
        p.requires_grad = False
    collator = MaskCollator(cfgs_mask=cfg["mask"], crop_size=s["size"], num_frames=s["frames"], patch_size=16,
                            tubelet_size=2)
    clips = torch.randn(s["batch"], 3, s["frames"], s["size"], s["size"])  # fixed random clips, as launch.bench's
    return encoder, predictor, target_encoder, collator, clips


def digest(drawn):
    """sha1 of the masks drawn, step by step and kind by kind (context, then target), as int64."""
    h = hashlib.sha1()
    for masks_enc, masks_pred in drawn:
        for context, target in zip(masks_enc, masks_pred):
            h.update(context.to(torch.int64).numpy().tobytes())
            h.update(target.to(torch.int64).numpy().tobytes())
    return h.hexdigest()


def draw_masks(s, cfg, path):
    """The masks time_case's steps get (same setup, then the same draws), to .npz; their digest."""
    import numpy
    *_, collator, _ = setup(s, cfg)
    drawn, arrays = [], {}
    for i in range(s["warmup"] + s["steps"]):
        _, masks_enc, masks_pred = collator(list(range(s["batch"])))
        drawn.append((masks_enc, masks_pred))
        for k, (context, target) in enumerate(zip(masks_enc, masks_pred)):
            arrays[f"context_{i}_{k}"], arrays[f"target_{i}_{k}"] = context.numpy(), target.numpy()
    numpy.savez(path, **arrays)
    return digest(drawn)


def time_case(s, cfg, ema):
    encoder, predictor, target_encoder, collator, clips = setup(s, cfg)
    optim, loss_cfg = cfg["optimization"], cfg["loss"]
    ipe, epochs, ipe_scale = optim["ipe"], optim["epochs"], optim.get("ipe_scale", 1.0)
    optimizer, _, scheduler, wd_scheduler = init_opt(
        encoder=encoder, predictor=predictor, wd=float(optim["weight_decay"]),
        final_wd=float(optim["final_weight_decay"]), start_lr=optim["start_lr"], ref_lr=optim["lr"],
        final_lr=optim["final_lr"], iterations_per_epoch=ipe, warmup=optim["warmup"], num_epochs=epochs,
        ipe_scale=ipe_scale, mixed_precision=False, betas=tuple(optim.get("betas", (0.9, 0.999))),
        eps=optim.get("eps", 1e-8))
    momentum_start, momentum_end = optim["ema"]
    momentum_steps = ipe * epochs * ipe_scale
    loss_exp, reg_coeff = loss_cfg["loss_exp"], loss_cfg["reg_coeff"]
    batch = s["batch"]
    drawn = []
    parts = dict.fromkeys(("data", "teacher_fwd", "student_fwd", "backward", "optimizer", "ema", "stats",
                           "context_tokens", "target_tokens"), 0.0)
    for i in range(s["warmup"] + s["steps"]):
        timed = i >= s["warmup"]
        clock = [time.perf_counter()]

        def lap(part):
            now = time.perf_counter()
            if timed:
                parts[part] += now - clock[0]
            clock[0] = now

        # the collator also collates the batch's items; the clips exist already (made once, like ours), so it
        # collates item indices and its mask generators draw this step's masks
        _, masks_enc, masks_pred = collator(list(range(batch)))
        drawn.append((masks_enc, masks_pred))
        masks_enc = [repeat_interleave_batch(m, batch, repeat=1) for m in masks_enc]
        masks_pred = [repeat_interleave_batch(m, batch, repeat=1) for m in masks_pred]
        lap("data")
        scheduler.step()
        wd_scheduler.step()
        lap("optimizer")
        with torch.no_grad():
            h = target_encoder(clips)
            h = F.layer_norm(h, (h.size(-1),))
            h = apply_masks(h, masks_pred, concat=False)
        lap("teacher_fwd")
        z = predictor(encoder(clips, masks_enc), h, masks_enc, masks_pred)
        loss_jepa = sum(torch.mean(torch.abs(zi - hi) ** loss_exp) / loss_exp for zi, hi in zip(z, h)) / len(h)
        pstd_z = sum(torch.sqrt(zi.var(dim=1) + 0.0001) for zi in z) / len(z)
        loss = loss_jepa + reg_coeff * torch.mean(F.relu(1.0 - pstd_z))
        lap("student_fwd")
        loss.backward()
        lap("backward")
        optimizer.step()
        lap("optimizer")
        grad_logger(encoder.named_parameters())
        grad_logger(predictor.named_parameters())
        lap("stats")
        optimizer.zero_grad()
        lap("optimizer")
        adamw_logger(optimizer)
        lap("stats")
        if ema:
            m = momentum_start + i * (momentum_end - momentum_start) / momentum_steps
            with torch.no_grad():
                for q, k in zip(encoder.parameters(), target_encoder.parameters()):
                    k.data.mul_(m).add_((1.0 - m) * q.detach().data)
        lap("ema")
        if timed:
            parts["context_tokens"] += sum(m.shape[1] for m in masks_enc)
            parts["target_tokens"] += sum(m.shape[1] for m in masks_pred)
    out = {k: v / s["steps"] for k, v in parts.items()}
    out["step"] = sum(out[k] for k in ("data", "teacher_fwd", "student_fwd", "backward", "optimizer", "ema"))
    out["masks_sha1"] = digest(drawn)
    return out


if __name__ == "__main__":
    settings = json.loads(sys.argv[1])
    torch.set_num_threads(settings["threads"])
    with open(settings["config"]) as f:
        cfg = yaml.safe_load(f)
    logging.getLogger().setLevel(logging.WARNING)  # app.vjepa.utils would print each model at INFO on stdout
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cases": {}}
    if settings.get("masks_out"):
        result["masks_sha1"] = draw_masks(settings, cfg, settings["masks_out"])
    for name in settings["cases"]:
        result["cases"][name] = time_case(settings, cfg, ema=name == "reference-ema")
    print(json.dumps(result))
'''


class NotAReferenceCheckout(ValueError):
    """The path given as the reference is not a checkout of facebookresearch/jepa."""


@dataclass
class StepSettings:
    """One train step's shape, shared by both sides (attribute names as launch.bench's arguments)."""
    batch: int = 8
    frames: int = 16
    size: int = 128
    pred_width: int = 96
    pred_depth: int = 4
    steps: int = 5
    warmup: int = 2
    threads: int = 2


def check_checkout(checkout: Path, config: str = REFERENCE_CONFIG) -> Path:
    """The checkout as an absolute path, or NotAReferenceCheckout naming it and the first file it lacks."""
    checkout = Path(checkout).expanduser().resolve()
    if not checkout.is_dir():
        raise NotAReferenceCheckout(f"{checkout}: no such directory (expected a checkout of facebookresearch/jepa: "
                                    "git clone https://github.com/facebookresearch/jepa)")
    for rel in (*REFERENCE_FILES, config):
        if not (checkout / rel).is_file():
            raise NotAReferenceCheckout(f"{checkout} is not a checkout of facebookresearch/jepa: {checkout / rel} "
                                        "is missing")
    return checkout


def checkout_commit(checkout: Path) -> str:
    """The checkout's git commit (short), or 'unknown commit' when it is not a git work tree."""
    got = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                         text=True)
    return got.stdout.strip() if got.returncode == 0 else "unknown commit"


def run_reference(checkout: Path, settings: StepSettings, config: str = REFERENCE_CONFIG, **request) -> dict:
    """Run REFERENCE_STEP in the checkout with the settings and ``request`` (cases=[...] to time them,
    masks_out=PATH to draw the masks); its result line, parsed."""
    checkout = check_checkout(checkout, config)
    # the checkout alone on the path (its `src` and `app` packages); otherwise this process's environment, and the
    # threads set by torch.set_num_threads as on our side, so that both sides start their thread pools alike
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    request = json.dumps({**asdict(settings), "cases": [], **request, "config": str(checkout / config)})
    got = subprocess.run([sys.executable, "-c", REFERENCE_STEP, request], cwd=checkout, env=env,
                         capture_output=True, text=True)
    if got.returncode != 0:
        tail = "\n".join(got.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"the reference train step in {checkout} failed (exit {got.returncode}):\n{tail}")
    lines = got.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError) as e:
        raise RuntimeError(f"the reference train step in {checkout} printed no result line (JSON) at the end of "
                           f"its output: {lines[-3:]}") from e
    if result["threads"] != settings.threads:
        raise RuntimeError(f"the reference step ran on {result['threads']} threads, not {settings.threads}")
    return result


def time_reference(checkout: Path, settings: StepSettings, cases=REFERENCE_CASES,
                   config: str = REFERENCE_CONFIG) -> dict[str, dict]:
    """{case: mean seconds per part, step, tokens per clip} of the reference's step, run in its own process."""
    return run_reference(checkout, settings, config, cases=list(cases))["cases"]


def masks_digest(masks: list[list[Mask]]) -> str:
    """sha1 of each step's masks, kind by kind (context, then target, as int64): REFERENCE_STEP's digest()."""
    h = hashlib.sha1()
    for step in masks:
        for m in step:
            h.update(m.context.to(torch.int64).numpy().tobytes())
            h.update(m.target.to(torch.int64).numpy().tobytes())
    return h.hexdigest()


def reference_masks(checkout: Path, settings: StepSettings, config: str = REFERENCE_CONFIG) -> list[list[Mask]]:
    """The masks the reference's collator draws in its timed cases' warm-up + timed steps (the same setup from
    seed 0, then the same draws), one Mask per mask kind and step."""
    with tempfile.TemporaryDirectory(prefix="reference-masks-") as tmp:
        path = Path(tmp) / "masks.npz"
        sent = run_reference(checkout, settings, config, masks_out=str(path))["masks_sha1"]
        with np.load(path) as arrays:
            kinds = sum(1 for name in arrays.files if name.startswith("context_0_"))
            masks = [[Mask(torch.from_numpy(arrays[f"context_{i}_{k}"]), torch.from_numpy(arrays[f"target_{i}_{k}"]))
                      for k in range(kinds)] for i in range(settings.warmup + settings.steps)]
    if masks_digest(masks) != sent:
        raise RuntimeError(f"the masks read back from {path.name} are not the ones the reference process wrote")
    return masks


def time_ours(settings: StepSettings, cases=("vjepa", "salt", "salt-cached"),
              masks: list[list[Mask]] | None = None) -> dict[str, dict]:
    """{case: launch.bench.time_steps' result} of our cases, in this process, on CPU; ``masks``: each step's
    masks (default: drawn by our sampler, as launch.bench does)."""
    threads_before = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    out = {}
    try:
        for name in cases:
            kind, student, teacher = bench.CASES[name]
            torch.manual_seed(0)
            method, gens = bench.build(kind, student, teacher, settings)
            if masks is not None and len(masks[0]) != len(gens):
                raise ValueError(f"{len(masks[0])} mask kinds given, our {name} step has {len(gens)}")
            out[name] = bench.time_steps(method, gens, settings, torch.device("cpu"), cached=kind == "salt-cached",
                                         masks=masks)
            del method
    finally:  # the caller's thread count back (a test run goes on in this process)
        torch.set_num_threads(threads_before)
    return out


def run_rounds(checkout: Path | None, settings: StepSettings, rounds: int, cases=("vjepa", "salt", "salt-cached"),
               log=print, config: str = REFERENCE_CONFIG, masks: list[list[Mask]] | None = None) -> list[dict]:
    """Per round {"order", "load", "cases": {case: result}}: both sides back to back, the reference first in even
    rounds, ours first in odd ones (a drift in the machine's load then weighs on both). ``checkout`` None: our
    cases only (the same loop and table without the reference). ``masks``: what our steps run on (see
    reference_masks), default our own sampler's draws."""
    out = []
    for r in range(rounds):
        order = ["reference", "ours"] if r % 2 == 0 else ["ours", "reference"]
        if checkout is None:
            order.remove("reference")
        load = os.getloadavg()[0]
        results = {}
        for side in order:
            results.update(time_reference(checkout, settings, config=config) if side == "reference"
                           else time_ours(settings, cases, masks))
        if masks is not None:  # the same work on both sides, or the ratio means nothing
            expected = masks_digest(masks)
            for name in REFERENCE_CASES:
                if name in results and results[name]["masks_sha1"] != expected:
                    raise RuntimeError(f"round {r}: {name} drew other masks than the ones our steps ran on")
        out.append({"order": order, "load": load, "cases": results})
        log(round_line(r, out[-1]))
    return out


def ratio(rounds: list[dict], case: str, baseline: str) -> tuple[float, float, float]:
    """(median step of ``case`` / median step of ``baseline``, lowest and highest per-round ratio)."""
    per_round = [r["cases"][case]["step"] / r["cases"][baseline]["step"] for r in rounds]
    median = float(np.median([r["cases"][case]["step"] for r in rounds]) /
                   np.median([r["cases"][baseline]["step"] for r in rounds]))
    return median, min(per_round), max(per_round)


def round_line(index: int, result: dict) -> str:
    steps = []
    for name, r in result["cases"].items():
        base = COUNTERPART.get(name)
        vs = (f" ({r['step'] / result['cases'][base]['step']:.2f}x)" if base in result["cases"] else "")
        steps.append(f"{name} {r['step']:.3f} s{vs}")
    return (f"round {index} ({' first, then '.join(result['order'])}; load {result['load']:.2f}): "
            + ", ".join(steps))


def medians(rounds: list[dict], case: str) -> dict:
    """Per measured quantity of ``case``, its median over the rounds (what is no number, such as the MFU on CPU or
    the masks' digest, left out)."""
    first = rounds[0]["cases"][case]
    return {k: float(np.median([r["cases"][case][k] for r in rounds])) for k, v in first.items()
            if isinstance(v, (int, float))}


def table(rounds: list[dict], settings: StepSettings, load_start, load_end, command: str,
          reference: str | None = None, started: str = "", finished: str = "", shared_masks: bool = False) -> str:
    """The section's markdown: what ran, one line per round, the medians and ours / reference."""
    ref = (f"Reference: facebookresearch/jepa {reference}, vit_tiny + vit_predictor from src/models, its "
           f"multiblock3d MaskCollator, {REFERENCE_CONFIG}'s mask, loss and AdamW settings, in its own process. "
           if reference else "Our cases only (no reference checkout given). ")
    masks = ("the reference collator's draws on both sides, the same in every round and case" if shared_masks
             else "each side draws its own masks")
    threads = f"{settings.threads} thread" + ("s" if settings.threads != 1 else "")
    loads = ", ".join(f"{x:.2f}" for x in load_start), ", ".join(f"{x:.2f}" for x in load_end)
    lines = [f"Measured {started}-{finished} on cpu ({platform.processor() or platform.machine()}, {threads}, "
             f"torch {torch.__version__}); `uptime` load averages (1, 5, 15 min) {loads[0]} at the start, "
             f"{loads[1]} at the end, on {os.cpu_count()} cores. {ref}Both sides: batch {settings.batch}, "
             f"{settings.frames}x{settings.size}x{settings.size} clips, 2x16x16 tubelets, ViT-tiny, predictor "
             f"{settings.pred_width}x{settings.pred_depth}, multi-block masks ({masks}), fp32, random clips; per case "
             f"and round the mean of {settings.steps} steps after {settings.warmup} warm-up; {len(rounds)} rounds, the "
             f"side that goes first alternating. In brackets: ours / the reference case doing the same work. "
             f"Command: `{command}`.", ""]
    if max(load_start[0], load_end[0]) > (os.cpu_count() or 1):
        lines[0] += (" The machine was shared (load above its core count): absolute times are inflated and per-round "
                     "ratios scatter; the medians are the measurement.")
    lines += [f"- {round_line(i, r)}" for i, r in enumerate(rounds)]
    lines += ["", "Medians over the rounds (seconds per step; tokens = context / target tokens per clip over both "
              "mask kinds, mean over the timed steps):", "",
              "| case | teacher | step (s) | range over rounds | teacher fwd | student fwd | backward | optimiser | "
              "EMA | tokens | ours / reference |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    teachers = {"reference-ema": "EMA", "reference-frozen": "frozen", "vjepa": "EMA", "salt": "frozen",
                "salt-cached": "cached targets"}
    for name in rounds[0]["cases"]:
        m = medians(rounds, name)
        steps = [r["cases"][name]["step"] for r in rounds]
        base = COUNTERPART.get(name)
        vs = "-"
        if base in rounds[0]["cases"]:
            med, lo, hi = ratio(rounds, name, base)
            vs = f"{med:.2f}x {base} ({lo:.2f}-{hi:.2f})"
        lines.append(f"| {name} | {teachers.get(name, '-')} | {m['step']:.3f} | {min(steps):.3f}-{max(steps):.3f} | "
                     f"{m['teacher_fwd']:.3f} | {m['student_fwd']:.3f} | {m['backward']:.3f} | {m['optimizer']:.3f} | "
                     f"{m['ema']:.4f} | {m['context_tokens']:.0f} / {m['target_tokens']:.0f} | {vs} |")
    if "stats" in rounds[0]["cases"].get("reference-ema", {}):
        stats = medians(rounds, "reference-ema")["stats"]
        lines += ["", f"Not in the reference's step time: its per-step statistics (grad_logger, adamw_logger), "
                      f"{stats:.3f} s median."]
    for name in rounds[0]["cases"]:
        base = COUNTERPART.get(name)
        if base not in rounds[0]["cases"]:
            continue
        med, lo, hi = ratio(rounds, name, base)
        if name in SAME_WORK:
            verdict = "meets" if med <= GOAL else "does not meet"
            lines.append(f"- {name} / {base}: **{med:.2f}x** (per round {lo:.2f}-{hi:.2f}x), the same work; "
                         f"{verdict} the <= {GOAL}x goal of reference.md §8.")
        else:
            lines.append(f"- {name} / {base}: {med:.2f}x (per round {lo:.2f}-{hi:.2f}x): less work, the teacher "
                         "forward is replaced by a read of cached targets.")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkout", type=Path, help="a checkout of facebookresearch/jepa (its src/ and app/)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cases", nargs="+", default=["vjepa", "salt", "salt-cached"], choices=list(COUNTERPART))
    p.add_argument("--config", default=REFERENCE_CONFIG,
                   help="the reference config (relative to the checkout) whose mask, loss and AdamW settings it uses")
    p.add_argument("--own-masks", action="store_true",
                   help="our steps draw their own masks (default: the reference collator's draws, so that both "
                        "sides do the same work)")
    for name, default in asdict(StepSettings()).items():
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    p.add_argument("--write", action="store_true", help="write the result into docs/benchmarks.md")
    p.add_argument("--section", default="Train step vs the reference",
                   help="the docs/benchmarks.md section --write replaces")
    p.add_argument("--docs", type=Path, default=bench.DOCS, help="the markdown file --write edits")
    args = p.parse_args(argv)
    try:
        checkout = check_checkout(args.checkout, args.config)
    except NotAReferenceCheckout as e:
        raise SystemExit(str(e)) from None
    settings = StepSettings(**{k: getattr(args, k) for k in asdict(StepSettings())})
    command = "python -m launch.bench_reference " + shlex.join(sys.argv[1:] if argv is None else argv)
    load_start, started = os.getloadavg(), datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    t0 = time.perf_counter()
    masks = None if args.own_masks else reference_masks(checkout, settings, args.config)
    rounds = run_rounds(checkout, settings, args.rounds, args.cases, config=args.config, masks=masks)
    load_end, finished = os.getloadavg(), datetime.datetime.now().strftime("%H:%M")
    out = table(rounds, settings, load_start, load_end, command, f"at {checkout_commit(checkout)}", started,
                finished, shared_masks=masks is not None)
    print(out)
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.write:
        bench.write_section(args.section, out, args.docs)
    return rounds


if __name__ == "__main__":
    main()
