"""Video decoding behind one interface: ``open_video(path, backend) -> reader``; ``reader.get_frames(idx)``.

Every backend returns uint8 ``[T, H, W, 3]`` RGB for the requested frame indices (frame ``i`` is the
``i``-th frame in presentation order) and raises :class:`DecodeError` (with a short ``reason``) for
anything wrong with the file, so callers can skip and count instead of crashing.

Backends
- ``decord`` (default): ``decord.VideoReader.get_batch``; a kept-open reader seeks to the nearest
  keyframe before each index run and decodes forward.
- ``pyav``: our own seek-and-decode loop over PyAV. It indexes packets once at open, decodes from the
  nearest keyframe only, continues from the decoder's current position when that is closer, and lets
  FFmpeg drop non-reference frames that are not requested (``skip_frame=NONREF``) -- those are never
  needed to reconstruct other frames, so output stays pixel-exact while decoding far fewer frames.
  YUV->RGB goes through one swscale context per reader on one thread (:func:`rgb_converter`).
- ``dali``: ``nvidia.dali.fn.decoders.video`` on the in-memory file with ``frames=indices``.
  ``device='cpu'`` decodes VP8/VP9/MJPEG only (H.264/HEVC raise a clear ``unsupported_codec``);
  ``device='mixed'`` uses NVDEC on the GPU and returns frames on the GPU (not runnable on CPU-only hosts).

Readers are not fork/pickle safe (decord deadlocks if shared across a fork): create them inside the
DataLoader worker, e.g. through :class:`ReaderCache`, which keeps a few readers open per process so
consecutive clips of the same file reuse the decoder.
"""

from __future__ import annotations

import bisect
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

BACKENDS = ("decord", "pyav", "dali")
# codecs DALI's CPU operators can decode (../shared/reference.md §6)
DALI_CPU_CODECS = {"vp8", "vp9", "mjpeg"}


class DecodeError(Exception):
    """A media file could not be (fully) decoded. ``reason`` is a short category used in skip counts."""

    def __init__(self, path: str, reason: str, detail: str = ""):
        self.path, self.reason, self.detail = str(path), reason, detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


def check_file(path: str | Path) -> None:
    """Cheap checks before any library touches the file (libraries give cryptic errors for these)."""
    p = Path(path)
    if not p.exists():
        raise DecodeError(path, "missing", "no such file")
    if not p.is_file():
        raise DecodeError(path, "unreadable", "not a regular file")
    if p.stat().st_size == 0:
        raise DecodeError(path, "empty", "zero bytes")
    if not os.access(p, os.R_OK):
        raise DecodeError(path, "unreadable", "permission denied")


def _check_indices(path: str, indices, num_frames: int) -> list[int]:
    idx = [int(i) for i in indices]
    if not idx:
        raise ValueError("no frame indices requested")
    bad = [i for i in idx if i < 0 or i >= num_frames]
    if bad:
        raise DecodeError(path, "too_short", f"frame {bad[0]} requested, video has {num_frames}")
    return idx


def pyav_reformatter(format: str):
    """``frame -> frame`` in pixel ``format``, on one thread, reusing one swscale context.

    ``frame.reformat``/``frame.to_ndarray(format=...)`` build a new context for every new frame, and since
    PyAV 17 that context starts a thread per CPU: YUV->RGB of a 320x240 frame took 0.5-0.65 ms here that
    way against 0.06-0.1 ms this way, same pixels (a third of a 16-frame clip's decode time)."""
    import av
    from av.video.reformatter import VideoReformatter

    reformatter = VideoReformatter()
    threads = {"threads": 1} if int(av.__version__.split(".")[0]) >= 17 else {}  # no threaded swscale before 17
    return lambda frame: reformatter.reformat(frame, format=format, **threads)


def rgb_converter():
    """``frame -> uint8 [H, W, 3]`` RGB for PyAV frames (see :func:`pyav_reformatter`)."""
    to_rgb = pyav_reformatter("rgb24")
    return lambda frame: to_rgb(frame).to_ndarray()


def _check_output(path: str, frames: np.ndarray, n: int) -> np.ndarray:
    if frames.ndim != 4 or frames.shape[0] != n or frames.shape[-1] != 3:
        raise DecodeError(path, "decode_error", f"decoder returned shape {tuple(frames.shape)} for {n} frames")
    return frames


