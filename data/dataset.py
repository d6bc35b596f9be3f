"""Datasets: manifest items -> transformed clips, with bad items replaced and reported.

``VideoDataset[key]`` takes ``key = (index, epoch, draw)`` (``draw`` = position of this sample in the
epoch's global order; a plain ``int`` means ``(index, 0, index)``). All randomness of the sample --
clip placement, crop, flip, and which item replaces a bad one -- is derived from
``(seed, epoch, draw, index)``, never from the worker id or process state, so a resumed run and any
``num_workers`` produce bit-identical batches.

Images (``.jpg``, ``.png``, ...) are single-frame clips (T = 1) through the same path.

A sample's ``video`` is a list of uint8 ``[C, T, H, W]`` views; the loader normalises whole batches on
their device (``data.transforms.normalize``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import default_collate

from data.clips import TooShort, clip_indices, frame_step_for
from data.decoders import DecodeError, ReaderCache, check_file
from data.manifest import Item
from data.transforms import apply

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}


@dataclass(frozen=True)
class ClipSpec:
    frames_per_clip: int = 16
    frame_step: int | None = None   # exactly one of frame_step / fps / duration; none given means frame_step=4
    fps: float | None = None
    duration: float | None = None
    num_clips: int = 1
    short: str = "pad"              # "pad" (repeat last frame) or "skip" (count as a bad item)

    def __post_init__(self):
        given = sum(x is not None for x in (self.frame_step, self.fps, self.duration))
        if given > 1:
            raise ValueError("give exactly one of frame_step, fps, duration")
        if given == 0:
            object.__setattr__(self, "frame_step", 4)
        if self.frames_per_clip < 1 or self.num_clips < 1:
            raise ValueError("frames_per_clip and num_clips must be >= 1")


def is_image(path: str) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def read_image(path: str) -> np.ndarray:
    """uint8 [1, H, W, 3] (Pillow: torchvision's image decoding is deprecated)."""
    from PIL import Image

    check_file(path)
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))[None]  # writable: torch.from_numpy warns on read-only arrays
    except Exception as e:
        raise DecodeError(path, "unreadable", f"{type(e).__name__}: {e}"[:200]) from None


class Failure(tuple):
    """(path, reason, detail) of one skipped item; a tuple so it collates and pickles cheaply."""

    def __new__(cls, path: str, reason: str, detail: str = ""):
        return super().__new__(cls, (path, reason, detail))

    def __getnewargs__(self):  # pickle (worker -> trainer) calls __new__ with these, not with one tuple
        return tuple(self)


