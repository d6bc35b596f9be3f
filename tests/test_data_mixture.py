"""Images and videos in one run (data/mixture.py): each batch from one source drawn by weight, exactly
resumable, rank-sharded; per-source clip settings and masks; the stills builder; the trainer, one process
and 2 DDP processes whose ranks draw different sources in the same step."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO
from data.decoders import open_video
from data.manifest import read_manifest
from data.mixture import MixtureLoader, build_mixture
from data.stills import frame_positions, write_stills
from data.synthetic import generate
from test_train import SMALL, _free_port, assert_states_equal, final_state, make_cfg
from vjepa.train.checkpoint import load_file, save_atomic
from vjepa.train.experiment import run_experiment

CLIP = dict(size=32, frames_per_clip=4, frame_step=1, batch_size=4)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Real H.264 clips and PNG stills of their frames: (videos manifest, images manifest)."""
    root = generate(tmp_path_factory.mktemp("mix") / "videos", num_videos=24, frames=8, seed=0)
    images, bad = write_stills(root / "train.jsonl", root.parent / "stills", per_video=1)
    assert not bad
    return root / "train.jsonl", images


def _mixture(media, weights=(0.6, 0.4), seed=0, workers=0, rank=0, world_size=1):
    videos, images = media
    return build_mixture([{"path": videos}, {"path": images, "frames_per_clip": 1}], list(weights), seed=seed,
                         rank=rank, world_size=world_size, num_workers=workers, **CLIP)


def _take(mixture, n):
    it = iter(mixture)
    return [next(it) for _ in range(n)]


def test_sources_are_drawn_by_weight_deterministically_per_seed_and_rank(media):
    draws = lambda seed, rank=0, w=(0.8, 0.2): np.array(  # noqa: E731
        [MixtureLoader([None, None], list(w), ["v", "i"], seed, rank).source_at(s) for s in range(4000)])
    a = draws(0)
    se = np.sqrt(0.2 * 0.8 / len(a))
    assert abs(a.mean() - 0.2) < 4 * se  # within 4 binomial standard errors of the weight
    assert np.array_equal(a, draws(0)) and not np.array_equal(a, draws(1))
    assert (a != draws(0, rank=1)).mean() > 0.2  # ranks draw their own sequences
    assert set(draws(0, w=(1.0, 0.0))) == {0}  # a zero weight is never drawn
    # the real batches: each one whole from its source, in the shape of that source's clips
    mixture = _mixture(media)
    batches = _take(mixture, 24)
    assert [b["source"] for b in batches] == [mixture.source_at(s) for s in range(24)]
    assert {b["source"] for b in batches} == {0, 1}
    for b in batches:
        frames = 4 if b["source"] == 0 else 1
        assert b["video"].shape == (4, 3, frames, 32, 32)
        assert all(p.endswith(".mp4" if b["source"] == 0 else ".png") for p in b["path"])


def test_each_rank_reads_its_own_shard_of_every_source(media):
    seen = {}
    for rank in (0, 1):
        mixture = _mixture(media, weights=(0.5, 0.5), rank=rank, world_size=2)
        seen[rank] = {0: [], 1: []}
        for b in _take(mixture, 8):
            if len(seen[rank][b["source"]]) < len(mixture.loaders[b["source"]]):  # one epoch of each source
                seen[rank][b["source"]].append(set(b["path"]))
        seen[rank] = {source: set().union(*batches) for source, batches in seen[rank].items()}
    for source in (0, 1):
        assert seen[0][source] and seen[1][source]
        assert not seen[0][source] & seen[1][source], f"source {source}: ranks read the same items"


def test_resume_mid_epoch_across_sources_equals_the_uninterrupted_run(media, tmp_path):
    straight = _take(_mixture(media, workers=1), 14)
    first = _mixture(media, workers=1)
    _take(first, 6)
    save_atomic({"loader": first.state_dict()}, tmp_path / "latest.pt")  # through a checkpoint file
    first.close()
    state = load_file(tmp_path / "latest.pt", trusted=True)["loader"]
    per_epoch = [len(loader) for loader in _mixture(media).loaders]
    assert any(0 < s["batches_consumed"] < n for s, n in zip(state["sources"], per_epoch)), "not mid-epoch"
    resumed = _mixture(media, workers=1)
    resumed.load_state_dict(state)
    after = _take(resumed, 8)
    resumed.close()
    assert resumed.state_dict()["step"] == 14
    assert any(s["epoch"] > 0 for s in resumed.state_dict()["sources"]), "no source crossed an epoch"
    for a, b in zip(straight[6:], after):
        assert a["source"] == b["source"] and a["path"] == b["path"]
        assert torch.equal(a["video"], b["video"])
    # a state that does not fit names what differs
    single = _mixture(media).loaders[0]
    with pytest.raises(ValueError, match="single dataset's"):
        resumed.load_state_dict(single.state_dict())
    with pytest.raises(ValueError, match="holds 1 sources"):
        resumed.load_state_dict({**state, "sources": state["sources"][:1], "names": state["names"][:1]})


