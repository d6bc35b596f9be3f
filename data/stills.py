"""Still images from videos: an image set made of frames of a video manifest's clips.

    python -m data.stills MANIFEST --out DIR [--per-video 2] [--backend pyav]

writes ``DIR/images/<row>_<frame>.png`` (evenly spaced frames of each video, the first and last excluded)
and ``DIR/images.jsonl`` with each video's labels and captions, and lists unreadable videos (named and
counted, never fatal). For the embedded dataset this is an image set to mix with its videos in one run
(docs/data.md, "Images and videos in one run"): ``python -m data.stills runs/embedded-data-1600/train.jsonl
--out runs/embedded-stills``. The labels and captions are the video's, so motion labels (direction,
speed) say nothing about a still.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from data.decoders import BACKENDS, DecodeError, open_video
from data.manifest import read_manifest


def frame_positions(num_frames: int, per_video: int) -> list[int]:
    """`per_video` evenly spaced frame indices strictly inside [0, num_frames)."""
    if num_frames < 1:
        return []
    edges = np.linspace(0, num_frames - 1, per_video + 2)[1:-1]
    return sorted({int(round(x)) for x in edges})


def write_stills(manifest: str | Path, out: str | Path, per_video: int = 2, backend: str = "pyav"
                 ) -> tuple[Path, list[tuple[str, str]]]:
    """Write the stills of `manifest`'s videos under `out`; returns (images.jsonl, [(bad video, reason)])."""
    if per_video < 1:
        raise ValueError(f"per_video must be >= 1, got {per_video}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    items, _ = read_manifest(manifest)
    rows, bad = [], []
    for row, item in enumerate(items):
        try:
            reader = open_video(item.path, backend)
            wanted = frame_positions(reader.num_frames, per_video)
            frames = reader.get_frames(wanted)
            reader.close()
        except DecodeError as e:
            bad.append((item.path, e.reason))
            continue
        except Exception as e:  # noqa: BLE001 -- one odd file never stops the export; it is named
            bad.append((item.path, f"error: {type(e).__name__}: {e}"[:200]))
            continue
        for f, frame in zip(wanted, frames):
            rel = f"images/{row:06d}_{f:04d}.png"
            Image.fromarray(np.asarray(frame)).save(out / rel)
            rows.append({"path": rel, "labels": dict(item.labels), "captions": list(item.captions)})
    manifest_out = out / "images.jsonl"
    tmp = manifest_out.with_suffix(".jsonl.tmp")  # a manifest appears only complete
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(manifest_out)
    return manifest_out, bad


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest")
    p.add_argument("--out", required=True)
    p.add_argument("--per-video", type=int, default=2)
    p.add_argument("--backend", choices=BACKENDS, default="pyav")
    a = p.parse_args(argv)
    manifest, bad = write_stills(a.manifest, a.out, a.per_video, a.backend)
    for path, reason in bad:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    n = sum(1 for _ in manifest.open())
    print(f"wrote {n} images to {manifest}" + (f" ({len(bad)} unreadable video(s) skipped)" if bad else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
