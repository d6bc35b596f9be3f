"""The trainer: exact resume, strict checkpoints, non-finite losses, config validation, outputs."""
import json
import logging
import math
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

import launch.train  # noqa: F401  (registers the config schema)
from conftest import REPO
from vjepa.train import config as schema
from vjepa.train.build import build_method
from vjepa.train.checkpoint import CheckpointError, load_file, load_state_strict, save_atomic
from vjepa.train.experiment import run_experiment
from vjepa.train.metrics import read_metrics
from vjepa.train.optim import build_optimizer
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


def ema_closed_form(teacher0: dict, students: list[dict], momenta: list[float]) -> dict:
    """The EMA teacher after k steps, not as the recursion T <- m_i T + (1 - m_i) S_i but summed out:
    T_k = (prod_i m_i) T_0 + sum_i (1 - m_i) (prod_{j > i} m_j) S_i (in float64), S_i the student after step i."""
    out = {}
    for key, t0 in teacher0.items():
        acc = math.prod(momenta) * t0.double()
        for i, student in enumerate(students):
            acc = acc + (1 - momenta[i]) * math.prod(momenta[i + 1:]) * student[key].double()
        out[key] = acc.float()
    return out


def test_vjepa_baseline_outputs_schedules_and_ema(embedded_data, tmp_path):
    from vjepa.train.trainer import stage_seed

    total, (m_start, m_end) = 4, (0.5, 0.9)
    cfg = make_cfg(embedded_data, tmp_path, "experiment=vjepa", f"experiment.total_steps={total}",
                   f"experiment.stages.0.ema=[{m_start},{m_end}]", "experiment.probe.enabled=true", "keep_every=1",
                   "optim.warmup_fraction=0.5", "optim.final_weight_decay=0.4")
    summary = run_experiment(cfg, tmp_path)
    assert set(summary["probe"]) == {"random-init", "raw-pixels", "student"}
    for family in ("linear", "knn", "attentive"):
        assert set(summary["probe"]["student"][family]) == {"digit", "direction", "speed"}
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["stages"]["student"]["steps"] == 4 and on_disk["stages"]["student"]["final_loss"] > 0
    for f in ("config.yaml", "loss.png", "student/metrics.csv", "student/final.pt", "student/checkpoints/latest.pt"):
        assert (tmp_path / f).is_file(), f
    assert list((tmp_path / "student" / "tb").glob("events.out.tfevents.*"))
    assert set(final_state(tmp_path, "student")) == {"encoder", "predictor", "target_encoder"}
    # the schedules the steps ran with (row n = step n - 1): 2 warmup steps, then the cosine; EMA momentum linear
    o = cfg.optim
    rows = read_metrics(tmp_path / "student" / "metrics.csv")
    lrs = [o.start_lr, (o.start_lr + o.lr) / 2, o.lr, (o.lr + o.final_lr) / 2]  # step 0, 1, end of warmup, middle
    wds = [o.final_weight_decay + (o.weight_decay - o.final_weight_decay) * (1 + math.cos(math.pi * i / total)) / 2
           for i in range(total)]
    momenta = [m_start + (m_end - m_start) * i / total for i in range(total)]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r, lr, wd, m in zip(rows, lrs, wds, momenta):
        assert (r["lr"], r["weight_decay"], r["momentum"]) == pytest.approx((lr, wd, m), rel=1e-9), r
    # the teacher after every step k is the closed-form EMA of the students after steps 1..k, starting from
    # the student's initialisation (rebuilt from the stage seed, as the trainer builds it)
    stage = cfg.experiment.stages[0]
    torch.manual_seed(stage_seed(cfg, stage))
    teacher0 = build_method(cfg, stage)[0].teacher.state_dict()
    kept = [load_file(tmp_path / "student" / "checkpoints" / f"step_{k}.pt", trusted=True)["models"]
            for k in range(1, total + 1)]
    students = [k["encoder"] for k in kept]
    for k in range(1, total + 1):
        expected = ema_closed_form(teacher0, students[:k], momenta[:k])
        for key, value in kept[k - 1]["target_encoder"].items():
            torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-6, msg=f"step {k}: {key}")
    assert not torch.equal(students[-1]["blocks.0.attn.qkv.weight"], teacher0["blocks.0.attn.qkv.weight"])


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
                   f"experiment.stages.0.teacher={tmp_path / 'teacher.pt'}",
                   f"experiment.stages.0.init={tmp_path / 'hf'}",
                   "optim.lr=0", "optim.start_lr=0", "optim.final_lr=0", "optim.weight_decay=0",
                   "optim.final_weight_decay=0")
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


