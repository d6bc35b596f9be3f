"""build_loader: batch layout, exact resume, worker/rank independence, bad input, images, eval views."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from data.loader import TooManyBadFiles, build_loader
from data.synthetic import generate

CLIP = dict(batch_size=4, size=32, frames_per_clip=4, frame_step=2)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn"), num_videos=30, seed=0)


def _videos(loader, n=None):
    out = []
    for b in loader:
        out.append((b["video"].clone(), b["index"].clone()))
        if n and len(out) == n:
            break
    return out


def test_batch_layout(root):
    loader = build_loader(root / "train.jsonl", num_workers=0, **CLIP)
    b = next(iter(loader))
    assert b["video"].shape == (4, 3, 4, 32, 32) and b["video"].dtype == torch.float32
    assert abs(b["video"].mean().item()) < 1.5 and b["video"].std().item() > 0.3  # normalised
    assert set(b["labels"]) == {"digit", "direction", "speed"}
    assert all(v.dtype == torch.long and v.shape == (4,) for v in b["labels"].values())
    rows = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines()]
    for i, caps, path, d in zip(b["index"].tolist(), b["captions"], b["path"], b["labels"]["digit"].tolist()):
        assert caps == rows[i]["captions"] and path == str(root / rows[i]["path"]) and d == rows[i]["labels"]["digit"]
    assert len(loader) == 24 // 4 and loader.state_dict()["batches_consumed"] == 1


def test_normalised_on_the_device_equals_torchvision_pipeline(root):
    """Workers hand over uint8; the float pass on the loader's device = v2.ToDtype + v2.Normalize of the
    same uint8 clip, and normalize=False hands that uint8 clip over unchanged."""
    from torchvision.transforms import v2

    from data.transforms import IMAGENET_MEAN, IMAGENET_STD

    raw = next(iter(build_loader(root / "train.jsonl", num_workers=1, normalize=False, **CLIP)))["video"]
    assert raw.dtype == torch.uint8 and raw.shape == (4, 3, 4, 32, 32)
    assert raw.float().std() > 10  # real pixels, not a constant
    normed = next(iter(build_loader(root / "train.jsonl", num_workers=0, **CLIP)))["video"]
    assert normed.is_contiguous()
    frames = raw.permute(0, 2, 1, 3, 4).reshape(-1, 3, 32, 32)  # [B*T, C, H, W] for v2
    ref = v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)(v2.ToDtype(torch.float32, scale=True)(frames))
    torch.testing.assert_close(normed, ref.reshape(4, 4, 3, 32, 32).permute(0, 2, 1, 3, 4), rtol=0, atol=1e-5)


def test_resume_is_exact_and_workers_do_not_matter(root):
    full = build_loader(root / "train.jsonl", num_workers=0, seed=5, **CLIP)
    epoch0, epoch1 = _videos(full), _videos(full)
    assert len(epoch0) == 6 and not torch.equal(epoch0[0][1], epoch1[0][1])  # reshuffled per epoch
    # interrupted after 3 batches of epoch 1, restored into a fresh loader with 2 workers
    first = build_loader(root / "train.jsonl", num_workers=0, seed=5, **CLIP)
    _videos(first)
    _videos(first, 3)
    state = first.state_dict()
    assert state["epoch"] == 1 and state["batches_consumed"] == 3
    resumed = build_loader(root / "train.jsonl", num_workers=2, seed=5, **CLIP)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # a trainer's per-epoch call must not rewind the restored position
    rest = _videos(resumed)
    assert len(rest) == 3
    for (v, i), (w, j) in zip(rest, epoch1[3:]):
        assert torch.equal(i, j) and torch.equal(v, w)  # bit-identical despite 2 workers
    assert resumed.state_dict() == {**state, "epoch": 2, "batches_consumed": 0}


def test_workers_run_on_across_epochs_and_positions_stay_exact(root):
    """The workers' queue is started once and runs into the next epoch (no drain at each epoch end), through a
    consumer that stops mid-epoch and comes back; moving the position restarts it there."""
    ref = build_loader(root / "train.jsonl", num_workers=0, seed=5, **CLIP)
    ref_batches = [b for _ in range(3) for b in ref]
    want = [b["index"].tolist() for b in ref_batches]
    loader = build_loader(root / "train.jsonl", num_workers=2, seed=5, **CLIP)
    got = [b["index"].tolist() for b in loader]          # epoch 0
    it = iter(loader)
    got += [next(it)["index"].tolist() for _ in range(2)]  # epoch 1, stopped after 2 batches
    del it
    got += [b["index"].tolist() for b in loader]          # the rest of epoch 1
    last = [b for b in loader]                             # epoch 2
    got += [b["index"].tolist() for b in last]
    assert got == want and loader.stream_starts == 1
    assert all(torch.equal(a["video"], b["video"]) for a, b in zip(last, ref_batches[12:]))
    loader.load_state_dict({"epoch": 0, "batches_consumed": 2})
    assert [b["index"].tolist() for b in loader] == want[2:6] and loader.stream_starts == 2
    assert loader.state_dict()["epoch"] == 1 and [b["index"].tolist() for b in loader] == want[6:12]
    assert loader.stream_starts == 2
    loader.close()
    # workers that do not outlive an epoch, and evaluation loaders, stop at the epoch's end (nothing decoded ahead)
    for kw in (dict(persistent_workers=False), dict(run_on=False)):
        once = build_loader(root / "train.jsonl", num_workers=2, seed=5, **kw, **CLIP)
        assert not once.run_on
        assert [b["index"].tolist() for _ in range(2) for b in once] == want[:12] and once.stream_starts == 2
        once.close()
    assert not build_loader(root / "val.jsonl", train=False, num_workers=2, **CLIP).run_on


def test_a_dead_worker_restarts_the_stream_with_fresh_workers_at_its_position(root):
    want = [b["index"].tolist() for b in build_loader(root / "train.jsonl", num_workers=0, seed=5, **CLIP)]
    # a dead worker is noticed by the SIGCHLD handler, or when a wait for data times out (a race in torch)
    loader = build_loader(root / "train.jsonl", num_workers=2, seed=5, worker_timeout=20, **CLIP)
    it = iter(loader)
    got = [next(it)["index"].tolist()]
    for worker in loader._dl._iterator._workers:
        worker.kill()
    # whatever way torch finds out (the worker's exit, a timeout, a batch whose shared memory died with it)
    with pytest.raises(RuntimeError, match="data loader worker failed at epoch 0, batch"):
        for batch in it:  # batches already decoded may still arrive first
            got.append(batch["index"].tolist())
    got += [b["index"].tolist() for b in loader]  # fresh workers, from the first batch not handed out
    assert got == want and loader.stream_starts == 2
    loader.close()


def test_ranks_shard_the_epoch(root):
    shards = [build_loader(root / "train.jsonl", num_workers=0, rank=r, world_size=2, **{**CLIP, "batch_size": 3})
              for r in range(2)]
    got = [torch.cat([b["index"] for b in s]).tolist() for s in shards]
    assert len(got[0]) == len(got[1]) == 12 and not set(got[0]) & set(got[1])
    assert sorted(got[0] + got[1]) == list(range(24))


def test_eval_views_and_determinism(root):
    kw = dict(CLIP, num_clips=2, eval_crops=3, train=False, num_workers=0)
    a, b = next(iter(build_loader(root / "val.jsonl", **kw))), next(iter(build_loader(root / "val.jsonl", **kw)))
    assert isinstance(a["video"], list) and len(a["video"]) == 6
    assert all(v.shape == (4, 3, 4, 32, 32) for v in a["video"])
    assert all(torch.equal(x, y) for x, y in zip(a["video"], b["video"]))
    assert a["index"].tolist() == [0, 1, 2, 3]  # evaluation: no shuffle
    assert not torch.equal(a["video"][0], a["video"][3])  # different clips of the same video


def test_images_are_single_frame_clips(tmp_path):
    for c in range(2):
        (tmp_path / f"class{c}").mkdir()
        for k in range(3):
            img = np.full((40, 48, 3), 60 + 150 * c, dtype=np.uint8)
            Image.fromarray(img).save(tmp_path / f"class{c}" / f"{k}.png")
    loader = build_loader(image_folder=tmp_path, num_workers=0, batch_size=6, size=32, shuffle=False)
    b = next(iter(loader))
    assert b["video"].shape == (6, 3, 1, 32, 32)
    assert b["labels"]["label"].tolist() == [0, 0, 0, 1, 1, 1]
    assert b["video"][0].mean() < b["video"][5].mean()


@pytest.fixture()
def bad_manifest(root, tmp_path):
    src = sorted((root / "videos").glob("*.mp4"))
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("hello, I am text\n")
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(1).bytes(5000))
    (tmp_path / "trunc.mp4").write_bytes(src[0].read_bytes()[:1500])
    rows = [{"path": str(p), "labels": {"digit": 1}, "captions": ["ok"]} for p in src[:12]]
    broken = ("empty.mp4", "text.mp4", "garbage.mp4", "trunc.mp4", "missing.mp4")
    rows += [{"path": n, "labels": {"digit": 1}} for n in broken]
    lines = [json.dumps(r) for r in rows] + ['{"path": "x.mp4", "labels": {"digit": "one"}}', "{not json"]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "m.jsonl"


def test_bad_items_skipped_counted_logged_once(bad_manifest, caplog):
    caplog.set_level(logging.WARNING)
    loader = build_loader(bad_manifest, num_workers=0, **{**CLIP, "frames_per_clip": 8})
    batches = list(loader)
    assert len(batches) == 17 // 4
    assert all(b["video"].shape[0] == 4 for b in batches)  # filled from good items
    assert all("tmp" not in p or "videos" in p for b in batches for p in b["path"])  # only good files
    counts = loader.skip_counts()  # the finished epoch's summary
    seen = {p: r for b in batches for p, r, _ in b["skipped"]}
    assert counts["epoch"] == 0 and counts["manifest_rows"] == 2 and counts["bad_files"] == seen
    assert counts["skipped"] == sum(len(b["skipped"]) for b in batches) >= len(seen)
    bad = {"empty.mp4": "empty", "text.mp4": "unreadable", "garbage.mp4": "unreadable", "missing.mp4": "missing"}
    for name, reason in bad.items():
        if any(p.endswith(name) for p in seen):
            assert seen[next(p for p in seen if p.endswith(name))] == reason
    assert len(seen) >= 3
    logged = [r.message for r in caplog.records if "skipping" in r.message and ".mp4:" in r.message]
    assert len(logged) == len(seen)  # once per file


def test_skip_counts_mid_epoch(bad_manifest):
    loader = build_loader(bad_manifest, num_workers=0, **CLIP)
    it = iter(loader)
    batches = [next(it) for _ in range(3)]
    counts = loader.skip_counts()
    assert counts["skipped"] == sum(len(b["skipped"]) for b in batches)
    assert sum(counts["by_reason"].values()) == counts["skipped"]
    assert set(counts["bad_files"].values()) <= {"empty", "unreadable", "missing", "decode_error"}


def test_only_bad_files_stop_with_a_clear_error(bad_manifest, tmp_path):
    lines = [line for line in bad_manifest.read_text().splitlines() if "videos" not in line]
    (tmp_path / "allbad.jsonl").write_text("\n".join(lines) + "\n")
    loader = build_loader(tmp_path / "allbad.jsonl", num_workers=0, max_consecutive_failures=4, **CLIP)
    with pytest.raises(TooManyBadFiles, match=r"5 consecutive items failed(.|\n)*\.mp4 \("):
        next(iter(loader))


def test_short_videos_skip_policy(root):
    # 16-frame clips need 16 * 2 = 32 frames; the embedded videos have 16: padded, or all skipped
    padded = next(iter(build_loader(root / "val.jsonl", train=False, num_workers=0, batch_size=2, size=32,
                                    frames_per_clip=16, frame_step=2)))
    assert padded["video"].shape[2] == 16
    assert torch.equal(padded["video"][:, :, -1], padded["video"][:, :, -2])  # last frame repeated
    with pytest.raises(TooManyBadFiles, match="too_short"):
        next(iter(build_loader(root / "val.jsonl", train=False, num_workers=0, batch_size=2, size=32,
                               frames_per_clip=16, frame_step=2, short="skip", max_consecutive_failures=2)))


def test_dali_batch_decode_equals_per_item_loading_and_falls_back_on_bad_files(tmp_path, monkeypatch):
    """DALI decodes a batch of clips from different files in one pipeline run; the samples equal the
    per-item path's bit for bit, and a bad file in the batch is found, skipped and replaced as usual."""
    import data.decoders

    root = generate(tmp_path / "vp9", num_videos=10, frames=8, size=32, codec="vp9")
    rows = (root / "train.jsonl").read_text().splitlines()
    bad = tmp_path / "vp9" / "truncated.webm"
    src = root / json.loads(rows[0])["path"]
    bad.write_bytes(src.read_bytes()[: src.stat().st_size // 3])
    (root / "mixed.jsonl").write_text("\n".join(rows + [json.dumps({"path": str(bad), "labels": {"digit": 0}})]))
    real, runs = data.decoders.dali_decode, []

    def counting_decode(requests):  # counts the pipeline runs of load_batch alone
        runs.append(len(requests))
        return real(requests)

    for manifest, expect_skips in ((root / "train.jsonl", 0), (root / "mixed.jsonl", 1)):
        loader = build_loader(manifest, backend="dali", num_workers=0, **CLIP)
        ds, keys = loader.dataset, [k for batch in loader._batches(0) for k in batch]
        if expect_skips:
            keys = [k for k in keys if k[0] != len(rows)][:3] + [(len(rows), 0, 99)]  # the bad file last
        runs.clear()
        with monkeypatch.context() as m:
            m.setattr(data.decoders, "dali_decode", counting_decode)
            batched = ds.load_batch(keys)
        single = [ds[k] for k in keys]
        if not expect_skips:
            assert runs == [len(keys)]  # one pipeline run for the whole batch
        for a, b in zip(batched, single):
            assert a["index"] == b["index"] and torch.equal(a["video"][0], b["video"][0])
            assert a["skipped"] == b["skipped"]
        skipped = [f for s in batched for f in s["skipped"]]
        assert len(skipped) == expect_skips and all(f[0] == str(bad) for f in skipped)
        assert all(s["video"][0].shape == (3, 4, 32, 32) for s in batched)
        if expect_skips:  # the bad file is remembered: later batches decode the good clips in one run again
            runs.clear()
            with monkeypatch.context() as m:
                m.setattr(data.decoders, "dali_decode", counting_decode)
                again = ds.load_batch(keys)
            assert runs[0] == len(keys) - 1
            assert all(torch.equal(a["video"][0], b["video"][0]) for a, b in zip(again, single))
