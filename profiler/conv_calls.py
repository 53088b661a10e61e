"""The convs a saved module runs, recorded where torch.fx cannot look.

A torch.export program (``pruned.pt2``) or a TorchScript archive holds no ``nn.Conv2d`` modules to trace:
its convs are aten calls. :func:`recorded_convs` runs the module once on a zero batch under a
``TorchDispatchMode`` and reads every 2-D convolution's input size, weight shape, stride, padding,
dilation and groups as it runs, so :func:`latency_models.network.predict_network` can price such a module
like a traced one. Layer names come from the program's ``nn_module_stack`` (torch.export) or the archive's
``Conv2d`` submodules (TorchScript) when they account for every call, else ``conv0``, ``conv1``, ...
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.utils._python_dispatch import TorchDispatchMode

from db.keys import ConvFamily

__all__ = ["RecordedConv", "is_saved_module", "recorded_convs"]

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


def _names(module: nn.Module, shapes: list[tuple[int, ...]]) -> list[str]:
    """The conv layer names behind the recorded calls (weight shapes ``shapes``, in call order)."""
    if isinstance(module, fx.GraphModule):
        names = [str(next(reversed(n.meta["nn_module_stack"].values()))[0]) if n.meta.get("nn_module_stack") else ""
                 for n in module.graph.nodes
                 if n.op == "call_function" and n.target in (torch.ops.aten.conv2d.default, _CONV)]
    else:  # TorchScript: its Conv2d submodules, when each is called once, in order
        convs = [(name, m) for name, m in module.named_modules() if getattr(m, "original_name", "") == "Conv2d"]
        names = [name for name, _ in convs] if [tuple(m.weight.shape) for _, m in convs] == shapes else []
    if len(names) != len(shapes) or not all(names):
        return [f"conv{i}" for i in range(len(shapes))]
    seen: Counter[str] = Counter()
    out = []
    for name in names:  # a module called twice: name, name#1, ... as profiler.plan names them
        out.append(name if not seen[name] else f"{name}#{seen[name]}")
        seen[name] += 1
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
    names = _names(module, [shape for *_, shape in recorder.calls])
    return [RecordedConv(name, family, cin, cout)
            for name, (family, cin, cout, _) in zip(names, recorder.calls, strict=True)]
