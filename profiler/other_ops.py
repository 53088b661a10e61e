"""Latency of everything in a network that is not a convolution, op by op, scaled with the channels it carries.

A conv LUT prices convolutions only (as HALP/MDP's does). Pooling, batch norm, activations, residual adds
and the classifier make up the rest: on one CPU thread 9–13 ms of ResNet-18's 80–100 ms at batch 1,
three quarters of it the stem's max-pool. :func:`measure_other_ops` traces the dense network with
torch.fx, propagates shapes, and times every other op *alone* on the backend (random inputs of the
recorded shapes, the backend's own protocol). :meth:`OtherOps.latency` prices a pruned network from
that: each op's dense time scaled by the share of its channels that survive (these ops are memory-bound:
time follows the elements they touch); an op with an operand that carries only the channels of removed
convs (inside a removed block, or the residual add that joined it) costs nothing, and one that carries
no conv channels (on the network input) costs its dense time. Nothing is fitted to whole-network
timings, so ``conv model + other ops`` is a prediction that can be checked against them.
"""

from __future__ import annotations

import copy
import logging
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from db.errors import LatlabError
from profiler._trace import TraceResult, shaped_graph
from profiler.backends.base import Backend, MeasurementFailed

log = logging.getLogger(__name__)

__all__ = ["OpCost", "OtherOps", "measure_other_ops"]

# Ops that move no data (views, shape queries): free.
_FREE_FUNCTIONS = {getattr, operator.getitem, torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
_FREE_METHODS = {"view", "reshape", "flatten", "size", "dim", "contiguous", "squeeze", "unsqueeze", "permute",
                 "transpose", "expand"}
_FREE_MODULES = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout2d)


@dataclass(frozen=True)
class OpCost:
    """One non-conv op of the dense network: fx node, what it is, the convs whose channels it reads or writes,
    its dense time, and the convs behind each of its tensor operands."""

    node: str
    op: str
    sources: tuple[str, ...]
    ms: float
    inputs: tuple[tuple[str, ...], ...] = ()  # the convs behind each tensor operand


@dataclass
class OtherOps:
    """Dense time of every non-conv op, and how to price the same network at other conv widths."""

    ops: list[OpCost]
    dense_cout: dict[str, int]
    group_of: dict[str, int]
    failed: dict[str, str] = field(default_factory=dict)  # node -> why it could not be timed

    @property
    def dense_ms(self) -> float:
        """Sum over the timed ops at dense widths."""
        return float(sum(op.ms for op in self.ops))

    def latency(self, widths: Mapping[str, tuple[int, int]]) -> float:
        """Predicted time (ms) of the non-conv ops at ``{conv: (cin, cout)}`` (missing convs stay dense)."""
        unknown = [n for n in widths if n not in self.dense_cout]
        if unknown:
            raise LatlabError(f"widths name unknown conv(s) {', '.join(sorted(unknown)[:5])}")
        cout = {n: int(widths[n][1]) if n in widths else d for n, d in self.dense_cout.items()}
        total = 0.0
        for op in self.ops:
            if any(src and not self._carried(src, cout) for src in op.inputs):
                continue  # an operand is gone (e.g. the branch of a removed block): so is the op
            if op.sources:
                total += op.ms * self._carried(op.sources, cout) / self._carried(op.sources, self.dense_cout)
            else:
                total += op.ms
        return total

    def _carried(self, sources: Iterable[str], cout: Mapping[str, int]) -> int:
        """Channels a tensor built from ``sources`` carries: per coupled group its widest surviving member."""
        per_group: dict[int, int] = {}
        for name in sources:
            g = self.group_of[name]
            per_group[g] = max(per_group.get(g, 0), cout[name])
        return sum(per_group.values())

    def table(self) -> list[dict[str, Any]]:
        """Time per op kind at dense widths (for reports), largest first."""
        by_kind: dict[str, list[float]] = {}
        for op in self.ops:
            by_kind.setdefault(op.op, []).append(op.ms)
        rows = [{"op": k, "count": len(v), "dense_ms": round(sum(v), 4)} for k, v in by_kind.items()]
        return sorted(rows, key=lambda r: -r["dense_ms"])