def test_stills_are_the_decoded_frames_and_bad_videos_are_named(media, tmp_path):
    videos, images = media
    rows = read_manifest(images)[0]
    source = read_manifest(videos)[0]
    assert len(rows) == len(source)  # one still per video
    # stills are evenly spaced inside the clip, its first and last frames left out: of 8 frames, one still is
    # frame 4 (7 / 2 rounded) and three are frames 2, 4, 5 (7 / 4 * (1, 2, 3) rounded)
    assert frame_positions(8, 1) == [4] and frame_positions(8, 3) == [2, 4, 5]
    assert rows[0].path.endswith("000000_0004.png")
    frame = open_video(source[0].path, "pyav").get_frames([4])[0]
    still = np.asarray(Image.open(rows[0].path))
    assert still.shape == frame.shape and np.array_equal(still, frame)
    assert rows[0].labels == source[0].labels and rows[0].captions == source[0].captions
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(f'{{"path": "{source[1].path}"}}\n{{"path": "broken.mp4"}}\n')
    out, bad = write_stills(manifest, tmp_path / "out", per_video=3)
    assert [Path(r.path).name for r in read_manifest(out)[0]] == ["000000_0002.png", "000000_0004.png",
                                                                    "000000_0005.png"]
    assert [p for p, _ in bad] == [str(tmp_path / "broken.mp4")]  # named, and the good video still written


def test_sources_get_their_own_clip_settings_and_masks(media, tmp_path):
    from hydra.errors import ConfigCompositionException

    from vjepa.masks import MaskSampler, MultiBlock2D, MultiBlock3D
    from vjepa.train.build import build_encoder, encoder_kwargs, source_mask_generators
    from vjepa.train.data import mixed_sources

    videos, images = media
    both = f"data.train=[{videos},{images}]", "experiment=vjepa"  # multi-block 3-D masks for clips
    cfg = make_cfg(tmp_path, tmp_path, *both)
    sources = mixed_sources(cfg)  # auto: images and videos -> one source per batch
    assert [s.kind for s in sources] == ["videos", "images"]
    assert [s.loader["frames_per_clip"] for s in sources] == [4, 1] and sources[1].mask == "ijepa"
    assert mixed_sources(make_cfg(tmp_path, tmp_path, f"data.train=[{videos},{videos}]")) is None  # items
    stage = cfg.experiment.stages[0]
    encoder = build_encoder(encoder_kwargs(cfg))
    gens = source_mask_generators(cfg, stage, encoder, sources)
    assert [type(g) for g in gens[0]] == [MultiBlock3D, MultiBlock3D] and [type(g) for g in gens[1]] == [MultiBlock2D]
    sampler = MaskSampler(gens[0], sources=gens)
    video_masks, image_masks = sampler(4, 0), sampler(4, 1)
    assert len(video_masks) == 2 and video_masks[0].context.max() < 2 * 4 * 4
    assert len(image_masks) == 1 and image_masks[0].context.max() < 16  # a (1, 4, 4) grid
    assert sampler.state_dict()["step"] == 2
    with pytest.raises(ValueError, match=r"MultiBlock2D masks are drawn on a \(1, 4, 4\).*\(2, 4, 4\).*source 1"):
        sampler(4, 1, grid=(2, 4, 4))  # a clip's batch with an image source's masks: an error, never silent
    # FSDP gathers shards once per encoder run: every source must draw as many masks as the stage
    with pytest.raises(ValueError, match=r"data.sources\[1\].mask.*ijepa draws 1 masks.*perf.fsdp"):
        source_mask_generators(make_cfg(tmp_path, tmp_path, *both, "perf.fsdp=true"), stage, encoder, sources)
    # per-source overrides from the command line: batch size, crop, workers, mask
    cfg = make_cfg(tmp_path, tmp_path, *both, "data.sources=[{},{batch_size:2,crop_size:48,mask:tube}]")
    own = mixed_sources(cfg)[1]
    assert own.loader["batch_size"] == 2 and own.loader["size"] == 48 and own.mask == "tube"
    # bad settings name their key
    with pytest.raises(ValueError, match=r"data.sources\[0\].mask.*single-frame"):
        source_mask_generators(cfg, stage, encoder, mixed_sources(
            make_cfg(tmp_path, tmp_path, *both, "data.sources=[{mask:ijepa},{}]")))
    with pytest.raises(ValueError, match=r"data.sources\[1\].frames_per_clip.*images"):
        mixed_sources(make_cfg(tmp_path, tmp_path, *both, "data.sources=[{},{frames_per_clip:4}]"))
    mixed = tmp_path / "mixed.jsonl"  # a manifest of clips and stills cannot be one source
    mixed.write_text("".join(json.dumps({"path": read_manifest(m)[0][0].path}) + "\n" for m in media))
    with pytest.raises(ValueError, match=r"data.train\[1\].*both images and videos.*split it"):
        mixed_sources(make_cfg(tmp_path, tmp_path, f"data.train=[{images},{mixed}]"))
    with pytest.raises(ValueError, match=r"data.sources: 1 entries for 2"):
        run_experiment(make_cfg(tmp_path, tmp_path, *both, "data.sources=[{}]"), tmp_path)
    with pytest.raises(ValueError, match=r"data.mix"):
        run_experiment(make_cfg(tmp_path, tmp_path, *both, "data.mix=sometimes"), tmp_path)
    with pytest.raises(ConfigCompositionException):
        make_cfg(tmp_path, tmp_path, *both, "data.sources=[{},{frames:1}]")  # not a source key


