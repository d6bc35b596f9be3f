"""Config -> models, method, masks. Model configs travel inside checkpoints so any stage's networks can
be rebuilt from its file alone (the SALT student builds its teacher this way)."""
from __future__ import annotations

from pathlib import Path

from vjepa.masks import build_masks
from vjepa.methods import Method
from vjepa.methods.registry import method_spec
from vjepa.models import Predictor, VisionTransformer, vit
from vjepa.models.heads import pixels_per_token
from vjepa.models.layers import initialise
from vjepa.models.vit import token_grid
from vjepa.train.checkpoint import CheckpointError


def encoder_kwargs(cfg, size: str | None = None) -> dict:
    m, d = cfg.model, cfg.data
    kw = dict(size=size or m.size, img_size=d.crop_size, num_frames=d.frames_per_clip, patch_size=m.patch_size,
              tubelet_size=m.tubelet_size, pos_embed=m.pos_embed, uniform_power=m.uniform_power,
              rope_variant=m.rope_variant, drop_path_rate=m.drop_path_rate, grad_checkpointing=m.grad_checkpointing)
    if size is None or size == m.size:  # explicit dims belong to the configured size only
        kw.update({k: getattr(m, k) for k in ("embed_dim", "depth", "num_heads") if getattr(m, k) is not None})
    return kw


def build_encoder(kwargs: dict, init: str = "trunc_normal") -> VisionTransformer:
    """A fresh encoder; `init` is the weight scheme (model.init, vjepa.models.layers.initialise)."""
    kwargs = dict(kwargs)
    return initialise(vit(kwargs.pop("size"), **kwargs), init)


def init_scheme(cfg) -> str:
    return getattr(cfg.model, "init", "trunc_normal")  # configs saved before model.init have none


def head_kwargs(head_cfg, encoder: VisionTransformer, out_dim: int | None, num_mask_tokens: int) -> dict:
    return dict(in_dim=encoder.embed_dim, out_dim=out_dim, embed_dim=head_cfg.embed_dim, depth=head_cfg.depth,
                num_heads=head_cfg.num_heads, num_mask_tokens=num_mask_tokens, pos_embed=encoder.pos_embed_type,
                uniform_power=encoder.uniform_power, rope_variant=getattr(encoder.rope, "variant", "rotary"))


def mask_generators(cfg, stage, encoder: VisionTransformer, kind: str | None = None, grid=None) -> list:
    """The stage's masks on the encoder's grid; `kind`/`grid`: another recipe / token grid (a data source's)."""
    kind = kind or stage.mask or cfg.mask.kind
    ratio = getattr(stage, "mask_ratio", None)
    kwargs = {"ratio": cfg.mask.ratio if ratio is None else ratio} if kind == "tube" else {}
    return build_masks(kind, grid or encoder.grid, **kwargs)


def source_mask_generators(cfg, stage, encoder: VisionTransformer, sources) -> list[list] | None:
    """Each source's mask generators in a batch-mixed run (vjepa/train/data.py), on its own token grid, or
    None for one dataset. A source draws at most as many masks as the stage's recipe: the predictor has one
    mask token per mask. With FSDP exactly as many: every rank runs the encoder once per mask, and the
    sharded parameters are gathered for each run, so the ranks' counts must agree."""
    if sources is None:
        return None
    tokens = len(mask_generators(cfg, stage, encoder))
    out = []
    for k, source in enumerate(sources):
        key = f"config key data.sources[{k}].mask ({source.path})"
        grid = token_grid(source.loader["frames_per_clip"], source.loader["size"], encoder.patch_size,
                          encoder.tubelet_size)
        try:
            generators = mask_generators(cfg, stage, encoder, source.mask, grid)
        except ValueError as e:
            raise ValueError(f"{key}: {e}") from None
        if len(generators) > tokens or (cfg.perf.fsdp and len(generators) != tokens):
            raise ValueError(f"{key}: {source.mask} draws {len(generators)} masks per batch, the stage's recipe "
                             f"{stage.mask or cfg.mask.kind} {tokens}" + (" (perf.fsdp: they must be equal)"
                                                                          if cfg.perf.fsdp else ""))
        out.append(generators)
    return out


