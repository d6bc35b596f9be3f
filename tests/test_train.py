"""The trainer: exact resume, strict checkpoints, non-finite losses, config validation, outputs."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

import launch.train  # noqa: F401  (registers the config schema)
from conftest import REPO
from vjepa.train import config as schema
from vjepa.train.checkpoint import CheckpointError, load_file, load_state_strict, save_atomic
from vjepa.train.experiment import run_experiment
from vjepa.train.trainer import NonFiniteLoss

# a small model on 32x32 clips of 4 frames: a grid of 2 x 4 x 4 tokens
SMALL = ["model.patch_size=8", "model.depth=2", "model.embed_dim=64", "model.num_heads=4",
         "predictor.embed_dim=32", "predictor.depth=1", "predictor.num_heads=2",
         "decoder.embed_dim=32", "decoder.depth=1", "decoder.num_heads=2",
         "data.frames_per_clip=4", "data.crop_size=32", "data.batch_size=4", "data.num_workers=0",
         "experiment.probe.enabled=false", "log_every=1"]


def make_cfg(data_root, run_dir, *overrides):
    with initialize_config_dir(str(REPO / "configs"), version_base=None):
        return compose("config", overrides=SMALL + [f"data.root={data_root}", f"run_dir={run_dir}", *overrides])


def final_state(run_dir, stage):
    return load_file(run_dir / stage / "final.pt")["models"]


def assert_states_equal(a, b):
    assert a.keys() == b.keys()
    for name in a:
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f"{name}.{key} differs"


def test_salt_resume_is_bit_identical(embedded_data, tmp_path):
    common = ["experiment=salt", "experiment.total_steps=8", "data.num_workers=1"]
    straight = run_experiment(make_cfg(embedded_data, tmp_path / "a", *common), tmp_path / "a")
    # the default split: teacher round(8 x 0.43) = 3 steps, student round(8 x 0.57) = 5
    assert straight["complete"] and straight["stages"]["teacher"]["steps"] == 3
    assert straight["stages"]["student"]["steps"] == 5
    part = run_experiment(make_cfg(embedded_data, tmp_path / "b", *common, "stop_at_step=3"), tmp_path / "b")
    assert not part["complete"] and part["stages"]["student"]["steps"] == 3
    assert not (tmp_path / "b" / "student" / "final.pt").exists()
    resumed = run_experiment(make_cfg(embedded_data, tmp_path / "b", *common), tmp_path / "b")
    assert resumed["complete"]
    for stage in ("teacher", "student"):
        assert_states_equal(final_state(tmp_path / "a", stage), final_state(tmp_path / "b", stage))
    # the resumed run's metrics continue the interrupted ones: one row per step, no duplicates
    rows = (tmp_path / "b" / "student" / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, 6))


def test_vjepa_baseline_outputs_and_ema(embedded_data, tmp_path):
    cfg = make_cfg(embedded_data, tmp_path, "experiment=vjepa", "experiment.total_steps=4",
                   "experiment.stages.0.ema=[0.5,0.5]", "experiment.probe.enabled=true")
    summary = run_experiment(cfg, tmp_path)
    assert set(summary["probe"]) == {"random-init", "raw-pixels", "student"}
    for family in ("linear", "knn", "attentive"):
        assert set(summary["probe"]["student"][family]) == {"digit", "direction", "speed"}
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["stages"]["student"]["steps"] == 4 and on_disk["stages"]["student"]["final_loss"] > 0
    for f in ("config.yaml", "loss.png", "student/metrics.csv", "student/final.pt", "student/checkpoints/latest.pt"):
        assert (tmp_path / f).is_file(), f
    assert list((tmp_path / "student" / "tb").glob("events.out.tfevents.*"))
    models = final_state(tmp_path, "student")
    # an EMA teacher with momentum 0.5 moved halfway towards the student each step: it differs from
    # both the student and its own initialisation (which equals the student's initialisation)
    enc, tgt = models["encoder"], models["target_encoder"]
    key = "blocks.0.attn.qkv.weight"
    assert not torch.equal(enc[key], tgt[key])
    assert set(models) == {"encoder", "predictor", "target_encoder"}


def test_image_case_and_smaller_teacher(embedded_data, tmp_path):
    # I-JEPA: single-frame clips with I-JEPA masks through the same trainer
    cfg = make_cfg(embedded_data, tmp_path / "img", "experiment=ijepa", "experiment.total_steps=2",
                   "data.frames_per_clip=1", "model.tubelet_size=1")
    assert run_experiment(cfg, tmp_path / "img")["complete"]
    # SALT with a teacher narrower than the student: the predictor projects to the teacher's width
    cfg = make_cfg(embedded_data, tmp_path / "salt", "experiment=salt", "experiment.total_steps=4",
                   "model.size=small", "model.embed_dim=null", "model.depth=1", "model.num_heads=null",
                   "experiment.stages.0.size=tiny")
    run_experiment(cfg, tmp_path / "salt")
    student = final_state(tmp_path / "salt", "student")
    teacher = final_state(tmp_path / "salt", "teacher")
    assert teacher["encoder"]["norm.weight"].shape == (192,)
    assert student["encoder"]["norm.weight"].shape == (384,)
    assert student["predictor"]["proj.weight"].shape[0] == 192


def test_teacher_and_initialisation_from_other_checkpoint_formats(embedded_data, tmp_path):
    """A salt stage takes its frozen teacher from an exported file and its initial weights from a
    Hugging Face folder, through vjepa.interop (strictly)."""
    from vjepa.interop import export, load_pretrained

    base = ["experiment=vjepa", "experiment.total_steps=2", "model.pos_embed=rope", "model.rope_variant=vjepa2"]
    run_experiment(make_cfg(embedded_data, tmp_path / "src", *base), tmp_path / "src")
    pre = load_pretrained(tmp_path / "src" / "student" / "final.pt", predictor=False)
    export(tmp_path / "teacher.pt", pre.encoder, to="native")
    export(tmp_path / "hf", pre.encoder, to="hf")
    cfg = make_cfg(embedded_data, tmp_path / "salt", *base, "experiment.stages.0.method=salt",
                   f"experiment.stages.0.teacher={tmp_path / 'teacher.pt'}", f"experiment.stages.0.init={tmp_path / 'hf'}",
                   "optim.lr=0", "optim.start_lr=0", "optim.final_lr=0", "optim.weight_decay=0", "optim.final_weight_decay=0")
    run_experiment(cfg, tmp_path / "salt")
    student = final_state(tmp_path / "salt", "student")["encoder"]
    for key, value in pre.encoder.state_dict().items():  # lr 0: the student is still its initialisation
        assert torch.equal(student[key], value), key
    with pytest.raises(ValueError, match="stages\\[0\\].teacher"):
        schema.check(make_cfg(embedded_data, tmp_path / "x", *base, "experiment.stages.0.method=salt",
                              f"experiment.stages.0.teacher={tmp_path / 'missing.pt'}"))


def test_default_salt_recipe_masks_targets_and_init_per_stage(embedded_data, tmp_path):
    """The main job's teacher: VideoMAE tube masks at the stage's own ratio, xavier-initialised; a later
    stage can start from an earlier stage's encoder by naming it (experiment.stages.N.init=teacher)."""
    from vjepa.masks import MultiBlock3D, TubeMask
    from vjepa.train.build import build_method

    cfg = make_cfg(embedded_data, tmp_path, "experiment=salt", "experiment.total_steps=4",
                   "experiment.stages.1.init=teacher", "optim.lr=0", "optim.start_lr=0", "optim.final_lr=0",
                   "optim.weight_decay=0", "optim.final_weight_decay=0")
    method, _, gens = build_method(cfg, cfg.experiment.stages[0])
    assert [type(g) for g in gens] == [TubeMask] and gens[0].ratio == 0.75
    assert method.targets == "patch_norm" and method.norm_eps == 0.1
    fc1 = method.encoder.blocks[0].mlp.fc1.weight  # xavier: std sqrt(2 / (64 + 256)), not the reference 0.02
    assert fc1.std().item() == pytest.approx((2 / (64 + 256)) ** 0.5, rel=0.05)
    run_experiment(cfg, tmp_path)
    teacher, student = final_state(tmp_path, "teacher")["encoder"], final_state(tmp_path, "student")["encoder"]
    for key, value in teacher.items():  # lr 0: the student is still the teacher's encoder it started from
        assert torch.equal(student[key], value), key
    final = tmp_path / "teacher" / "final.pt"
    _, _, student_gens = build_method(cfg, cfg.experiment.stages[1], final, init_file=final)
    assert [type(g) for g in student_gens] == [MultiBlock3D, MultiBlock3D]
    with pytest.raises(ValueError, match="stages\\[1\\].init"):
        schema.check(make_cfg(embedded_data, tmp_path / "x", "experiment=salt", "experiment.stages.1.init=nothing"))


