"""How fast would the reference loader run here, now? Calibrates data.bench's "x reference" column.

reference.md §8's loader numbers (15.7 clips/s with 2 workers) were measured on another day on this kind of
machine, next to the reference's own decoder: bare decord 0.6.0 over 2 processes, 16.4 clips/s. This script
runs that same bare decoder (decord 0.6.0, installed apart: the `decord2` we use provides the same module
name) on the same clips, back to back with our loader, and scales the reference loader by the ratio:

    reference loader now ~= 15.7 * (bare decord 0.6.0 here, now) / 16.4

    pip install --no-deps --target /tmp/decord06 decord==0.6.0
    python -m data.calibrate_reference /tmp/decord06 [--videos /tmp/benchvids] [--rounds 5]

Prints one line per round and the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

BARE = """
import json, sys
from pathlib import Path
import decord
from data.bench import _items, bare_clips_per_s, loader_keys
if __name__ == "__main__":
    items = _items(Path(sys.argv[1]))
    rates = [bare_clips_per_s(items, "decord", loader_keys(items, 192), p)[0] for p in (1, 2)]
    print(json.dumps({"version": decord.__version__, "rates": rates}))
"""


def bare_reference_decord(path: Path, csv: Path) -> tuple[str, float, float]:
    """(decord version, clips/s with 1 and 2 processes) of the decord installed under ``path``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), str(REPO)])}
    out = subprocess.run([sys.executable, "-c", BARE, str(csv)], env=env, cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    got = json.loads(out.strip().splitlines()[-1])
    return got["version"], *got["rates"]


def main() -> None:
    from data.bench import REFERENCE, _items, loader_clips_per_s
    from data.benchvideos import make_bench_videos

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("decord_path", type=Path, help="folder holding decord 0.6.0 (pip install --target)")
    p.add_argument("--videos", type=Path, default=Path("/tmp/benchvids"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--backend", default="pyav")
    a = p.parse_args()
    csv = a.videos / "videos.csv"
    if not csv.exists():
        csv = make_bench_videos(a.videos)
    items = _items(csv)
    ratios = []
    for r in range(a.rounds):
        version, one, two = bare_reference_decord(a.decord_path, csv)
        if version != "0.6.0":
            raise SystemExit(f"{a.decord_path} holds decord {version}, not the reference's 0.6.0")
        rate, _ = loader_clips_per_s(items, a.backend, 2, 24)
        reference_now = REFERENCE[2] * two / 16.4
        ratios.append(rate / reference_now)
        print(f"round {r}: bare decord 0.6.0 {one:.1f} (1 process; reference.md: 12.5) / {two:.1f} (2; 16.4) "
              f"clips/s -> reference loader now ~{reference_now:.1f}; {a.backend} loader, 2 workers: "
              f"{rate:.1f} = {rate / reference_now:.2f}x", flush=True)
    print(f"median: {a.backend} loader with 2 workers = {np.median(ratios):.2f}x the reference loader, calibrated "
          f"(range {min(ratios):.2f}-{max(ratios):.2f}x over {a.rounds} rounds)")


if __name__ == "__main__":
    main()
