"""Where each tensor of an exported (slim) network comes from in the dense one, and the way back.

:func:`pruning.export.export_pruned` fills a :data:`Slices` map: ``{"layer1.0.conv1.weight": (rows, cols), ...}``,
one index tensor per leading dimension (``None`` = the whole dimension). :func:`take` cuts a dense-shaped
tensor (a weight, its SGD momentum) down to the slim shape; :func:`put` embeds a slim tensor back into a
dense-shaped one, zeros at the pruned positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["Slices", "put", "take"]

Slices = dict[str, tuple[torch.Tensor | None, ...]]


def take(dense: torch.Tensor, index: Sequence[torch.Tensor | None] | None) -> torch.Tensor:
    """``dense`` restricted to the kept indices of each dimension (``dense`` itself when ``index`` is None)."""
    out = dense
    for dim, idx in enumerate(index or ()):
        if idx is not None:
            out = out.index_select(dim, idx.to(out.device))
    return out


def put(slim: torch.Tensor, index: Sequence[torch.Tensor | None] | None, shape: Sequence[int]) -> torch.Tensor:
    """A zero tensor of ``shape`` holding ``slim`` at the kept indices (the inverse of :func:`take`)."""
    out = slim
    for dim, idx in enumerate(index or ()):
        if idx is not None:
            size = list(out.shape)
            size[dim] = shape[dim]
            out = out.new_zeros(size).index_copy_(dim, idx.to(out.device), out)
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"slim tensor of shape {tuple(slim.shape)} does not embed into {tuple(shape)}")
    return out
