"""The method registry (vjepa/methods/registry.py) is what the config check and the builder read."""
import pytest
import torch

from test_train import make_cfg
from vjepa.interop import save_native
from vjepa.masks import MaskSampler
from vjepa.methods import registry
from vjepa.methods.latent import LatentPrediction
from vjepa.methods.registry import METHODS, MethodSpec
from vjepa.train import config as schema
from vjepa.train.build import build_encoder, build_method, encoder_kwargs


def stage_cfg(tmp_path, method, *overrides):
    return make_cfg(tmp_path, tmp_path / "run", "experiment=vjepa", f"experiment.stages.0.method={method}", *overrides)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    """A frozen teacher for the small config's student (same tubelets), as an exported file."""
    tmp = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    path = tmp / "teacher.pt"
    save_native(path, build_encoder(encoder_kwargs(stage_cfg(tmp, "vjepa"))))
    return path


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_registered_method_builds_and_steps(name, teacher_file, tmp_path):
    spec = METHODS[name]
    teachers = {"required": [teacher_file], "optional": [None, teacher_file], "none": [None]}[spec.teacher]
    for teacher in teachers:
        cfg = stage_cfg(tmp_path, name, f"experiment.stages.0.teacher={teacher or 'null'}")
        schema.check(cfg)
        method, configs, generators = build_method(cfg, cfg.experiment.stages[0])  # the teacher: from the stage
        assert type(method) is spec.cls and method.name == name
        # an EMA teacher exactly when the method uses one and no frozen teacher was given
        assert getattr(method, "ema", None) is not None if spec.ema and teacher is None else \
            getattr(method, "ema", None) is None
        assert hasattr(method, "text_encoder") == spec.text
        assert ("decoder" in configs) == (spec.targets == "pixels")
        video = torch.randn(4, 3, cfg.data.frames_per_clip, cfg.data.crop_size, cfg.data.crop_size)
        masks = MaskSampler(generators, seed=0).sample(4, 0)
        loss, metrics = method(video, masks, [["a digit"], ["a zero"], ["a one"], ["a two"]])
        assert torch.isfinite(loss) and loss.requires_grad


def test_only_frozen_teacher_latents_are_cacheable():
    assert {name for name, spec in METHODS.items() if spec.cacheable_targets} == {"salt"}


def test_config_check_and_builder_read_the_registry(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"stages\[0\].method: 'mine' is not one of"):
        schema.check(stage_cfg(tmp_path, "mine"))
    monkeypatch.setitem(METHODS, "mine", MethodSpec("mine", LatentPrediction, teacher="required", ema=False,
                                                    text=False, targets="latents", about="a test method"))
    with pytest.raises(ValueError, match=r"stages\[0\].teacher: a mine stage needs a teacher"):
        schema.check(stage_cfg(tmp_path, "mine"))
    monkeypatch.setitem(METHODS, "mine", MethodSpec("mine", LatentPrediction, teacher="none", ema=True,
                                                    text=False, targets="latents", about="a test method"))
    with pytest.raises(ValueError, match=r"stages\[0\].teacher: a mine stage takes no teacher"):
        schema.check(stage_cfg(tmp_path, "mine", "experiment.stages.0.teacher=x.pt"))
    cfg = stage_cfg(tmp_path, "mine")
    schema.check(cfg)
    method, configs, _ = build_method(cfg, cfg.experiment.stages[0])
    assert isinstance(method, LatentPrediction) and method.ema is not None and "target_encoder" in configs


def test_a_spec_with_an_unknown_teacher_kind_fails():
    with pytest.raises(ValueError, match="teacher 'sometimes'"):
        MethodSpec("x", LatentPrediction, teacher="sometimes", ema=False, text=False, targets="latents", about="")
    assert registry.method_spec("vjepa") is METHODS["vjepa"]