def test_trainer_on_mixed_data_resumes_exactly(media, tmp_path):
    videos, images = media
    common = ["experiment=vjepa", "experiment.total_steps=6", f"data.train=[{videos},{images}]",
              "data.weights=[0.5,0.5]", "checkpoint_every=1", "data.sources=[{},{crop_size:48}]"]
    straight = run_experiment(make_cfg(tmp_path, tmp_path / "a", *common), tmp_path / "a")
    assert straight["complete"] and np.isfinite(straight["stages"]["student"]["final_loss"])
    state = load_file(tmp_path / "a" / "student" / "checkpoints" / "latest.pt", trusted=True)
    assert all(s["batches_consumed"] + s["epoch"] > 0 for s in state["loader"]["sources"]), "a source unused"
    run_experiment(make_cfg(tmp_path, tmp_path / "b", *common, "stop_at_step=3"), tmp_path / "b")
    assert run_experiment(make_cfg(tmp_path, tmp_path / "b", *common), tmp_path / "b")["complete"]
    assert_states_equal(final_state(tmp_path / "a", "student"), final_state(tmp_path / "b", "student"))


@pytest.mark.slow
def test_ddp_ranks_draw_different_sources_in_the_same_step(media, tmp_path):
    """2 gloo processes through the real trainer; in some steps rank 0 trains on stills (2-D masks, T = 1)
    while rank 1 trains on clips (3-D masks), and the gradient all-reduce still pairs up."""
    from vjepa.train.trainer import stage_seed

    videos, images = media
    steps = 4
    extra = ["experiment=vjepa", f"experiment.total_steps={steps}", f"data.train=[{videos},{images}]",
             "data.weights=[0.5,0.5]", "data.batch_size=2", "seed=2",  # seed 2: ranks differ in steps 0 and 3
             "data.sources=[{},{crop_size:48}]"]  # stills at 48 px: 6 x 6 tokens, room for I-JEPA's context
    cfg = make_cfg(tmp_path, tmp_path, *extra)
    seed = stage_seed(cfg, cfg.experiment.stages[0])
    per_rank = [[MixtureLoader([None, None], [0.5, 0.5], ["v", "i"], seed, r).source_at(s) for s in range(steps)]
                for r in (0, 1)]
    assert any(a != b for a, b in zip(*per_rank)), per_rank  # the case under test happens
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = tmp_path / "ddp"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                    f"--master_port={_free_port()}", "-m", "launch.train", *SMALL, *extra, f"run_dir={run}",
                    f"hydra.run.dir={run}"], check=True, cwd=REPO, env=env, timeout=300)
    latest = load_file(run / "student" / "checkpoints" / "latest.pt", trusted=True)
    assert latest["step"] == steps and latest["loader"]["step"] == steps
    drawn = [s["batches_consumed"] for s in latest["loader"]["sources"]]  # 4 steps stay in epoch 0
    assert drawn == [per_rank[0].count(0), per_rank[0].count(1)]  # rank 0's own draws, as computed
    models = final_state(run, "student")
    assert all(torch.isfinite(v).all() for m in models.values() for v in m.values())
