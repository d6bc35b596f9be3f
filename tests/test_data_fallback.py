"""No valid video lost, no damaged one called fine: decoder fallback per file, truncated and unreadable files.

Every file is made here with PyAV: VP8 in Ogg (PyAV's FFmpeg has no Theora encoder; decord's failure on Ogg
is the container's missing duration and frame count, whatever the codec), MPEG-4 and MJPEG in AVI, H.264 in
MKV, MP4 and MPEG-TS, VP8 and VP9 in WebM, MPEG-2 in MPEG-PS; then cut at several points, or broken.
"""

import json

import av
import numpy as np
import pytest
import torch

import data.decoders
from data.check import main as check_main
from data.dataset import ClipSpec, VideoDataset
from data.decoders import DecodeError, ReaderCache, is_truncated, open_video
from data.loader import build_loader
from data.manifest import read_manifest
from test_data_decoders import encode_frames

# file name -> (encoder, container, pixel format, encoder options); 48 frames at 10 fps, a keyframe every 12
FORMATS = {
    "vp8.ogg": ("libvpx", "ogg", "yuv420p", {"deadline": "realtime", "cpu-used": "8"}),
    "mpeg4.avi": ("mpeg4", "avi", "yuv420p", {"qscale": "3"}),
    "mjpeg.avi": ("mjpeg", "avi", "yuvj420p", {}),
    "h264.mkv": ("libx264", "matroska", "yuv420p", {"x264-params": "bframes=2"}),
    "vp8.webm": ("libvpx", "webm", "yuv420p", {"deadline": "realtime", "cpu-used": "8"}),
    "vp9.webm": ("libvpx-vp9", "webm", "yuv420p", {"deadline": "realtime", "cpu-used": "8"}),
    "mpeg2.mpg": ("mpeg2video", "mpeg", "yuv420p", {"qscale": "3"}),
    "h264.ts": ("libx264", "mpegts", "yuv420p", {"x264-params": "bframes=2"}),
    "h264.mp4": ("libx264", "mp4", "yuv420p", {"x264-params": "bframes=2"}),
    # 64 x 48 noise: large I-frames over several MPEG-PS packs, where a seek lands inside a keyframe's packet
    "noise-mpeg2.mpg": ("mpeg2video", "mpeg", "yuv420p", {}),
}
FRAMES = 48
# formats whose header promises a frame count (AVI, MP4) or a duration (Matroska/WebM)
PROMISING = ["mpeg4.avi", "mjpeg.avi", "h264.mkv", "vp8.webm", "vp9.webm", "h264.mp4"]


