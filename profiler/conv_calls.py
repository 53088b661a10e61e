"""The convs a saved module runs, recorded where torch.fx cannot look.

A torch.export program (``pruned.pt2``) or a TorchScript archive holds no ``nn.Conv2d`` modules to trace:
its convs are aten calls. :func:`recorded_convs` runs the module once on a zero batch under a
``TorchDispatchMode`` and reads every 2-D convolution's input size, weight shape, stride, padding,
dilation and groups as it runs, so :func:`latency_models.network.predict_network` can price such a module
like a traced one. Layer names come from the program's ``nn_module_stack`` (torch.export) or the archive's
``Conv2d`` submodules (TorchScript) when they account for every call, else ``conv0``, ``conv1``, ...
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.utils._python_dispatch import TorchDispatchMode

from db.keys import ConvFamily

log = logging.getLogger(__name__)

__all__ = ["GraphConv", "RecordedConv", "graph_convs", "is_saved_module", "recorded_convs", "unpadded_family"]

_CONV = torch.ops.aten.convolution.default
_CONVS = (_CONV, torch.ops.aten._convolution.default)  # what torch.jit.trace records calls the latter


@dataclass(frozen=True)
class RecordedConv:
    """One conv call: a name, its geometry and its widths (what :class:`profiler.plan.ConvLayer` offers)."""

    name: str
    family: ConvFamily
    cin: int
    cout: int


class _ConvRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[ConvFamily, int, int, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in _CONVS:
            bound = dict(zip((a.name for a in func._schema.arguments), args, strict=False)) | kwargs
            x, w = bound["input"], bound["weight"]
            if x.dim() == 4 and not bound["transposed"]:
                groups, cin, cout = int(bound["groups"]), int(x.shape[1]), int(w.shape[0])
                depthwise = groups > 1 and groups == cin == cout
                (sh, sw), (ph, pw), (dh, dw) = (tuple(map(int, bound[k])) for k in ("stride", "padding", "dilation"))
                family = ConvFamily(int(x.shape[2]), int(x.shape[3]), int(w.shape[2]), int(w.shape[3]), sh, sw, ph, pw,
                                    dh, dw, 1 if depthwise else groups, depthwise)
                self.calls.append((family, cin, cout, tuple(w.shape)))
        return func(*args, **kwargs)


def is_saved_module(module: nn.Module) -> bool:
    """True for a TorchScript module or a torch.export program's module: no ``nn.Conv2d`` for torch.fx to trace."""
    if isinstance(module, torch.jit.ScriptModule):
        return True
    return isinstance(module, fx.GraphModule) and not any(isinstance(m, nn.Conv2d) for m in module.modules())


_PADS = (torch.ops.aten.pad.default, torch.ops.aten.reflection_pad2d.default,
         torch.ops.aten.replication_pad2d.default)


def _conv_nodes(module: fx.GraphModule) -> list[fx.Node]:
    """The 2-D convolution nodes the recorder sees (not a transposed ``aten.convolution``), in order."""
    return [n for n in module.graph.nodes if n.op == "call_function" and (
        n.target is torch.ops.aten.conv2d.default or n.target is _CONV and not (len(n.args) > 6 and n.args[6]))]


@dataclass(frozen=True)
class GraphConv:
    """What an exported program says about one conv node: the module it came from, the symmetric padding that
    module applied before it, and whether an ``nn.Conv2d`` made it (not a functional ``F.conv2d``)."""

    node: str
    module: str
    own_padding: tuple[int, int]
    is_module_conv: bool


