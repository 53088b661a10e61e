"""Prune-while-training (HALP / MGP / MDLM / MDP schedules) on ImageFolder data, single process or torchrun DDP.

Public API: :func:`load_config` → :class:`TrainConfig`, :func:`train` → :class:`TrainResult`,
:func:`make_digits_imagefolder` (bundled tiny dataset), :class:`TrainingPruner` (the per-iteration pruner).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from db._lazy import lazy_getattr

if TYPE_CHECKING:
    from training.config import TrainConfig, load_config, save_config
    from training.data import make_digits_imagefolder
    from training.pruner import TrainingPruner
    from training.trainer import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "TrainingPruner", "load_config", "make_digits_imagefolder", "save_config",
           "train"]
# each name is imported from its submodule on first use (loading a config does not import torch)
__getattr__ = lazy_getattr(__name__, {
    **dict.fromkeys(("TrainConfig", "load_config", "save_config"), "training.config"),
    "make_digits_imagefolder": "training.data", "TrainingPruner": "training.pruner",
    **dict.fromkeys(("TrainResult", "train"), "training.trainer"),
})
