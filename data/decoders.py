"""Video decoding behind one interface: ``open_video(path, backend) -> reader``; ``reader.get_frames(idx)``.

Every backend returns uint8 ``[T, H, W, 3]`` RGB for the requested frame indices (frame ``i`` is the
``i``-th frame in presentation order) and raises :class:`DecodeError` (with a short ``reason``) for
anything wrong with the file, so callers can skip and count instead of crashing.

Backends
- ``pyav`` (default: the fastest on CPU, pixel-identical to decord, docs/benchmarks.md): our own
  seek-and-decode loop over PyAV. It indexes packets once at open, decodes from the nearest keyframe only,
  continues from the decoder's current position when that is closer, and lets FFmpeg drop non-reference
  frames that are not requested (``skip_frame=NONREF``) -- those are never needed to reconstruct other
  frames, so output stays pixel-exact while decoding far fewer frames. YUV->RGB goes through one swscale
  context per reader on one thread (:func:`rgb_converter`).
- ``decord``: ``decord.VideoReader.get_batch``; a kept-open reader seeks to the nearest keyframe before
  each index run and decodes forward.
- ``dali``: ``nvidia.dali.fn.decoders.video`` on the in-memory file with ``frames=indices``.
  ``device='cpu'`` decodes VP8/VP9/MJPEG only (H.264/HEVC raise a clear ``unsupported_codec``);
  ``device='mixed'`` uses NVDEC on the GPU and returns frames on the GPU (not runnable on CPU-only hosts).

Fallback: :class:`ReaderCache` (what the loader and ``data.check`` use) reads a file that its backend cannot
open with the next installed backend of :data:`FALLBACKS`, and one whose frames it cannot decode likewise
(except after PyAV, see there), and remembers the choice per file.

Truncation: a file cut short whose header still parses promises more frames than it holds
(``reader.promised_frames``). Readers then index only the frames that decode (``num_frames``), so clips
are sampled from those; :func:`is_truncated` tells such a file.

Readers are not fork/pickle safe (decord deadlocks if shared across a fork): create them inside the
DataLoader worker, e.g. through :class:`ReaderCache`, which keeps a few readers open per process so
consecutive clips of the same file reuse the decoder.
"""

from __future__ import annotations

import bisect
import importlib.util
import itertools
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

BACKENDS = ("pyav", "decord", "dali")
# where a file goes when its backend cannot read it (installed backends only). PyAV's decode errors are final
# (ReaderCache.get_frames), as are files it finds cut short (DecodeError.damaged): it checks every frame's
# timestamp and FFmpeg's corruption flags and raises, where decord returned the damaged first frame of a cut
# AVI and wrong frames of a cut MPEG-2 file as fine, so a fallback after PyAV would call damaged frames fine.
FALLBACKS = {"pyav": ("decord",), "decord": ("pyav",), "dali": ("pyav", "decord")}
_MODULES = {"pyav": "av", "decord": "decord", "dali": "nvidia.dali"}
# containers in which decord's seeks return other frames of the video, without an error (MPEG-PS and MPEG-TS,
# MPEG-2 and H.264 alike: frame 13 came back as frame 0 or 25); the fallback reads them with PyAV
DECORD_WRONG_FRAMES = {"mpeg", "mpegts"}
# codecs DALI's CPU operators can decode (../shared/reference.md §6)
DALI_CPU_CODECS = {"vp8", "vp9", "mjpeg"}


class DecodeError(Exception):
    """A media file could not be (fully) decoded. ``reason`` is a short category used in skip counts.
    ``damaged``: the frames asked for are damaged, so no other backend is tried (it could return them as fine)."""

    def __init__(self, path: str, reason: str, detail: str = "", damaged: bool = False):
        self.path, self.reason, self.detail, self.damaged = str(path), reason, detail, damaged
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


def header_frames(container, stream) -> int | None:
    """Frames a file's header promises (PyAV container and video stream): its frame count (AVI, MP4/MOV) or,
    in Matroska/WebM, its duration times the frame rate; None where it promises none (Ogg, MPEG-PS/TS
    estimate their duration from the data that is there)."""
    if stream.frames:
        return int(stream.frames)
    rate = stream.average_rate or stream.guessed_rate
    if "matroska" in container.format.name and container.duration and rate:
        return round(container.duration / 1_000_000 * float(rate))
    return None


