"""Private: narrower copies of Conv2d / BatchNorm2d / Linear layers that keep the layer's own class.

Used by :mod:`pruning.export` (kept channels; :mod:`profiler.widths` rebuilds through it). A
subclass such as timm's ``BatchNormAct2d`` (BN + activation) or ``Conv2dSame`` (dynamic 'same' padding) stays
that subclass, with its other attributes and submodules deep-copied; only the sliced tensors and the channel
counts change. Hooks and parametrizations (latlab's soft masks) are not carried over: a copy of a masked layer
holds the masked tensors as plain parameters.
"""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
from torch import nn

from profiler._trace import _base_class

__all__ = ["sliced_bn", "sliced_conv", "sliced_linear"]

M = TypeVar("M", bound=nn.Module)


def _shell(old: M, params: dict[str, torch.Tensor | None], buffers: dict[str, torch.Tensor | None]) -> M:
    """A copy of ``old``'s class and plain attributes with the given tensors (its other own tensors copied whole),
    without hooks or parametrizations (a parametrized layer, e.g. a soft-masked conv, becomes its original class)."""
    cls = _base_class(old)
    new = cls.__new__(cls)
    nn.Module.__init__(new)
    bookkeeping = set(vars(new)) - {"training"}
    new.__dict__.update(copy.deepcopy({k: v for k, v in vars(old).items() if k not in bookkeeping}))
    for name, child in old.named_children():
        if name != "parametrizations":
            new.add_module(name, copy.deepcopy(child))
    for name, value in params.items():
        ref = getattr(old, name)
        new.register_parameter(name, None if value is None else nn.Parameter(
            value.detach().clone(), requires_grad=ref.requires_grad))
    for name, value in buffers.items():
        new.register_buffer(name, None if value is None else value.detach().clone())
    for name, p in old._parameters.items():  # other own tensors are copied whole
        if name not in params:
            new.register_parameter(name, None if p is None else nn.Parameter(p.detach().clone(), p.requires_grad))
    for name, b in old._buffers.items():
        if name not in buffers:
            new.register_buffer(name, None if b is None else b.detach().clone(),
                                persistent=name not in old._non_persistent_buffers_set)
    return new


def _take(t: torch.Tensor | None, index: torch.Tensor, dim: int = 0) -> torch.Tensor | None:
    return None if t is None else t.detach().index_select(dim, index.to(t.device))


def sliced_conv(old: nn.Conv2d, in_cols: torch.Tensor, out_rows: torch.Tensor, groups: int) -> nn.Conv2d:
    """``old`` keeping output channels ``out_rows`` and weight input columns ``in_cols`` (positions within one
    conv group), with ``groups`` groups: ``in_channels = len(in_cols) * groups``."""
    weight = _take(_take(old.weight, out_rows), in_cols, 1)
    new = _shell(old, {"weight": weight, "bias": _take(old.bias, out_rows)}, {})
    new.in_channels, new.out_channels, new.groups = len(in_cols) * groups, len(out_rows), groups
    return new


def sliced_bn(old: nn.BatchNorm2d, index: torch.Tensor) -> nn.BatchNorm2d:
    """``old`` keeping the features at ``index`` (affine parameters and running statistics)."""
    params = {a: _take(getattr(old, a), index) for a in ("weight", "bias")}
    buffers = {a: _take(getattr(old, a), index) for a in ("running_mean", "running_var")}
    new = _shell(old, params, {**buffers, "num_batches_tracked": old.num_batches_tracked})
    new.num_features = len(index)
    return new


def sliced_linear(old: nn.Linear, cols: torch.Tensor) -> nn.Linear:
    """``old`` keeping the input features ``cols`` (every output)."""
    new = _shell(old, {"weight": _take(old.weight, cols, 1), "bias": old.bias}, {})
    new.in_features = len(cols)
    return new
