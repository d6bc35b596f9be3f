"""Which frame indices make up each clip (the V-JEPA reference rules, as pure functions).

- the step between sampled frames comes from exactly one of ``frame_step`` (frames),
  ``fps`` (target frame rate: step = round(video_fps / fps)) or ``duration`` (seconds covered by a
  clip: step = round(duration * video_fps / frames_per_clip));
- a clip spans ``clip_len = frames_per_clip * step`` frames; its indices are ``start + k * step``
  (the reference's evenly spaced frames over the clip, with an exact integer step);
- ``num_clips`` clips: the video (or its ``start``/``end`` range) is cut into ``num_clips`` equal
  segments and clip ``i`` lies in segment ``i``: at a random offset for training, centred for evaluation;
- a window shorter than ``clip_len`` is padded by repeating its last frame (``short="pad"``) or
  rejected (``short="skip"``, raises :class:`TooShort`).
"""

from __future__ import annotations

import numpy as np


class TooShort(Exception):
    pass


def frame_step_for(video_fps: float, frames_per_clip: int, frame_step: int | None = None,
                   fps: float | None = None, duration: float | None = None) -> int:
    given = [x is not None for x in (frame_step, fps, duration)]
    if sum(given) != 1:
        raise ValueError("give exactly one of frame_step, fps, duration "
                         f"(got frame_step={frame_step}, fps={fps}, duration={duration})")
    if frame_step is not None:
        step = int(frame_step)
    elif fps is not None:
        step = round(video_fps / fps) if video_fps > 0 else 1
    else:
        step = round(duration * video_fps / frames_per_clip) if video_fps > 0 else 1
    return max(step, 1)


def clip_indices(num_frames: int, frames_per_clip: int, step: int, num_clips: int = 1,
                 rng: np.random.Generator | None = None, first: int = 0, last: int | None = None,
                 short: str = "pad") -> list[np.ndarray]:
    """Frame indices (int64 arrays of length frames_per_clip) for each clip; ``rng=None`` means evaluation.

    ``first``/``last`` restrict sampling to frames [first, last) (a manifest's start/end).
    """
    if short not in ("pad", "skip"):
        raise ValueError(f"short must be 'pad' or 'skip', got {short!r}")
    last = num_frames if last is None else min(last, num_frames)
    first = max(0, min(first, last - 1))
    available = last - first
    clip_len = frames_per_clip * step
    if available < clip_len and short == "skip":
        raise TooShort(f"{available} frames available, a clip needs {clip_len}")
    segment = available // num_clips
    clips = []
    for i in range(num_clips):
        if segment >= clip_len:
            room = segment - clip_len
            offset = int(rng.integers(0, room + 1)) if rng is not None else room // 2
            start = i * segment + offset
        elif available >= clip_len:
            # clips overlap: spread their starts evenly over the whole window
            start = round(i * (available - clip_len) / max(num_clips - 1, 1))
        else:
            start = 0
        idx = np.linspace(start, start + clip_len, num=frames_per_clip, endpoint=False)
        idx = np.round(idx).astype(np.int64)
        # clipping to the window repeats the last frame of a short video
        clips.append(np.clip(idx, 0, available - 1) + first)
    return clips
