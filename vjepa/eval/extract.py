"""Features of a video collection, written to disk (`python -m launch.extract`, docs/extract.md).

Whole videos, not one clip: clips of `frames_per_clip` frames (one every `frame_step` frames) slide over each
video, a new one every `stride` seconds (default: back to back), or `clips_per_video` evenly spaced ones. Each
clip is resized and centre-cropped as the checkpoint's preprocessing says, the frozen encoder runs on it, and
its tokens are pooled (`mean`, `none`, or `cls_attentive`: the query output of a trained attentive probe's
pooler). The output folder, readable with safetensors + json alone:

    OUT/features/<video path>.safetensors  "features" [clips, ...] (float16 by default), "timestamps" [clips, 2]
                                           (start, end of each clip in seconds), "frames" [clips, F] (indices);
                                           the video's own record as JSON in the header's metadata
    OUT/failed/<video path>.json           a file that could not be read: path, reason, detail
    OUT/run.json                           what the features are: checkpoint (path, sha256), encoder config, settings
    OUT/index.json                         the run, counts, and every video of the list in order (done ones with
                                           their record, failed ones with the reason)

<video path> is the path relative to the folder (or the manifest's folder) plus `.safetensors`.

Resumable: a video is done when its features file is there and whole. Files are written under a temporary
name and renamed, so an interrupted run leaves no file that passes for complete; a rerun skips the done
videos, retries the failed ones and refuses an output folder made with another checkpoint or settings.
Sharded: shard r of n takes the r-th contiguous slice of the list (torchrun ranks, SLURM array tasks); every
shard rewrites index.json under a file lock when it ends, so the last one to end writes the whole index,
byte-identical to a single-process run's.
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from data.clips import TooShort, clip_indices, frame_step_for
from data.dataset import is_image
from data.decoders import DecodeError, ReaderCache
from data.manifest import Item, read_manifest
from data.transforms import apply, eval_transform

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".flv", ".wmv", ".ts", ".3gp"}
POOLS = ("mean", "none", "cls_attentive")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
DEFAULT_FPS = 30.0  # for files that do not say their frame rate (the data loader's assumption too)
FEATURES_DIR, FAILED_DIR, INDEX, RUN, LOCK = "features", "failed", "index.json", "run.json", ".extract.lock"
META_KEY = "vjepa_extract"  # one metadata entry: safetensors writes several in a random order (bytes differ)


@dataclass(frozen=True)
class ExtractSettings:
    """What defines the features (all of it must match to resume into an output folder)."""
    frames_per_clip: int = 16
    frame_step: int | None = None     # exactly one of frame_step / fps / duration; none: frame_step=4
    fps: float | None = None          # sample frames at this rate (step = round(video fps / fps))
    duration: float | None = None     # seconds covered by one clip
    stride: float | None = None       # seconds between clip starts; None: the clip's span (back to back)
    clips_per_video: int | None = None  # instead of stride: this many evenly spaced clips per video
    crop_size: int = 224
    resize_short_side: int = 256      # short side before the centre crop
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)
    pool: str = "mean"
    layers: tuple = (-1,)             # encoder blocks (negative: from the end); each through the final norm
    dtype: str = "float16"

    def __post_init__(self):
        if self.frames_per_clip < 1 or self.crop_size < 1:
            raise ValueError(f"frames_per_clip ({self.frames_per_clip}) and crop_size ({self.crop_size}) must be >= 1")
        if sum(x is not None for x in (self.frame_step, self.fps, self.duration)) == 0:
            object.__setattr__(self, "frame_step", 4)
        frame_step_for(DEFAULT_FPS, self.frames_per_clip, self.frame_step, self.fps, self.duration)  # one of them
        if self.stride is not None and self.clips_per_video is not None:
            raise ValueError("give stride (seconds between clips) or clips_per_video (evenly spaced), not both")
        if self.stride is not None and self.stride <= 0:
            raise ValueError(f"stride must be > 0 seconds, got {self.stride}")
        if self.clips_per_video is not None and self.clips_per_video < 1:
            raise ValueError(f"clips_per_video must be >= 1, got {self.clips_per_video}")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if not self.layers:
            raise ValueError("layers: give at least one encoder block (e.g. [-1], the last)")
        object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        object.__setattr__(self, "mean", tuple(float(x) for x in self.mean))
        object.__setattr__(self, "std", tuple(float(x) for x in self.std))


# ---- which videos, which clips --------------------------------------------------------------------------------

def list_videos(source: str | Path) -> tuple[list[Item], Path, list]:
    """(videos, the folder output names are relative to, manifest problems) of a folder (searched recursively
    for video files) or a manifest (any format data.manifest reads; labels are ignored, start / end kept)."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
        if not files:
            raise ValueError(f"data.videos: no video files ({', '.join(sorted(VIDEO_EXTENSIONS))}) under {source}")
        return [Item(str(p.resolve()), source=str(p)) for p in files], source.resolve(), []
    if not source.is_file():
        raise FileNotFoundError(f"data.videos: {source} is neither a folder nor a manifest file")
    items, problems = read_manifest(source)
    seen, unique = set(), []
    for it in items:  # a file listed twice has one output
        if (it.path, it.start, it.end) not in seen:
            seen.add((it.path, it.start, it.end))
            unique.append(it)
    if len(unique) < len(items):
        log.warning("%s lists %d file(s) more than once; extracting each once", source, len(items) - len(unique))
    if not unique:
        raise ValueError(f"data.videos: no readable rows in {source} ({len(problems)} bad rows)")
    return unique, source.resolve().parent, problems