def test_nonfinite_loss_stops_with_a_clear_message_or_skips(embedded_data, tmp_path):
    explode = ["experiment=vjepa", "experiment.total_steps=6", "optim.lr=1e30", "optim.start_lr=1e30",
               "optim.clip_grad=null", "checkpoint_every=1"]
    with pytest.raises(NonFiniteLoss, match="loss is (nan|inf).*last good checkpoint"):
        run_experiment(make_cfg(embedded_data, tmp_path / "stop", *explode), tmp_path / "stop")
    latest = load_file(tmp_path / "stop" / "student" / "checkpoints" / "latest.pt", trusted=True)
    assert all(torch.isfinite(v).all() for v in latest["models"]["encoder"].values())
    summary = run_experiment(make_cfg(embedded_data, tmp_path / "skip", *explode, "nonfinite=skip"),
                             tmp_path / "skip")
    assert summary["complete"]


def test_checkpoint_write_is_atomic(tmp_path):
    path = tmp_path / "latest.pt"
    save_atomic({"step": 1, "w": torch.ones(3)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        save_atomic({"step": 2, "w": torch.zeros(3), "boom": Unpicklable()}, path)
    assert load_file(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]  # no temp file left behind
    path.write_bytes(path.read_bytes()[:20])  # a truncated file is named in the error
    with pytest.raises(CheckpointError, match="latest.pt"):
        load_file(path)


def test_strict_load_names_the_keys():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.LayerNorm(3))
    state = model.state_dict()
    bad = {k: v for k, v in state.items() if k != "1.bias"}
    bad["extra.weight"] = torch.zeros(1)
    bad["0.weight"] = torch.zeros(4, 2)
    with pytest.raises(CheckpointError) as err:
        load_state_strict(model, bad, "encoder")
    msg = str(err.value)
    assert "missing (1): 1.bias" in msg and "unexpected (1): extra.weight" in msg
    assert "0.weight: checkpoint (4, 2) vs model (3, 2)" in msg


@pytest.mark.parametrize("override,message", [
    ("model.sizee=tiny", "sizee"),
    ("data.batch_size=lots", "batch_size"),
    ("experiment=nonexistent", "experiment"),
])
def test_bad_config_fails_at_start_naming_the_key(tmp_path, override, message):
    with pytest.raises(ConfigCompositionException) as err:
        make_cfg(tmp_path, tmp_path, override)
    assert message in str(err.value) + str(err.value.__cause__)


@pytest.mark.parametrize("override,key", [
    ("model.size=enormous", "model.size"),
    ("experiment.stages.1.teacher=nobody", "experiment.stages[1].teacher"),
    ("data.fps=4", "data.frame_step/fps/duration"),
    ("optim.accum_steps=3", "optim.accum_steps"),
    ("data.backend=ffmpeg", "data.backend"),
    ("data.dali_device=gpu", "data.dali_device"),
    ("data.dali_device=mixed", "data.dali_device"),  # NVDEC needs backend=dali
])
def test_bad_values_fail_naming_the_key(tmp_path, override, key):
    with pytest.raises(ValueError, match=key.replace("[", r"\[").replace("]", r"\]")):
        schema.check(make_cfg(tmp_path, tmp_path, "experiment=salt", override))


def test_trains_on_vp9_through_dali_decoding_whole_batches(tmp_path, monkeypatch):
    """backend=dali: the loader decodes each batch in one DALI pipeline run (NVDEC on a GPU with
    data.dali_device=mixed; here DALI's CPU decoder on VP9 files) and the trainer runs on it."""
    import data.decoders
    from data.synthetic import generate

    root = generate(tmp_path / "vp9", num_videos=12, frames=8, size=32, codec="vp9")
    runs = []
    real = data.decoders.dali_decode
    monkeypatch.setattr(data.decoders, "dali_decode", lambda requests: runs.append(len(requests)) or real(requests))
    cfg = make_cfg(tmp_path, tmp_path / "run", "experiment=vjepa", "experiment.total_steps=2", "data.backend=dali",
                   f"data.train=[{root / 'train.jsonl'}]", f"data.val={root / 'val.jsonl'}")
    summary = run_experiment(cfg, tmp_path / "run")
    assert summary["complete"]
    assert runs and set(runs) == {4}  # whole batches of 4 clips per pipeline run, never one clip at a time


def test_gradient_accumulation_matches_the_full_batch(embedded_data, tmp_path):
    common = ["experiment=vjepa", "experiment.total_steps=2", "mask=tube", "optim.clip_grad=null"]
    run_experiment(make_cfg(embedded_data, tmp_path / "full", *common), tmp_path / "full")
    run_experiment(make_cfg(embedded_data, tmp_path / "acc", *common, "optim.accum_steps=2"), tmp_path / "acc")
    a, b = final_state(tmp_path / "full", "student"), final_state(tmp_path / "acc", "student")
    for key in a["encoder"]:
        torch.testing.assert_close(a["encoder"][key], b["encoder"][key], atol=1e-5, rtol=1e-4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_processes_match_one_process_with_the_double_batch(embedded_data, tmp_path):
    """2 gloo processes x batch 2 == 1 process x batch 4 after a few steps (tube masks, EMA teacher)."""
    common = SMALL + [f"data.root={embedded_data}", "experiment=vjepa", "experiment.total_steps=3", "mask=tube"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                    f"--master_port={_free_port()}", "-m", "launch.train", *common, "data.batch_size=2",
                    f"run_dir={ddp_dir}", f"hydra.run.dir={ddp_dir}"],
                   check=True, cwd=REPO, env=env, timeout=600)
    subprocess.run([sys.executable, "-m", "launch.train", *common, "data.batch_size=4", f"run_dir={single_dir}",
                    f"hydra.run.dir={single_dir}"], check=True, cwd=REPO, env=env, timeout=600)
    a, b = final_state(ddp_dir, "student"), final_state(single_dir, "student")
    for name in a:
        for key in a[name]:
            torch.testing.assert_close(a[name][key], b[name][key], atol=2e-5, rtol=1e-4, msg=f"{name}.{key}")


def test_model_selection_correlates_loss_with_probe_over_checkpoints(embedded_data, tmp_path):
    from vjepa.eval.selection import model_selection

    run_experiment(make_cfg(embedded_data, tmp_path, "experiment=vjepa", "experiment.total_steps=3", "keep_every=1"),
                   tmp_path)
    out = model_selection(tmp_path, "student", window=1)
    assert [p["step"] for p in out["points"]] == [1, 2, 3]
    rows = (tmp_path / "student" / "metrics.csv").read_text().splitlines()[1:]
    assert [p["loss"] for p in out["points"]] == [pytest.approx(float(r.split(",")[1])) for r in rows]
    for label in ("digit", "direction", "speed", "mean"):
        r = out["loss_vs_probe"][label]["pearson_r"]
        assert r != r or -1.0 <= r <= 1.0  # nan when a probe accuracy did not change


def test_periodic_quick_probe_runs_in_the_loop_without_changing_training(embedded_data, tmp_path):
    common = ["experiment=vjepa", "experiment.total_steps=4"]
    run_experiment(make_cfg(embedded_data, tmp_path / "plain", *common), tmp_path / "plain")
    run_experiment(make_cfg(embedded_data, tmp_path / "probed", *common, "experiment.probe.every=2"),
                   tmp_path / "probed")
    rows = (tmp_path / "probed" / "student" / "quick_probe.csv").read_text().splitlines()[1:]
    assert sorted({int(r.split(",")[0]) for r in rows}) == [2, 4]
    assert_states_equal(final_state(tmp_path / "plain", "student"), final_state(tmp_path / "probed", "student"))


@pytest.mark.parametrize("method", ["pixel", "vjepa", "salt", "tcjepa"])
def test_method_group_selects_a_single_stage_experiment(tmp_path, method):
    cfg = make_cfg(tmp_path, tmp_path, f"method={method}")
    assert [s.method for s in cfg.experiment.stages] == [method]
    if method == "salt":  # a frozen teacher must be named
        with pytest.raises(ValueError, match=r"stages\[0\].teacher"):
            schema.check(cfg)
    else:
        schema.check(cfg)