def test_nonfinite_loss_stops_with_a_clear_message_or_skips(embedded_data, tmp_path, caplog):
    # lr 1e30: the first step throws the weights to ~1e30 (still finite), and every later loss overflows
    explode = ["experiment=vjepa", "experiment.total_steps=6", "optim.lr=1e30", "optim.start_lr=1e30",
               "optim.clip_grad=null", "checkpoint_every=1"]
    with pytest.raises(NonFiniteLoss, match="loss is (nan|inf).*last good checkpoint"):
        run_experiment(make_cfg(embedded_data, tmp_path / "stop", *explode), tmp_path / "stop")
    latest = load_file(tmp_path / "stop" / "student" / "checkpoints" / "latest.pt", trusted=True)
    assert all(torch.isfinite(v).all() for v in latest["models"]["encoder"].values())
    with caplog.at_level(logging.WARNING, logger="vjepa.train.trainer"):
        summary = run_experiment(make_cfg(embedded_data, tmp_path / "skip", *explode, "nonfinite=skip", "keep_every=1"),
                                 tmp_path / "skip")
    stage = summary["stages"]["student"]
    assert summary["complete"] and stage["steps"] == 6 and stage["nonfinite_steps"] == 5  # counted in the summary
    warned = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert warned == [f"student: non-finite loss at step {k}, step skipped ({k} skipped so far)" for k in range(1, 6)]
    # the skipped steps changed nothing: the final weights (student, predictor, EMA teacher) are those after
    # step 1, the last good one, and finite; the logged rows are the steps taken
    good = load_file(tmp_path / "skip" / "student" / "checkpoints" / "step_1.pt", trusted=True)
    final = load_file(tmp_path / "skip" / "student" / "final.pt")
    assert final["nonfinite_steps"] == 5
    for name, state in final["models"].items():
        for key, value in state.items():
            assert torch.isfinite(value).all() and torch.equal(value, good["models"][name][key]), f"{name}.{key}"
    assert [r["step"] for r in read_metrics(tmp_path / "skip" / "student" / "metrics.csv")] == [1]


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


def test_default_backend_is_nvdec_when_training_on_cuda_and_pyav_on_cpu(tmp_path, monkeypatch, caplog):
    """data.backend=auto (the default): DALI's NVDEC decoder ('mixed', on the training GPU) on CUDA, PyAV on CPU;
    an explicit backend is kept; on CUDA without DALI, PyAV with one warning."""
    from vjepa.train import data as train_data

    cfg = make_cfg(tmp_path, tmp_path, "experiment=salt")
    assert cfg.data.backend == "auto"
    assert train_data.clip_kwargs(cfg, "cpu")["backend"] == "pyav"
    on_gpu = train_data.clip_kwargs(cfg, "cuda:1")  # resolving needs no GPU: it only reads the device's type
    if train_data.installed("dali"):
        assert on_gpu["backend"] == "dali" and on_gpu["decoder_options"] == {"device": "mixed", "device_id": 1}
    assert train_data.resolve_backend("decord", "cpu", "cuda") == ("decord", "cpu")
    assert train_data.resolve_backend("dali", "cpu", "cuda") == ("dali", "cpu")
    monkeypatch.setattr(train_data, "installed", lambda backend: backend != "dali")
    monkeypatch.setattr(train_data, "_warned_no_dali", False)
    with caplog.at_level("WARNING", logger="vjepa.train.data"):
        assert train_data.resolve_backend("auto", "cpu", "cuda") == ("pyav", "cpu")
        assert train_data.resolve_backend("auto", "cpu", "cuda:0") == ("pyav", "cpu")
    assert sum("DALI is not installed" in r.message for r in caplog.records) == 1


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


def first_moments(optimizer_state: dict, cfg, stage) -> dict[str, torch.Tensor]:
    """AdamW's first moments by parameter name, from a saved optimiser state: FSDP's full one is keyed by name,
    a plain one by position in the trainer's parameter groups (rebuilt here as the trainer builds them)."""
    if "fsdp_full" in optimizer_state:
        return {name: s["exp_avg"] for name, s in optimizer_state["fsdp_full"]["state"].items()}
    trained = build_method(cfg, stage)[0].trained_modules()
    names = {id(p): f"{m}.{n}" for m, module in trained.items() for n, p in module.named_parameters()}
    order = [names[id(p)] for g in build_optimizer(list(trained.values()), 1.0).param_groups for p in g["params"]]
    return {order[i]: s["exp_avg"] for i, s in optimizer_state["state"].items()}


