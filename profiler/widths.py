"""Consistent pruned widths of a traced network.

:func:`random_pruned_widths` samples a random *consistent* channel pruning: one kept width per
channel group the pruner sees, every conv's cout is its group's width and its cin its producer group's
width; a depthwise conv follows its producer (cin = cout = the producer's width). Channels the pruner
keeps (concatenated, shuffled, reaching the output) stay dense. :func:`pruning.rebuild.rebuild_with_widths`
builds the network at those widths.

Widths are ``{conv name: (cin, cout)}`` with the names of :class:`~profiler.plan.ConvLayer`.
Importing this module does not initialise CUDA.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from torch import fx, nn

from db.errors import LatlabError
from profiler._grids import group_stripes, striped_q
from profiler._trace import (
    TraceResult,
    moves_channels,
    opaque_module,
)

__all__ = ["Widths", "dense_widths", "random_pruned_widths"]

Widths = dict[str, tuple[int, int]]


def dense_widths(trace: TraceResult) -> Widths:
    """The unpruned ``(cin, cout)`` of every conv of ``trace``."""
    return {layer.name: (layer.cin, layer.cout) for layer in trace.layers}


def _base_name(name: str) -> str:
    """``layer1.0.conv1#2`` (2nd call of a module) -> ``layer1.0.conv1``."""
    return name.split("#", 1)[0]


def _conv_groups(trace: TraceResult) -> tuple[list[tuple[str, ...]], dict[str, int]]:
    """The coupled groups of ``trace`` plus a singleton for any conv they do not list; name -> group index."""
    groups = [tuple(g) for g in trace.groups]
    index = {name: i for i, g in enumerate(groups) for name in g}
    for layer in trace.layers:
        if layer.name not in index:
            index[layer.name] = len(groups)
            groups.append((layer.name,))
    return groups, index


def random_pruned_widths(
    trace: TraceResult,
    rng: np.random.Generator | int | None,
    *,
    min_keep: float = 0.3,
    multiple: int = 8,
    group_sizes: Mapping[str, int] | None = None,
    keep: float | None = None,
) -> Widths:
    """A random consistent pruning of ``trace``: ``{conv name: (cin, cout)}``.

    With ``keep`` set, not random but uniform: every group keeps the multiple of its q nearest to
    ``keep * dense`` (at least q), like a one-shot uniform pruning to that ratio.

    The groups are the pruner's (:meth:`TraceResult.mask_groups`: residual adds, depthwise convs and the calls of
    one module share a width). Each keeps a width drawn uniformly from the multiples of its size q in
    ``[ceil(min_keep * dense), dense]`` (plus ``dense`` itself); q is the lcm of the members' ``group_sizes``
    (default ``multiple``), rounded to whole positions across the group counts of the grouped convs it feeds or
    holds (:func:`profiler._grids.striped_q`, as the pruner does). The groups a pruner keeps
    (:meth:`TraceResult.fixed_groups`: concatenated, shuffled or output channels, a depthwise conv on the input)
    stay dense, and so does the cin of a conv reading the input, a concat or a split.
    Raises :class:`LatlabError` for structures the pruner refuses too.
    """
    if not 0.0 < float(min_keep) <= 1.0:
        raise LatlabError(f"min_keep must be in (0, 1], got {min_keep!r}")
    if int(multiple) < 1:
        raise LatlabError(f"multiple must be >= 1, got {multiple!r}")
    gen = np.random.default_rng(rng)
    sizes = dict(group_sizes or {})
    layers = {layer.name: layer for layer in trace.layers}
    groups = trace.mask_groups()
    index = {name: i for i, g in enumerate(groups) for name in g}
    fixed = trace.fixed_groups(groups)
    stripes = group_stripes(trace, groups)

    width: list[int] = []
    for i, members in enumerate(groups):
        couts = {layers[m].cout for m in members}
        if len(couts) != 1:
            raise LatlabError(f"coupled convs {', '.join(members)} have different output widths {sorted(couts)}")
        d = couts.pop()
        q = 1
        for m in members:
            own = int(sizes.get(m, sizes.get(_base_name(m), multiple)))
            if own < 1:
                raise LatlabError(f"group size of conv {m} must be >= 1, got {own}")
            q = math.lcm(q, own)
        step = striped_q(q, d, stripes[i])
        if i in fixed:
            width.append(d)
        elif keep is not None:
            width.append(int(min(d, max(step, round(float(keep) * d / step) * step))))
        else:
            lo = math.ceil(float(min_keep) * d)
            cands = sorted({w for w in range(step, d + 1, step) if w >= lo} | {d})
            width.append(int(cands[int(gen.integers(len(cands)))]))

    out: Widths = {}
    first_call: dict[str, str] = {}
    inputs = trace.input_groups(groups)
    for layer in trace.layers:
        cout = width[index[layer.name]]
        cin = layer.cin if inputs[layer.name] is None else width[inputs[layer.name]]
        out[layer.name] = (cout if layer.family.depthwise else cin, cout)
        base = first_call.setdefault(_base_name(layer.name), layer.name)
        if out[layer.name] != out[base]:  # several calls of one module must agree
            raise LatlabError(f"module {_base_name(layer.name)} is called more than once with inputs from "
                              "different channel groups; its widths cannot be chosen consistently")
    return out


# ------------------------------------------------------------------------------------------------ fx walks
# (pruning._graph_fx and profiler.other_ops)

def _conv_node_names(graph: fx.Graph, modules: Mapping[str, nn.Module]) -> dict[fx.Node, str]:
    """Conv call nodes -> their trace names (``layer1.0.conv1``; ``name#2`` for a module's 2nd call)."""
    calls: dict[str, int] = {}
    names: dict[fx.Node, str] = {}
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], nn.Conv2d):
            calls[node.target] = calls.get(node.target, 0) + 1
            names[node] = node.target if calls[node.target] == 1 else f"{node.target}#{calls[node.target]}"
    return names


def _width_sources(graph: fx.Graph, modules: Mapping[str, nn.Module], conv_names: Mapping[fx.Node, str],
                   cut_moved: bool = False) -> dict[fx.Node, frozenset[str]]:
    """For every node, the convs whose output channels its tensor carries (through BN, activations, adds, ...).

    A conv starts a new set; an opaque module (one that mixes channels, e.g. attention) ends it, and so does,
    with ``cut_moved`` (on a :func:`profiler._trace.shaped_graph`), an op that moves, slices or mixes channels.
    """
    sources: dict[fx.Node, frozenset[str]] = {}
    for node in graph.nodes:
        mod = modules.get(node.target) if node.op == "call_module" else None
        if node in conv_names:
            sources[node] = frozenset((conv_names[node],))
        elif node.op in ("placeholder", "get_attr", "output") or opaque_module(mod) or cut_moved and (
            moves_channels(node, mod)
        ):
            sources[node] = frozenset()
        else:  # on a shaped graph, sizes (x.size(1), ...) carry no channels
            inputs = [a for a in node.all_input_nodes if not cut_moved or "tensor_meta" in a.meta]
            sources[node] = frozenset().union(*(sources.get(a, frozenset()) for a in inputs))
    return sources
