"""Private: where a pruned channel stops being zero.

Masking a channel zeroes its conv's output (and the BatchNorm right after it); exporting drops the channel from
the next conv or Linear. That is exact only while every op in between maps the zero to zero: a ReLU, a pooling
or a residual add of two masked tensors does, a sigmoid, ``x + 0.5`` or ``x.clamp(min=0.1)`` does not (the next
conv would read ``f(0) != 0`` in the masked network and nothing in the exported one). :func:`nonzero_after`
follows that through a :func:`profiler._trace.shaped_graph`; ops it does not know count as not keeping zeros,
so an unknown op fixes channels rather than exporting a different network. A product keeps zeros when one
factor does (a squeeze-excitation gate ``x * sigmoid(s)`` is zero wherever ``x`` is).
"""

from __future__ import annotations

import builtins
import math
import operator
from collections.abc import Mapping, Sequence

import torch
from torch import fx, nn
from torch.nn import functional as F  # noqa: N812

Dirty = dict[str, str]  # conv name -> the op that made its pruned channels non-zero

_ZERO_MODULES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm2d,  # right after its conv it is masked with it; elsewhere it fixes the channels anyway
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish, nn.Tanh,
    nn.Hardtanh, nn.Softsign, nn.Tanhshrink, nn.Hardshrink, nn.Softshrink, nn.Identity, nn.Dropout, nn.Dropout2d,
    nn.Flatten, nn.Unflatten, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d,
    nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.ZeroPad2d, nn.ReflectionPad2d,
    nn.ReplicationPad2d, nn.InstanceNorm2d,  # without affine parameters ((0 - 0) / sqrt(0 + eps) = 0)
)
_ZERO_FUNCTIONS = {
    F.relu, torch.relu, F.relu_, torch.relu_, F.relu6, F.leaky_relu, F.leaky_relu_, F.elu, F.selu, F.celu, F.gelu,
    F.silu, F.mish, F.hardswish, F.hardtanh, F.tanh, torch.tanh, F.softsign, F.tanhshrink, F.hardshrink,
    F.softshrink, F.dropout, F.dropout2d, F.max_pool2d, torch.max_pool2d, F.avg_pool2d,
    F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.lp_pool2d, F.interpolate,
    F.upsample, F.instance_norm, torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.neg,
    operator.neg, torch.abs, torch.square, torch.sqrt, torch.sin, torch.erf, torch.mean, torch.sum, torch.amax,
    torch.amin, torch.clone, torch.zeros_like, operator.getitem, builtins.getattr, torch.flip, torch.roll,
    torch.rot90, torch.permute, torch.transpose, torch.narrow, torch.sort, torch.topk,
    # ops that only move values (where channels move, other rules keep them whole): zeros stay zeros
    torch.cat, torch.concat, torch.concatenate, torch.stack, torch.hstack, torch.vstack, torch.dstack, torch.chunk,
    torch.split, torch.unbind, torch.movedim, torch.swapaxes, torch.channel_shuffle, F.pixel_shuffle,
    F.pixel_unshuffle, torch.unflatten,
}
_ZERO_METHODS = {
    "relu", "relu_", "tanh", "abs", "neg", "square", "sqrt", "clone", "contiguous", "view", "reshape", "flatten",
    "squeeze", "unsqueeze", "expand", "expand_as", "float", "half", "double", "bfloat16", "to", "type", "type_as",
    "mean", "sum", "amax", "amin", "view_as", "reshape_as", "detach", "flip", "roll", "rot90",
    "permute", "transpose", "narrow", "repeat", "sort", "topk", "chunk", "split", "unbind", "movedim", "swapaxes",
    "unflatten",
}
# functions libraries wrap for torch.fx (so they appear as one call), by qualified name: both scale by a random
# 0-or-1/keep mask in training and are the identity in eval (dropping a residual branch keeps zeros zero)
_ZERO_WRAPPED = {"torchvision.ops.stochastic_depth.stochastic_depth", "timm.layers.drop.drop_path"}
PRODUCTS = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}
_DIV = {operator.truediv, operator.itruediv, torch.div, torch.true_divide, "div", "div_", "true_divide"}
_ADD = {operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub, "add", "add_", "sub", "sub_"}
_CLAMPS = {torch.clamp, torch.clip, "clamp", "clamp_", "clip", "clip_"}
_CLAMP_MIN = {torch.clamp_min, "clamp_min", "clamp_min_"}
_CLAMP_MAX = {torch.clamp_max, "clamp_max", "clamp_max_"}
_ANY_CLAMP = _CLAMPS | _CLAMP_MIN | _CLAMP_MAX
_EXTREMES = {torch.max, torch.min, torch.maximum, torch.minimum, torch.fmax, torch.fmin, "max", "min", "maximum",
             "minimum", "fmax", "fmin"}  # of tensors that are zero, or a reduction over other dims: zero
_WHERE = {torch.where, "where"}
_PADS = {F.pad}
_MAX_POOLS = (F.max_pool2d, torch.max_pool2d)
_POWERS = {operator.pow, torch.pow, "pow", "pow_"}


