"""Teacher-target caching for SALT stage 2.

The stage-2 teacher is frozen, so the targets it gives a view of a clip never change. With a fixed set of
K views per clip (epoch e trains on view e % K), its layer-normed features can be computed once and read
back instead of running the teacher every step.

Which view is "view v of item i": the data loader derives all randomness of a sample from the key
(index, epoch, draw) (data/dataset.py). `fixed_views(loader, K)` maps every key (i, e, d) to (i, e % K, i),
so view v of item i is the sample the dataset makes for key (i, v, i): the same clip indices, crop and flip
in every epoch with e % K == v, whatever the epoch's batch order, worker count or rank layout. The cache is
built through the same loader, so the student sees exactly the views the targets were computed on.

A cache folder:
    meta.json                 what the targets depend on (teacher digest, data settings, seed, K, shapes);
                              written last: no meta.json = an unfinished build
    targets_v{v}_s{s}.npy     float16 [rows, N tokens, D]: view v of items s*shard_items ... (memory-mapped)
    clip_frames.npy           int64 [K, items, frames]: the decoded frame indices of each view
    crop_boxes.npy            int32 [K, items, 4]: (top, left, height, width) of the crop in the decoded frame
    flips.npy                 bool [K, items]: horizontally flipped
    fingerprints.npy          float64 [K, items, C*T]: per-frame, per-channel means of the view the teacher saw;
                              batches are checked against them (perf.target_cache.verify)
    done.npy                  uint8 [K, items]: rows written (a build on several ranks fills its shard)
"""
from __future__ import annotations

import hashlib
import json
import logging
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from data.dataset import is_image, read_image
from data.transforms import normalize
from vjepa.methods.base import layer_norm_targets
from vjepa.methods.registry import method_spec
from vjepa.train.data import LoaderWrapper
from vjepa.train.distributed import barrier

log = logging.getLogger(__name__)

FORMAT = "vjepa-target-cache-1"


class TargetCacheError(RuntimeError):
    pass


# ---- fixed views ---------------------------------------------------------------------------------------------

def fixed_views(clip_loader, num_views: int):
    """Make a data.loader.ClipLoader draw view (epoch % num_views) of every item: sample keys (i, e, d) become
    (i, e % num_views, i). Batch composition still changes every epoch (the epoch order is untouched).
    In place; returns the loader."""
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    plain = clip_loader._batches

    def batches(epoch: int):
        return [[(i, e % num_views, i) for i, e, _ in batch] for batch in plain(epoch)]

    clip_loader._batches = batches  # read by the loader's batch sampler at the start of every epoch
    clip_loader.fixed_views = num_views
    return clip_loader


def view_params(dataset, index: int, view: int) -> dict:
    """Clip frame indices, crop box and flip of view `view` of item `index` (key (index, view, index)),
    recomputed from the seeds the dataset uses, in the order the dataset and torchvision draw them."""
    if dataset.clip.num_clips != 1:
        raise TargetCacheError("the target cache supports one clip per item (data num_clips=1)")
    item = dataset.items[index]
    seeds, rng = dataset._draws(view, index, index, 0)  # as the dataset draws sample (index, view, index)
    if is_image(item.path):
        h, w = read_image(item.path).shape[1:3]
        frames = np.zeros(dataset.clip.frames_per_clip, dtype=np.int64)
    else:
        reader, clips, _ = dataset._plan(item, rng)  # the dataset's own clip placement
        frames, (h, w) = clips[0], (reader.height, reader.width)
    box, flip = (0, 0, h, w), False
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seeds[1] % 2**63))  # as data.transforms.apply seeds
        for t in getattr(dataset.transform, "transforms", [dataset.transform]):
            if isinstance(t, v2.RandomResizedCrop):
                p = t.make_params([tv_tensors.Video(torch.empty(1, 3, h, w, dtype=torch.uint8))])
                box = (p["top"], p["left"], p["height"], p["width"])
            elif isinstance(t, v2.RandomHorizontalFlip):
                flip = bool(torch.rand(1) < t.p)  # torchvision's _RandomApplyTransform draws exactly this
            elif not isinstance(t, (v2.ToDtype, v2.Normalize)):
                raise TargetCacheError(f"cannot record the parameters of transform {type(t).__name__}")
    return {"frames": np.asarray(frames, dtype=np.int64), "box": box, "flip": flip}