def step_gradients(run_dir, stage_name: str = "student") -> list[dict[str, torch.Tensor]]:
    """The gradient every step handed to the optimiser (after clipping, if any), by parameter name, read back
    from the kept step_N.pt files (keep_every=1): AdamW's first moment is m_k = b1 m_(k-1) + (1 - b1) g_k."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    stage = next(s for s in cfg.experiment.stages if s.name == stage_name)
    b1 = cfg.optim.betas[0]
    files = sorted((run_dir / stage_name / "checkpoints").glob("step_*.pt"), key=lambda p: int(p.stem[5:]))
    grads, before = [], None
    for f in files:
        m = first_moments(load_file(f, trusted=True)["optimizer"], cfg, stage)
        grads.append({k: (v - b1 * before[k] if before else v) / (1 - b1) for k, v in m.items()})
        before = m
    return grads


def assert_same_training(a, b, rel: float = 1e-4, stage: str = "student") -> None:
    """Two runs took the same steps: the same logged loss and pre-clipping gradient norm at every step, the same
    gradients into the optimiser (each tensor within `rel` of the other's norm), the same final weights. The
    weights alone could not tell: AdamW's update hardly changes when every gradient is scaled, and clipping
    rescales them anyway."""
    rows_a, rows_b = read_metrics(a / stage / "metrics.csv"), read_metrics(b / stage / "metrics.csv")
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b] == list(range(1, len(rows_a) + 1))
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in rows_a] == pytest.approx([r[key] for r in rows_b], rel=rel), key
    grads_a, grads_b = step_gradients(a, stage), step_gradients(b, stage)
    assert len(grads_a) == len(grads_b) == len(rows_a)
    for step, (ga, gb) in enumerate(zip(grads_a, grads_b), start=1):
        assert ga.keys() == gb.keys()
        for name in ga:
            diff, norm = (ga[name] - gb[name]).norm().item(), gb[name].norm().item()
            assert diff <= rel * norm + 1e-12, f"step {step}: {name}'s gradient differs by {diff:.2e} (norm {norm:.2e})"
    wa, wb = final_state(a, stage), final_state(b, stage)
    assert wa.keys() == wb.keys()
    for name in wa:
        for key in wa[name]:
            torch.testing.assert_close(wa[name][key], wb[name][key], atol=2e-5, rtol=1e-4, msg=f"{name}.{key}")


def test_gradient_accumulation_matches_the_full_batch(embedded_data, tmp_path):
    common = ["experiment=vjepa", "experiment.total_steps=2", "mask=tube", "keep_every=1"]
    run_experiment(make_cfg(embedded_data, tmp_path / "full", *common), tmp_path / "full")
    run_experiment(make_cfg(embedded_data, tmp_path / "acc", *common, "optim.accum_steps=2"), tmp_path / "acc")
    assert_same_training(tmp_path / "acc", tmp_path / "full")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_processes_match_one_process_with_the_double_batch(embedded_data, tmp_path):
    """2 gloo processes x batch 2 == 1 process x batch 4, step by step (tube masks, EMA teacher)."""
    common = SMALL + [f"data.root={embedded_data}", "experiment=vjepa", "experiment.total_steps=3", "mask=tube",
                      "keep_every=1", "optim.clip_grad=0.02"]  # the reference clipping: every step is clipped
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                    f"--master_port={_free_port()}", "-m", "launch.train", *common, "data.batch_size=2",
                    f"run_dir={ddp_dir}", f"hydra.run.dir={ddp_dir}"],
                   check=True, cwd=REPO, env=env, timeout=600)
    subprocess.run([sys.executable, "-m", "launch.train", *common, "data.batch_size=4", f"run_dir={single_dir}",
                    f"hydra.run.dir={single_dir}"], check=True, cwd=REPO, env=env, timeout=600)
    assert_same_training(ddp_dir, single_dir)


def test_model_selection_correlates_loss_with_probe_over_checkpoints(embedded_data, tmp_path):
    from vjepa.eval.selection import model_selection

    # a high learning rate: the three checkpoints differ enough for some probe accuracies to change (with the
    # sin-cos table; the tiny RoPE model's three checkpoints probe alike, which leaves no correlation to check)
    run_experiment(make_cfg(embedded_data, tmp_path, "experiment=vjepa", "experiment.total_steps=3", "keep_every=1",
                            "optim.lr=1e-2", "optim.start_lr=1e-2", "model.pos_embed=sincos"), tmp_path)
    out = model_selection(tmp_path, "student", window=1)
    assert [p["step"] for p in out["points"]] == [1, 2, 3]
    rows = (tmp_path / "student" / "metrics.csv").read_text().splitlines()[1:]
    assert [p["loss"] for p in out["points"]] == [pytest.approx(float(r.split(",")[1])) for r in rows]
    # Pearson r of the returned points, label by label ("mean": the mean accuracy over the labels)
    losses = [p["loss"] for p in out["points"]]
    defined = 0
    for label in ("digit", "direction", "speed", "mean"):
        acc = [np.mean(list(p["probe"].values())) if label == "mean" else p["probe"][label] for p in out["points"]]
        stats = out["loss_vs_probe"][label]
        if len(set(acc)) == 1:  # a probe accuracy that did not change: no correlation to speak of
            assert math.isnan(stats["pearson_r"]), label
            continue
        defined += 1
        assert stats["pearson_r"] == pytest.approx(np.corrcoef(losses, acc)[0, 1], abs=1e-12), label
        assert stats["r2"] == pytest.approx(stats["pearson_r"] ** 2, abs=1e-12), label
    assert defined >= 2  # the comparison above ran on real numbers (a label and the mean at least)


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
