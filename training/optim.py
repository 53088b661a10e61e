"""SGD with weight decay off for normalisation layers, the LR schedule and the label-smoothed loss (spec §9.1).

LR choice: the reference code holds one value per epoch (``base·(e+1)/W`` in warm-up, then cosine or linear
in ``e``). Here the LR is a smooth function of the *global iteration*: linear warm-up from ``base/(W·n)``
to ``base`` over the first ``W`` epochs (n iterations each), then cosine (or linear) decay to 0 at the end
of the last epoch. Same shape, no steps, and exactly reproducible from the global step alone (resume).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pruning.loss import ClassificationLoss

__all__ = ["build_optimizer", "loss_fn", "lr_at", "param_groups", "scaled_lr", "set_lr"]

_NO_DECAY = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: parameters of normalisation modules (any BN, incl. shortcut BNs; WD 0) and the rest.

    Decided by module type, not by name (the reference's ``"bn" in name`` misses ``downsample.1``, §12.2).
    Parametrized tensors (pruning masks) are found through their ``original`` parameter.
    """
    no_decay: set[int] = set()
    for m in model.modules():
        if isinstance(m, _NO_DECAY):
            no_decay.update(id(p) for p in m.parameters())
    decay = [p for p in model.parameters() if id(p) not in no_decay]
    plain = [p for p in model.parameters() if id(p) in no_decay]
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": plain, "weight_decay": 0.0, "name": "no_decay"}]


def scaled_lr(lr_per_1024: float, global_batch: int) -> float:
    """``lr × global_batch / 1024`` (1.024 at 1024 images = 0.256 per 256)."""
    return lr_per_1024 * global_batch / 1024


def build_optimizer(model: nn.Module, *, lr: float, momentum: float, weight_decay: float,
                    nesterov: bool = False) -> torch.optim.SGD:
    """SGD over :func:`param_groups`."""
    return torch.optim.SGD(param_groups(model, weight_decay), lr=lr, momentum=momentum, nesterov=nesterov)


def lr_at(step: int, *, base: float, iters_per_epoch: int, warmup_epochs: int, epochs: int,
          schedule: str = "cosine") -> float:
    """LR of global iteration ``step`` (0-based); see the module docstring."""
    warm = warmup_epochs * iters_per_epoch
    total = epochs * iters_per_epoch
    if step < warm:
        return base * (step + 1) / warm
    if total <= warm:
        return base
    t = min(max((step - warm) / (total - warm), 0.0), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t)) * base
    return base * (1.0 - t)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's LR."""
    for g in optimizer.param_groups:
        g["lr"] = lr


def loss_fn(label_smoothing: float, aux_weight: float = 0.3) -> nn.Module:
    """The training loss (:class:`ClassificationLoss`)."""
    return ClassificationLoss(label_smoothing, aux_weight)
