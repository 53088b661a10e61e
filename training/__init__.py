"""Prune-while-training (HALP / MGP / MDLM / MDP schedules) on ImageFolder data, single process or torchrun DDP.

Public API: :func:`load_config` → :class:`TrainConfig`, :func:`train` → :class:`TrainResult`,
:func:`make_digits_imagefolder` (bundled tiny dataset), :class:`TrainingPruner` (the per-iteration pruner).
"""

from training.config import TrainConfig, load_config, save_config
from training.data import make_digits_imagefolder
from training.pruner import TrainingPruner
from training.trainer import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "TrainingPruner", "load_config", "make_digits_imagefolder", "save_config",
           "train"]