def output_name(item: Item, root: Path) -> str:
    """The video's path relative to root (or a hashed name for files elsewhere), plus the time range if any."""
    path = Path(item.path)
    try:
        name = str(path.relative_to(root))
    except ValueError:
        name = f"external/{hashlib.sha1(str(path).encode()).hexdigest()[:12]}-{path.name}"
    if item.start is not None or item.end is not None:
        name += f"@{item.start or 0:g}-{'end' if item.end is None else f'{item.end:g}'}"
    return name


def shard_of(items: list, shard: int, num_shards: int) -> list:
    """The shard-th of num_shards contiguous, near-equal slices."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} is not in [0, {num_shards})")
    n = len(items)
    return items[shard * n // num_shards:(shard + 1) * n // num_shards]


def plan_clips(num_frames: int, video_fps: float, s: ExtractSettings, start: float | None = None,
               end: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(frame indices [clips, frames_per_clip] int64, timestamps [clips, 2] float64: start and end in seconds
    of each clip, i.e. of its first frame and just after its last). A video (or range) shorter than one clip
    gives one clip padded with its last frame, as the data loader does; frames after the last whole clip
    that a stride leaves over are not covered."""
    fps = video_fps if video_fps > 0 else DEFAULT_FPS
    step = frame_step_for(fps, s.frames_per_clip, s.frame_step, s.fps, s.duration)
    first = int(math.floor(start * fps)) if start is not None else 0
    last = min(int(math.ceil(end * fps)), num_frames) if end is not None else num_frames
    if first >= last:
        raise TooShort(f"start {start}s is past the end ({num_frames} frames at {fps:g} fps)")
    span = s.frames_per_clip * step
    if s.clips_per_video is not None:
        frames = np.stack(clip_indices(num_frames, s.frames_per_clip, step, s.clips_per_video, None, first, last))
    else:
        stride = max(1, round(s.stride * fps)) if s.stride is not None else span
        starts = np.arange(first, first + max(last - first - span, 0) + 1, stride)
        frames = np.minimum(starts[:, None] + step * np.arange(s.frames_per_clip), last - 1)
    timestamps = np.stack([frames[:, 0], frames[:, -1] + 1], axis=1) / fps
    return frames.astype(np.int64), timestamps.astype(np.float64)


# ---- decoding: a stream of clip chunks ---------------------------------------------------------------------