def is_truncated(reader) -> bool:
    """Fewer frames decode than the header promises (1% slack: audio that outlasts the video, a dropped frame)."""
    promised = reader.promised_frames
    return promised is not None and reader.num_frames < promised - max(1, promised // 100)


def keep_decodable(reader) -> None:
    """A truncated file: index only the frames that decode, so clips are sampled from those."""
    if is_truncated(reader):
        reader.num_frames = decodable_prefix(reader)
        if reader.num_frames == 0:
            raise DecodeError(reader.path, "unreadable",
                              f"header promises {reader.promised_frames} frames, none decodes", damaged=True)


def decodable_prefix(reader) -> int:
    """How many frames of a cut file decode. Frames [0, m) do and the rest do not (the data stops), so a
    binary search over single-frame decodes finds m."""
    lo, hi = 0, reader.num_frames
    while lo < hi:
        mid = (lo + hi + 1) // 2
        try:
            reader.get_frames([mid - 1])
            lo = mid
        except DecodeError:
            hi = mid - 1
    return lo


class DecordReader:
    backend = "decord"

    def __init__(self, path: str, threads: int = 1):
        import decord

        check_file(path)
        self.path = str(path)
        container, self.promised_frames = _pyav_header(self.path)  # decord tells neither
        if container in DECORD_WRONG_FRAMES:
            raise DecodeError(self.path, "unsupported_container", f"decord seeks {container} files to other frames")
        try:
            self._vr = decord.VideoReader(self.path, ctx=decord.cpu(0), num_threads=threads)
            self.num_frames = len(self._vr)
            self.fps = float(self._vr.get_avg_fps())
            self.height, self.width = self._vr[0].shape[:2] if self.num_frames else (0, 0)
        except Exception as e:  # decord raises bare RuntimeError/DECORDError for every open failure
            raise DecodeError(self.path, "unreadable", str(e).splitlines()[0][:200]) from None
        if self.num_frames == 0:
            raise DecodeError(self.path, "unreadable", "no video frames")
        keep_decodable(self)

    def get_frames(self, indices) -> np.ndarray:
        idx = _check_indices(self.path, indices, self.num_frames)
        try:
            frames = self._vr.get_batch(idx).asnumpy()
        except Exception as e:  # truncated/corrupt stream: IndexError, DECORDError
            detail = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            raise DecodeError(self.path, "decode_error", detail) from None
        return _check_output(self.path, frames, len(idx))

    def close(self) -> None:
        self._vr = None


def _pyav_header(path: str) -> tuple[str, int | None]:
    """(container format, frames its header promises) as PyAV reads them; ("", None) where it cannot."""
    import av

    try:
        with av.open(path) as container:
            video = container.streams.video
            return container.format.name, header_frames(container, video[0]) if video else None
    except Exception:  # noqa: BLE001 -- a header PyAV cannot parse promises nothing
        return "", None


def _gapless_prefix(pts: list[int]) -> list[int]:
    """The frames of a cut file up to its first missing one. With B-frames the cut can take the packets of
    frames shown before the last one kept (a cut H.264 MKV lost 700 and 800 but kept 900), and frame ``i``
    must stay the video's ``i``-th frame."""
    steps = np.diff(pts)
    gaps = np.flatnonzero(steps > 1.5 * np.median(steps)) if len(steps) else []
    return pts[: gaps[0] + 1] if len(gaps) else pts


class PyAVReader:
    backend = "pyav"

    def __init__(self, path: str, threads: int = 1):
        check_file(path)
        self.path, self._threads = str(path), threads
        try:
            self._open()
            stream = self._stream
            # one pass over the packets (no decoding): frame index <-> pts, and where keyframes are
            packets = [(packet.pts, packet.is_keyframe, packet.is_corrupt, packet.size)
                       for packet in self._container.demux(stream) if packet.pts is not None and packet.size > 0]
            self.promised_frames = header_frames(self._container, stream)
        except DecodeError:
            raise
        except Exception as e:
            raise DecodeError(self.path, "unreadable", f"{type(e).__name__}: {e}"[:200]) from None
        # FFmpeg flags the packets that the end of a cut file cuts short: they decode to an error or a damaged frame
        cut = bool(packets) and packets[-1][2]
        while packets and packets[-1][2]:
            packets.pop()
        self._pts = sorted(pts for pts, *_ in packets)
        if cut or (self.promised_frames or 0) > len(self._pts):
            self._pts = _gapless_prefix(self._pts)
        self._key_pts = sorted(pts for pts, key, *_ in packets if key) or self._pts[:1]
        self._key_sizes = {pts: size for pts, key, _, size in packets if key}
        self._seekable = True  # until no seek lands on a keyframe of the index
        self.num_frames = len(self._pts)
        if self.num_frames == 0:  # cut: decord returned the damaged first frame of such a cut AVI as fine
            raise DecodeError(self.path, "unreadable", "its frames are cut short" if cut else "no video frames",
                              damaged=cut)
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else 0.0
        self.height, self.width = stream.codec_context.height, stream.codec_context.width
        self._frames = None    # frame iterator positioned somewhere in the stream
        self._last_pts = None  # pts of the last frame it produced
        self._fed = set()      # pts of the packets it was fed unwanted: their frames may be dropped (NONREF)
        self._to_rgb = rgb_converter()
        keep_decodable(self)

    def _open(self) -> None:
        import av

        self._container = av.open(self.path)
        if not self._container.streams.video:
            raise DecodeError(self.path, "unreadable", "no video stream")
        self._stream = stream = self._container.streams.video[0]
        if stream.codec_context is None:
            raise DecodeError(self.path, "unsupported_codec", f"no decoder for {stream.codec_context}")
        stream.codec_context.thread_count = self._threads
        stream.codec_context.thread_type = "SLICE"  # frame threading would delay skip_frame switches

    def _restart_at(self, k: int) -> None:
        """Position the decoder on keyframe ``k`` or an earlier one. A seek is trusted only when it lands on a
        keyframe packet of the index: containers without an index (MPEG-PS/TS) seek by bytes and landed a
        keyframe late (TS) or inside a packet with a made-up timestamp (PS). Earlier keyframes are tried, then
        the file is decoded from its start, from then on without seeking."""
        key = self._key_pts[k]
        for seek_to in [*self._key_pts[k::-1], None] if self._seekable else [None]:
            if seek_to is None:  # from the start: a freshly opened file
                self._container.close()
                self._open()
                self._seekable = False
            else:
                self._container.seek(seek_to, stream=self._stream, backward=True, any_frame=False)
            packets = self._container.demux(self._stream)
            first = next(packets, None)
            if seek_to is None or (first is not None and first.pts is not None and first.pts <= key
                                   and self._key_sizes.get(first.pts) == first.size):
                break
        self._frames = self._decode(itertools.chain([first] if first is not None else [], packets))
        self._last_pts, self._fed = None, set()

    def _decode(self, packets):
        # packets whose frame is not wanted are decoded with NONREF skipping; needed ones normally
        cc = self._stream.codec_context
        for packet in packets:
            wanted = packet.pts in self._wanted
            cc.skip_frame = "DEFAULT" if wanted else "NONREF"
            if not wanted:
                self._fed.add(packet.pts)
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
                k = max(bisect.bisect_right(self._key_pts, target) - 1, 0)
                # continue forward when the decoder sits between the keyframe and the target and has not been
                # fed the target's packet yet (fed unwanted, a B-frame was dropped and never comes out)
                if (self._frames is None or self._last_pts is None or not (self._key_pts[k] <= self._last_pts < target)
                        or target in self._fed):
                    self._restart_at(k)
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
                        if frame.is_corrupt:  # concealed decode errors: the last frame of a cut MPEG-PS/TS file
                            self._frames = None
                            raise DecodeError(self.path, "decode_error",
                                              f"frame {self._pts.index(frame.pts)} decodes damaged (truncated?)")
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
        self.promised_frames = meta.promised_frames  # num_frames: those that decode (PyAV checked a cut file)
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


def open_video(path: str | Path, backend: str = "pyav", **options):
    """Open ``path`` with ``backend`` (one of BACKENDS). Options: ``threads``; DALI: ``device``, ``device_id``."""
    if backend == "decord":
        return DecordReader(str(path), **options)
    if backend == "pyav":
        return PyAVReader(str(path), **options)
    if backend == "dali":
        return DaliReader(str(path), **options)
    raise ValueError(f"unknown decoder backend {backend!r}; choose one of {BACKENDS}")


def installed(backend: str) -> bool:
    try:
        return importlib.util.find_spec(_MODULES[backend]) is not None
    except ModuleNotFoundError:  # nvidia.dali without the nvidia namespace
        return False


class ReaderCache:
    """Per-process LRU of open readers so clips of the same file reuse one decoder.

    A file that ``backend`` cannot open, or whose frames it cannot decode, is read with the next installed
    backend of ``FALLBACKS[backend]`` that can; the choice is remembered (``fallbacks``: path -> (backend,
    why the ones before failed)), so the fallback is found once per file per process. Files that no backend
    opens are remembered too, so a bad file costs one attempt per process.
    """

    def __init__(self, backend: str = "pyav", max_open: int = 16, **options):
        if backend not in BACKENDS:
            raise ValueError(f"unknown decoder backend {backend!r}; choose one of {BACKENDS}")
        self.backend, self.max_open, self.options = backend, max_open, options
        self.chain = (backend, *(b for b in FALLBACKS[backend] if installed(b)))
        self._open: OrderedDict[str, object] = OrderedDict()
        self._failed: dict[str, DecodeError] = {}
        self.fallbacks: dict[str, tuple[str, str]] = {}
        self._pid = os.getpid()

    def get(self, path: str):
        if os.getpid() != self._pid:  # forked copy: never touch the parent's decoders
            self._open, self._failed, self.fallbacks, self._pid = OrderedDict(), {}, {}, os.getpid()
        if path in self._failed:
            raise self._failed[path]
        reader = self._open.get(path)
        if reader is not None:
            self._open.move_to_end(path)
            return reader
        backend = self.fallbacks.get(path, (self.backend,))[0]
        try:
            reader = self._open_first(path, self.chain[self.chain.index(backend):])
        except DecodeError as e:
            self._failed[path] = e
            raise
        self._keep(path, reader)
        return reader

    def get_frames(self, path: str, indices):
        """``get(path).get_frames(indices)``. A decode error moves the file on to the next backend of the chain
        that decodes these frames, except after PyAV (see FALLBACKS)."""
        reader = self.get(path)
        try:
            return reader.get_frames(indices)
        except DecodeError as error:
            self.forget(path)
            if error.reason != "decode_error" or reader.backend == "pyav":
                raise
            for backend in self.chain[self.chain.index(reader.backend) + 1:]:
                try:
                    other = open_video(path, backend, **self._options(backend))
                    frames = other.get_frames(indices)
                except DecodeError:
                    continue
                self.fallbacks[path] = (backend, f"{reader.backend}: {error.detail}")
                self._keep(path, other)
                return frames
            raise

    def _open_first(self, path: str, backends):
        """The reader of the first of ``backends`` that opens ``path``; if none does, an error naming each one's."""
        errors = []
        for backend in backends:
            try:
                reader = open_video(path, backend, **self._options(backend))
            except DecodeError as e:
                if e.reason in ("missing", "empty") or e.damaged:  # nothing (intact) there for any backend
                    raise
                errors.append(e)
                continue
            if errors:
                why = (f"{e.reason} with {b}" + f" ({e.detail})" * bool(e.detail) for b, e in zip(backends, errors))
                self.fallbacks[path] = (backend, "; ".join(why))
            return reader
        if len(errors) == 1:
            raise errors[0]
        reasons = {e.reason for e in errors}
        raise DecodeError(path, reasons.pop() if len(reasons) == 1 else "unreadable",
                          "; ".join(f"{b}: {e.detail or e.reason}" for b, e in zip(backends, errors)))

    def _options(self, backend: str) -> dict:
        return self.options if backend == self.backend else {k: v for k, v in self.options.items() if k == "threads"}

    def _keep(self, path: str, reader) -> None:
        self._open[path] = reader
        if len(self._open) > self.max_open:
            _, old = self._open.popitem(last=False)
            old.close()

    def forget(self, path: str) -> None:
        """Drop a reader after a decode error (its state may be broken)."""
        reader = self._open.pop(path, None)
        if reader is not None:
            reader.close()

    def __getstate__(self):  # pickled into workers without the open decoders
        return {"backend": self.backend, "max_open": self.max_open, "options": self.options}

    def __setstate__(self, state):
        self.__init__(state["backend"], state["max_open"], **state["options"])