class DecordReader:
    backend = "decord"

    def __init__(self, path: str, threads: int = 1):
        import decord

        check_file(path)
        self.path = str(path)
        try:
            self._vr = decord.VideoReader(self.path, ctx=decord.cpu(0), num_threads=threads)
            self.num_frames = len(self._vr)
            self.fps = float(self._vr.get_avg_fps())
            self.height, self.width = self._vr[0].shape[:2] if self.num_frames else (0, 0)
        except Exception as e:  # decord raises bare RuntimeError/DECORDError for every open failure
            raise DecodeError(self.path, "unreadable", str(e).splitlines()[0][:200]) from None
        if self.num_frames == 0:
            raise DecodeError(self.path, "unreadable", "no video frames")

    def get_frames(self, indices) -> np.ndarray:
        idx = _check_indices(self.path, indices, self.num_frames)
        try:
            frames = self._vr.get_batch(idx).asnumpy()
        except Exception as e:  # truncated/corrupt stream: IndexError, DECORDError
            raise DecodeError(self.path, "decode_error", f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
        return _check_output(self.path, frames, len(idx))

    def close(self) -> None:
        self._vr = None


class PyAVReader:
    backend = "pyav"

    def __init__(self, path: str, threads: int = 1):
        import av

        check_file(path)
        self.path = str(path)
        try:
            self._container = av.open(self.path)
            if not self._container.streams.video:
                raise DecodeError(self.path, "unreadable", "no video stream")
            self._stream = stream = self._container.streams.video[0]
            if stream.codec_context is None:
                raise DecodeError(self.path, "unsupported_codec", f"no decoder for {stream.codec_context}")
            stream.codec_context.thread_count = threads
            stream.codec_context.thread_type = "SLICE"  # frame threading would delay skip_frame switches
            # one pass over the packets (no decoding): frame index <-> pts, and where keyframes are
            pts, key_pts = [], []
            for packet in self._container.demux(stream):
                if packet.pts is None or packet.size == 0:
                    continue
                pts.append(packet.pts)
                if packet.is_keyframe:
                    key_pts.append(packet.pts)
        except DecodeError:
            raise
        except Exception as e:
            raise DecodeError(self.path, "unreadable", f"{type(e).__name__}: {e}"[:200]) from None
        self._pts = sorted(pts)
        self._key_pts = sorted(key_pts) or self._pts[:1]
        self.num_frames = len(self._pts)
        if self.num_frames == 0:
            raise DecodeError(self.path, "unreadable", "no video frames")
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else 0.0
        self.height, self.width = stream.codec_context.height, stream.codec_context.width
        self._frames = None    # frame iterator positioned somewhere in the stream
        self._last_pts = None  # pts of the last frame it produced
        self._to_rgb = rgb_converter()

    def _restart_at(self, pts: int) -> None:
        self._container.seek(pts, stream=self._stream, backward=True, any_frame=False)
        self._frames = self._decode()
        self._last_pts = None

    def _decode(self):
        # packets whose frame is not wanted are decoded with NONREF skipping; needed ones normally
        cc = self._stream.codec_context
        for packet in self._container.demux(self._stream):
            cc.skip_frame = "DEFAULT" if packet.pts in self._wanted else "NONREF"
            for frame in packet.decode():
                yield frame
        cc.skip_frame = "DEFAULT"

    def get_frames(self, indices) -> np.ndarray:
        idx = _check_indices(self.path, indices, self.num_frames)
        targets = sorted({self._pts[i] for i in idx})
        self._wanted = set(targets)
        found: dict[int, np.ndarray] = {}
        try:
            for target in targets:
                key = self._key_pts[max(bisect.bisect_right(self._key_pts, target) - 1, 0)]
                # continue forward when the decoder already sits between the keyframe and the target
                if self._frames is None or self._last_pts is None or not (key <= self._last_pts < target):
                    self._restart_at(key)
                while target not in found:
                    frame = next(self._frames, None)
                    if frame is None:
                        self._frames = None
                        raise DecodeError(self.path, "decode_error",
                                          f"stream ended before frame {self._pts.index(target)} (truncated?)")
                    if frame.pts is None:
                        continue
                    self._last_pts = frame.pts
                    if frame.pts in self._wanted and frame.pts not in found:
                        found[frame.pts] = self._to_rgb(frame)
                    if frame.pts > target and target not in found:
                        self._frames = None
                        raise DecodeError(self.path, "decode_error", f"frame with pts {target} missing (corrupt?)")
        except DecodeError:
            raise
        except Exception as e:  # av.error.InvalidDataError on corrupt packets, etc.
            self._frames = None
            raise DecodeError(self.path, "decode_error", f"{type(e).__name__}: {e}"[:200]) from None
        frames = np.stack([found[self._pts[i]] for i in idx])
        return _check_output(self.path, frames, len(idx))

    def close(self) -> None:
        self._frames = None
        self._container.close()


class DaliReader:
    """DALI ``fn.decoders.video`` over the whole encoded file (held in memory).

    ``device='cpu'``: VP8/VP9/MJPEG only; anything else raises ``unsupported_codec`` up front (DALI's CPU
    operator would otherwise fail or pad). ``device='mixed'``: NVDEC on ``device_id``, returns a torch CUDA
    tensor ``[T, H, W, 3]`` uint8 (frames stay on the GPU).

    All readers of a process share one pipeline per (device, device_id, threads), so opening a file costs no
    pipeline build and :func:`dali_decode` can decode the clips of a whole batch -- of different files --
    in one pipeline run (what the loader does with this backend).
    """

    backend = "dali"

    def __init__(self, path: str, device: str = "cpu", device_id: int = 0, threads: int | None = None):

        check_file(path)
        self.path, self.device = str(path), device
        if device not in ("cpu", "mixed"):
            raise ValueError(f"DALI device must be 'cpu' or 'mixed', got {device!r}")
        # metadata (frame count, codec) via PyAV: DALI has no cheap metadata query
        meta = PyAVReader(self.path)
        self.num_frames, self.fps, self.height, self.width = meta.num_frames, meta.fps, meta.height, meta.width
        self.codec = meta._stream.codec_context.name
        meta.close()
        if device == "cpu" and self.codec not in DALI_CPU_CODECS:
            raise DecodeError(self.path, "unsupported_codec",
                              f"DALI's CPU decoder handles {sorted(DALI_CPU_CODECS)}, not {self.codec}; "
                              "use device='mixed' on a GPU or the decord/pyav backend")
        self._encoded = np.fromfile(self.path, dtype=np.uint8)
        if threads is None:  # DALI decodes the samples of a run in parallel, one per pipeline thread; with one
            # thread NVDEC decoded 16 clips/s on an H200 whatever the batch (docs/benchmarks.md)
            threads = min(DALI_MIXED_THREADS, usable_cpus()) if device == "mixed" else 1
        self.pipe_key = (device, device_id if device == "mixed" else None, max(threads, 1))

    def get_frames(self, indices):
        return dali_decode([(self, indices)])[0]

    def close(self) -> None:
        self._encoded = None


DALI_MAX_BATCH = 64  # clips per pipeline run; larger requests run in chunks
DALI_MIXED_THREADS = 8  # default pipeline threads for NVDEC: samples of a run decode in parallel
_DALI_PIPES: dict = {}


def dali_decode(requests) -> list:
    """``[(DaliReader, indices), ...]`` (readers of one device) -> their frames, decoded in one pipeline run
    per ``DALI_MAX_BATCH`` clips. A failure of a run with several clips raises a ``DecodeError`` naming all
    their files (DALI does not say which one failed): decode them one by one to find it."""
    keys = {r.pipe_key for r, _ in requests}
    if len(keys) != 1:
        raise ValueError(f"dali_decode: readers of one DALI device per call, got {sorted(map(str, keys))}")
    if len(requests) > DALI_MAX_BATCH:
        return [f for i in range(0, len(requests), DALI_MAX_BATCH) for f in dali_decode(requests[i:i + DALI_MAX_BATCH])]
    device, device_id, threads = keys.pop()
    pid_key = (os.getpid(), device, device_id, threads)
    if pid_key not in _DALI_PIPES:  # per process: a forked copy never runs the parent's pipeline
        _DALI_PIPES[pid_key] = _dali_pipeline(device, device_id or 0, threads)
    pipe = _DALI_PIPES[pid_key]
    idx = [_check_indices(r.path, i, r.num_frames) for r, i in requests]
    paths = ", ".join(dict.fromkeys(r.path for r, _ in requests))
    try:
        pipe.feed_input("encoded", [r._encoded for r, _ in requests])
        pipe.feed_input("frames", [np.asarray(i, dtype=np.int32) for i in idx])
        (out,) = pipe.run()
    except Exception as e:
        raise DecodeError(paths, "decode_error", f"DALI: {str(e).splitlines()[0][:200]}") from None
    results = []
    for k, (reader, _) in enumerate(requests):
        if device == "mixed":
            import torch
            from nvidia.dali.plugin.pytorch import feed_ndarray

            tensor = out[k]  # a GPU tensor: copied device-to-device into torch, never through the host
            frames = torch.empty(tensor.shape(), dtype=torch.uint8, device=f"cuda:{device_id or 0}")
            feed_ndarray(tensor, frames)
        else:
            frames = np.asarray(out[k])
        _check_output(reader.path, frames, len(idx[k]))
        # DALI pads frames it could not decode with zeros; a truncated file must not pass as black frames
        if len(idx[k]) > 1 and not frames[-1].any() and frames.any():
            raise DecodeError(reader.path, "decode_error", "DALI returned zero-padded frames (truncated?)")
        results.append(frames)
    return results


def _dali_pipeline(device: str, device_id: int, threads: int):
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=DALI_MAX_BATCH, num_threads=threads, device_id=device_id if device == "mixed" else None,
                  prefetch_queue_depth=1, exec_dynamic=True)
    def pipe():
        encoded = fn.external_source(name="encoded", dtype=_dali_uint8(), ndim=1)
        frames = fn.external_source(name="frames", ndim=1)
        # pad_mode only applies to start/sequence selection; with explicit frames an out-of-range index errors
        return fn.decoders.video(encoded, frames=frames, device=device)

    p = pipe()
    p.build()
    return p


