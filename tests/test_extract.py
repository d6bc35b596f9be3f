"""launch.extract: features of whole videos on disk (real H.264 files made by PyAV here, a tiny random encoder).

The reference for every feature is the encoder run directly, one clip at a time, on frames decoded here with
plain PyAV at frame indices computed here from the settings.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import REPO
from data.synthetic import encode_video
from data.transforms import apply, eval_transform, normalize
from launch.extract import extract
from vjepa.eval.extract import ExtractSettings, plan_clips, read_record
from vjepa.interop import save_hf, save_native, save_official
from vjepa.models.vit import VisionTransformer

TINY = dict(img_size=32, num_frames=4, patch_size=8, tubelet_size=2, embed_dim=64, depth=2, num_heads=4)
FPS, LENGTHS = 10, {"long.mp4": 40, "mid.mp4": 25, "sub/short.mp4": 3}
# 4 frames every 2nd frame (a clip spans 8 frames = 0.8 s), a new clip every 0.5 s (5 frames)
CLIPS = ["data.frames_per_clip=4", "data.frame_step=2", "stride=0.5", "data.crop_size=32"]


def tiny_encoder(pos="sincos", rope_variant="rotary", seed=0):
    torch.manual_seed(seed)
    return VisionTransformer(**TINY, pos_embed=pos, rope_variant=rope_variant).eval()


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Three real H.264 files at 10 fps (noise, so every frame and every clip differs)."""
    root = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    for name, n in LENGTHS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        encode_video(rng.integers(0, 256, (n, 48, 64, 3), dtype=np.uint8), root / name, fps=FPS)
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    enc = tiny_encoder()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_native(path, enc)
    return path, enc


def cfg_for(checkpoint, videos, out, *overrides):
    import launch.extract  # noqa: F401 -- registers the schema

    with initialize_config_dir(str(REPO / "configs"), version_base=None):
        return compose("extract", overrides=[f"checkpoint={checkpoint}", f"data.videos={videos}", f"out={out}",
                                             "data.num_workers=0", "progress=false", *overrides])


def expected_frames(n: int) -> np.ndarray:
    """CLIPS on an n-frame video, written out: starts every 5 frames while a whole 8-frame clip fits
    (one clip padded with the last frame when none does); frames start, start+2, start+4, start+6."""
    starts = list(range(0, n - 8 + 1, 5)) or [0]
    return np.minimum(np.array([[s + 2 * j for j in range(4)] for s in starts]), n - 1)


