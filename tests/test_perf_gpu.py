"""GPU-only checks of the fast paths (`pytest -m gpu`; skipped without CUDA). Run by .ci/gpu_check.sh.

Each compares a fast path with the plain one: flash attention vs the math kernel, inductor-compiled vs eager
in bf16, cached teacher targets (built on the GPU) vs the online teacher, NVDEC frames vs decord's."""
import copy

import pytest
import torch

from vjepa.masks import MaskSampler, build_masks
from vjepa.methods import LatentPrediction
from vjepa.methods.base import layer_norm_targets
from vjepa.models import Predictor, vit
from vjepa.train.optim import build_optimizer

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (.ci/gpu_check.sh)")]
CUDA = torch.device("cuda")


def small_method():
    torch.manual_seed(0)
    kw = dict(img_size=64, num_frames=8, patch_size=16, tubelet_size=2)
    enc, teacher = vit("small", **kw), vit("small", **kw)
    gens = build_masks("multiblock", enc.grid)
    pred = Predictor(384, 384, embed_dim=192, depth=2, num_heads=6, num_mask_tokens=len(gens))
    return LatentPrediction(enc, pred, teacher=teacher).to(CUDA), gens


def test_flash_attention_runs_the_encoder_in_bf16_and_matches_math():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    method, _ = small_method()
    x = torch.randn(2, 3, 8, 64, 64, device=CUDA)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises if the flash kernel cannot take these inputs
            flash = method.encoder(x).float()
        with sdpa_kernel(SDPBackend.MATH):
            math = method.encoder(x).float()
    torch.testing.assert_close(flash, math, rtol=5e-2, atol=5e-2)


def test_adamw_is_fused_on_cuda():
    method, _ = small_method()
    opt = build_optimizer([method.encoder, method.predictor], 1e-4)
    assert opt.defaults["fused"] is True


def test_inductor_compiled_step_matches_eager_in_bf16():
    from vjepa.train.compile import BucketedMasks, compile_method

    eager, gens = small_method()
    compiled = copy.deepcopy(eager)
    compile_method(compiled, backend="inductor")
    masks = BucketedMasks(MaskSampler(gens, seed=0), 16)
    x = torch.randn(4, 3, 8, 64, 64, device=CUDA)
    for _ in range(3):
        ms = [m.to(CUDA) for m in masks(4)]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            le, _ = eager(x, ms)
            lc, _ = compiled(x, ms)
        le.backward()
        lc.backward()
        torch.testing.assert_close(lc.float(), le.float(), rtol=2e-2, atol=1e-3)
    ge = torch.cat([p.grad.flatten() for p in eager.encoder.parameters()])
    gc = torch.cat([p.grad.flatten() for p in compiled.encoder.parameters()])
    assert torch.nn.functional.cosine_similarity(ge, gc, dim=0) > 0.99


def test_target_cache_built_on_gpu_matches_the_online_teacher(tmp_path):
    pytest.importorskip("decord")
    from data.loader import build_loader
    from data.synthetic import ensure_synthetic
    from vjepa.train.data import EndlessLoader
    from vjepa.train.target_cache import build_target_cache, fixed_views

    root = ensure_synthetic(tmp_path / "data", num_videos=24, frames=8)
    clip = dict(frames_per_clip=8, frame_step=1, size=64, num_workers=0, seed=5)
    method, _ = small_method()
    teacher = method.teacher.eval()
    builder = build_loader([str(root / "train.jsonl")], train=True, shuffle=False, drop_last=False, batch_size=4,
                           **clip)
    cache = build_target_cache(tmp_path / "cache", teacher, builder, {"views": 2, "seed": 5}, CUDA)
    loader = fixed_views(build_loader([str(root / "train.jsonl")], train=True, batch_size=4, **clip), 2)
    it = iter(EndlessLoader(loader))
    for _ in range(len(loader) + 1):
        batch = next(it)
        view = loader.epoch % 2
        cache.verify(batch["video"], batch["index"], view)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            online = layer_norm_targets(teacher(batch["video"].to(CUDA))).float()
        torch.testing.assert_close(cache.targets(batch["index"], view).to(CUDA).float(), online, rtol=1e-3, atol=1e-5)


def test_nvdec_frames_match_decord(tmp_path):
    pytest.importorskip("nvidia.dali")
    pytest.importorskip("decord")
    from data.decoders import open_video
    from data.synthetic import ensure_synthetic

    root = ensure_synthetic(tmp_path / "data", num_videos=4, frames=16)
    path = sorted(root.rglob("*.mp4"))[0]
    idx = [0, 3, 7, 12]
    gpu = open_video(path, "dali", device="mixed").get_frames(idx)
    assert isinstance(gpu, torch.Tensor) and gpu.is_cuda  # decoded straight into GPU memory
    cpu = torch.from_numpy(open_video(path, "decord").get_frames(idx))
    assert gpu.shape == cpu.shape
    # different decoders' YUV->RGB conversions differ by a few levels, never by content
    assert (gpu.cpu().float() - cpu.float()).abs().mean() < 4


def test_nvdec_loader_hands_the_trainer_gpu_batches_equal_to_decord(tmp_path, monkeypatch):
    """backend=dali, device='mixed': each batch is decoded by NVDEC in one pipeline run, cropped, flipped and
    normalised on the GPU; the batch never visits host memory and matches the decord loader's batch."""
    pytest.importorskip("nvidia.dali")
    pytest.importorskip("decord")
    import data.decoders
    from data.loader import build_loader
    from data.synthetic import ensure_synthetic

    root = ensure_synthetic(tmp_path / "data", num_videos=8, frames=16)
    kw = dict(batch_size=4, size=64, frames_per_clip=8, frame_step=2, num_workers=0, seed=0)
    runs = []
    real = data.decoders.dali_decode
    with monkeypatch.context() as m:
        m.setattr(data.decoders, "dali_decode", lambda requests: runs.append(len(requests)) or real(requests))
        gpu = next(iter(build_loader(root / "train.jsonl", backend="dali", device=CUDA,
                                     decoder_options={"device": "mixed", "device_id": 0}, **kw)))
    cpu = next(iter(build_loader(root / "train.jsonl", backend="decord", **kw)))
    assert runs == [4] and gpu["video"].is_cuda and gpu["video"].dtype == torch.float32
    assert torch.equal(gpu["index"], cpu["index"])
    # same clips and crops; the decoders' YUV->RGB conversions differ by a few levels (normalised: ~0.02/level)
    assert (gpu["video"].cpu() - cpu["video"]).abs().mean() < 0.1


def test_the_default_data_config_decodes_on_nvdec_when_training_on_cuda(embedded_data, tmp_path):
    """data.backend=auto on CUDA: the trainer's loader is DALI 'mixed' and hands over GPU batches."""
    pytest.importorskip("nvidia.dali")
    from types import SimpleNamespace

    from test_train import make_cfg
    from vjepa.train.data import build_train_loader, clip_kwargs

    cfg = make_cfg(embedded_data, tmp_path, "experiment=salt", "device=cuda")
    assert clip_kwargs(cfg, CUDA)["backend"] == "dali"
    one_rank = SimpleNamespace(rank=0, world_size=1)
    loader = build_train_loader(cfg, cfg.experiment.stages[0], one_rank, 0, CUDA)
    batch = next(iter(loader))
    assert batch["video"].is_cuda and batch["video"].dtype == torch.float32
