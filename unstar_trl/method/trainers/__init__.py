"""Unlearning methods on TRL's SFTTrainer, one file each: `METHODS` maps a method name to its (trainer class,
config class)."""

from .altpo import AltPOConfig, AltPOTrainer
from .base import UnlearningConfig, UnlearningTrainer
from .dfmcq import DFMCQConfig, DFMCQTrainer
from .divergence import DivergenceError
from .grad_ascent import GradientAscentConfig, GradientAscentTrainer
from .grad_ascent_kl import GradAscentKLConfig, GradAscentKLTrainer
from .grad_diff import GradDiffConfig, GradDiffTrainer
from .idk import IdkConfig, IdkTrainer
from .npo import NPOConfig, NPOTrainer
from .rmu import RMUConfig, RMUTrainer
from .simnpo import SimNPOConfig, SimNPOTrainer
from .undial import UndialConfig, UndialTrainer
from .unstar import AntiSampleConfig, AntiSampleTrainer

METHODS = {
    "unstar": (AntiSampleTrainer, AntiSampleConfig),
    "grad_ascent": (GradientAscentTrainer, GradientAscentConfig),
    "grad_diff": (GradDiffTrainer, GradDiffConfig),
    "grad_ascent_kl": (GradAscentKLTrainer, GradAscentKLConfig),
    "npo": (NPOTrainer, NPOConfig),
    "simnpo": (SimNPOTrainer, SimNPOConfig),
    "idk": (IdkTrainer, IdkConfig),
    "altpo": (AltPOTrainer, AltPOConfig),
    "dfmcq": (DFMCQTrainer, DFMCQConfig),
    "rmu": (RMUTrainer, RMUConfig),
    "undial": (UndialTrainer, UndialConfig),
}
"""Method name -> (trainer class, config class); the `method:` key of a recipe picks one."""

__all__ = [
    "METHODS", "AltPOConfig", "AltPOTrainer", "AntiSampleConfig", "AntiSampleTrainer", "DFMCQConfig", "DFMCQTrainer",
    "DivergenceError", "UnlearningConfig", "UnlearningTrainer", "GradAscentKLConfig", "GradAscentKLTrainer",
    "GradDiffConfig", "GradDiffTrainer", "GradientAscentConfig", "GradientAscentTrainer", "IdkConfig", "IdkTrainer",
    "NPOConfig", "NPOTrainer", "RMUConfig", "RMUTrainer", "SimNPOConfig", "SimNPOTrainer", "UndialConfig",
    "UndialTrainer",
]
