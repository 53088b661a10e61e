"""Private: fx-graph facts that :mod:`profiler.plan` does not keep (BN after each conv, residual blocks).

Used by :mod:`pruning.graph`; import from there. The graph is traced symbolically (no shape propagation):
shapes come from :func:`profiler.plan.trace_network`, which runs first.
"""

from __future__ import annotations

import logging
import operator
from dataclasses import dataclass

import torch
from torch import fx, nn

from db.errors import LatlabError
from profiler._trace import fx_trace
from profiler.widths import _conv_node_names, _width_sources

log = logging.getLogger(__name__)

_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_ADD_METHODS = {"add", "add_"}


@dataclass(frozen=True)
class RawBlock:
    """A residual add whose residual branch can be dropped: the add's module, its convs, its input node."""

    name: str
    convs: tuple[str, ...]
    input_convs: frozenset[str]
    add_node: str


@dataclass
class GraphFacts:
    """What :func:`graph_facts` finds: conv -> BN, removable blocks."""

    bn: dict[str, str | None]
    blocks: list[RawBlock]


def _symbolic_graph(model_name: str, module: nn.Module) -> fx.Graph:
    return fx_trace(module, f"model {model_name!r}")[0]


def _is_add(node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _ADD_FUNCTIONS
    return node.op == "call_method" and node.target in _ADD_METHODS


def _dominators(nodes: list[fx.Node]) -> tuple[dict[fx.Node, fx.Node | None], dict[fx.Node | None, int]]:
    """Immediate dominators on the fx DAG (nodes are topologically ordered); ``None`` is a virtual root.

    Parameters and constants (``get_attr`` nodes) are left out, so ``layer_scale * branch`` still forks at
    the block input.
    """
    idom: dict[fx.Node, fx.Node | None] = {}
    depth: dict[fx.Node | None, int] = {None: 0}

    def meet(a: fx.Node | None, b: fx.Node | None) -> fx.Node | None:
        while a is not b:
            if depth[a] >= depth[b]:
                a = idom[a]  # type: ignore[index]
            else:
                b = idom[b]  # type: ignore[index]
        return a

    for node in nodes:
        # only tensors that flow from the network input count: parameters (get_attr) never fork a block
        preds = [p for p in node.all_input_nodes if p in idom and p.op != "get_attr"]
        if not preds:
            d: fx.Node | None = None
        else:
            d = preds[0]
            for p in preds[1:]:
                d = meet(d, p)
        idom[node] = d
        depth[node] = depth[d] + 1
    return idom, depth


def _branch(start: fx.Node, stop: fx.Node | None) -> set[fx.Node]:
    """Nodes reachable backwards from ``start`` without crossing ``stop`` (``start`` included unless it is ``stop``;
    ``None``: all of them)."""
    seen: set[fx.Node] = set()
    todo = [start] if start is not stop else []
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        todo.extend(p for p in n.all_input_nodes if p is not stop and p not in seen)
    return seen


def graph_facts(model_name: str, module: nn.Module, conv_names: list[str]) -> GraphFacts:
    """Trace ``module`` symbolically and find BNs and removable residual blocks.

    ``conv_names`` are the names :func:`profiler.plan.trace_network` gave the convs (``name#k`` for a
    module's k-th call); they must come out in the same order here.
    """
    graph = _symbolic_graph(model_name, module)
    modules = dict(module.named_modules())
    nodes = list(graph.nodes)
    conv_of = _conv_node_names(graph, modules)
    if list(conv_of.values()) != list(conv_names):
        raise LatlabError(f"model {model_name!r}: the symbolic trace lists other convs than the shape trace")

    bn: dict[str, str | None] = {}
    for node, name in conv_of.items():
        found = [u.target for u in node.users if u.op == "call_module"
                 and isinstance(modules.get(u.target), nn.BatchNorm2d) and u.args and u.args[0] is node]
        bn[name] = str(found[0]) if len(found) == 1 else None

    sources = _width_sources(graph, modules, conv_of)  # the convs whose output channels each node carries

    idom, _ = _dominators(nodes)
    blocks: list[RawBlock] = []
    used: set[str] = set()
    for node in nodes:
        if not _is_add(node):
            continue
        operands = [a for a in (list(node.args[:2]) + [node.kwargs.get("other")]) if isinstance(a, fx.Node)]
        if len(operands) != 2:
            continue
        fork = idom[node]
        if fork is None:
            log.debug("add %s has no single fork node; not a block", node.name)
            continue
        convs = []
        for operand in operands:
            br = _branch(operand, fork)
            convs.append([conv_of[n] for n in nodes if n in br and n in conv_of])
        short, resid = sorted(convs, key=len)
        if len(resid) < 1 or len(short) > 1 or len(short) == len(resid) or set(short) & set(resid):
            log.debug("add %s: branches with %d and %d convs are not a removable block", node.name,
                      len(short), len(resid))
            continue
        stack = node.meta.get("nn_module_stack") or {}
        name = next(reversed(stack), "") if stack else ""
        if not name or name in used:
            name = node.name if node.name not in used else f"{node.name}@{len(blocks)}"
        used.add(name)
        blocks.append(RawBlock(name, tuple(resid), sources.get(fork, frozenset()), node.name))
    return GraphFacts(bn, blocks)