def _dali_uint8():
    from nvidia.dali import types

    return types.UINT8


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask: a container's or a SLURM task's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def open_video(path: str | Path, backend: str = "decord", **options):
    """Open ``path`` with ``backend`` (one of BACKENDS). Options: ``threads``; DALI: ``device``, ``device_id``."""
    if backend == "decord":
        return DecordReader(str(path), **options)
    if backend == "pyav":
        return PyAVReader(str(path), **options)
    if backend == "dali":
        return DaliReader(str(path), **options)
    raise ValueError(f"unknown decoder backend {backend!r}; choose one of {BACKENDS}")


class ReaderCache:
    """Per-process LRU of open readers so clips of the same file reuse one decoder.

    Files that failed to open are remembered, so a bad file costs one attempt per process.
    """

    def __init__(self, backend: str = "decord", max_open: int = 16, **options):
        if backend not in BACKENDS:
            raise ValueError(f"unknown decoder backend {backend!r}; choose one of {BACKENDS}")
        self.backend, self.max_open, self.options = backend, max_open, options
        self._open: OrderedDict[str, object] = OrderedDict()
        self._failed: dict[str, DecodeError] = {}
        self._pid = os.getpid()

    def get(self, path: str):
        if os.getpid() != self._pid:  # forked copy: never touch the parent's decoders
            self._open, self._failed, self._pid = OrderedDict(), {}, os.getpid()
        if path in self._failed:
            raise self._failed[path]
        reader = self._open.get(path)
        if reader is not None:
            self._open.move_to_end(path)
            return reader
        try:
            reader = open_video(path, self.backend, **self.options)
        except DecodeError as e:
            self._failed[path] = e
            raise
        self._open[path] = reader
        if len(self._open) > self.max_open:
            _, old = self._open.popitem(last=False)
            old.close()
        return reader

    def forget(self, path: str) -> None:
        """Drop a reader after a decode error (its state may be broken)."""
        reader = self._open.pop(path, None)
        if reader is not None:
            reader.close()

    def __getstate__(self):  # pickled into workers without the open decoders
        return {"backend": self.backend, "max_open": self.max_open, "options": self.options}

    def __setstate__(self, state):
        self.__init__(state["backend"], state["max_open"], **state["options"])