def fingerprints(video: torch.Tensor) -> np.ndarray:
    """[B, C, T, H, W] -> float64 [B, C*T]: per-frame, per-channel means (cheap, and different for any two
    crops or frame choices of real footage)."""
    return video.detach().double().mean(dim=(-2, -1)).flatten(1).cpu().numpy()


# ---- what a cache depends on ---------------------------------------------------------------------------------

def module_digest(module: torch.nn.Module) -> str:
    """sha1 of a module's parameters and buffers (names, shapes, dtypes, bytes)."""
    h = hashlib.sha1()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_key(cfg, teacher: torch.nn.Module, seed: int, num_views: int) -> dict:
    """Everything a cache's contents depend on; a cache is reused only when all of it matches."""
    from vjepa.train.data import manifests

    d = cfg.data
    train, _ = manifests(cfg)
    return {"format": FORMAT, "teacher": module_digest(teacher), "manifests": [str(Path(m).resolve()) for m in train],
            "frames_per_clip": d.frames_per_clip, "frame_step": d.frame_step, "fps": d.fps, "duration": d.duration,
            "crop_size": d.crop_size, "backend": d.backend, "seed": int(seed), "views": int(num_views)}


# ---- reading ------------------------------------------------------------------------------------------------

class TargetCache:
    """A finished cache folder; `targets(index, view)` -> float16 [B, N, D] (host memory)."""

    def __init__(self, path: str | Path, expected: dict | None = None):
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        if not meta_file.exists():
            raise TargetCacheError(f"{self.path}: not a finished target cache (no meta.json)")
        self.meta = json.loads(meta_file.read_text())
        if expected is not None:
            for key, want in expected.items():
                have = self.meta["key"].get(key)
                if have != want:
                    raise TargetCacheError(
                        f"target cache {self.path} was built for {key}={have!r}, this run has {want!r}; delete the "
                        "folder or set perf.target_cache.dir to another one")
        self.views, self.items = self.meta["key"]["views"], self.meta["items"]
        self.shard_items = self.meta["shard_items"]
        self._shards: dict[tuple[int, int], np.ndarray] = {}
        self.fingerprints = np.load(self.path / "fingerprints.npy", mmap_mode="r")

    def _shard(self, view: int, shard: int) -> np.ndarray:
        key = (view, shard)
        if key not in self._shards:
            self._shards[key] = np.load(self.path / f"targets_v{view}_s{shard}.npy", mmap_mode="r")
        return self._shards[key]

    def targets(self, index, view: int) -> torch.Tensor:
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        if not 0 <= view < self.views:
            raise TargetCacheError(f"{self.path}: view {view} not in [0, {self.views})")
        if index.size and (index.min() < 0 or index.max() >= self.items):
            raise TargetCacheError(f"{self.path}: item index {int(index.max())} not in [0, {self.items})")
        rows = [self._shard(view, int(i) // self.shard_items)[int(i) % self.shard_items] for i in index]
        return torch.from_numpy(np.stack(rows))

    def params(self, index: int, view: int) -> dict:
        """The stored view parameters of item `index`, view `view`."""
        frames = np.load(self.path / "clip_frames.npy", mmap_mode="r")[view, index]
        box = np.load(self.path / "crop_boxes.npy", mmap_mode="r")[view, index]
        flip = np.load(self.path / "flips.npy", mmap_mode="r")[view, index]
        return {"frames": np.array(frames), "box": tuple(int(x) for x in box), "flip": bool(flip)}

    def verify(self, video: torch.Tensor, index, view: int, paths=None) -> None:
        """Raise unless each clip of `video` is the view the cache holds for its item."""
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        got, want = fingerprints(video), np.asarray(self.fingerprints[view][index])
        bad = ~np.isclose(got, want, rtol=1e-4, atol=1e-5).all(axis=1)
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            where = f" ({paths[j]})" if paths else ""
            raise TargetCacheError(
                f"target cache {self.path}: item {int(index[j])}{where}, view {view} is not the clip the cache was "
                "computed on (different decode, crop or normalisation); rebuild the cache on this machine/software")


class CachedTargetLoader(LoaderWrapper):
    """Wraps the trainer's endless loader: each batch also carries `targets` (float16 [B, N, D]) read from the
    cache for the batch's items and view (= the loader's epoch % K). State = the wrapped loader's."""

    def __init__(self, loader, cache: TargetCache, verify: bool = True):
        super().__init__(loader)
        self.cache, self.verify = cache, verify
        self.clip_loader = loader.loader

    def __iter__(self):
        for batch in self.loader:
            if batch.get("skipped"):
                path, reason, _ = batch["skipped"][0]
                raise TargetCacheError(f"{path} failed to load during training ({reason}); the cached targets "
                                       "belong to the original items, so replaced items cannot be trained on")
            view = self.clip_loader.epoch % self.cache.views  # the epoch of the batch just yielded
            if self.verify:
                self.cache.verify(batch["video"], batch["index"], view, batch.get("path"))
            batch["targets"] = self.cache.targets(batch["index"], view)
            if torch.cuda.is_available():  # a faster, asynchronous host-to-device copy
                batch["targets"] = batch["targets"].pin_memory()
            yield batch



# ---- building ------------------------------------------------------------------------------------------------

@torch.no_grad()
def build_target_cache(path: str | Path, teacher: torch.nn.Module, clip_loader, key: dict, device: torch.device,
                       info=None, shard_items: int = 1024) -> TargetCache:
    """Compute the teacher's layer-normed targets of `key['views']` fixed views of every item.

    `clip_loader`: a data.loader.ClipLoader over the training items with the training transform and seed, in
    order (shuffle off, drop_last off, no manifest weights), sharded over `info`'s ranks: each rank fills its
    items. Raises naming the file when an item fails to load (every item must decode)."""
    path = Path(path)
    dataset = clip_loader.dataset
    num_views, n = key["views"], len(dataset)
    fixed_views(clip_loader, num_views)
    rank0 = info is None or info.is_main
    teacher = teacher.to(device).eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    # shapes from one item, so every rank can create/open the same files
    sample = dataset[(0, 0, 0)]
    if "failed" in sample:
        raise TargetCacheError(f"target cache: {sample['failed'][0][0]} failed to load ({sample['failed'][0][1]})")
    probe = normalize(sample["video"][0][None].to(device))
    with autocast:
        tokens, dim = teacher(probe).shape[1:]
    c, t = probe.shape[1:3]
    frames = len(view_params(dataset, 0, 0)["frames"])
    shards = -(-n // shard_items)
    files = {"clip_frames": (np.int64, (num_views, n, frames)), "crop_boxes": (np.int32, (num_views, n, 4)),
             "flips": (np.bool_, (num_views, n)), "fingerprints": (np.float64, (num_views, n, c * t)),
             "done": (np.uint8, (num_views, n))}
    if rank0:
        path.mkdir(parents=True, exist_ok=True)
        (path / "meta.json").unlink(missing_ok=True)
        for name, (dtype, shape) in files.items():
            np.lib.format.open_memmap(path / f"{name}.npy", "w+", dtype, shape).flush()
        for v in range(num_views):
            for s in range(shards):
                rows = min(shard_items, n - s * shard_items)
                shard = path / f"targets_v{v}_s{s}.npy"
                np.lib.format.open_memmap(shard, "w+", np.float16, (rows, tokens, dim)).flush()
    barrier(info)
    arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r+") for name in files}
    out = {}
    for v in range(num_views):
        clip_loader.set_epoch(v)
        for batch in clip_loader:
            if batch.get("skipped"):
                p, reason, detail = batch["skipped"][0]
                raise TargetCacheError(f"target cache: {p} failed to load ({reason}{': ' + detail if detail else ''}); "
                                       "every clip must decode to be cached: fix or remove it from the manifest")
            video = batch["video"].to(device, non_blocking=True)
            with autocast:
                feats = layer_norm_targets(teacher(video)).float()
            feats = feats.to(torch.float16).cpu().numpy()
            fp = fingerprints(batch["video"])
            for j, i in enumerate(batch["index"].tolist()):
                s = i // shard_items
                if (v, s) not in out:
                    out[(v, s)] = np.load(path / f"targets_v{v}_s{s}.npy", mmap_mode="r+")
                out[(v, s)][i % shard_items] = feats[j]
                prm = view_params(dataset, i, v)
                arrays["clip_frames"][v, i] = prm["frames"]
                arrays["crop_boxes"][v, i] = prm["box"]
                arrays["flips"][v, i] = prm["flip"]
                arrays["fingerprints"][v, i] = fp[j]
                arrays["done"][v, i] = 1
    for a in [*arrays.values(), *out.values()]:
        a.flush()
    del arrays, out
    barrier(info)
    if rank0:
        done = np.load(path / "done.npy")
        if not done.all():
            v, i = np.argwhere(done == 0)[0]
            raise TargetCacheError(f"target cache {path}: view {v} of item {i} was not computed")
        meta = {"key": key, "items": n, "tokens": int(tokens), "dim": int(dim), "shard_items": shard_items,
                "dtype": "float16", "paths": [it.path for it in dataset.items]}
        tmp = path / "meta.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        tmp.replace(path / "meta.json")
    barrier(info)
    return TargetCache(path, key)


def setup_target_cache(cfg, stage, method, stage_dir: Path, info, device: torch.device, seed: int, loader):
    """The trainer's hook (perf.fixed_views / perf.target_cache). Returns the loader to train from: unchanged,
    on fixed views, or on fixed views with cached targets (then the method's frozen teacher is released)."""
    perf = cfg.perf
    cached = perf.target_cache.enabled and method_spec(stage.method).cacheable_targets
    num_views = perf.target_cache.views if cached else perf.fixed_views
    if not num_views:
        return loader
    fixed_views(loader.loader, num_views)
    if not cached:
        return loader
    tc = perf.target_cache
    path = Path(tc.dir) if tc.dir else Path(stage_dir) / "target_cache"
    key = cache_key(cfg, method.teacher, seed, num_views)
    try:
        cache = TargetCache(path, key)
        if info.is_main:
            log.info("%s: reading teacher targets from %s", stage.name, path)
    except TargetCacheError as e:
        if (path / "meta.json").exists():
            raise  # a finished cache for something else: never overwrite it silently
        if info.is_main:
            log.info("%s: building the teacher-target cache in %s (%s)", stage.name, path, e)
        views_loader = _build_loader(cfg, info, seed, device)
        try:
            cache = build_target_cache(path, method.teacher, views_loader, key, device, info, tc.shard_items)
        finally:
            views_loader.close()  # its workers are not needed for training
    method.release_teacher()
    return CachedTargetLoader(loader, cache, tc.verify)


def _build_loader(cfg, info, seed: int, device="cpu"):
    """The training items, transform and seed, in order: what build_target_cache reads."""
    from data.loader import build_loader
    from vjepa.train.data import clip_kwargs, manifests

    train, _ = manifests(cfg)
    bs = cfg.perf.target_cache.build_batch_size or cfg.data.batch_size
    return build_loader(train, train=True, shuffle=False, drop_last=False, batch_size=bs,
                        num_workers=cfg.data.num_workers, persistent_workers=False, seed=seed, rank=info.rank,
                        world_size=info.world_size, **clip_kwargs(cfg, device))
