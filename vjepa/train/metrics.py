"""Run outputs: metrics.csv, TensorBoard events, a progress bar, and the loss-curve plot."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

from tqdm import tqdm

COLUMNS = ["step", "loss", "lr", "weight_decay", "grad_norm", "clips_per_s", "data_wait_s", "step_s", "momentum"]


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
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", clips_s=f"{row['clips_per_s']:.1f}")

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