class ClipChunks(torch.utils.data.IterableDataset):
    """The decoded, resized and cropped uint8 clips [b, C, T, H, W] of each video, in chunks of at most
    `batch_size` clips (what the encoder runs on at once; a long video is never held whole). A file that
    cannot be read gives one `failed` record instead, possibly after some of its chunks; DataLoader workers
    take every num_workers-th video."""

    def __init__(self, videos: list[Item], s: ExtractSettings, batch_size: int, backend: str = "pyav"):
        self.videos, self.s, self.batch_size = videos, s, batch_size
        self.readers = ReaderCache(backend, max_open=1)  # with the per-file fallback to another decoder

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        picks = range(len(self.videos)) if info is None else range(info.id, len(self.videos), info.num_workers)
        transform = eval_transform(self.s.crop_size, self.s.resize_short_side / self.s.crop_size)
        for i in picks:
            try:
                yield from self._chunks(i, transform)
            except DecodeError as e:
                yield {"video": i, "failed": (e.reason, e.detail)}
            except TooShort as e:
                yield {"video": i, "failed": ("too_short", str(e))}
            except Exception as e:  # anything else about this file (odd sizes, ...): name it, go on
                yield {"video": i, "failed": ("error", f"{type(e).__name__}: {e}"[:300])}

    def _chunks(self, i: int, transform):
        item = self.videos[i]
        if is_image(item.path):
            raise DecodeError(item.path, "unsupported", "an image: launch.extract reads videos")
        reader = self.readers.get(item.path)
        try:
            frames, timestamps = plan_clips(reader.num_frames, reader.fps, self.s, item.start, item.end)
            for k in range(0, len(frames), self.batch_size):
                idx = frames[k:k + self.batch_size]
                wanted = np.unique(idx)  # one decoder call per chunk; frames shared by clips decoded once
                decoded = torch.from_numpy(np.ascontiguousarray(self.readers.get_frames(item.path, wanted)))
                pos = torch.from_numpy(np.searchsorted(wanted, idx))
                clips = torch.stack([apply(transform, decoded[p])[0] for p in pos])
                yield {"video": i, "clips": clips, "first": k, "total": len(frames), "frames": idx,
                       "timestamps": timestamps[k:k + self.batch_size], "fps": reader.fps,
                       "num_frames": reader.num_frames}
        finally:
            self.readers.forget(item.path)


# ---- encoding -----------------------------------------------------------------------------------------------

