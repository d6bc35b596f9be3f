"""``build_loader``: an exactly resumable, rank-sharded, bad-input-safe clip loader.

Batches are dicts:
- ``video``: float32 ``[B, C, T, H, W]`` (normalised) on the loader's ``device``. With several views per item
  (``num_clips > 1`` and/or ``eval_crops=3``) a list of such tensors, clip-major:
  ``[clip0crop0, clip0crop1, ..., clip1crop0, ...]``. Workers hand over uint8; the batch is copied to
  ``device`` (pinned + non-blocking on CUDA) and normalised there (``normalize=False``: left uint8).
- ``labels``: ``{name: LongTensor[B]}`` (``{}`` without labels; ``-1`` where an item lacks a label others have).
- ``captions``: list (len B) of list[str]; ``index``: LongTensor[B] (dataset index); ``path``: list[str].
- ``skipped``: list of ``(path, reason, detail)`` for items replaced while building this batch.

Order: epoch ``e`` uses a permutation (or, with manifest weights, a weighted draw with replacement)
seeded by ``(seed, e)``, padded to a multiple of ``world_size`` and sharded ``order[rank::world_size]``
as ``DistributedSampler`` does. ``state_dict()`` = ``{epoch, batches_consumed}``; after
``load_state_dict`` the next batch is the one an uninterrupted run would have produced next.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from data.dataset import ClipSpec, VideoDataset, collate_clips
from data.manifest import Item, items_from_image_folder, read_manifests
from data.transforms import build_transform, normalize
from data.worker_lifetime import bind_worker_to_trainer

log = logging.getLogger(__name__)


class TooManyBadFiles(RuntimeError):
    pass


class WorkerTimeout(RuntimeError):
    """No batch came within ``worker_timeout`` seconds while every worker was alive: one hangs."""


def epoch_order(num_items: int, epoch: int, seed: int, shuffle: bool, weights=None) -> np.ndarray:
    """Global sample order of one epoch (before sharding)."""
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))
    if weights is not None:
        w = torch.as_tensor(weights, dtype=torch.double)
        return torch.multinomial(w, num_items, replacement=True, generator=g).numpy()
    if shuffle:
        return torch.randperm(num_items, generator=g).numpy()
    return np.arange(num_items)


class _BatchStream(torch.utils.data.Sampler):
    """The DataLoader's batch sampler: lists of (index, epoch, draw) from the loader's position on, to the end
    of the epoch, or (``run_on``) epoch after epoch without end. Workers then run ahead into the next epoch
    instead of draining at every epoch end (an epoch of 8 batches left 2 workers idle for a batch each time:
    86% of the decode ceiling instead of 93%); ``ClipLoader`` hands out one epoch per iteration."""

    def __init__(self, loader: "ClipLoader"):
        self.loader = loader

    def __iter__(self):
        epoch, start = self.loader._position()
        while True:
            yield from self.loader._batches(epoch)[start:]
            if not self.loader.run_on:
                return
            epoch, start = epoch + 1, 0


class ClipLoader:
    """Iterable over batches (see module doc). Iterating finishes the current epoch, then advances to the next;
    with ``run_on`` (training loaders with persistent workers) the workers' queue runs on across epochs
    (``_BatchStream``)."""

    def __init__(self, dataset: VideoDataset, batch_size: int, shuffle: bool, drop_last: bool, seed: int,
                 rank: int, world_size: int, weights=None, num_workers: int = 2, pin_memory: bool = False,
                 persistent_workers: bool = True, prefetch_factor: int = 2, manifest_problems=(),
                 worker_start: str = "forkserver", worker_timeout: float = 600.0, device="cpu",
                 normalize: bool = True, run_on: bool = False):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.dataset, self.batch_size, self.shuffle, self.drop_last = dataset, batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size, self.weights = seed, rank, world_size, weights
        self.manifest_problems = list(manifest_problems)
        self.device, self.normalize = torch.device(device), normalize
        self.epoch, self.batches_consumed = 0, 0
        self._skips: dict[int, Counter] = {}          # epoch -> reason -> count
        self._bad_files: dict[int, dict[str, str]] = {}  # epoch -> path -> reason
        self._fallbacks: dict[str, str] = {}  # path -> the backend that read it where the configured one could not
        self._last_epoch = 0                            # epoch of the last batch handed out
        self._logged: set[str] = set()
        if len(self) == 0:
            raise ValueError(f"{len(dataset)} items give no batch of {batch_size} on {world_size} rank(s)")
        kw = {}
        if num_workers > 0:
            kw = dict(persistent_workers=persistent_workers, prefetch_factor=prefetch_factor,
                      worker_init_fn=functools.partial(_init_worker, forkserver=worker_start == "forkserver"),
                      multiprocessing_context=_worker_context(worker_start),
                      timeout=worker_timeout)  # a stuck decoder becomes an error, not a hang (0: wait forever)
        self._dl = torch.utils.data.DataLoader(dataset, batch_sampler=_BatchStream(self), num_workers=num_workers,
                                               collate_fn=collate_clips, pin_memory=pin_memory, **kw)
        self._stream, self._stream_next = None, None  # the DataLoader iterator kept across epochs; its next position
        self.stream_starts = 0  # times the workers' queue was (re)started at a position: once, unless moved
        # the queue runs on across epochs only where workers outlive an epoch and more epochs will be read
        self.run_on = run_on and num_workers > 0 and persistent_workers
        # DALI in the training process decodes a whole batch per pipeline run (NVDEC with device='mixed')
        self._batch_decode = num_workers == 0 and dataset.readers.backend == "dali"

    # ---- order -------------------------------------------------------------------------------
    def _shard(self, epoch: int) -> list[tuple[int, int, int]]:
        order = epoch_order(len(self.dataset), epoch, self.seed, self.shuffle, self.weights)
        draws = np.arange(len(order))
        total = -(-len(order) // self.world_size) * self.world_size
        if total > len(order):  # pad by wrapping around, like DistributedSampler
            extra = total - len(order)
            order, draws = np.concatenate([order, order[:extra]]), np.concatenate([draws, draws[:extra]])
        mine = slice(self.rank, None, self.world_size)
        return [(int(i), epoch, int(d)) for i, d in zip(order[mine], draws[mine])]

    def _batches(self, epoch: int) -> list[list[tuple[int, int, int]]]:
        keys = self._shard(epoch)
        n = len(keys) // self.batch_size if self.drop_last else -(-len(keys) // self.batch_size)
        return [keys[b * self.batch_size:(b + 1) * self.batch_size] for b in range(n)]

    def __len__(self) -> int:
        per_rank = -(-len(self.dataset) // self.world_size)
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def _position(self, epoch: int | None = None, batch: int | None = None) -> tuple[int, int]:
        """(epoch, batch) of the next batch to hand out (default: the loader's); a finished epoch is the
        next one's start."""
        epoch = self.epoch if epoch is None else epoch
        batch = self.batches_consumed if batch is None else batch
        return (epoch + 1, 0) if batch >= len(self) else (epoch, batch)

    # ---- resumable state ---------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select an epoch; a no-op when it is the current one (so a resumed mid-epoch position is kept)."""
        if epoch != self.epoch:
            self.epoch, self.batches_consumed = int(epoch), 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_consumed": self.batches_consumed, "seed": self.seed,
                "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed:
            log.warning("loader state was saved with seed %s, this loader uses %s", state["seed"], self.seed)
        self.epoch, self.batches_consumed = int(state["epoch"]), int(state["batches_consumed"])

    # ---- skips -------------------------------------------------------------------------------
    def skip_counts(self, epoch: int | None = None) -> dict:
        """Skipped items of ``epoch`` (default: the epoch of the last batch handed out, so after a finished
        epoch its summary): total, per reason, the bad files (path -> reason), and bad manifest rows; and,
        for the whole run so far, ``fallbacks``: how many files each fallback backend read (``fallback_files``)."""
        epoch = self._last_epoch if epoch is None else epoch
        skips = self._skips.get(epoch, Counter())
        return {"epoch": epoch, "skipped": sum(skips.values()), "by_reason": dict(skips),
                "bad_files": dict(self._bad_files.get(epoch, {})), "manifest_rows": len(self.manifest_problems),
                "fallbacks": dict(Counter(self._fallbacks.values()))}

    def fallback_files(self) -> dict[str, str]:
        """Files read by a fallback backend so far: path -> backend."""
        return dict(self._fallbacks)

    def _record_fallbacks(self, fallbacks) -> None:
        for path, backend, why in fallbacks:
            if path not in self._fallbacks:
                self._fallbacks[path] = backend
                log.info("reading %s with %s (%s)", path, backend, why)

    def _record(self, failures) -> None:
        skips = self._skips.setdefault(self.epoch, Counter())
        bad_files = self._bad_files.setdefault(self.epoch, {})
        for path, reason, detail in failures:
            skips[reason] += 1
            bad_files[path] = reason
            if path not in self._logged:  # once per file per process, not once per retry
                self._logged.add(path)
                log.warning("skipping %s: %s%s", path, reason, f" ({detail})" if detail else "")

    # ---- iteration ---------------------------------------------------------------------------
    def __iter__(self):
        if self.batches_consumed >= len(self):  # finished epoch: move on
            self.set_epoch(self.epoch + 1)
        if self._batch_decode:
            batches = (collate_clips(self.dataset.load_batch(keys))
                       for keys in self._batches(self.epoch)[self.batches_consumed:])
        else:
            batches = self._epoch_from_stream()
        for batch in batches:
            self._record(batch["skipped"])
            self._record_fallbacks(batch.get("fallbacks", ()))
            if "failed" in batch:
                files = sorted({f"{p} ({r}{': ' + d if d else ''})" for p, r, d in batch["failed"]})
                raise TooManyBadFiles(
                    f"{self.dataset.max_consecutive_failures + 1} consecutive items failed to load; "
                    f"bad files:\n  " + "\n  ".join(files))
            self.batches_consumed += 1
            self._last_epoch = self.epoch
            video = batch["video"]
            batch["video"] = ([self._normalized(v) for v in video] if isinstance(video, list)
                              else self._normalized(video))
            yield batch
        self.set_epoch(self.epoch + 1)

    def _epoch_from_stream(self):
        """The rest of the current epoch's batches from the DataLoader iterator kept across epochs (made anew
        when the position moved under it: ``load_state_dict``, ``set_epoch``, an error)."""
        if not self.run_on or self._stream is None or self._stream_next != self._position():
            self._stream_next = None
            self._stream = iter(self._dl)  # persistent workers: reset to the position (prefetched work dropped)
            self.stream_starts += 1
        for b in range(self.batches_consumed, len(self)):
            try:
                batch = next(self._stream)
            except BaseException as err:  # fresh workers at this position next time
                self.close()
                if isinstance(err, Exception) and self._dl.num_workers > 0:  # not an interrupt, nor (0 workers)
                    # the dataset's own error: a dead worker, a timeout, a batch lost with its worker
                    raise self._worker_failure(b, err) from err
                raise
            self._stream_next = self._position(self.epoch, b + 1)
            yield batch

    def _worker_failure(self, b: int, err: Exception) -> RuntimeError:
        where = f"data loader worker failed at epoch {self.epoch}, batch {b}"
        again = "iterating again restarts the workers there"
        # torch's words when the wait ran out with every worker alive (a dead one is reported as such)
        if self._dl.timeout and str(err).startswith("DataLoader timed out"):
            files = "\n  ".join(self.dataset.items[i].path for i, _, _ in self._batches(self.epoch)[b])
            return WorkerTimeout(f"{where}: no batch within worker_timeout={self._dl.timeout:g} s "
                                 "(data.worker_timeout) while every worker was alive, so one hangs (a stalled file "
                                 f"system, a stuck decoder?); {again}. The batch's files:\n  {files}")
        return RuntimeError(f"{where} ({type(err).__name__}: {err}); {again}")

    def close(self) -> None:
        """Stop the persistent worker processes now (they otherwise live until garbage collection)."""
        it = getattr(self._dl, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self._dl._iterator = None
        self._stream, self._stream_next = None, None

    def _normalized(self, video: torch.Tensor) -> torch.Tensor:
        video = video.to(self.device, non_blocking=video.is_pinned())
        return normalize(video) if self.normalize else video


def _worker_context(method: str):
    """Workers start from a clean forkserver by default, not a fork of the training process: a fork of a
    process that has loaded decord and PyAV (two FFmpeg builds) segfaults or deadlocks in the child, and the
    trainer may decode in-process (an eval loader with 0 workers) before building this one. The server
    starts once per process; like ``spawn`` it needs the ``if __name__ == "__main__":`` guard in scripts."""
    import multiprocessing as mp

    ctx = mp.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(["torch", "data.dataset", "data.decoders", "data.transforms"])
    return ctx


def _init_worker(worker_id: int, forkserver: bool) -> None:
    bind_worker_to_trainer(started_by_forkserver=forkserver)  # no worker outlives the trainer
    _seed_worker(worker_id)


def _seed_worker(worker_id: int) -> None:
    # per-item randomness is seeded explicitly (dataset.py); this only keeps stray library RNG use distinct
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    import random

    random.seed(seed)


def _dist_rank_world(rank, world_size) -> tuple[int, int]:
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1
    return int(rank), int(world_size)


def build_loader(manifests=None, *, items: list[Item] | None = None, image_folder: str | Path | None = None,
                 weights=None, label_keys=(), train: bool = True, batch_size: int = 8,
                 frames_per_clip: int = 16, frame_step: int | None = None, fps: float | None = None,
                 duration: float | None = None, num_clips: int = 1, short: str = "pad",
                 size: int = 224, crop_scale=(0.3, 1.0), crop_ratio=(0.75, 1.35), flip: float = 0.5,
                 randaugment: bool = False, eval_crops: int = 1, eval_resize_ratio: float = 256 / 224,
                 backend: str = "pyav", decoder_options: dict | None = None,
                 num_workers: int = 2, pin_memory: bool | None = None, persistent_workers: bool = True,
                 prefetch_factor: int = 2, seed: int = 0, rank: int | None = None, world_size: int | None = None,
                 shuffle: bool | None = None, drop_last: bool | None = None,
                 max_consecutive_failures: int = 10, worker_start: str = "forkserver",
                 worker_timeout: float = 600.0, device="cpu", normalize: bool = True,
                 run_on: bool | None = None) -> ClipLoader:
    """Build a loader from manifest path(s) (with optional per-manifest ``weights``), ready ``items``, or an
    ``image_folder`` (folder per class; images become T=1 clips).

    ``train`` selects random clip placement + RandomResizedCrop/flip; otherwise evenly spaced clips and
    resize + centre crop (``eval_crops=3``: three crops). ``shuffle``/``drop_last`` default to ``train``.
    Batches arrive normalised on ``device`` (the training device: the float pass then runs there), or as
    uint8 with ``normalize=False`` (for a consumer that normalises itself, e.g. inside a compiled step).
    ``run_on`` (default: ``train``) lets persistent workers decode on into the next epoch (``_BatchStream``);
    an evaluation loader read once per evaluation stops at its epoch's end instead.
    """
    sources = sum(x is not None for x in (manifests, items, image_folder))
    if sources != 1:
        raise ValueError("give exactly one of manifests, items, image_folder")
    problems = []
    sample_weights = None
    if manifests is not None:
        mixed = read_manifests(manifests, weights, tuple(label_keys))
        items, problems, sample_weights = mixed.items, mixed.problems, mixed.sample_weights()
    elif image_folder is not None:
        items, _ = items_from_image_folder(image_folder)
    rank, world_size = _dist_rank_world(rank, world_size)
    if train:
        transform = build_transform(True, size, scale=tuple(crop_scale), ratio=tuple(crop_ratio), flip=flip,
                                    randaugment=randaugment)
    else:
        transform = build_transform(False, size, eval_crops=eval_crops)
        if eval_crops == 1:
            from data.transforms import eval_transform

            transform = eval_transform(size, eval_resize_ratio)
    decoder_options = dict(decoder_options or {})
    if backend == "dali" and decoder_options.get("device") == "mixed":
        num_workers, pin_memory = 0, False  # GPU frames: decode in the training process
    clip = ClipSpec(frames_per_clip, frame_step, fps, duration, num_clips, short)
    dataset = VideoDataset(items, transform, clip, train, seed, backend, decoder_options, max_consecutive_failures)
    if pin_memory is None:
        pin_memory = torch.device(device).type == "cuda"
    return ClipLoader(dataset, batch_size, train if shuffle is None else shuffle,
                      train if drop_last is None else drop_last, seed, rank, world_size, sample_weights,
                      num_workers, pin_memory, persistent_workers, prefetch_factor, problems,
                      worker_start, worker_timeout, device, normalize, train if run_on is None else run_on)
