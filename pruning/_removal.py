"""Private: what is left of a removed residual block, for :mod:`pruning.export`.

A torchvision ``BasicBlock``/``Bottleneck`` becomes ``relu(downsample(x))`` when it has a projection
shortcut (the ReLU that ``[M] clean_model_mgp`` drops, spec §12.2) and ``nn.Identity`` otherwise — exact
because the input of every torchvision ResNet block is a ReLU (or max-pool of ReLU) output, so
``relu(x + 0) = x``. Any other block (MobileNetV2/V3 and EfficientNet inverted residuals, RegNet's
bottlenecks, ...) is traced with torch.fx (in eval mode) and its residual add replaced by the add's
shortcut operand; what the branch computed is dead code and goes, what follows the add (RegNet's ReLU)
stays. The block's *gate* — the BN that ends its residual branch, or its last conv where no BN follows it
(pre-activation blocks, timm's ResNetV2) — is what the masked reference zeroes so that the branch adds exactly 0.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass

import torch
from torch import fx, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from db.errors import LatlabError
from profiler._trace import fx_trace
from pruning._graph_fx import _branch, _is_add


class _Shortcut(nn.Module):
    """What is left of a removed ResNet block with a projection shortcut: ``relu(downsample(x))``."""

    def __init__(self, downsample: nn.Module) -> None:
        super().__init__()
        self.downsample = downsample
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.downsample(x))


@dataclass(frozen=True)
class Removal:
    """A removed block: the submodules its replacement still uses, the layer that gates its branch (a BN or a
    conv; relative name) and (fx blocks) its new graph."""

    name: str
    kept: frozenset[str]
    gate: str
    graph: fx.Graph | None = None

    def keeps(self, sub: str) -> bool:
        """True when the replacement uses submodule ``sub`` (relative name), or one inside or around it."""
        return any(sub == k or sub.startswith(k + ".") or k.startswith(sub + ".") for k in self.kept)

    def replacement(self, block: nn.Module) -> nn.Module:
        """What replaces ``block`` (the exported copy of the block, its kept submodules already sliced)."""
        if self.graph is None:
            ds = getattr(block, "downsample", None)
            return _Shortcut(ds) if ds is not None else nn.Identity()
        graph = copy.deepcopy(self.graph)
        for node in graph.nodes:  # what followed the add (RegNet's ReLU) now sees the block input: not in place
            if node.op == "call_function" and node.kwargs.get("inplace"):
                node.kwargs = {**node.kwargs, "inplace": False}
        out = fx.GraphModule(block, graph, class_name=f"{type(block).__name__}Shortcut")
        for m in out.modules():
            if getattr(m, "inplace", False):
                m.inplace = False
        return out


def _convs_behind(node: fx.Node, modules: dict[str, nn.Module]) -> set[str]:
    """The convs ``node`` depends on."""
    return {str(n.target) for n in _branch(node, None)
            if n.op == "call_module" and isinstance(modules.get(str(n.target)), nn.Conv2d)}


_MULS = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}


def _gate_layer(name: str, node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """The BN or conv that ends the residual branch at ``node``, through parameter-free single-input ops and
    products (a squeeze-excitation's ``x * gate`` is zero when ``x`` is, whatever the gate): zeroing its
    weight and bias zeroes the branch."""
    while True:
        mod = modules.get(str(node.target)) if node.op == "call_module" else None
        if isinstance(mod, nn.BatchNorm2d | nn.Conv2d):
            return str(node.target)
        inputs = [a for a in node.all_input_nodes if a.op != "get_attr"]
        if node.op in ("call_function", "call_method") and node.target in _MULS and len(inputs) == 2:
            for operand in inputs:
                try:
                    return _gate_layer(name, operand, modules)
                except LatlabError:
                    continue
        # a module with parameters, or a function of parameters (a norm traced into F.group_norm), maps 0 elsewhere
        has_state = (mod is not None and next(mod.parameters(), None) is not None) or (
            node.target not in _MULS and any(a.op == "get_attr" for a in node.all_input_nodes))  # γ·x is 0 too
        if node.op == "placeholder" or len(inputs) != 1 or has_state:
            raise LatlabError(f"block {name!r}: its residual branch does not end in a BatchNorm2d or a conv, so it "
                              "cannot be gated and removed")
        node = inputs[0]


def _fx_removal(name: str, block: nn.Module) -> Removal:
    modes = {m: m.training for m in block.modules()}
    block.eval()  # the graph without stochastic depth's random branch
    try:
        graph = fx_trace(block, f"block {name!r} (so it cannot be removed)")[0]
    finally:
        for m, training in modes.items():
            m.training = training
    modules = dict(block.named_modules())
    convs = {sub for sub, m in modules.items() if isinstance(m, nn.Conv2d)}
    residual_adds = []  # the add of the block's input forked into a branch and a shortcut, all its convs on them
    for node in graph.nodes:
        operands = [a for a in (*node.args[:2], node.kwargs.get("other")) if isinstance(a, fx.Node)]
        if not _is_add(node) or len(operands) != 2:
            continue
        (short, c_short), (resid, c_resid) = sorted(((a, _convs_behind(a, modules)) for a in operands),
                                                    key=lambda pair: len(pair[1]))
        if c_resid and len(c_short) <= 1 and not c_short & c_resid and c_short | c_resid == convs:
            residual_adds.append((node, short, resid, c_resid))
    if len(residual_adds) != 1:
        raise LatlabError(f"block {name!r}: {len(residual_adds)} residual adds in its forward, not 1; it cannot be "
                          "removed")
    add, short, resid, branch_convs = residual_adds[0]
    gate = _gate_layer(name, resid, modules)
    add.replace_all_uses_with(short)
    graph.erase_node(add)
    graph = fx.GraphModule(block, graph).graph  # an owning module, for the purity checks of dead-code elimination
    graph.eliminate_dead_code()
    kept = frozenset(str(n.target) for n in graph.nodes if n.op in ("call_module", "get_attr"))
    if kept & branch_convs:  # e.g. ReXNet: cat([x[:, :C] + shortcut, x[:, C:]])
        raise LatlabError(f"block {name!r}: its residual branch is also used outside the residual add; it cannot be "
                          "removed")
    return Removal(name, kept, gate, graph)


def removal(name: str, block: nn.Module) -> Removal:
    """How block ``name`` of a model is removed.

    :class:`LatlabError` unless the block's forward adds a residual branch (ending in a BN or a conv) to a
    shortcut of at most one conv, with no other conv.
    """
    if isinstance(block, BasicBlock | Bottleneck):
        kept = frozenset({"downsample"}) if block.downsample is not None else frozenset()
        return Removal(name, kept, "bn3" if isinstance(block, Bottleneck) else "bn2")
    return _fx_removal(name, block)
