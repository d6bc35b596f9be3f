"""``build_mixture``: several datasets in one run (videos and images, or videos with other clip settings),
each batch from one of them.

Clips of different shapes cannot share a batch, so a mixture keeps one ``ClipLoader`` per dataset (a
"source") and hands out one batch per step from the source drawn for that step: source ``k`` with
probability ``weights[k] / sum(weights)``, the draw a pure function of ``(seed, rank, step)``. Each source
keeps its own epochs, rank shard, workers and clip settings (its own ``build_loader`` arguments). Hence:

- resume: ``state_dict()`` = the step and every source's loader state (epoch, batches consumed); after
  ``load_state_dict`` the batches are those an uninterrupted run would have produced next, mid-epoch in
  any source;
- ranks: a rank reads its own shard of every source and draws its own sequence of sources, so in one
  step rank 0 may train on images while rank 1 trains on videos (DDP averages their gradients as usual);
- batches are the ``ClipLoader``'s plus ``source``: the index of the source they came from (the trainer
  draws that source's masks).
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np

from data.dataset import is_image
from data.loader import ClipLoader, _dist_rank_world, build_loader
from data.manifest import Item, items_from_image_folder, read_manifest

log = logging.getLogger(__name__)


def source_items(path: str | Path) -> list[Item]:
    """The items of one source: a manifest, or a folder of images (one folder per class)."""
    if Path(path).is_dir():
        return items_from_image_folder(path)[0]
    return read_manifest(path)[0]


def loader_source(path: str | Path) -> dict:
    """build_loader's source argument for one data.train entry: an image folder or a manifest."""
    return {"image_folder": str(path)} if Path(path).is_dir() else {"manifests": [str(path)]}


def media_kind(items: list[Item]) -> str:
    """"images", "videos", or "mixed" (both: one batch would stack 1-frame and many-frame clips)."""
    images = sum(is_image(it.path) for it in items)
    return "images" if images == len(items) else "videos" if images == 0 else "mixed"


def source_seed(seed: int, source: int) -> int:
    """Each source's loader seed: its item order and crops are its own, not another source's."""
    return int(np.random.SeedSequence([seed, source]).generate_state(1)[0])


class MixtureLoader:
    """Endless iterable over batches drawn from several ``ClipLoader``s (see module doc)."""

    def __init__(self, loaders: list[ClipLoader], weights, names: list[str], seed: int = 0, rank: int = 0):
        weights = np.asarray(list(weights) if weights is not None else [1.0] * len(loaders), dtype=np.float64)
        if len(weights) != len(loaders) or len(names) != len(loaders):
            raise ValueError(f"{len(weights)} weights and {len(names)} names for {len(loaders)} sources")
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"source weights must be >= 0 with a positive sum, got {weights.tolist()}")
        self.loaders, self.names, self.seed, self.rank = list(loaders), list(names), seed, rank
        self.weights = weights / weights.sum()
        self._cdf = np.cumsum(weights)  # unnormalised: a draw below the total lands on a positive weight
        self.step = 0  # batches handed out: the next batch's step
        self._streams: dict = {}  # source -> its endless batch iterator, made on first use

    def source_at(self, step: int) -> int:
        """The source of this rank's batch at `step` (zero-weight sources are never drawn)."""
        u = np.random.default_rng([self.seed, self.rank, step]).random() * self._cdf[-1]
        return int(np.searchsorted(self._cdf, u, side="right"))

    def __iter__(self):
        while True:
            source = self.source_at(self.step)
            if source not in self._streams:
                self._streams[source] = _endless(self.loaders[source])
            try:
                batch = next(self._streams[source])
            except BaseException:
                self._streams.pop(source, None)  # the loader restarts at its position next time
                raise
            batch["source"] = source
            self.step += 1
            yield batch

    # ---- resumable state ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed, "rank": self.rank, "names": list(self.names),
                "sources": [loader.state_dict() for loader in self.loaders]}

    def load_state_dict(self, state: dict) -> None:
        if "sources" not in state:
            raise ValueError("this loader state is a single dataset's; the run now mixes "
                             f"{len(self.loaders)} sources ({', '.join(self.names)}): resume with the same data.train")
        if len(state["sources"]) != len(self.loaders):
            raise ValueError(f"the loader state holds {len(state['sources'])} sources ({', '.join(state['names'])}), "
                             f"this run has {len(self.loaders)} ({', '.join(self.names)})")
        if state["names"] != self.names:
            log.warning("resuming data sources %s from a state saved for %s", self.names, state["names"])
        if state.get("seed", self.seed) != self.seed:
            log.warning("mixture state was saved with seed %s, this one uses %s", state["seed"], self.seed)
        self._close_streams()
        self.step = int(state["step"])
        for loader, s in zip(self.loaders, state["sources"]):
            loader.load_state_dict(s)

    # ---- skips and shutdown ------------------------------------------------------------------
    def skip_counts(self) -> dict:
        """The sources' skip counts (each of its last epoch), summed, and per source."""
        per = {name: loader.skip_counts() for name, loader in zip(self.names, self.loaders)}
        reasons, bad_files, fallbacks = Counter(), {}, Counter()
        for counts in per.values():
            reasons.update(counts["by_reason"])
            bad_files.update(counts["bad_files"])
            fallbacks.update(counts.get("fallbacks", {}))
        return {"skipped": sum(reasons.values()), "by_reason": dict(reasons), "bad_files": bad_files,
                "manifest_rows": sum(c["manifest_rows"] for c in per.values()), "fallbacks": dict(fallbacks),
                "by_source": per}

    def _close_streams(self) -> None:
        for stream in self._streams.values():
            stream.close()
        self._streams = {}

    def close(self) -> None:
        self._close_streams()
        for loader in self.loaders:
            loader.close()


def _endless(loader: ClipLoader):
    while True:
        yield from loader  # one epoch per pass; the loader moves on to the next


def build_mixture(sources: list[dict], weights=None, *, seed: int = 0, rank: int | None = None,
                  world_size: int | None = None, **common) -> MixtureLoader:
    """A mixture of one ``build_loader`` per source. Each source is a dict with ``path`` (a manifest, or a
    folder of images with one folder per class) and any ``build_loader`` keyword argument of its own
    (``frames_per_clip``, ``size``, ``batch_size``, ...), which overrides the same argument in ``common``."""
    if not sources:
        raise ValueError("a mixture needs at least one source")
    rank, world_size = _dist_rank_world(rank, world_size)
    loaders, names = [], []
    for k, source in enumerate(sources):
        source = dict(source)
        path = str(source.pop("path"))
        loaders.append(build_loader(**loader_source(path), **{**common, **source}, seed=source_seed(seed, k),
                                    rank=rank, world_size=world_size))
        names.append(path)
    return MixtureLoader(loaders, weights, names, seed, rank)