def decode_all(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def reference(encoder, path, frames, pool="mean") -> torch.Tensor:
    """The encoder on each clip alone: resize the short side to 36 (32 x 256 / 224), centre-crop 32."""
    decoded = torch.from_numpy(decode_all(path))
    transform = eval_transform(32, 36 / 32)
    out = []
    with torch.no_grad():
        for idx in frames:
            x = normalize(apply(transform, decoded[torch.from_numpy(idx)])[0][None])
            tokens = encoder(x)
            out.append(tokens.mean(1)[0] if pool == "mean" else tokens[0])
    return torch.stack(out)


def outputs(out: Path) -> dict[str, bytes]:
    """Every output file's bytes (features, failure records, index.json), by relative path."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.parts[len(out.parts)] in ("features", "failed", "index.json", "run.json")}


# ---------------------------------------------------------------------------------------------- clips, times

def test_plan_clips_slides_over_the_whole_video():
    s = ExtractSettings(frames_per_clip=4, frame_step=2, stride=0.5)
    frames, times = plan_clips(40, 10.0, s)
    assert np.array_equal(frames, expected_frames(40)) and len(frames) == 7
    assert np.allclose(times, np.stack([frames[:, 0], frames[:, -1] + 1], 1) / 10)
    assert np.allclose(times[-1], [3.0, 3.7])
    frames, times = plan_clips(3, 10.0, s)  # shorter than a clip: one clip, its last frame repeated
    assert frames.tolist() == [[0, 2, 2, 2]] and np.allclose(times, [[0.0, 0.3]])
    back_to_back = plan_clips(40, 10.0, ExtractSettings(frames_per_clip=4, frame_step=2))[0]
    assert back_to_back[:, 0].tolist() == [0, 8, 16, 24, 32]
    at_fps = plan_clips(300, 30.0, ExtractSettings(frames_per_clip=4, fps=5, stride=1.0))[0]  # step 6, 30 frames
    assert at_fps[:2].tolist() == [[0, 6, 12, 18], [30, 36, 42, 48]] and at_fps[-1, 0] == 270
    ranged, times = plan_clips(40, 10.0, s, start=1.0, end=2.5)  # a manifest's start / end (seconds)
    assert ranged[:, 0].tolist() == [10, 15] and ranged.max() <= 24 and times[0, 0] == 1.0
    even = plan_clips(40, 10.0, ExtractSettings(frames_per_clip=4, frame_step=2, clips_per_video=3))[0]
    assert len(even) == 3 and even[0, 0] < even[1, 0] < even[2, 0] and even.max() < 40


def test_features_equal_the_encoder_on_the_same_clips(videos, ckpt, tmp_path):
    path, enc = ckpt
    summary = extract(cfg_for(path, videos, tmp_path, *CLIPS, "dtype=float32", "data.batch_size=3"))
    assert summary["extracted"] == 3 and summary["failed"] == 0 and summary["clips"] == 7 + 4 + 1
    index = json.loads((tmp_path / "index.json").read_text())
    assert [v["path"] for v in index["videos"]] == [str(videos / n) for n in sorted(LENGTHS)]
    from safetensors.torch import load_file

    for name, n in LENGTHS.items():
        t = load_file(tmp_path / "features" / f"{name}.safetensors")
        frames = expected_frames(n)
        assert np.array_equal(t["frames"].numpy(), frames), name
        assert torch.allclose(t["timestamps"], torch.from_numpy(np.stack([frames[:, 0], frames[:, -1] + 1], 1) / FPS))
        assert t["features"].dtype == torch.float32 and t["features"].shape == (len(frames), 64)
        torch.testing.assert_close(t["features"], reference(enc, videos / name, frames), atol=1e-5, rtol=1e-5)
        record = read_record(tmp_path / "features" / f"{name}.safetensors")
        assert record["num_clips"] == len(frames) and record["timestamps"][0] == [0.0, 0.7 if n >= 8 else 0.3]
    run = index["run"]
    import hashlib

    assert run["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert run["encoder_config"]["embed_dim"] == 64 and run["settings"]["stride"] == 0.5


def test_decoding_workers_write_what_one_process_does(videos, ckpt, tmp_path):
    """2 DataLoader workers and chunks of 2 clips: chunks of different videos arrive interleaved."""
    path, _ = ckpt
    extract(cfg_for(path, videos, tmp_path / "inline", *CLIPS, "data.batch_size=2"))
    extract(cfg_for(path, videos, tmp_path / "workers", *CLIPS, "data.batch_size=2", "data.num_workers=2"))
    assert_same_outputs(tmp_path / "inline", tmp_path / "workers", len(LENGTHS))


@pytest.mark.parametrize("fmt", ["vjepa1", "vjepa2", "hf"])
def test_every_checkpoint_format_gives_its_encoders_features(videos, tmp_path, fmt):
    """Official V-JEPA 1 / 2 files and a Hugging Face folder: default float16, all tokens (pool=none)."""
    enc = tiny_encoder("sincos") if fmt == "vjepa1" else tiny_encoder("rope", "vjepa2")
    path = tmp_path / ("hf" if fmt == "hf" else "ckpt.pt")
    save_hf(path, enc) if fmt == "hf" else save_official(path, enc, flavor=fmt)
    heads = [] if fmt == "hf" else ["num_heads=4"]  # not in official weights (nor needed for presets)
    extract(cfg_for(path, videos, tmp_path / "out", *CLIPS, "pool=none", *heads))
    from safetensors.torch import load_file

    t = load_file(tmp_path / "out" / "features" / "long.mp4.safetensors")
    assert t["features"].dtype == torch.float16 and t["features"].shape == (7, 2 * 4 * 4, 64)
    ref = reference(enc, videos / "long.mp4", expected_frames(40), pool="none")
    torch.testing.assert_close(t["features"].float(), ref, atol=2e-3, rtol=2e-3)
    assert json.loads((tmp_path / "out" / "index.json").read_text())["run"]["source_format"] == fmt


def test_layers_and_attentive_probe_pooling(videos, ckpt, tmp_path):
    from vjepa.eval.attentive import AttentiveClassifier, to_reference

    path, enc = ckpt
    extract(cfg_for(path, videos, tmp_path / "layers", *CLIPS, "dtype=float32", "layers=[-1,0]"))
    from safetensors.torch import load_file

    feats = load_file(tmp_path / "layers" / "features" / "mid.mp4.safetensors")["features"]
    assert feats.shape == (4, 2, 64)  # clips, layers (in the order asked for), width
    torch.testing.assert_close(feats[:, 0], reference(enc, videos / "mid.mp4", expected_frames(25)), atol=1e-5,
                               rtol=1e-5)
    # layer 0: block 0's output through the final norm = the encoder cut after block 0
    first = VisionTransformer(**{**TINY, "depth": 1}).eval()
    first.load_state_dict({k: v for k, v in enc.state_dict().items() if not k.startswith("blocks.1.")})
    torch.testing.assert_close(feats[:, 1], reference(first, videos / "mid.mp4", expected_frames(25)), atol=1e-5,
                               rtol=1e-5)

    torch.manual_seed(1)
    probe = AttentiveClassifier(64, 5, num_heads=4, depth=1).eval()
    torch.save({"classifiers": [to_reference(probe.state_dict())]}, tmp_path / "probe.pt")
    extract(cfg_for(path, videos, tmp_path / "cls", *CLIPS, "dtype=float32", "pool=cls_attentive",
                    f"probe_checkpoint={tmp_path / 'probe.pt'}", "probe_heads=4"))
    feats = load_file(tmp_path / "cls" / "features" / "mid.mp4.safetensors")["features"]
    tokens = reference(enc, videos / "mid.mp4", expected_frames(25), pool="none")
    with torch.no_grad():
        torch.testing.assert_close(feats, probe.pooler(tokens).mean(1), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- resume, bad files

def test_resume_skips_done_videos_and_replaces_partial_files(videos, ckpt, tmp_path):
    path, _ = ckpt
    cfg = cfg_for(path, videos, tmp_path, *CLIPS)
    extract(cfg)
    clean = outputs(tmp_path)
    feats = tmp_path / "features"
    kept = feats / "long.mp4.safetensors"
    kept_stamp = kept.stat().st_mtime_ns
    whole = (feats / "mid.mp4.safetensors").read_bytes()
    (feats / "mid.mp4.safetensors").write_bytes(whole[:len(whole) // 2])  # what a non-atomic copy leaves
    (feats / "sub" / "short.mp4.safetensors").unlink()
    stale = feats / "sub" / "short.mp4.safetensors.tmp-12345"  # a run killed while writing
    stale.write_bytes(b"\0" * 100)
    before = json.loads((tmp_path / "index.json").read_text())
    assert before["counts"]["done"] == 3
    summary = extract(cfg)
    assert summary["already_done"] == 1 and summary["extracted"] == 2
    assert kept.stat().st_mtime_ns == kept_stamp  # a done video is not redone
    assert not stale.exists()
    assert outputs(tmp_path) == clean  # the replaced files are whole and the same


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_same_outputs(embedded_data, ckpt, tmp_path):
    """SIGKILL mid-run (a real process), rerun: nothing left behind passes for complete, and the result
    equals an uninterrupted run's."""
    path, _ = ckpt
    args = [sys.executable, "-m", "launch.extract", f"checkpoint={path}", f"data.videos={embedded_data / 'videos'}",
            "data.frames_per_clip=4", "data.crop_size=32", "data.num_workers=0", "data.batch_size=1",
            "progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen([*args, f"out={tmp_path / 'cut'}"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    feats = tmp_path / "cut" / "features"
    t0 = time.time()
    while (not feats.is_dir() or len(list(feats.glob("*.safetensors"))) < 3) and time.time() - t0 < 120:
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.wait()
    written = list(feats.glob("*.safetensors"))
    assert 3 <= len(written) < 48, "the run was not interrupted mid-way"
    assert all(read_record(p) is not None for p in written)
    assert not (tmp_path / "cut" / "index.json").exists()
    done = subprocess.run([*args, f"out={tmp_path / 'cut'}"], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{len(written)} already done" in done.stdout
    whole = subprocess.run([*args, f"out={tmp_path / 'whole'}"], cwd=REPO, env=env, capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr[-2000:]
    a, b = outputs(tmp_path / "cut"), outputs(tmp_path / "whole")
    assert a.keys() == b.keys() and len([k for k in a if k.startswith("features/")]) == 48
    for k in a:
        assert a[k] == b[k], k


def test_bad_files_are_named_and_counted_and_the_run_goes_on(videos, ckpt, tmp_path):
    path, _ = ckpt
    src = tmp_path / "src"
    src.mkdir()
    good = (videos / "long.mp4").read_bytes()
    (src / "truncated.mp4").write_bytes(good[:len(good) // 3])
    (src / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    (src / "empty.mp4").write_bytes(b"")
    from PIL import Image

    Image.new("RGB", (8, 8)).save(src / "still.png")
    rows = [{"path": str(videos / "long.mp4")}, {"path": "truncated.mp4"}, {"path": "noise.mp4"},
            {"path": "empty.mp4"}, {"path": "nowhere.mp4"}, {"path": "still.png"}, {"path": str(videos / "mid.mp4")}]
    manifest = src / "videos.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    summary = extract(cfg_for(path, manifest, tmp_path / "out", *CLIPS))
    assert summary["extracted"] == 2 and summary["failed"] == 5
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["counts"] == {"videos": 7, "done": 2, "failed": 5, "pending": 0, "bad_rows": 1}
    reasons = {Path(f["path"]).name: f["reason"] for f in index["failed"]}
    # a cut-off mp4 lacks its index (moov, written last): unreadable, like noise
    assert reasons == {"truncated.mp4": "unreadable", "noise.mp4": "unreadable", "empty.mp4": "empty",
                       "nowhere.mp4": "missing", "still.png": "unsupported"}
    assert sum(index["failed_by_reason"].values()) == 5 and index["bad_rows"][0]["reason"] == "bad_row"
    assert [Path(v["path"]).name for v in index["videos"]] == ["long.mp4", "mid.mp4"]
    # a file outside the manifest's folder keeps a name of its own; a retried failure that now works is cleared
    assert all(v["file"].startswith("features/external/") for v in index["videos"])
    (src / "nowhere.mp4").write_bytes(good)
    summary = extract(cfg_for(path, manifest, tmp_path / "out", *CLIPS))
    assert summary["already_done"] == 2 and summary["extracted"] == 1 and summary["failed"] == 4
    assert not (tmp_path / "out" / "failed" / "nowhere.mp4.json").exists()


def test_another_run_into_the_same_folder_is_refused(videos, ckpt, tmp_path):
    path, _ = ckpt
    extract(cfg_for(path, videos, tmp_path, *CLIPS))
    with pytest.raises(ValueError, match="another run.*settings"):
        extract(cfg_for(path, videos, tmp_path, *CLIPS[:-2], "stride=1.0", "data.crop_size=32"))
    other = tmp_path / "other.pt"
    save_native(other, tiny_encoder(seed=1))
    with pytest.raises(ValueError, match="checkpoint_sha256"):
        extract(cfg_for(other, videos, tmp_path, *CLIPS))


# ---------------------------------------------------------------------------------------------- sharding

@pytest.mark.slow
def test_two_local_processes_write_what_one_does(embedded_data, ckpt, tmp_path):
    """torchrun with 2 real processes (rank r takes shard r) vs one process: the same bytes."""
    args, env = sharding_run(ckpt[0], embedded_data)
    one = subprocess.run([sys.executable, *args, f"out={tmp_path / 'one'}"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *args,
                          f"out={tmp_path / 'two'}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "shard 0/2: 15 videos" in two.stdout and "shard 1/2: 15 videos" in two.stdout  # each its half
    assert_same_outputs(tmp_path / "one", tmp_path / "two", 30)


def sharding_run(checkpoint, embedded_data) -> tuple[list[str], dict]:
    """The extraction the sharding tests split (the embedded train list, 30 videos, 2 clips each) and its
    environment (one thread: the same arithmetic in every process)."""
    args = ["-m", "launch.extract", f"checkpoint={checkpoint}", f"data.videos={embedded_data / 'train.jsonl'}",
            "data.frames_per_clip=4", "data.crop_size=32", "data.num_workers=0", "progress=false", "clips_per_video=2"]
    return args, {**os.environ, "OMP_NUM_THREADS": "1"}


def assert_same_outputs(a: Path, b: Path, num_videos: int) -> None:
    oa, ob = outputs(a), outputs(b)
    assert len([k for k in oa if k.startswith("features/")]) == num_videos
    assert oa.keys() == ob.keys()
    for k in oa:
        assert oa[k] == ob[k], k


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (.ci/gpu_check.sh)")
def test_gpu_extraction_matches_cpu_within_bf16(videos, ckpt, tmp_path):
    """On CUDA the encoder runs under bf16 autocast: the same clips, features within bf16 rounding of CPU's."""
    from safetensors.torch import load_file

    path, _ = ckpt
    extract(cfg_for(path, videos, tmp_path / "cpu", *CLIPS, "device=cpu", "dtype=float32"))
    extract(cfg_for(path, videos, tmp_path / "gpu", *CLIPS, "device=cuda", "dtype=float32", "data.num_workers=2"))
    for name in LENGTHS:
        a = load_file(tmp_path / "cpu" / "features" / f"{name}.safetensors")
        b = load_file(tmp_path / "gpu" / "features" / f"{name}.safetensors")
        assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["timestamps"], b["timestamps"])
        torch.testing.assert_close(b["features"], a["features"], atol=5e-2, rtol=5e-2)


def test_benchmark_prints_rates_and_writes_its_section(tmp_path):
    from data.benchvideos import make_bench_videos
    from launch.bench_extract import INTRO, main

    make_bench_videos(tmp_path / "videos", seconds=1, count=1)
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## Train step\n\nkept\n")
    rows = main(["--videos", str(tmp_path / "videos"), "--count", "1", "--cases", "128 px, in-process decoding",
                 "--repeats", "1", "--device", "cpu", "--write", "--docs", str(docs)])
    r = rows["128 px, in-process decoding"]
    assert r["videos"] == 1 and r["clips"] == 1 and r["wall"] > 0 and r["encoder"] > 0  # 30 frames: one padded clip
    text = docs.read_text()
    assert "## Train step\n\nkept" in text and "## Feature extraction" in text and INTRO in text
    assert "| 128 px, in-process decoding | 1 | 1 |" in text