def _channels(node: fx.Node) -> int | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return int(shape[1]) if shape is not None and len(shape) >= 2 else None


def _arg(node: fx.Node, i: int, name: str, default=None):
    return node.kwargs.get(name, node.args[i] if len(node.args) > i else default)


def _keeps_zero(node: fx.Node, mod: nn.Module | None) -> bool:
    """``node`` maps 0 to 0 channel by channel (an activation, pooling, reshape, ...)."""
    if node.op == "call_module":
        if isinstance(mod, nn.ConstantPad2d):
            return mod.value == 0
        return isinstance(mod, _ZERO_MODULES)
    target = node.target
    if target in _ANY_CLAMP:
        low = None if target in _CLAMP_MAX else _arg(node, 1, "min")
        high = _arg(node, 1, "max") if target in _CLAMP_MAX else None if target in _CLAMP_MIN else _arg(node, 2, "max")
        return all(b is None or isinstance(b, int | float) and s * b >= 0 for b, s in ((low, -1), (high, 1)))
    if target in _PADS:
        value = _arg(node, 3, "value", 0)
        if _arg(node, 2, "mode", "constant") != "constant" or not value:
            return True
        return value == -math.inf and all(_max_pool(u) for u in node.users)  # TF 'same' max pooling
    if target in _POWERS:
        exponent = _arg(node, 1, "exponent")
        return isinstance(exponent, int | float) and exponent > 0
    if node.op == "call_method":
        return target in _ZERO_METHODS
    return target in _ZERO_FUNCTIONS or f"{getattr(target, '__module__', '')}.{getattr(target, '__name__', '')}" in (
        _ZERO_WRAPPED)


def _max_pool(node: fx.Node) -> bool:
    if node.op == "call_module":
        owner = node.graph.owning_module
        return owner is not None and isinstance(owner.get_submodule(str(node.target)), nn.MaxPool2d)
    return node.target in _MAX_POOLS


def _op(node: fx.Node, mod: nn.Module | None) -> str:
    if mod is not None:
        return f"{type(mod).__name__} {node.target}"
    op = getattr(node.target, "__name__", str(node.target))
    where = next(reversed(node.meta.get("nn_module_stack") or {}), "")
    return f"{op} in {where}" if where else op


def nonzero_after(node: fx.Node, mod: nn.Module | None, tensors: Sequence[fx.Node],
                  sources: Mapping[fx.Node, frozenset[str]], dirty: Mapping[fx.Node, Dirty]) -> Dirty:
    """The convs whose pruned channels may be non-zero in ``node``'s output, each with the op to blame.

    ``tensors``: ``node``'s tensor operands (not sizes); ``sources``: the convs whose channels each node carries;
    ``dirty``: this function's answer for the nodes before. A conv's own output is clean (the caller starts it so).
    """
    inputs = [a for a in tensors if sources.get(a)]
    carried = frozenset().union(*(sources[a] for a in inputs))
    if not carried:
        return {}
    merged: Dirty = {}
    for a in inputs:
        merged.update(dirty.get(a, {}))
    target = node.target if node.op in ("call_function", "call_method") else None
    blame = dict.fromkeys(sorted(carried), _op(node, mod))
    if target in PRODUCTS:
        width = _channels(node)
        factors = [a for a in inputs if _channels(a) == width]  # those not broadcast over the channels
        return {} if any(not dirty.get(a) for a in factors) else merged  # zero when one factor is
    if target in _DIV:  # 0 / d is 0 (with a d of 0 the network computes NaN either way)
        numerator = node.args[0] if node.args else None
        return dict(dirty.get(numerator, {})) if numerator in inputs else blame
    if target in _ADD:
        others = [a for a in node.args if a not in inputs] + [v for k, v in node.kwargs.items() if k != "alpha"]
        if any(a in tensors or isinstance(a, int | float) and a for a in others):
            return blame  # a constant or a tensor broadcast over the channels is added to the zeros
        return merged
    if target in _EXTREMES:  # max(a, b) of zeros, or over other dims
        return blame if any(a not in inputs for a in tensors) else merged
    if target in _WHERE:  # where(c, a, b) is zero where a and b are
        branches = node.args[1:3] if node.op == "call_function" else (node.args[0], *node.args[2:3])
        if any(b not in inputs and not (isinstance(b, int | float) and b == 0) for b in branches):
            return blame
        return {k: v for b in branches if b in inputs for k, v in dirty.get(b, {}).items()}
    if _keeps_zero(node, mod):
        return merged
    return blame


def blame_at_consumer(consumer: str, operands: Sequence[fx.Node], dirty: Mapping[fx.Node, Dirty]) -> Dirty:
    """``{conv: why}`` for the convs whose non-zero pruned channels ``consumer`` (a conv or Linear) would read."""
    out: Dirty = {}
    for a in operands:
        for name, op in dirty.get(a, {}).items():
            out.setdefault(name, f"{op} makes its pruned channels non-zero before {consumer}")
    return out
