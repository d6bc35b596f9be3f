"""The methods a stage can train and what each needs: the one table that the config check, the model
builder, the experiment runner and the target cache read (a new method is one more row here)."""
from __future__ import annotations

from dataclasses import dataclass

from vjepa.methods.base import Method
from vjepa.methods.contrastive import ContrastiveImageText
from vjepa.methods.latent import LatentPrediction
from vjepa.methods.pixel import PixelReconstruction
from vjepa.methods.tcjepa import TextConditionedPrediction

TEACHER_KEYS = ("required", "optional", "none")
TARGET_KINDS = ("pixels", "latents", "captions")


@dataclass(frozen=True)
class MethodSpec:
    name: str
    cls: type[Method]
    teacher: str  # a frozen teacher in `stage.teacher` (an earlier stage or a checkpoint): required | optional | none
    ema: bool  # without a frozen teacher, the teacher is an EMA of the student
    text: bool  # reads the items' captions through the frozen text encoder (configs `text.*`)
    targets: str  # what is predicted: pixels | latents (a teacher's features) | captions (matched, no masks)
    about: str

    def __post_init__(self):
        if self.teacher not in TEACHER_KEYS:
            raise ValueError(f"method {self.name}: teacher {self.teacher!r} is not one of {TEACHER_KEYS}")
        if self.targets not in TARGET_KINDS:
            raise ValueError(f"method {self.name}: targets {self.targets!r} is not one of {TARGET_KINDS}")

    @property
    def cacheable_targets(self) -> bool:
        """Its targets come from a teacher that never changes, so they can be computed once (perf.target_cache)."""
        return self.teacher == "required" and self.targets == "latents"


METHODS = {spec.name: spec for spec in (
    MethodSpec("pixel", PixelReconstruction, teacher="none", ema=False, text=False, targets="pixels",
               about="masked pixel reconstruction (VideoMAE-style; SALT stage 1)"),
    MethodSpec("salt", LatentPrediction, teacher="required", ema=False, text=False, targets="latents",
               about="predict a frozen teacher's latents (SALT stage 2)"),
    MethodSpec("vjepa", LatentPrediction, teacher="none", ema=True, text=False, targets="latents",
               about="predict an EMA teacher's latents (V-JEPA; I-JEPA on single frames)"),
    MethodSpec("tcjepa", TextConditionedPrediction, teacher="optional", ema=True, text=True, targets="latents",
               about="V-JEPA whose predictor reads the captions (EMA teacher, or a frozen one if given)"),
    MethodSpec("contrastive", ContrastiveImageText, teacher="none", ema=False, text=True, targets="captions",
               about="CLIP-style image-text baseline for TC-JEPA"),
)}


def method_spec(name: str, key: str = "method") -> MethodSpec:
    """The registered method `name`; an unknown name is an error naming the config key and the choices."""
    if name not in METHODS:
        raise ValueError(f"config key {key}: {name!r} is not one of {list(METHODS)}")
    return METHODS[name]