def _pattern(width=128, height=96, block=8, seed=0):
    """Blocks moving 2 px a frame (smooth ones make small files); every frame differs from its neighbours."""
    blocks = np.random.default_rng(seed).integers(0, 255, (height // block, 2 * width // block, 3))
    texture = np.kron(blocks, np.ones((block, block, 1)))
    return np.stack([np.roll(texture, 2 * t, axis=1)[:, :width] for t in range(FRAMES)]).astype(np.uint8)


def _encode(path, name, width=128):
    codec, container, pix_fmt, options = FORMATS[name]
    frames = _pattern(64, 48, block=1) if name.startswith("noise") else _pattern(width)
    fast_start = {"movflags": "+faststart"} if container == "mp4" else {}  # its index up front: a cut keeps it
    return encode_frames(path, frames, codec, {"g": "12", **options}, fps=10, pix_fmt=pix_fmt, container=container,
                         container_options=fast_start)


def _decode_all(path) -> list[np.ndarray]:
    """Every frame in order, by plain PyAV decoding from the start: the reference the readers must match."""
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def _cut(src, dst, fraction):
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def _manifest(path, files):
    path.write_text("".join(json.dumps({"path": str(f), "label": 0}) + "\n" for f in files))
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("formats")
    return {name: _encode(folder / name, name) for name in FORMATS}


@pytest.fixture(scope="module")
def originals(videos):
    return {name: _decode_all(path) for name, path in videos.items()}


@pytest.mark.parametrize("name", list(FORMATS))
def test_default_reader_returns_the_requested_frames_of_every_format(videos, originals, name):
    """PyAV (the default) on each format: every frame from a fresh reader (each a seek), and one reader kept
    open across requests as the loader keeps it: forward single frames (after a request the decoder has been
    fed B-frames it dropped), backwards, random sets across keyframes. Every frame equals plain decoding's."""
    path, frames = videos[name], originals[name]
    assert len(frames) == FRAMES
    for i in range(FRAMES):
        assert np.array_equal(open_video(path, "pyav").get_frames([i])[0], frames[i]), (name, i)
    reader = open_video(path, "pyav")
    assert reader.num_frames == FRAMES and reader.promised_frames in (None, FRAMES) and not is_truncated(reader)
    rng = np.random.default_rng(0)
    requests = [[i] for i in range(14)] + [[40, 13, 2], list(range(1, FRAMES, 5))]
    requests += [sorted(rng.choice(FRAMES, 6, replace=False)) for _ in range(6)]
    for idx in requests:
        got = reader.get_frames(idx)
        assert all(np.array_equal(got[k], frames[i]) for k, i in enumerate(idx)), (name, idx)


def test_decord_cannot_open_ogg_and_the_fallback_reads_it_once(videos, originals, monkeypatch):
    ogg = str(videos["vp8.ogg"])
    with pytest.raises(DecodeError, match="broken metadata"):  # decord: no duration/frame count in Ogg
        open_video(ogg, "decord")
    cache = ReaderCache("decord")
    reader = cache.get(ogg)
    assert reader.backend == "pyav" and cache.fallbacks[ogg][0] == "pyav"
    assert "broken metadata" in cache.fallbacks[ogg][1]
    assert np.array_equal(cache.get_frames(ogg, [30])[0], originals["vp8.ogg"][30])
    opened = []  # the choice is remembered: a reopen goes straight to PyAV
    real = data.decoders.open_video
    monkeypatch.setattr(data.decoders, "open_video", lambda p, b, **o: opened.append(b) or real(p, b, **o))
    cache.forget(ogg)
    assert cache.get(ogg).backend == "pyav" and opened == ["pyav"]


def test_a_decode_error_moves_the_file_to_the_next_backend(tmp_path, videos):
    """decord opens 96 px wide H.264 but fails on every frame; DALI's CPU decoder refuses H.264. Both go on
    to PyAV, with PyAV's pixels, as do MPEG-PS/TS files for decord. PyAV's own decode errors are final (see
    test_check_decode_...)."""
    narrow = str(_encode(tmp_path / "narrow.mp4", "h264.mp4", width=96))
    with pytest.raises(DecodeError, match="decode_error"):
        open_video(narrow, "decord").get_frames([3])
    cache = ReaderCache("decord")
    assert np.array_equal(cache.get_frames(narrow, [3, 20]), open_video(narrow, "pyav").get_frames([3, 20]))
    assert cache.fallbacks[narrow][0] == "pyav" and cache.get(narrow).backend == "pyav"
    for name in ("mpeg2.mpg", "h264.ts"):  # decord would return other frames of these, without an error
        path = str(videos[name])
        assert cache.get(path).backend == "pyav" and "other frames" in cache.fallbacks[path][1]
    mkv = str(videos["h264.mkv"])
    dali = ReaderCache("dali", device="cpu")
    assert dali.get(mkv).backend == "pyav"
    assert dali.fallbacks[mkv][0] == "pyav" and "unsupported_codec with dali" in dali.fallbacks[mkv][1]


def test_loader_uses_every_valid_file_and_counts_the_fallbacks(tmp_path, videos):
    narrow = _encode(tmp_path / "narrow.mp4", "h264.mp4", width=96)
    files = sorted(map(str, [*videos.values(), narrow]))
    manifest = _manifest(tmp_path / "all.jsonl", files)
    kw = dict(train=False, batch_size=3, size=32, frames_per_clip=4, frame_step=3)
    # decord, with a worker: the worker finds the fallbacks, the batches carry them to the training process
    loader = build_loader(manifest, backend="decord", num_workers=1, **kw)
    paths = sorted(p for batch in loader for p in batch["path"])
    loader.close()
    counts = loader.skip_counts()
    assert paths == files and counts["skipped"] == 0
    fell_back = [str(narrow)] + [str(videos[n]) for n in ("vp8.ogg", "mpeg2.mpg", "noise-mpeg2.mpg", "h264.ts")]
    assert counts["fallbacks"] == {"pyav": 5}
    assert loader.fallback_files() == {path: "pyav" for path in fell_back}
    default = build_loader(manifest, num_workers=0, **kw)  # PyAV: reads them all itself
    assert sorted(p for batch in default for p in batch["path"]) == files
    assert default.skip_counts()["fallbacks"] == {} and default.skip_counts()["skipped"] == 0


@pytest.fixture(scope="module")
def cut_files(videos, tmp_path_factory):
    """Each promising format cut at 35%, 55% (a lost B-frame in the MKV) and 90%: path -> original format."""
    folder = tmp_path_factory.mktemp("cut")
    return {_cut(videos[name], folder / f"cut{int(f * 100)}_{name}", f): name
            for name in PROMISING for f in (0.35, 0.55, 0.9)}


def test_truncated_files_are_reported_with_promised_and_decodable_frames(cut_files, originals, capsys):
    truncated = {}
    for path, name in cut_files.items():
        try:
            reader = open_video(path, "pyav")
        except DecodeError as e:  # cut inside the header or the first frame: not passed on to decord, which
            assert e.reason == "unreadable"  # returned the damaged first frame of such an AVI as fine
            with pytest.raises(DecodeError):
                ReaderCache().get(str(path))
            continue
        # the frames it indexes are the original's, none damaged: the cut part is not sampled
        assert is_truncated(reader) and reader.promised_frames == FRAMES and 0 < reader.num_frames < FRAMES
        got = reader.get_frames(list(range(reader.num_frames)))
        assert all(np.array_equal(g, f) for g, f in zip(got, originals[name])), path
        truncated[str(path)] = reader.num_frames
    assert len(truncated) >= 14  # of 18: AVI keeps its index at the end, a 35% cut loses the header
    manifest = _manifest(next(iter(cut_files)).parent / "cut.jsonl", sorted(map(str, cut_files)))
    assert check_main([str(manifest)]) == 1  # the unreadable ones
    out = capsys.readouterr().out
    rows = {line.split()[1]: line for line in out.splitlines() if ".jsonl:" in line}
    for path, n in truncated.items():
        assert " truncated " in rows[path] and f"header promises {FRAMES} frames, {n} decode" in rows[path]
    assert f"{len(truncated)} warning(s), files used: {len(truncated)} truncated" in out
    assert f"{len(cut_files) - len(truncated)} problem(s) in {len(cut_files)} row(s)" in out


def test_the_loader_samples_only_the_decodable_frames_of_a_truncated_file(cut_files, originals):
    """Every clip of a truncated file, over many draws, is made of the original's frames from the part that
    decodes (the identity transform leaves the decoded frames as they are), and nothing is skipped."""
    usable = {}
    for path, name in cut_files.items():
        try:
            usable[str(path)] = (name, open_video(path, "pyav").num_frames)
        except DecodeError:
            pass
    items, _ = read_manifest(_manifest(next(iter(cut_files)).parent / "usable.jsonl", sorted(usable)))
    ds = VideoDataset(items, lambda video: video, ClipSpec(frames_per_clip=4, frame_step=2), train=True)
    reached_end = 0
    for epoch in range(6):
        for i, item in enumerate(items):
            sample = ds[(i, epoch, i)]
            assert sample["skipped"] == [] and sample["path"] == item.path
            _, clips, _ = ds._plan(item, ds._draws(epoch, i, i, 0)[1])  # the clip this sample drew
            name, decodable = usable[item.path]
            assert clips[0].max() < decodable
            reached_end += clips[0].max() == decodable - 1
            frames = sample["video"][0].permute(1, 2, 3, 0).numpy()  # [C, T, H, W] -> [T, H, W, C]
            assert all(np.array_equal(f, originals[name][k]) for f, k in zip(frames, clips[0]))
    assert reached_end > 0  # clips do reach the last decodable frame
    loader = build_loader(_manifest(next(iter(cut_files)).parent / "usable2.jsonl", sorted(usable)), num_workers=0,
                          batch_size=2, size=32, frames_per_clip=8, frame_step=2)
    for _ in range(3):
        assert sum(len(b["path"]) for b in loader) == len(usable) // 2 * 2
        assert loader.skip_counts()["skipped"] == 0


def test_check_decode_finds_a_cut_file_whose_header_promises_nothing(tmp_path, videos, capsys):
    """MPEG-PS has no frame count: a cut file looks whole until its damaged last frame is decoded. PyAV
    refuses that frame (FFmpeg flags it corrupt) and no other backend is tried after PyAV."""
    src = videos["mpeg2.mpg"]
    cut = str(_cut(src, tmp_path / "cut.mpg", 0.57))
    reader = open_video(cut, "pyav")
    assert reader.promised_frames is None and not is_truncated(reader)
    indexed = reader.num_frames
    cache = ReaderCache("pyav")
    with pytest.raises(DecodeError, match="damaged"):
        cache.get_frames(cut, [indexed - 1])
    assert cache.fallbacks == {}
    good = str(_cut(src, tmp_path / "whole.mpg", 1.0))
    manifest = _manifest(tmp_path / "m.jsonl", [good, cut])
    assert check_main([str(manifest)]) == 0 and "ok: 2 row(s), no problems" in capsys.readouterr().out
    assert check_main([str(manifest), "--decode"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "cut.mpg" in line]
    assert len(rows) == 1 and " truncated " in rows[0] and f"{indexed - 1} of its {indexed} frames decode" in rows[0]
    assert "1 warning(s), files used: 1 truncated" in out


def test_a_file_no_backend_reads_is_counted_unreadable_named_and_skipped(tmp_path, videos, capsys):
    no_index = _cut(videos["h264.mkv"], tmp_path / "header_only.mkv", 0.02)
    (tmp_path / "noise.webm").write_bytes(np.random.default_rng(0).bytes(20000))
    (tmp_path / "text.ogg").write_text("not a video\n")
    broken = [str(no_index), str(tmp_path / "noise.webm"), str(tmp_path / "text.ogg")]
    good = sorted(str(p) for n, p in videos.items() if n != "vp8.ogg")
    manifest = _manifest(tmp_path / "m.jsonl", good + broken)
    assert check_main([str(manifest), "--backend", "decord"]) == 1
    out = capsys.readouterr().out
    rows = {line.split()[1]: line for line in out.splitlines() if ".jsonl:" in line}
    assert sorted(p for p, line in rows.items() if " unreadable " in line) == sorted(broken)
    for path in broken:  # each backend tried and named
        assert "decord: " in rows[path] and "pyav: " in rows[path]
    mpeg = sorted(str(videos[n]) for n in ("mpeg2.mpg", "noise-mpeg2.mpg", "h264.ts"))  # the good files decord
    assert sorted(p for p, line in rows.items() if " fallback " in line) == mpeg  # would misread
    assert f"3 problem(s) in {len(good) + 3} row(s)" in out
    assert "3 warning(s), files used: 3 fallback (pyav: 3)" in out
    loader = build_loader(manifest, train=False, num_workers=0, batch_size=1, size=32, frames_per_clip=4,
                          frame_step=2)
    paths = [p for batch in loader for p in batch["path"]]
    counts = loader.skip_counts()
    assert set(paths) == set(good) and counts["bad_files"] == {p: "unreadable" for p in broken}
    assert counts["skipped"] == counts["by_reason"]["unreadable"] >= 3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (.ci/gpu_check.sh)")
def test_nvdec_batches_take_a_fallback_files_frames_to_the_gpu(videos):
    """NVDEC (DALI 'mixed') leaves frames on the GPU; the frames of a file read by the PyAV fallback join them
    there, so a batch of both collates on the GPU."""
    pytest.importorskip("nvidia.dali")
    from data.dataset import collate_clips
    from data.transforms import build_transform

    files = [videos["h264.mp4"], videos["h264.mkv"]]
    items, _ = read_manifest(_manifest(files[0].parent / "gpu.jsonl", files))
    ds = VideoDataset(items, build_transform(False, 32), ClipSpec(frames_per_clip=4, frame_step=2), train=False,
                      backend="dali", decoder_options={"device": "mixed", "device_id": 0})
    ds.readers.fallbacks[items[1].path] = ("pyav", "as if NVDEC had failed on it")  # read with PyAV from now on
    samples = ds.load_batch([0, 1])
    assert samples[0]["fallback"] is None and samples[1]["fallback"][0] == "pyav"
    batch = collate_clips(samples)
    assert batch["video"].is_cuda and batch["video"].shape == (2, 3, 4, 32, 32)
    assert [f[:2] for f in batch["fallbacks"]] == [(items[1].path, "pyav")]


def test_a_skipped_items_failure_record_survives_the_trip_from_a_worker():
    """Workers hand skipped items to the trainer pickled: a record must come back as itself, not raise."""
    import pickle

    from data.dataset import Failure

    record = Failure("videos/bad.mp4", "unreadable", "pyav: invalid data")
    back = pickle.loads(pickle.dumps(record))
    assert type(back) is Failure and back == ("videos/bad.mp4", "unreadable", "pyav: invalid data")


def test_a_training_run_reports_the_files_a_fallback_backend_read(videos, tmp_path):
    """The run's summary says, per stage, which backend rescued how many files (here decord -> PyAV)."""
    from test_train import make_cfg
    from vjepa.train.experiment import run_experiment

    files = [videos[name] for name in ("h264.mp4", "vp8.ogg", "mpeg4.avi", "mpeg2.mpg")]
    manifest = _manifest(tmp_path / "train.jsonl", files)
    summary = run_experiment(make_cfg(tmp_path, tmp_path / "run", "experiment=vjepa", "experiment.total_steps=2",
                                      f"data.train=[{manifest}]", "data.backend=decord", "data.batch_size=4"),
                             tmp_path / "run")
    stage = summary["stages"]["student"]
    assert stage["complete"] and stage["skipped"]["skipped"] == 0
    assert stage["data_fallbacks"] == {"pyav": 2}  # decord cannot index the Ogg, and refuses MPEG-PS
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["stages"]["student"]["data_fallbacks"] == {"pyav": 2}
