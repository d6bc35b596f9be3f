"""Run outputs: metrics.csv, TensorBoard events, a progress bar, the loss-curve plot, and the stage table.

Beside the loss, each row has what two trivial predictors score on the same targets (vjepa/methods/base.py
`trivial_losses`) and `loss_ratio` = loss / the better of the two: a stage learns something beyond the
trivial answers only when its ratio falls clearly below 1 (docs/architecture.md, "Reading a run").
"""
from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

from tqdm import tqdm

COLUMNS = ["step", "loss", "trivial_zero", "trivial_position", "loss_ratio", "lr", "weight_decay", "grad_norm",
           "clips_per_s", "data_wait_s", "step_s", "momentum"]

# A stage counts as learning when its tail loss is below 90% of the better trivial baseline. A predictor
# that learned only the per-position mean target (or nothing: zeros) scores a ratio of about 1.0; the 10%
# margin keeps a stage that merely ties a trivial baseline, up to the noise of a tail mean, from passing.
LEARNING_RATIO = 0.9


def mean_diagnostics(steps: list[tuple[float, float, float, float]]) -> dict[str, float | None]:
    """Per-step (loss, predict, trivial_zero, trivial_position) -> their means as "loss", "trivial_zero",
    "trivial_position", and "loss_ratio" = mean predict / min(mean trivial_zero, mean trivial_position)
    ("predict" is the prediction term the baselines compare with; the loss itself for all but TC-JEPA).
    A method without baselines gives NaN for them, None here."""
    if not steps:
        return {"loss": None, "trivial_zero": None, "trivial_position": None, "loss_ratio": None}
    loss, predict, zero, position = (math.fsum(col) / len(steps) for col in zip(*steps))
    zero, position = (None if math.isnan(v) else v for v in (zero, position))
    best = None if zero is None or position is None else min(zero, position)
    ratio = predict / best if best else None  # None also when a baseline is 0 (all-zero targets)
    return {"loss": loss, "trivial_zero": zero, "trivial_position": position, "loss_ratio": ratio}


def stage_lines(summary: dict) -> list[str]:
    """The stage table of an experiment summary ({"stages": {name: train_stage's summary}}), header first:
    steps, tail loss, the two trivial baselines, their ratio and wall time, and a NOT LEARNING marker on a
    stage whose ratio is >= LEARNING_RATIO."""
    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = [f"{'stage':<12} {'steps':>6} {'tail loss':>10} {'trivial zero':>13} {'trivial position':>17} "
             f"{'ratio':>6} {'wall (s)':>9}"]
    for name, s in summary["stages"].items():
        trivial = s.get("final_trivial") or {}
        ratio = s.get("final_loss_ratio")
        line = (f"{name:<12} {s['steps']:>6} {num(s.get('tail_loss'), '.4f'):>10} "
                f"{num(trivial.get('zero'), '.4f'):>13} {num(trivial.get('position'), '.4f'):>17} "
                f"{num(ratio, '.3f'):>6} {num(s.get('wall_seconds'), '.1f'):>9}")
        if s.get("learning") is False:
            line += f"   NOT LEARNING (ratio {ratio:.3f} >= {LEARNING_RATIO})"
        lines.append(line)
    return lines


class MetricsLogger:
    def __init__(self, stage_dir: Path, stage: str, total_steps: int, start_step: int, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(stage_dir) / "metrics.csv"
        self.stage = stage
        self.bar = None
        self.writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(start_step)  # a resumed run rewrites the steps after its checkpoint
        new = not self.path.exists()
        self.file = open(self.path, "a", newline="")
        self.csv = csv.DictWriter(self.file, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            self.csv.writeheader()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(stage_dir) / "tb"), purge_step=start_step or None)
        self.bar = tqdm(total=total_steps, initial=start_step, desc=stage, dynamic_ncols=True,
                        disable=not sys.stderr.isatty(), leave=False)

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    def log(self, step: int, row: dict) -> None:
        if not self.enabled:
            return
        row = {"step": step, **row}
        self.csv.writerow(row)
        self.file.flush()
        for k, v in row.items():
            if k != "step" and v is not None:
                self.writer.add_scalar(f"{self.stage}/{k}", v, step)
        ratio = "-" if row.get("loss_ratio") is None else f"{row['loss_ratio']:.3f}"
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", ratio=ratio, lr=f"{row['lr']:.2e}",
                             clips_s=f"{row['clips_per_s']:.1f}")

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if not self.enabled:
            return
        self.bar.close()
        self.writer.close()
        self.file.close()


def read_metrics(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: float(v) if v not in ("", None) else None for k, v in r.items()} for r in csv.DictReader(f)]


def plot_losses(stage_csvs: dict[str, Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(stage_csvs), figsize=(5 * len(stage_csvs), 3.5), squeeze=False)
    for ax, (name, path) in zip(axes[0], stage_csvs.items()):
        rows = read_metrics(path)
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
