"""Benchmark input files equivalent to ``../shared/bench/make_videos.sh`` when no ``ffmpeg`` binary exists.

8 files, 10 s, 320x240, 30 fps, H.264 (libx264 defaults: keyint 250, scenecut, B-frames), yuv420p,
single-threaded x264, plus a reference-format ``videos.csv``.
The content imitates lavfi's test sources (moving colour patterns, noise-like cellular texture,
rotating shapes) so that encoded complexity is in the same range; it is not pixel-identical to them.
"""

from __future__ import annotations

import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from data.decoders import pyav_reformatter

SCRIPT = Path(__file__).resolve().parents[1].parent / "shared" / "bench" / "make_videos.sh"


def _pattern(kind: int, t: int, h: int = 240, w: int = 320) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    s = t / 30.0
    if kind % 4 == 0:    # moving colour gradients (testsrc2-like)
        r = (x + 40 * s * 10) % 256
        g = (y + 25 * s * 10) % 256
        b = (x + y + 60 * s) % 256
    elif kind % 4 == 1:  # rotating bars with hue shift
        a = 0.5 * s + kind
        u = x * np.cos(a) + y * np.sin(a)
        r = 127 + 127 * np.sin(u / 9)
        g = 127 + 127 * np.sin(u / 13 + s * 3)
        b = 127 + 127 * np.sin(u / 17 + s)
    elif kind % 4 == 2:  # zooming rings (mandelbrot-ish detail)
        d = np.hypot(x - w / 2, y - h / 2) * (1 + 0.1 * s)
        r = 127 + 127 * np.sin(d / (3 + kind) - s * 4)
        g = 127 + 127 * np.sin(d / 5 + x / 30)
        b = 127 + 127 * np.cos(d / 7 - y / 20)
    else:                # evolving pseudo-random cells (life / cellauto-like): hard to compress
        rng = np.random.default_rng(kind * 1000 + t // 3)
        cells = rng.random((h // 4, w // 4)) < 0.3
        c = np.kron(cells, np.ones((4, 4))).astype(np.float32)
        r, g, b = 200 * c + 30, 255 * c, 50 * (1 - c)
    return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def make_bench_videos(out: str | Path, seconds: int = 10, fps: int = 30, count: int = 8) -> Path:
    """Write the benchmark files into ``out`` (with the shared script when ``ffmpeg`` exists)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if shutil.which("ffmpeg") and SCRIPT.exists() and count == 8:
        subprocess.run(["bash", str(SCRIPT), str(out)], check=True, capture_output=True)
        return out / "videos.csv"
    lines = []
    for i in range(count):
        path = out / f"vid_{i}.mp4"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps, 1), options={})
            stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
            stream.codec_context.thread_count = 1  # like the script's `-threads 1`
            to_yuv = pyav_reformatter("yuv420p")
            for t in range(seconds * fps):
                frame = av.VideoFrame.from_ndarray(_pattern(i, t), format="rgb24")
                frame.pts = t
                for packet in stream.encode(to_yuv(frame)):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        lines.append(f"{path} {i}")
    (out / "videos.csv").write_text("\n".join(lines) + "\n")
    return out / "videos.csv"