class FeatureEncoder(torch.nn.Module):
    """Normalised clips [B, C, T, H, W] -> pooled features [B, *shape]: [D] (mean, cls_attentive) or [N, D]
    (none) per layer, with a layer axis after B when several layers are asked for."""

    def __init__(self, encoder, layers=(-1,), pool: str = "mean", pooler=None):
        super().__init__()
        depth = len(encoder.blocks)
        bad = [i for i in layers if not -depth <= i < depth]
        if bad:
            raise ValueError(f"layers: {bad} outside the encoder's {depth} blocks (0..{depth - 1} or -{depth}..-1)")
        if pool == "cls_attentive" and pooler is None:
            raise ValueError("pool=cls_attentive needs the attentive probe (probe_checkpoint=PATH)")
        if pooler is not None and pooler.query_tokens.shape[-1] != encoder.embed_dim:
            raise ValueError(f"probe_checkpoint: the probe's width {pooler.query_tokens.shape[-1]} is not the "
                             f"encoder's {encoder.embed_dim}")
        self.encoder, self.pool, self.pooler = encoder, pool, pooler
        self.layers = tuple(i % depth for i in layers)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layers == (len(self.encoder.blocks) - 1,):
            per_layer = [self.encoder(x)]
        else:  # blocks' outputs through the final norm, as V-JEPA 2 reads intermediate layers
            blocks = sorted(set(self.layers))  # the encoder returns them in block order
            _, outs = self.encoder(x, out_layers=blocks)
            per_layer = [self.encoder.norm(outs[blocks.index(i)]) for i in self.layers]
        pooled = [self._pool(t) for t in per_layer]
        return pooled[0] if len(pooled) == 1 else torch.stack(pooled, dim=1)

    def _pool(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.pool == "mean":
            return tokens.mean(dim=1)
        if self.pool == "none":
            return tokens
        return self.pooler(tokens).mean(dim=1)  # the probe's query output, what its linear layer reads


def load_probe_pooler(path: str, index: int = 0, num_heads: int = 16):
    """The attentive pooler of classifier `index` of a reference attentive-probe checkpoint."""
    from vjepa.eval.attentive import load_reference_probes

    heads = load_reference_probes(path, num_heads=num_heads)
    if not 0 <= index < len(heads):
        raise ValueError(f"probe_index {index}: {path} holds {len(heads)} classifier(s)")
    return heads[index].pooler.eval()


def normalizer(s: ExtractSettings, device):
    mean = torch.tensor(s.mean, device=device).view(3, 1, 1, 1) * 255
    std = torch.tensor(s.std, device=device).view(3, 1, 1, 1) * 255
    return lambda clips: (clips.to(device, torch.float32) - mean) / std


def autocast_for(device: torch.device):
    # the probe's convention: bf16 on CUDA, exact fp32 on CPU
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


# ---- files ----------------------------------------------------------------------------------------------------

def sha256_of(path: str | Path) -> str:
    """sha256 of a checkpoint file, or of a folder's files (names and contents, in name order)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write under a temporary name in the same folder, fsync, rename: the final name only ever holds a
    whole file. The temporary name never ends in .safetensors / .json, so it is never read as an output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def features_path(out: Path, name: str) -> Path:
    return out / FEATURES_DIR / f"{name}.safetensors"


def failed_path(out: Path, name: str) -> Path:
    return out / FAILED_DIR / f"{name}.json"


def write_video(out: Path, name: str, item: Item, parts: list, dtype: str) -> int:
    """One video's features file from its chunks [(features, chunk), ...]; returns its number of clips."""
    from safetensors.torch import save

    features = torch.cat([f for f, _ in parts])
    frames = np.concatenate([c["frames"] for _, c in parts])
    timestamps = np.concatenate([c["timestamps"] for _, c in parts])
    last = parts[-1][1]
    record = {"path": item.path, "file": str(features_path(out, name).relative_to(out)), "num_clips": len(features),
              "feature_shape": list(features.shape), "dtype": dtype, "timestamps": timestamps.round(6).tolist(),
              "fps": last["fps"], "num_frames": last["num_frames"], "start": item.start, "end": item.end}
    tensors = {"features": features.contiguous(), "timestamps": torch.from_numpy(timestamps),
               "frames": torch.from_numpy(frames)}
    write_atomic(features_path(out, name), save(tensors, metadata={META_KEY: json.dumps(record, sort_keys=True)}))
    failed_path(out, name).unlink(missing_ok=True)  # a retried file that now worked
    return len(features)


def record_failure(out: Path, name: str, item: Item, reason: str, detail: str) -> dict:
    record = {"path": item.path, "file": None, "reason": reason, "detail": detail}
    write_atomic(failed_path(out, name), (json.dumps(record, sort_keys=True) + "\n").encode())
    log.warning("skipping %s (%s): %s", item.path, reason, detail)
    return record


def read_record(path: Path) -> dict | None:
    """The record in a features file's header; None if the file is absent, truncated or not ours."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            return json.loads((f.metadata() or {})[META_KEY])
    except Exception:  # noqa: BLE001 -- any unreadable file is simply not done
        return None


def load_features(path: str | Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(features, timestamps, record) of one output file (any safetensors reader does the same)."""
    from safetensors.torch import load_file

    t = load_file(str(path))
    return t["features"], t["timestamps"], read_record(Path(path))


@contextmanager
def locked(out: Path):
    """An exclusive lock on the output folder across processes (shards ending at once, or starting)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def check_run(out: Path, run: dict) -> None:
    """Record the run in OUT/run.json, or refuse a folder written with another checkpoint or other settings
    (resuming into it would mix features that mean different things). Paths may differ, contents may not.
    Call under `locked(out)`."""
    path = out / RUN
    if not path.is_file():
        write_atomic(path, (json.dumps(run, indent=1, sort_keys=True) + "\n").encode())
        return
    old = json.loads(path.read_text())
    diff = [k for k in sorted(set(old) | set(run))
            if k != "checkpoint" and _identity(old.get(k)) != _identity(run.get(k))]
    if diff:
        raise ValueError(f"out={out} holds features of another run ({', '.join(diff)} differ: "
                         + "; ".join(f"{k}: {old.get(k)!r} there, {run.get(k)!r} now" for k in diff[:3])
                         + "); extract into a new folder")


def _identity(value):
    """A run entry without the paths it was read from (a moved checkpoint is the same checkpoint)."""
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k != "checkpoint"}
    return value


def write_index(out: Path, videos: list[Item], root: Path, run: dict, problems=()) -> dict:
    """index.json over the whole list, in its order, from what is on disk: done videos (their records),
    failed ones (named, with the reason) and pending ones (counted). Call under `locked(out)`."""
    done, failed, reasons = [], [], {}
    for item in videos:
        name = output_name(item, root)
        record = read_record(features_path(out, name))
        if record is not None:
            done.append(record)
            continue
        fp = failed_path(out, name)
        if fp.is_file():
            f = json.loads(fp.read_text())
            failed.append(f)
            reasons[f["reason"]] = reasons.get(f["reason"], 0) + 1
    bad_rows = [{"where": p.where, "path": p.path, "reason": p.reason, "detail": p.detail} for p in problems]
    index = {"run": run, "counts": {"videos": len(videos), "done": len(done), "failed": len(failed),
                                    "pending": len(videos) - len(done) - len(failed), "bad_rows": len(bad_rows)},
             "failed_by_reason": dict(sorted(reasons.items())), "videos": done, "failed": failed,
             "bad_rows": bad_rows}
    write_atomic(out / INDEX, (json.dumps(index) + "\n").encode())  # one line: millions of videos stay small
    return index


# ---- the run ----------------------------------------------------------------------------------------------

@dataclass
class ShardSummary:
    shard: int
    num_shards: int
    videos: int = 0            # in this shard
    already_done: int = 0      # skipped: complete from an earlier run
    extracted: int = 0
    failed: int = 0
    clips: int = 0
    wall_s: float = 0.0
    failures: list = field(default_factory=list)

    def rates(self) -> str:
        w = max(self.wall_s, 1e-9)
        return (f"{self.extracted} videos ({self.clips} clips) in {self.wall_s:.1f} s: {self.extracted / w:.2f} "
                f"videos/s, {self.clips / w:.1f} clips/s; {self.already_done} already done, {self.failed} failed")


def extract_features(model: FeatureEncoder, videos: list[Item], root: Path, out: str | Path, s: ExtractSettings,
                     run: dict, *, shard: int = 0, num_shards: int = 1, batch_size: int = 16, num_workers: int = 2,
                     backend: str = "pyav", device: str | torch.device = "cpu", problems=(),
                     progress: bool = True) -> ShardSummary:
    """Extract this shard's videos that are not done yet into `out`, then rewrite index.json. `run` (the
    encoder config, checkpoint sha256 and settings) is stored in the index and must match an existing one."""
    from tqdm import tqdm

    out, device = Path(out), torch.device(device)
    with locked(out):
        check_run(out, run)
    mine = shard_of(videos, shard, num_shards)
    names = [output_name(v, root) for v in mine]
    todo = [i for i, n in enumerate(names) if read_record(features_path(out, n)) is None]
    summary = ShardSummary(shard, num_shards, videos=len(mine), already_done=len(mine) - len(todo))
    remove_stale_temporaries(out, {names[i] for i in todo})
    log.info("shard %d/%d: %d videos, %d already done, %d to extract", shard, num_shards, len(mine),
             summary.already_done, len(todo))
    t0 = time.perf_counter()
    if todo:
        model = model.to(device).eval()
        norm = normalizer(s, device)
        loader = _loader(ClipChunks([mine[i] for i in todo], s, batch_size, backend), num_workers)
        partial: dict[int, list] = {}
        bar = tqdm(total=len(todo), unit="video", desc=f"shard {shard}/{num_shards}" if num_shards > 1 else "extract",
                   position=shard if num_shards > 1 else None, disable=not progress, dynamic_ncols=True,
                   mininterval=0.1 if sys.stderr.isatty() else 30)  # a log file (SLURM) gets a line every 30 s
        for chunk in loader:
            k = chunk["video"]
            item, name = mine[todo[k]], names[todo[k]]
            if "failed" in chunk:
                partial.pop(k, None)
                summary.failures.append(record_failure(out, name, item, *chunk["failed"]))
                summary.failed += 1
            else:
                with autocast_for(device):  # (the pixels are not kept: only features wait for the video's end)
                    feats = model(norm(chunk.pop("clips"))).to("cpu", DTYPES[s.dtype])
                partial.setdefault(k, []).append((feats, chunk))
                if chunk["first"] + len(feats) < chunk["total"]:
                    continue  # more chunks of this video to come
                summary.clips += write_video(out, name, item, partial.pop(k), s.dtype)
                summary.extracted += 1
            bar.update(1)
            bar.set_postfix(clips=summary.clips, failed=summary.failed)
        bar.close()
    summary.wall_s = time.perf_counter() - t0
    with locked(out):
        index = write_index(out, videos, root, run, problems)
    c = index["counts"]
    log.info("shard %d/%d: %s. index.json: %d/%d done, %d failed, %d pending", shard, num_shards,
             summary.rates(), c["done"], c["videos"], c["failed"], c["pending"])
    return summary


def _loader(dataset: ClipChunks, num_workers: int):
    from data.loader import _init_worker, _worker_context

    kw = {}
    if num_workers > 0:  # forkserver workers (a fork of a process holding two FFmpeg builds can hang), bound
        # like the training loader's so that none outlives an extraction process killed by any signal
        kw = dict(multiprocessing_context=_worker_context("forkserver"), prefetch_factor=2, timeout=600,
                  worker_init_fn=functools.partial(_init_worker, forkserver=True))
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers, collate_fn=_as_is, **kw)


def _as_is(chunk: dict) -> dict:
    return chunk  # the default would turn the numpy frame indices and timestamps into tensors


def remove_stale_temporaries(out: Path, names: set[str]) -> None:
    """Temporary files an interrupted run of these videos left (never outputs; see write_atomic)."""
    root = out / FEATURES_DIR
    if not root.is_dir() or not names:
        return
    for dirpath, _, files in os.walk(root):
        for f in files:
            base, sep, _ = f.rpartition(".tmp-")
            if sep and base.endswith(".safetensors"):
                rel = str((Path(dirpath) / base).relative_to(root))[:-len(".safetensors")]
                if rel in names:
                    (Path(dirpath) / f).unlink(missing_ok=True)


def run_record(pretrained, checkpoint: str, s: ExtractSettings, *, probe: str | None = None,
               probe_index: int = 0) -> dict:
    """What the features are: encoder, checkpoint (path and sha256), settings; index.json's `run`."""
    run = {"checkpoint": str(checkpoint), "checkpoint_sha256": sha256_of(checkpoint),
           "source_format": pretrained.source_format, "checkpoint_key": pretrained.checkpoint_key,
           "encoder_config": json.loads(json.dumps(pretrained.encoder_config)), "settings": asdict(s)}
    run["settings"]["layers"] = list(s.layers)
    run["settings"]["mean"], run["settings"]["std"] = list(s.mean), list(s.std)
    if s.pool == "cls_attentive":
        run["probe"] = {"checkpoint": str(probe), "sha256": sha256_of(probe), "index": probe_index}
    return run


def settings_for(pretrained, *, frames_per_clip: int | None = None, crop_size: int | None = None,
                 **kw) -> ExtractSettings:
    """ExtractSettings with the checkpoint's own preprocessing (clip length, crop, resize, mean / std) where
    not given."""
    pre = pretrained.preprocessing
    crop = crop_size or pre["crop_size"]
    resize = pre["resize_short_side"] if crop == pre["crop_size"] else int(crop * 256 / 224)
    return ExtractSettings(frames_per_clip=frames_per_clip or pre["num_frames"], crop_size=crop,
                           resize_short_side=resize, mean=tuple(pre["mean"]), std=tuple(pre["std"]), **kw)