class VideoDataset(torch.utils.data.Dataset):
    def __init__(self, items: list[Item], transform, clip: ClipSpec = ClipSpec(), train: bool = True,
                 seed: int = 0, backend: str = "pyav", decoder_options: dict | None = None,
                 max_consecutive_failures: int = 10):
        self.items = list(items)
        self.transform, self.clip, self.train, self.seed = transform, clip, train, seed
        self.readers = ReaderCache(backend, **(decoder_options or {}))
        mixed = backend == "dali" and self.readers.options.get("device") == "mixed"
        # NVDEC frames stay on their GPU: frames of a file read by a CPU fallback decoder join them there
        self._frames_device = f"cuda:{self.readers.options.get('device_id', 0)}" if mixed else "cpu"
        self.max_consecutive_failures = max_consecutive_failures
        self._per_item_paths: set[str] = set()  # files a batched (DALI) decode failed on: decoded per item

    def __len__(self) -> int:
        return len(self.items)

    def _seeds(self, epoch: int, draw: int, index: int, attempt: int) -> np.ndarray:
        ss = np.random.SeedSequence([self.seed, epoch, draw, index, attempt])
        return ss.generate_state(1 + self.clip.num_clips, dtype=np.uint64)

    def _draws(self, epoch: int, draw: int, index: int, attempt: int):
        """(seeds, clip-placement rng or None for evaluation) of one sample: one derivation for every path."""
        seeds = self._seeds(epoch, draw, index, attempt)
        return seeds, np.random.default_rng(seeds[0]) if self.train else None

    def _plan(self, item: Item, rng: np.random.Generator | None):
        """(reader, frame indices per clip, sorted unique frames to decode) of a video item."""
        reader = self.readers.get(item.path)
        c = self.clip
        step = frame_step_for(reader.fps, c.frames_per_clip, c.frame_step, c.fps, c.duration)
        fps = reader.fps or 30.0
        first = int(math.floor(item.start * fps)) if item.start is not None else 0
        last = int(math.ceil(item.end * fps)) if item.end is not None else None
        if first >= reader.num_frames:
            raise DecodeError(item.path, "too_short",
                              f"start {item.start}s is past the end ({reader.num_frames} frames)")
        try:
            clips = clip_indices(reader.num_frames, c.frames_per_clip, step, c.num_clips, rng, first, last, c.short)
        except TooShort as e:
            raise DecodeError(item.path, "too_short", str(e)) from None
        # one decoder call for all clips: frames shared between clips are decoded once
        return reader, clips, np.unique(np.concatenate(clips))

    def _frames(self, item: Item, rng: np.random.Generator | None) -> list:
        if is_image(item.path):
            return [read_image(item.path)] * self.clip.num_clips
        _, clips, wanted = self._plan(item, rng)
        return _split_clips(self.readers.get_frames(item.path, wanted), clips, wanted)

    def load(self, index: int, epoch: int = 0, draw: int | None = None, attempt: int = 0) -> dict:
        """One sample; raises DecodeError for a bad item."""
        seeds, rng = self._draws(epoch, index if draw is None else draw, index, attempt)
        return self._sample(index, self._frames(self.items[index], rng), seeds)

    def load_batch(self, keys) -> list[dict]:
        """The samples of one batch, equal to ``[self[k] for k in keys]``. With the DALI backend the clips
        are decoded in one pipeline run (NVDEC decodes a batch of files at once with ``device='mixed'``).
        Images and files that failed before take the per-item path; when the run fails, every key does,
        which finds the bad file, skips and replaces it as usual, and remembers it for later batches."""
        if self.readers.backend != "dali":
            return [self[k] for k in keys]
        from data.decoders import dali_decode

        batched = [k for k in keys if not self._needs_per_item(self.items[_key(k)[0]].path)]
        try:
            plans = []
            for key in batched:
                index, epoch, draw = _key(key)
                seeds, rng = self._draws(epoch, draw, index, 0)
                plans.append((key, index, seeds, *self._plan(self.items[index], rng)))
            decoded = dali_decode([(reader, wanted) for *_, reader, _, wanted in plans]) if plans else []
            done = {key: {**self._sample(index, _split_clips(frames, clips, wanted), seeds), "skipped": []}
                    for (key, index, seeds, _, clips, wanted), frames in zip(plans, decoded)}
        except Exception:  # noqa: BLE001 -- the per-item path names, counts and replaces whatever failed
            samples = [self[k] for k in keys]
            self._per_item_paths |= {f[0] for s in samples for f in s.get("skipped", s.get("failed", ()))}
            return samples
        return [done[k] if k in done else self[k] for k in keys]

    def _needs_per_item(self, path: str) -> bool:
        return is_image(path) or path in self._per_item_paths or path in self.readers.fallbacks

    def _sample(self, index: int, clip_frames: list, seeds: np.ndarray) -> dict:
        item = self.items[index]
        views = []
        for c, frames in enumerate(clip_frames):
            if isinstance(frames, np.ndarray):  # DALI mixed returns CUDA tensors already
                frames = torch.from_numpy(np.ascontiguousarray(frames)).to(self._frames_device)
            views += apply(self.transform, frames, int(seeds[1 + c] % 2**63) if self.train else None)
        return {"video": views, "labels": dict(item.labels), "captions": list(item.captions),
                "index": index, "path": item.path, "fallback": self.readers.fallbacks.get(item.path)}

    def __getitem__(self, key) -> dict:
        index, epoch, draw = _key(key)
        failures: list[Failure] = []
        for attempt in range(self.max_consecutive_failures + 1):
            try:
                sample = self.load(index, epoch, draw, attempt)
                sample["skipped"] = failures
                return sample
            except DecodeError as e:
                failures.append(Failure(e.path, e.reason, e.detail))
            except Exception as e:  # anything else about this item (odd frame sizes, ...): skip it, say why
                failures.append(Failure(self.items[index].path, "error", f"{type(e).__name__}: {e}"[:200]))
            # a replacement drawn from (seed, epoch, draw, attempt): the same on every worker layout
            rng = np.random.default_rng(self._seeds(epoch, draw, index, attempt + 1)[0])
            index = int(rng.integers(len(self.items)))
        return {"failed": failures}


def _key(key) -> tuple[int, int, int]:
    """(index, epoch, draw) of a dataset key; a plain int ``i`` means ``(i, 0, i)``."""
    return (int(key), 0, int(key)) if isinstance(key, (int, np.integer)) else tuple(key)


def _split_clips(frames, clips: list[np.ndarray], wanted: np.ndarray) -> list:
    """The frames of each clip out of one decoded run of ``wanted`` (sorted unique indices)."""
    if len(clips) == 1 and np.array_equal(clips[0], wanted):
        return [frames]  # the usual case (one clip, no repeated frame): no re-indexing copy
    pos = {int(f): i for i, f in enumerate(wanted)}
    return [frames[[pos[int(f)] for f in idx]] for idx in clips]


def _stack_clips(clips: list[torch.Tensor]) -> torch.Tensor:
    """uint8 [C, T, H, W] clips -> [B, C, T, H, W], stored as [B, T, H, W, C].

    The clips' memory is [T, H, W, C] (decoder output, kept by the channels-last resize), so stacking in
    that order is a plain copy, while a [B, C, T, H, W] layout would be a transposing gather; the
    transpose happens in the float pass on the device (data.transforms.normalize). default_collate
    stacks straight into shared memory inside a worker (a plain torch.stack would be copied there once
    more on the way to the training process)."""
    return default_collate([c.permute(1, 2, 3, 0) for c in clips]).permute(0, 4, 1, 2, 3)


def collate_clips(samples: list[dict]) -> dict:
    """Stack samples into a batch; see loader.py for the layout."""
    failed = [f for s in samples if "failed" in s for f in s["failed"]]
    skipped = [f for s in samples for f in s.get("skipped", ())]
    if failed:
        return {"failed": failed, "skipped": skipped}
    num_views = len(samples[0]["video"])
    views = [_stack_clips([s["video"][v] for s in samples]) for v in range(num_views)]
    names = sorted({k for s in samples for k in s["labels"]})
    labels = {k: torch.tensor([s["labels"].get(k, -1) for s in samples], dtype=torch.long) for k in names}
    return {"video": views[0] if num_views == 1 else views, "labels": labels,
            "captions": [s["captions"] for s in samples],
            "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
            "path": [s["path"] for s in samples], "skipped": skipped,
            "fallbacks": [(s["path"], *s["fallback"]) for s in samples if s.get("fallback")]}
