"""Decoders: identical frames across backends on real encoded files; clear errors on bad files."""

from fractions import Fraction

import av
import numpy as np
import pytest

from data.decoders import DecodeError, ReaderCache, open_video


def encode_frames(path, frames, codec="libx264", options=None, *, fps=30, pix_fmt="yuv420p", container=None,
            container_options=None):
    """uint8 [T, H, W, 3] frames as a real encoded file (one encoder thread); `container` defaults to the suffix's."""
    with av.open(str(path), "w", format=container, options=container_options) as c:
        s = c.add_stream(codec, rate=Fraction(fps, 1), options={"threads": "1", **(options or {})})
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _moving(n=90, h=64, w=128, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h, w * 2, 3), dtype=np.uint8)
    return np.stack([np.roll(base, 2 * t, axis=1)[:, :w] for t in range(n)])


@pytest.fixture(scope="module")
def h264_gops(tmp_path_factory):
    # several GOPs (keyint 30) with B-frames: exercises keyframe seeking and non-reference skipping
    return encode_frames(tmp_path_factory.mktemp("v") / "gops.mp4", _moving(),
                   options={"x264-params": "keyint=30:min-keyint=30:scenecut=0:bframes=3"})


@pytest.fixture(scope="module")
def vp9(tmp_path_factory):
    return encode_frames(tmp_path_factory.mktemp("v") / "clip.webm", _moving(40),
                   "libvpx-vp9", {"deadline": "realtime", "cpu-used": "8", "crf": "30", "b": "0"})


def test_decord_and_pyav_pixel_exact_on_h264(h264_gops):
    d, p = open_video(h264_gops, "decord"), open_video(h264_gops, "pyav")
    assert d.num_frames == p.num_frames == 90 and d.fps == p.fps == 30.0
    rng = np.random.default_rng(0)
    requests = [[0, 1, 2], [89, 0, 45, 45, 31], list(range(29, 62, 4))]
    requests += [sorted(rng.choice(90, 12, replace=False)) for _ in range(4)]
    for idx in requests:  # the same readers across requests: decoder state must not leak between calls
        a, b = d.get_frames(idx), p.get_frames(idx)
        assert a.shape == (len(idx), 64, 128, 3) and a.dtype == np.uint8
        assert np.array_equal(a, b), idx


def test_reused_one_thread_rgb_conversion_equals_pyavs_own(h264_gops, vp9):
    """The readers' YUV->RGB (one swscale context per reader, one thread) gives to_ndarray's pixels."""
    from data.decoders import rgb_converter

    for path in (h264_gops, vp9):
        to_rgb = rgb_converter()
        with av.open(str(path)) as c:
            frames = list(c.decode(video=0))[:12]
        ours = [to_rgb(f) for f in frames]  # all converted before any is compared: no buffer shared between calls
        assert all(np.array_equal(a, f.to_ndarray(format="rgb24")) for a, f in zip(ours, frames))
        assert ours[0].shape == (frames[0].height, frames[0].width, 3) and not np.array_equal(ours[0], ours[11])


def test_plain_pyav_ceiling_decodes_the_readers_frames(h264_gops):
    """data.bench's bare-library ceiling (plain PyAV: seek, decode every frame) returns what PyAVReader
    (NONREF skipping) does, so the two time the same result: across GOPs, backwards, with repeats."""
    from types import SimpleNamespace

    from data.bench import PyAVLibraryReader, check_library_frames

    items = [SimpleNamespace(path=str(h264_gops))]
    keys = [(0, list(range(0, 64, 4))), (0, [89, 85, 3, 3, 31]), (0, list(range(26, 90, 4)))]
    check_library_frames(items, keys)
    frames = PyAVLibraryReader(str(h264_gops)).get_frames(keys[1][1])
    assert frames.shape == (5, 64, 128, 3) and np.array_equal(frames[2], frames[3])
    assert not np.array_equal(frames[2], frames[4])  # different frames really differ


def test_frames_are_the_requested_ones(h264_gops):
    # frame t of _moving is frame 0 rolled by 2t pixels; check order, not just equality between backends
    p = open_video(h264_gops, "pyav")
    f = p.get_frames([10, 3]).astype(int)
    shift_err = [np.abs(np.roll(f[1], 14, axis=1)[:, 20:] - f[0][:, 20:]).mean(),
                 np.abs(f[1][:, 20:] - f[0][:, 20:]).mean()]
    assert shift_err[0] < shift_err[1] / 4


