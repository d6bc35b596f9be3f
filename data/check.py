"""Check a manifest: every row parses and every file opens with readable metadata.

    python -m data.check MANIFEST [MANIFEST ...] [--backend pyav|decord|dali] [--frames-per-clip 16 --frame-step 4]
                                                [--decode]

Prints a table (where, file, reason, detail) and exits 1 if there is any problem, 0 otherwise. Problems are
files the loader skips: ``missing``, ``empty``, ``unreadable`` (no installed backend reads it), ``too_short``
(with ``--frames-per-clip``/``--frame-step``: shorter than one clip), rows that do not parse. Warnings are files
the loader uses, listed with their own counts:

- ``truncated``: the header promises more frames than decode (a file cut short); the loader samples only
  the frames that decode. ``--decode`` also decodes each video's last frame, which finds files cut short
  whose header promises nothing (Ogg, MPEG-PS);
- ``fallback``: the configured backend could not read the file, the next backend of its chain did
  (``data.decoders.FALLBACKS``); the loader does the same.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from data.dataset import is_image, read_image
from data.decoders import BACKENDS, DecodeError, ReaderCache, decodable_prefix, is_truncated
from data.manifest import Problem, read_manifest

WARNINGS = ("truncated", "fallback")  # the file is used: in part, or through another backend


def check_items(manifest, backend: str = "pyav", frames_per_clip: int = 1, frame_step: int = 1,
                decode: bool = False) -> tuple[int, list[Problem]]:
    """(number of rows read, problems and warnings) for one manifest."""
    items, problems = read_manifest(manifest)
    readers = ReaderCache(backend, max_open=1)
    for item in items:
        try:
            if is_image(item.path):
                read_image(item.path)
                continue
            warnings = check_video(readers, item.path, frames_per_clip * frame_step, decode)
            problems += [Problem(item.source, item.path, reason, detail) for reason, detail in warnings]
        except DecodeError as e:
            problems.append(Problem(item.source, item.path, e.reason, e.detail))
        except Exception as e:  # never let one odd file stop the check
            problems.append(Problem(item.source, item.path, "error", f"{type(e).__name__}: {e}"[:200]))
        readers.forget(item.path)

    def line(p: Problem) -> int:
        tail = p.where.rsplit(":", 1)[-1]
        return int(tail) if tail.isdigit() else 0
    return len(items) + sum(p.reason in ("bad_row", "bad_label") for p in problems), sorted(problems, key=line)


def check_video(readers: ReaderCache, path: str, need: int, decode: bool) -> list[tuple[str, str]]:
    """(reason, detail) warnings of a video the loader can use; raises DecodeError for one it skips."""
    warnings = []
    reader = readers.get(path)
    if is_truncated(reader):  # found at open: the reader indexes only the frames that decode
        warnings.append(("truncated", f"header promises {reader.promised_frames} frames, {reader.num_frames} "
                                      "decode; the loader samples those"))
    elif decode:
        try:
            readers.get_frames(path, [reader.num_frames - 1])
        except DecodeError as e:
            if e.reason != "decode_error":
                raise
            reader, indexed = readers.get(path), reader.num_frames
            reader.num_frames = decodable_prefix(reader)
            if reader.num_frames == 0:
                raise DecodeError(path, "unreadable", f"none of its {indexed} frames decodes ({e.detail})") from None
            warnings.append(("truncated", f"{reader.num_frames} of its {indexed} frames decode; the loader skips "
                                          "clips that reach the others"))
        reader = readers.get(path)  # another backend's after a fallback
    if reader.num_frames < need:
        raise DecodeError(path, "too_short", f"{reader.num_frames} frames, a clip needs {need}")
    if path in readers.fallbacks:
        used, why = readers.fallbacks[path]
        warnings.append(("fallback", f"{used} reads it; {why}"))
    return warnings


def format_table(problems: list[Problem]) -> str:
    rows = [("where", "file", "reason", "detail")] + [(p.where, p.path, p.reason, p.detail) for p in problems]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows)


def summary(total: int, problems: list[Problem]) -> str:
    """The last lines: problems (or ok), then warnings per class, fallbacks per backend."""
    errors = [p for p in problems if p.reason not in WARNINGS]
    lines = [f"{len(errors)} problem(s) in {total} row(s)" if errors else f"ok: {total} row(s), no problems"]
    warned = Counter(p.reason for p in problems if p.reason in WARNINGS)
    if warned:
        backends = Counter(p.detail.split(" ", 1)[0] for p in problems if p.reason == "fallback")
        per_backend = ", ".join(f"{b}: {n}" for b, n in sorted(backends.items()))
        parts = [f"{warned['truncated']} truncated"] * bool(warned["truncated"])
        parts += [f"{warned['fallback']} fallback ({per_backend})"] * bool(warned["fallback"])
        lines.append(f"{sum(warned.values())} warning(s), files used: " + ", ".join(parts))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifests", nargs="+")
    p.add_argument("--backend", choices=BACKENDS, default="pyav")
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
        print(format_table(problems) + "\n")
    print(summary(total, problems))
    return int(any(p.reason not in WARNINGS for p in problems))


if __name__ == "__main__":
    sys.exit(main())