class _Call(nn.Module):
    """One fx node as a module of one tensor input: the other tensor operands are buffers of their shapes."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                 first: int, extra: dict[int, torch.Size], method: bool) -> None:
        super().__init__()
        self.fn, self.args, self.kwargs, self.first, self.method = fn, args, kwargs, first, method
        self.slots = sorted(extra)
        for i in self.slots:
            self.register_buffer(f"operand{i}", torch.randn(extra[i]))

    def forward(self, x: torch.Tensor) -> Any:
        args = list(self.args)
        args[self.first] = x
        for i in self.slots:
            args[i] = getattr(self, f"operand{i}")
        if self.method:
            return getattr(args[0], self.fn)(*args[1:], **self.kwargs)
        return self.fn(*args, **self.kwargs)


def _shape(arg: Any, batch: int) -> torch.Size | None:
    meta = arg.meta.get("tensor_meta") if isinstance(arg, fx.Node) else None
    if meta is None or not hasattr(meta, "shape") or len(meta.shape) == 0:
        return None
    return torch.Size((batch, *meta.shape[1:]))


def _timed_op(
    node: fx.Node, modules: Mapping[str, nn.Module], batch: int,
) -> tuple[str, nn.Module, tuple[int, ...]] | None:
    """(kind, module to time, input shape) for a node that does work, or None for free / conv / non-tensor nodes."""
    if node.op == "call_module":
        mod = modules[node.target]
        if isinstance(mod, (nn.Conv2d, *_FREE_MODULES)):
            return None
        kind, fn, method = type(mod).__name__, mod, False
    elif node.op == "call_function":
        if node.target in _FREE_FUNCTIONS:
            return None
        kind, fn, method = getattr(node.target, "__name__", str(node.target)), node.target, False
    elif node.op == "call_method":
        if node.target in _FREE_METHODS:
            return None
        kind, fn, method = f".{node.target}", node.target, True
    else:
        return None
    tensor_args = [(i, _shape(a, batch)) for i, a in enumerate(node.args) if isinstance(a, fx.Node)]
    tensor_args = [(i, s) for i, s in tensor_args if s is not None]
    if not tensor_args or _shape(node, batch) is None:
        return None
    first, shape = tensor_args[0]
    if node.op == "call_module" and len(tensor_args) == 1 and not node.kwargs:
        return kind, copy.deepcopy(fn), tuple(shape)
    if node.op == "call_module":
        fn = copy.deepcopy(fn)
    call = _Call(fn, tuple(None if isinstance(a, fx.Node) else a for a in node.args), dict(node.kwargs), first,
                 {i: s for i, s in tensor_args[1:]}, method)
    return kind, call, tuple(shape)


_ACTIVATIONS = (nn.ReLU, nn.ReLU6)  # what a ``conv_bn_relu`` LUT entry fuses after the batch norm


def _fused_into_conv(graph: fx.Graph, modules: Mapping[str, nn.Module]) -> set[str]:
    """Nodes a ``conv_bn_relu`` LUT entry already times: each batch norm fed by a conv alone, and a ReLU fed by
    such a batch norm alone."""
    def module(node: fx.Node) -> nn.Module | None:
        return modules.get(node.target) if node.op == "call_module" else None  # type: ignore[arg-type]

    def fed_by(node: fx.Node, ok: Callable[[fx.Node], bool]) -> bool:
        inputs = node.all_input_nodes
        return len(inputs) == 1 and len(inputs[0].users) == 1 and ok(inputs[0])

    fused: set[str] = set()
    for node in graph.nodes:
        mod = module(node)
        norm = isinstance(mod, nn.BatchNorm2d) and fed_by(node, lambda n: isinstance(module(n), nn.Conv2d))
        if norm or isinstance(mod, _ACTIVATIONS) and fed_by(node, lambda n: n.name in fused):
            fused.add(node.name)
    return fused


def measure_other_ops(
    backend: Backend, model: nn.Module, trace: TraceResult, *, batch: int, dtype: str = "fp32",
    layout: str = "nchw", op: str = "conv",
) -> OtherOps:
    """Time every non-conv op of ``model`` (dense, eval) alone on ``backend``; see the module docstring.

    ``trace`` is :func:`profiler.plan.trace_network` of the same model at the input size to price; ``op`` is the
    LUT's: with ``conv_bn_relu`` the batch norm and ReLU right after each conv are in its entries already and
    are left out here. An op the backend cannot time is listed in ``failed`` and left out of the sum.
    """
    from profiler.widths import _conv_groups, _conv_node_names, _width_sources

    graph = shaped_graph(trace.model_name, model, trace.input_size).graph
    modules = dict(model.named_modules())
    sources = _width_sources(graph, modules, _conv_node_names(graph, modules), cut_moved=True)
    _, group_of = _conv_groups(trace)
    ops: list[OpCost] = []
    failed: dict[str, str] = {}
    fused = _fused_into_conv(graph, modules) if op == "conv_bn_relu" else set()
    for node in graph.nodes:
        timed = None if node.name in fused else _timed_op(node, modules, batch)
        if timed is None:
            continue
        kind, module, shape = timed
        try:
            ms = backend.measure_model(module.eval(), shape, dtype=dtype, layout=layout).median_ms
        except MeasurementFailed as exc:
            failed[node.name] = str(exc)
            continue
        operands = [sources.get(a, frozenset()) for a in node.all_input_nodes]
        carried = frozenset().union(sources.get(node, frozenset()), *operands)  # a Linear's are its inputs'
        ops.append(OpCost(node.name, kind, tuple(sorted(carried)), ms, tuple(tuple(sorted(o)) for o in operands)))
    if failed:
        log.warning("%d non-conv op(s) could not be timed on %s and are left out (e.g. %s)", len(failed),
                    backend.name, next(iter(failed.values())))
    return OtherOps(ops, {layer.name: layer.cout for layer in trace.layers}, dict(group_of), failed)