def test_dali_cpu_vp9_matches_decord(vp9):
    d = open_video(vp9, "decord")
    x = open_video(vp9, "dali", device="cpu")
    idx = [0, 5, 39, 12, 12]
    a, b = d.get_frames(idx).astype(float), x.get_frames(idx).astype(float)
    assert b.shape == a.shape
    assert np.array_equal(open_video(vp9, "pyav").get_frames(idx), a)
    # DALI upsamples chroma with its own filter, so RGB is not bit-exact on this noise texture; luma is
    # within ~1 level, and every returned frame is the requested one (nearest among all frames)
    luma = np.array([0.299, 0.587, 0.114])
    assert np.abs(a @ luma - b @ luma).mean() < 2.0
    every = d.get_frames(list(range(40))).astype(float) @ luma
    for k, i in enumerate(idx):
        assert np.abs(every - b[k] @ luma).mean(axis=(1, 2)).argmin() == i


def test_dali_cpu_rejects_h264_clearly(h264_gops):
    with pytest.raises(DecodeError) as e:
        open_video(h264_gops, "dali", device="cpu")
    assert e.value.reason == "unsupported_codec" and "h264" in str(e.value)


def test_dali_nvdec_pipelines_decode_a_run_in_parallel_by_default(h264_gops, vp9):
    """One pipeline thread decodes a run's clips one after another: NVDEC gave 16 clips/s on an H200 at any
    batch size, 46-48 with 8 threads (docs/benchmarks.md). Opening a reader builds no pipeline, so this
    runs without a GPU."""
    import os

    from data.decoders import DALI_MIXED_THREADS, usable_cpus

    assert DALI_MIXED_THREADS == 8 and 1 <= usable_cpus() <= os.cpu_count()
    mixed = open_video(h264_gops, "dali", device="mixed", device_id=0)
    assert mixed.pipe_key == ("mixed", 0, min(8, usable_cpus()))
    assert usable_cpus() == 1 or mixed.pipe_key[2] > 1
    assert open_video(h264_gops, "dali", device="mixed", threads=3).pipe_key[2] == 3
    assert open_video(vp9, "dali", device="cpu").pipe_key == ("cpu", None, 1)  # CPU: loader workers parallelise


@pytest.mark.parametrize("backend", ["decord", "pyav", "dali"])
def test_bad_files_raise_decode_error(tmp_path, h264_gops, vp9, backend):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("this is not a video\n")
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(20000))
    src = vp9 if backend == "dali" else h264_gops
    (tmp_path / ("trunc" + src.suffix)).write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    expect = {"missing.mp4": "missing", "empty.mp4": "empty", "text.mp4": "unreadable", "garbage.mp4": "unreadable"}
    for name, reason in expect.items():
        with pytest.raises(DecodeError) as e:
            open_video(tmp_path / name, backend)
        assert e.value.reason == reason and name in str(e.value)
    # truncated: an error (index lost / decoding past the data), or -- for containers without a frame
    # count, like WebM -- a shorter video whose frames are the original's, never zero padding
    try:
        r = open_video(tmp_path / ("trunc" + src.suffix), backend)
        got = r.get_frames(list(range(r.num_frames)))
    except DecodeError as e:
        assert e.reason in ("unreadable", "decode_error")
    else:
        full = open_video(src, "pyav").get_frames(list(range(r.num_frames))).astype(int)
        assert r.num_frames < 40 and got.reshape(r.num_frames, -1).max(1).min() > 0
        assert np.abs(got.astype(int) - full).mean() < 12  # same frames (DALI: own chroma filter)


def test_too_short_request_and_reader_cache(h264_gops, tmp_path):
    cache = ReaderCache("pyav", max_open=1)
    r = cache.get(str(h264_gops))
    assert cache.get(str(h264_gops)) is r  # kept open across clips
    with pytest.raises(DecodeError) as e:
        r.get_frames([90])
    assert e.value.reason == "too_short"
    with pytest.raises(DecodeError):
        cache.get(str(tmp_path / "nope.mp4"))
    with pytest.raises(DecodeError):  # remembered: no second open attempt needed
        cache.get(str(tmp_path / "nope.mp4"))