def load_teacher(path: str | Path) -> VisionTransformer:
    """A frozen encoder from any checkpoint vjepa.interop reads: a finished stage's `final.pt` (its EMA
    `target_encoder` if it has one, else `encoder`), our exports, official V-JEPA 1/2 files, or a Hugging
    Face V-JEPA 2 folder. Strict: a key that does not fit is an error listing the keys."""
    from vjepa.interop import load_pretrained

    if not Path(path).exists():
        raise CheckpointError(f"teacher checkpoint not found: {path}")
    return load_pretrained(path, predictor=False).encoder


def build_method(cfg, stage, teacher_file: str | Path | None = None, init_file: str | Path | None = None
                 ) -> tuple[Method, dict, list]:
    """Returns the method, the configs of the models it saves, and its mask generators. `init_file`: the
    checkpoint `stage.init` names (the experiment runner resolves an earlier stage's name to its final.pt)."""
    enc_kw = encoder_kwargs(cfg, stage.size)
    init = init_scheme(cfg)
    encoder = build_encoder(enc_kw, init)
    init_file = init_file or stage.init
    if init_file:
        from vjepa.interop import load_into

        load_into(encoder, init_file)  # checks the architecture, then the keys, strictly
    generators = mask_generators(cfg, stage, encoder)
    configs = {"encoder": enc_kw}
    spec = method_spec(stage.method, f"stage {stage.name!r}: method")
    if spec.targets == "pixels":
        dec_kw = head_kwargs(cfg.decoder, encoder, pixels_per_token(encoder), len(generators))
        configs["decoder"] = dec_kw
        decoder = initialise(Predictor(**dec_kw), init)
        return spec.cls(encoder, decoder, stage.pixel_norm_eps, stage.pixel_targets), configs, generators
    text = {}
    if spec.text:
        from vjepa.models.text import TextEncoder

        text = {"text_encoder": TextEncoder(cfg.text.model, max_tokens=cfg.text.max_tokens)}
    if spec.targets == "captions":  # the contrastive baseline: the same encoder and text model, no masks
        return spec.cls(encoder, **text), configs, generators
    teacher_file = teacher_file or frozen_teacher_file(spec, stage)
    teacher = None
    if teacher_file is not None:
        teacher = load_teacher(teacher_file)
        if (teacher.patch_size, teacher.tubelet_size) != (encoder.patch_size, encoder.tubelet_size):
            raise ValueError(f"teacher {teacher_file} uses {teacher.tubelet_size}x{teacher.patch_size}^2 tubelets, "
                             f"the student {encoder.tubelet_size}x{encoder.patch_size}^2: their tokens must align")
    out_dim = teacher.embed_dim if teacher is not None else encoder.embed_dim
    pred_kw = head_kwargs(cfg.predictor, encoder, out_dim, len(generators))
    configs["predictor"] = pred_kw
    if teacher is None:
        configs["target_encoder"] = enc_kw
    if spec.text:
        t = cfg.text
        text.update(max_captions=t.max_captions, sparsity=t.sparsity, consistency=t.consistency,
                    center_keys=t.center_keys)
    extra = dict(text)
    if getattr(stage, "context_loss", 0):  # salt / vjepa only (the config check)
        extra["context_loss"] = stage.context_loss
    method = spec.cls(encoder, initialise(Predictor(**pred_kw), init), teacher=teacher, ema=stage.ema,
                      loss=stage.loss, **extra)
    return method, configs, generators


def frozen_teacher_file(spec, stage) -> str | None:
    """The checkpoint `stage.teacher` names when no file was passed (None: an EMA teacher). An earlier
    stage's name is the experiment runner's to resolve to that stage's final.pt."""
    if spec.teacher == "none" or not stage.teacher:
        if spec.teacher == "required":
            raise ValueError(f"stage {stage.name!r}: a {spec.name} stage needs a teacher")
        return None
    if not Path(stage.teacher).exists():
        raise ValueError(f"stage {stage.name!r}: teacher {stage.teacher!r} is not a checkpoint and no teacher "
                         "file was passed for it")
    return stage.teacher
