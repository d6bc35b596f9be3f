"""TC-JEPA vs the same run without text (I-JEPA / V-JEPA) vs a CLIP-style contrastive baseline, same
encoder, data, steps and seed; plus TC-JEPA with lambda = 0 to measure what the sparsity loss does.

    python -m launch.tcjepa_compare --data video --steps 200 --out runs/tcjepa-compare-video
    python -m data.openclipart --out runs/openclipart --max-per-category 60
    python -m launch.tcjepa_compare --data openclipart --manifests runs/openclipart --steps 200 \
        --out runs/tcjepa-compare-openclipart

Writes OUT/results.json, OUT/results.md (the table for docs/benchmarks.md) and OUT/attention.png (which
caption words the patches of a few validation items attend to, TC-JEPA with lambda = 0.1).
Extra hydra overrides go after `--`.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

import launch.train  # noqa: F401  (registers the config schema)
from vjepa.eval.protocol import family_means
from vjepa.train.build import build_method
from vjepa.train.checkpoint import load_file, load_state_strict
from vjepa.train.data import build_probe_loaders
from vjepa.train.experiment import run_experiment

REPO = Path(__file__).resolve().parents[1]

RUNS = {  # name -> overrides on top of the base experiment
    "tcjepa": [],
    "no_text": ["experiment.stages.0.method=vjepa"],
    "contrastive": ["experiment.stages.0.method=contrastive"],
    "tcjepa_lambda0": ["text.sparsity=0.0"],
    "tcjepa_centered": ["text.center_keys=true"],
    "tcjepa_centered_lambda0": ["text.center_keys=true", "text.sparsity=0.0"],
}


def base_overrides(args) -> list[str]:
    patch = args.patch or (16 if args.data == "video" else 8)
    common = [f"experiment.total_steps={args.steps}", "data.num_workers=0", f"data.batch_size={args.batch}",
              f"model.patch_size={patch}", f"model.depth={args.depth}", f"predictor.depth={args.pred_depth}",
              "predictor.embed_dim=96", "predictor.num_heads=4", "checkpoint_every=100000", "log_every=5",
              "optim.warmup_fraction=0.1"]
    if args.data == "video":
        return ["experiment=tcjepa", f"data.frames_per_clip={args.frames}", "data.crop_size=64", *common]
    m = Path(args.manifests).resolve()
    return ["experiment=tcjepa_openclipart", f"data.train=[{m / 'train.jsonl'}]", f"data.val={m / 'val.jsonl'}",
            "data.crop_size=64", *common]


def compose_cfg(overrides):
    with initialize_config_dir(str(REPO / "configs"), version_base=None):
        return compose("config", overrides=overrides)


def load_method(cfg, run_dir: Path):
    stage = cfg.experiment.stages[0]
    method, _, _ = build_method(cfg, stage)
    state = load_file(run_dir / stage.name / "final.pt")["models"]
    for name, module in method.saved_modules().items():
        load_state_strict(module, state[name], name)
    return method.eval()


@torch.no_grad()
def text_attention(method, video, captions):
    """Every patch as context and as target; returns per-layer overlaps and attention maps."""
    b = video.shape[0]
    n = method.encoder.grid[0] * method.encoder.grid[1] * method.encoder.grid[2]
    all_ids = torch.arange(n).expand(b, n)
    cond, _ = method.condition(captions, b)
    cond.keep_attention = True
    z = method.encoder(video, all_ids)
    method.predictor(z, all_ids, all_ids, method.encoder.patch_embed_grid(video), condition=cond)
    return cond


@torch.no_grad()
def measure_sparsity(method, loader, max_batches=4) -> dict:
    """Mean rectified patch-word cosine O and the share of exact zeros, over real words of validation items."""
    total, zeros, count = 0.0, 0, 0
    for i, batch in enumerate(loader):
        if i == max_batches:
            break
        cond = text_attention(method, batch["video"], batch["captions"])
        words = (cond.token_mask[:, :, None, :] & cond.caption_mask[:, :, None, None]).expand(
            -1, -1, cond.overlaps[0].shape[2], -1)
        for o in cond.overlaps:
            total += float(o[words].sum())
            zeros += int((o[words] == 0).sum())
            count += int(words.sum())
    return {"overlap_mean": total / count, "overlap_zero_share": zeros / count}


def plot_attention(method, batch, out: Path, items: int = 4) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    video, captions = batch["video"][:items], [c[:1] for c in batch["captions"][:items]]
    cond = text_attention(method, video, captions)
    t, h, w = method.encoder.grid
    attn = torch.stack(cond.attentions).mean(0)[:, 0, : t * h * w]  # layers averaged, first caption: [B, K, S]
    tok = method.text_encoder.tokenizer
    rows = []
    for i in range(len(captions)):
        if not captions[i]:
            continue
        words = tok.convert_ids_to_tokens(tok(captions[i][0], truncation=True,
                                              max_length=method.text_encoder.max_tokens)["input_ids"])
        rows.append((i, words))
    cols = 1 + max(len(w) for _, w in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.6 * cols, 1.8 * len(rows)), squeeze=False)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    for r, (i, words) in enumerate(rows):
        img = (video[i, :, video.shape[2] // 2].permute(1, 2, 0) * std + mean).clamp(0, 1)
        axes[r, 0].imshow(img)
        axes[r, 0].set_title(captions[i][0][:28], fontsize=7)
        a = attn[i].reshape(t, h, w, -1).mean(0)[..., :len(words)]  # over time: [h, w, words]
        lo, hi = float(a.min()), float(a.max())  # one scale per image, so words compare with each other
        for j, word in enumerate(words):
            axes[r, 1 + j].imshow(a[..., j], vmin=lo, vmax=hi, cmap="magma")
            axes[r, 1 + j].set_title(f"{word}\n{float(a[..., j].mean()):.2f}", fontsize=7)
        axes[r, 0].set_ylabel(f"{lo:.2f}-{hi:.2f}")
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("patch -> word attention, TC-JEPA (mean over predictor layers and time; brighter = more; "
                 "number = mean weight)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", choices=["video", "openclipart"], default="video")
    p.add_argument("--manifests", default="runs/openclipart")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--patch", type=int, default=None, help="default 16 for video, 8 for 64-px images")
    p.add_argument("--frames", type=int, default=8, help="frames per clip (video)")
    p.add_argument("--pred-depth", type=int, default=4)
    p.add_argument("--runs", default="tcjepa,no_text,contrastive,tcjepa_lambda0,tcjepa_centered")
    p.add_argument("--out", required=True)
    p.add_argument("extra", nargs="*", help="hydra overrides for every run")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    for name in args.runs.split(","):
        cfg = compose_cfg(base_overrides(args) + RUNS[name] + args.extra + [f"run_dir={out / name}"])
        t0 = time.perf_counter()
        summary = run_experiment(cfg, out / name)
        res = {"probe": family_means(summary["probe"].get("student", {})),
               "random_init": family_means(summary["probe"].get("random-init", {})),
               "final_loss": summary["stages"]["student"]["final_loss"],
               "train_seconds": summary["stages"]["student"]["wall_seconds"], "total_seconds": time.perf_counter() - t0}
        if name.startswith("tcjepa"):
            method = load_method(cfg, out / name)
            _, val_loader = build_probe_loaders(cfg)
            res["sparsity"] = measure_sparsity(method, val_loader)
            if name == "tcjepa":
                plot_attention(method, next(iter(val_loader)), out / "attention.png")
        results[name] = res
        (out / "results.json").write_text(json.dumps(results, indent=2))
    labels = sorted({k for r in results.values() for k in r["probe"]})
    nan = float("nan")
    lines = ["| run | final loss | " + " | ".join(f"probe {label} (%)" for label in labels) + " | O mean | O zeros |",
             "|---|---|" + "---|" * len(labels) + "---|---|"]
    first = next(iter(results.values()))
    lines.append("| random init | - | " + " | ".join(f"{first['random_init'].get(label, nan):.1f}" for label in labels)
                 + " | - | - |")
    for name, r in results.items():
        s = r.get("sparsity", {})
        probe = " | ".join(f"{r['probe'].get(label, nan):.1f}" for label in labels)
        lines.append(f"| {name} | {r['final_loss']:.4f} | {probe} | {s.get('overlap_mean', nan):.3f} | "
                     f"{s.get('overlap_zero_share', nan):.2f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