def graph_convs(module: fx.GraphModule) -> list[GraphConv]:
    """Per conv node, in order. A conv module with ``padding_mode`` reflect, replicate or circular is exported as a
    pad op of that module, then a conv without padding: the padding is folded back, as torch.fx records the module
    (a pad of another module, such as an explicit ``nn.ReflectionPad2d``, stays the conv's input). A call whose
    weight is not the ``weight`` of the module it sits in is a functional conv, which torch.fx does not plan."""
    out = []
    for conv in _conv_nodes(module):
        path = _module_path(conv)
        pad = conv.args[0] if conv.args else None
        amounts = [int(a) for a in pad.args[1]] if isinstance(pad, fx.Node) and pad.target in _PADS else []
        own = (len(amounts) == 4 and path is not None and _module_path(pad) == path and amounts[0] == amounts[1]
               and amounts[2] == amounts[3])
        weight = conv.args[1] if len(conv.args) > 1 else conv.kwargs.get("weight")
        functional = (path is not None and isinstance(weight, fx.Node) and weight.op == "get_attr"
                      and weight.target != (f"{path}.weight" if path else "weight"))
        out.append(GraphConv(conv.name, path or "", (amounts[2], amounts[0]) if own else (0, 0), not functional))
    return out


def _module_path(node: fx.Node) -> str | None:
    stack = node.meta.get("nn_module_stack")
    return str(next(reversed(stack.values()))[0]) if stack else None


def _script_names(module: nn.Module, shapes: list[tuple[int, ...]]) -> list[str]:
    """TorchScript: its Conv2d submodules when each is called once, in order (weight shapes ``shapes``)."""
    convs = [(name, m) for name, m in module.named_modules() if getattr(m, "original_name", "") == "Conv2d"]
    return [name for name, _ in convs] if [tuple(m.weight.shape) for _, m in convs] == shapes else []


def _call_names(names: list[str], n: int) -> list[str]:
    """Call names as :mod:`profiler.plan` gives them (a module called twice: ``name``, ``name#2`` …), or
    ``conv0``, ``conv1`` … when ``names`` do not account for the ``n`` calls."""
    if len(names) != n or not all(names):
        return [f"conv{i}" for i in range(n)]
    seen: Counter[str] = Counter()
    out = []
    for name in names:
        seen[name] += 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


@torch.no_grad()
def recorded_convs(module: nn.Module, input_size: tuple[int, int], channels: int = 3) -> list[RecordedConv]:
    """Every 2-D conv ``module`` runs on one ``channels × input_size`` image, in call order."""
    param = next(module.parameters(), None)
    x = torch.zeros(1, channels, *input_size, device=param.device if param is not None else "cpu",
                    dtype=param.dtype if param is not None and param.is_floating_point() else torch.float32)
    recorder = _ConvRecorder()
    with recorder:
        module(x)
    calls = recorder.calls
    graph = graph_convs(module) if isinstance(module, fx.GraphModule) else []
    if len(graph) != len(calls):  # TorchScript, or a program whose nodes do not match its calls
        names = _call_names(_script_names(module, [shape for *_, shape in calls]), len(calls))
        return [RecordedConv(name, family, cin, cout) for name, (family, cin, cout, _) in zip(names, calls,
                                                                                                strict=True)]
    for g in graph:
        if not g.is_module_conv:
            log.warning("functional conv2d at node %s is not planned (only nn.Conv2d modules are)", g.node)
    kept = [(g, call) for g, call in zip(graph, calls, strict=True) if g.is_module_conv]
    names = _call_names([g.module for g, _ in kept], len(kept))
    return [RecordedConv(name, unpadded_family(family, g.own_padding), cin, cout)
            for name, (g, (family, cin, cout, _)) in zip(names, kept, strict=True)]


def unpadded_family(family: ConvFamily, pad: tuple[int, int]) -> ConvFamily:
    """``family`` seen before its own padding ``pad``: the smaller input with the padding its module was given
    (what :func:`profiler._trace.conv_family` records for the module)."""
    if pad == (0, 0):
        return family
    return dataclasses.replace(family, in_h=family.in_h - 2 * pad[0], in_w=family.in_w - 2 * pad[1],
                               pad_h=family.pad_h + pad[0], pad_w=family.pad_w + pad[1])
