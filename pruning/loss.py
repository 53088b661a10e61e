"""The classification loss that importance scoring and training share: label-smoothed cross-entropy of the
logits, plus the auxiliary heads' losses of networks that return them in training mode."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from db.errors import LatlabError

__all__ = ["ClassificationLoss", "split_outputs"]


def split_outputs(out: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(logits, auxiliary logits)`` of a classifier's output: a tensor, or a training-mode output with auxiliary
    heads (torchvision's ``GoogLeNetOutputs`` / ``InceptionOutputs``, or any tuple: the first item is the logits)."""
    if isinstance(out, torch.Tensor):
        return out, []
    if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
        return out[0], [a for a in out[1:] if isinstance(a, torch.Tensor)]
    raise LatlabError(f"the model returned {type(out).__name__}, not logits or a tuple starting with them")


class ClassificationLoss(nn.Module):
    """``(1−ε)·NLL + ε·mean_c(−log p_c)`` (torch's label-smoothed cross-entropy) of the logits, plus ``aux_weight``
    times the same loss of each auxiliary head's logits when the model returns them (GoogLeNet, Inception-v3 in
    training mode; GoogLeNet's paper weights them 0.3)."""

    def __init__(self, label_smoothing: float = 0.0, aux_weight: float = 0.3) -> None:
        super().__init__()
        self.ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.aux_weight = aux_weight

    def forward(self, out: Any, target: torch.Tensor) -> torch.Tensor:
        logits, aux = split_outputs(out)
        loss = self.ce(logits, target)
        for a in aux:
            loss = loss + self.aux_weight * self.ce(a, target)
        return loss
