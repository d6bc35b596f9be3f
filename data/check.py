"""Check a manifest: every row parses and every file opens with readable metadata.

    python -m data.check MANIFEST [MANIFEST ...] [--backend decord|pyav|dali] [--frames-per-clip 16 --frame-step 4]
                                                [--decode]

Prints a table of problems (where, file, reason, detail) and exits 1 if there is any, 0 otherwise.
With ``--frames-per-clip``/``--frame-step`` videos shorter than one clip are reported as ``too_short``;
``--decode`` also decodes the last frame (catches truncated files whose header looks fine).
"""

from __future__ import annotations

import argparse
import sys

from data.dataset import is_image, read_image
from data.decoders import BACKENDS, DecodeError, open_video
from data.manifest import Problem, read_manifest


def check_items(manifest, backend: str = "decord", frames_per_clip: int = 1, frame_step: int = 1,
                decode: bool = False) -> tuple[int, list[Problem]]:
    """(number of rows read, problems) for one manifest."""
    items, problems = read_manifest(manifest)
    for item in items:
        try:
            if is_image(item.path):
                read_image(item.path)
                continue
            reader = open_video(item.path, backend)
            need = frames_per_clip * frame_step
            if reader.num_frames < need:
                raise DecodeError(item.path, "too_short", f"{reader.num_frames} frames, a clip needs {need}")
            if decode:
                reader.get_frames([reader.num_frames - 1])
            reader.close()
        except DecodeError as e:
            problems.append(Problem(item.source, item.path, e.reason, e.detail))
        except Exception as e:  # never let one odd file stop the check
            problems.append(Problem(item.source, item.path, "error", f"{type(e).__name__}: {e}"[:200]))
    def line(p: Problem) -> int:
        tail = p.where.rsplit(":", 1)[-1]
        return int(tail) if tail.isdigit() else 0
    return len(items) + sum(p.reason in ("bad_row", "bad_label") for p in problems), sorted(problems, key=line)


def format_table(problems: list[Problem]) -> str:
    rows = [("where", "file", "reason", "detail")] + [(p.where, p.path, p.reason, p.detail) for p in problems]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifests", nargs="+")
    p.add_argument("--backend", choices=BACKENDS, default="decord")
    p.add_argument("--frames-per-clip", type=int, default=1)
    p.add_argument("--frame-step", type=int, default=1)
    p.add_argument("--decode", action="store_true", help="also decode each video's last frame")
    a = p.parse_args(argv)
    total, problems = 0, []
    for m in a.manifests:
        try:
            n, probs = check_items(m, a.backend, a.frames_per_clip, a.frame_step, a.decode)
        except ValueError as e:  # the manifest itself is unreadable
            n, probs = 0, [Problem(str(m), "", "unreadable_manifest", str(e))]
        total += n
        problems += probs
    if problems:
        print(format_table(problems))
        print(f"\n{len(problems)} problem(s) in {total} row(s)")
        return 1
    print(f"ok: {total} row(s), no problems")
    return 0


if __name__ == "__main__":
    sys.exit(main())
