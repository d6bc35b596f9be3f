"""`python -m launch.seeds --out DIR [--seeds 0 1 2] [-- hydra overrides ...]`: the whole pipeline once per seed,
then one table over the seeds.

Each seed is a fresh `python -m launch.train seed=S run_dir=DIR/seed_S ...` process (a finished seed is not rerun:
its summary.json is read back, or with `--reprobe` its trained stages are probed again; an unfinished one
resumes). The table (DIR/seeds.md, also printed) gives, per probe family, every row's val top-1 as mean ± standard
error over the pipeline seeds, each seed's own value being the mean over its probe seeds; then each seed's checks
of the evidence-of-learning bar:

  - the student beats the random-init encoder on the appearance label by >= 6 points (every family);
  - the student is not worse than random init by more than 2 points on any motion label (every family);
  - the student beats its pixel teacher on the mean over labels (every family);
  - the teacher's tail loss is at most 0.7x its best trivial baseline.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from vjepa.eval.protocol import mean_se

APPEARANCE, MOTION = ("digit",), ("direction", "speed")
MARGIN_APPEARANCE, MARGIN_MOTION, TEACHER_RATIO = 6.0, 2.0, 0.7


def run_seed(out: Path, seed: int, overrides: list[str], reprobe: bool = False) -> dict:
    run_dir = out / f"seed_{seed}"
    summary = run_dir / "summary.json"
    if reprobe and summary.exists():  # its stages are complete: launch.train only probes them again
        kept = summary.with_name(f"summary.before-{time.strftime('%Y%m%d-%H%M%S')}.json")
        summary.rename(kept)
        print(f"seed {seed}: probing again (the old summary is {kept})", flush=True)
    if not summary.exists():
        cmd = [sys.executable, "-m", "launch.train", f"seed={seed}", f"run_dir={run_dir}",
               f"hydra.run.dir={run_dir}", *overrides]
        print("$", " ".join(cmd), flush=True)
        t = time.perf_counter()
        subprocess.run(cmd, check=True)
        print(f"seed {seed}: {time.perf_counter() - t:.0f} s", flush=True)
    return json.loads(summary.read_text())


def _mean(cell: dict | None) -> float:
    return float("nan") if not cell or cell.get("mean") is None else cell["mean"]


def seed_checks(summary: dict, student: str = "student", teacher: str | None = "teacher") -> dict:
    """The bar's checks on one seed's summary: {check: (passed, detail)}; checks that need a missing row
    are left out."""
    probe, stages, out = summary.get("probe", {}), summary.get("stages", {}), {}
    if student not in probe or "random-init" not in probe:
        return out
    for family, labels in probe[student].items():
        rand = probe["random-init"].get(family, {})
        for label in APPEARANCE:
            if label in labels:
                gap = _mean(labels[label]) - _mean(rand.get(label))
                out[f"{family}: {label} - random >= {MARGIN_APPEARANCE:g}"] = (gap >= MARGIN_APPEARANCE, f"{gap:+.1f}")
        for label in MOTION:
            if label in labels:
                gap = _mean(labels[label]) - _mean(rand.get(label))
                out[f"{family}: {label} - random >= -{MARGIN_MOTION:g}"] = (gap >= -MARGIN_MOTION, f"{gap:+.1f}")
        if teacher and teacher in probe:
            mine = [_mean(c) for c in labels.values()]
            theirs = [_mean(probe[teacher].get(family, {}).get(n)) for n in labels]
            gap = sum(mine) / len(mine) - sum(theirs) / len(theirs)
            out[f"{family}: mean over labels, {student} - {teacher} > 0"] = (gap > 0, f"{gap:+.1f}")
    if teacher and teacher in stages and stages[teacher].get("final_loss_ratio") is not None:
        r = stages[teacher]["final_loss_ratio"]
        out[f"{teacher} loss / trivial <= {TEACHER_RATIO:g}"] = (r <= TEACHER_RATIO, f"{r:.3f}")
    return out


def seeds_table(summaries: dict[int, dict], student: str = "student", teacher: str | None = "teacher") -> str:
    """Markdown: per family, rows x labels as mean ± SE over the seeds; the stages' loss ratios; the checks."""
    seeds = sorted(summaries)
    first = summaries[seeds[0]]
    rows = list(first.get("probe", {}))
    families = list(next(iter(first["probe"].values()), {})) if rows else []
    lines = [f"pipeline seeds: {', '.join(map(str, seeds))} (each value: mean over that seed's probe seeds; "
             "cells: mean ± standard error over the pipeline seeds)", ""]
    for family in families:
        labels = sorted({n for r in rows for n in first["probe"][r].get(family, {})})
        lines += [f"**{family} probe**, val top-1 %", "",
                  "| encoder | " + " | ".join(labels) + " | mean |", "|---|" + "---|" * (len(labels) + 1)]
        for row in rows:
            cells, means = [], []
            for label in labels:
                m, se = mean_se([_mean(summaries[s]["probe"].get(row, {}).get(family, {}).get(label)) for s in seeds])
                cells.append(f"{m:.1f} ± {se:.1f}" if not math.isnan(se) else f"{m:.1f}")
            for s in seeds:
                vals = [_mean(summaries[s]["probe"].get(row, {}).get(family, {}).get(n)) for n in labels]
                means.append(sum(vals) / len(vals))
            m, se = mean_se(means)
            lines.append(f"| {row} | " + " | ".join(cells) + f" | {m:.1f} ± {se:.1f} |")
        lines.append("")
    stage_names = list(first.get("stages", {}))
    lines += ["| stage | tail loss | trivial zero | trivial position | loss / best trivial | wall (s) |",
              "|---|---|---|---|---|---|"]

    def col(stage, key, sub=None):
        vals = []
        for s in seeds:
            v = summaries[s]["stages"][stage].get(key)
            v = v.get(sub) if isinstance(v, dict) else v
            vals.append(float("nan") if v is None else float(v))
        m, se = mean_se(vals)
        return f"{m:.4f} ± {se:.4f}" if key != "wall_seconds" else f"{m:.0f} ± {se:.0f}"

    for name in stage_names:
        lines.append(f"| {name} | {col(name, 'tail_loss')} | {col(name, 'final_trivial', 'zero')} | "
                     f"{col(name, 'final_trivial', 'position')} | {col(name, 'final_loss_ratio')} | "
                     f"{col(name, 'wall_seconds')} |")
    checks = {s: seed_checks(summaries[s], student, teacher) for s in seeds}
    names = list(dict.fromkeys(k for c in checks.values() for k in c))
    if names:
        lines += ["", "| check | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
        for name in names:
            cells = []
            for s in seeds:
                ok, detail = checks[s].get(name, (None, "-"))
                cells.append("-" if ok is None else f"{'pass' if ok else 'FAIL'} ({detail})")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder of the seeds' run directories and seeds.md")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--student", default="student", help="the stage held to the bar")
    p.add_argument("--teacher", default="teacher", help="its pixel teacher's stage ('' for none)")
    p.add_argument("--reprobe", action="store_true",
                   help="probe finished seeds again with the current probe settings (their trained stages are kept; "
                        "each old summary.json is renamed summary.before-<time>.json)")
    p.add_argument("overrides", nargs="*", help="hydra overrides for every seed, e.g. experiment=vjepa")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    summaries = {s: run_seed(out, s, a.overrides, a.reprobe) for s in a.seeds}
    table = seeds_table(summaries, a.student, a.teacher or None)
    (out / "seeds.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
