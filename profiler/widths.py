"""Consistent pruned widths of a traced network, and the network rebuilt at those widths.

:func:`random_pruned_widths` samples a random *consistent* channel pruning: one kept width per
channel group the pruner sees, every conv's cout is its group's width and its cin its producer group's
width; a depthwise conv follows its producer (cin = cout = the producer's width). Channels the pruner
keeps (concatenated, shuffled, reaching the output) stay dense. :func:`rebuild_with_widths` builds a copy of the
module whose Conv2d / BatchNorm2d / first Linear have those widths, for timing whole pruned networks.

Widths are ``{conv name: (cin, cout)}`` with the names of :class:`~profiler.plan.ConvLayer`.
Importing this module does not initialise CUDA.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from db.errors import LatlabError
from profiler._grids import group_stripes, striped_q
from profiler._resize import sliced_bn, sliced_conv, sliced_linear
from profiler._trace import (
    STATELESS_OK,
    TraceResult,
    has_own_state,
    moves_channels,
    opaque_module,
    shaped_graph,
)

__all__ = ["Widths", "dense_widths", "random_pruned_widths", "rebuild_with_widths"]

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


# ------------------------------------------------------------------------------------------------ rebuild

def _width_of(sources: Iterable[str], cout_of: Mapping[str, int], group_of: Mapping[str, int]) -> int:
    """Channels carried by a tensor built from ``sources``: sum over distinct groups of their widths."""
    seen: dict[int, int] = {}
    for name in sources:
        seen.setdefault(group_of[name], cout_of[name])
    return sum(seen.values())


def _new_conv(old: nn.Conv2d, cin: int, cout: int, depthwise: bool) -> nn.Conv2d:
    groups = cin if depthwise else old.groups
    if depthwise and cin != cout:
        raise LatlabError(f"depthwise conv needs cin == cout, got {cin} and {cout}")
    if cin % groups or cout % groups:
        raise LatlabError(f"cin={cin} and cout={cout} must be multiples of the conv's {groups} groups")
    return sliced_conv(old, torch.arange(cin // groups), torch.arange(cout), groups)


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


def rebuild_with_widths(model: nn.Module, trace: TraceResult, widths: Mapping[str, tuple[int, int]]) -> nn.Module:
    """A deep copy of ``model`` whose convs have ``widths`` (missing convs stay dense).

    torch.fx finds, for every BatchNorm2d, Linear and conv input, which convs' channels it carries;
    BNs follow them, the first Linear after the convs scales its ``in_features`` (flatten-aware), and
    each conv's requested cin must equal what its input carries. Kept weights are the leading slices
    of the dense ones (the network is meant for timing). Unsupported structures (per-channel
    parameters of other module types, functional use of parameters on conv outputs, a Linear whose
    input is not a whole multiple of its width) raise :class:`LatlabError` naming the module.
    """
    graph = shaped_graph(trace.model_name, model, trace.input_size).graph
    modules = dict(model.named_modules())
    layers = {layer.name: layer for layer in trace.layers}
    _, group_of = _conv_groups(trace)
    for name in widths:
        if name not in layers:
            raise LatlabError(f"widths name conv {name!r}, which the trace does not have")
    new_w = {name: tuple(int(v) for v in widths.get(name, (layer.cin, layer.cout))) for name, layer in layers.items()}
    for name, (ci, co) in new_w.items():
        if ci < 1 or co < 1:
            raise LatlabError(f"conv {name}: cannot rebuild with (cin, cout) = ({ci}, {co}); widths must be >= 1")
    dense_out = {name: layer.cout for name, layer in layers.items()}
    new_out = {name: w[1] for name, w in new_w.items()}

    names = _conv_node_names(graph, modules)
    for name in names.values():
        if name not in layers:
            raise LatlabError(f"conv {name} is not in the trace; trace the same model you rebuild")
    sources = _width_sources(graph, modules, names, cut_moved=True)

    def _resized(convs: frozenset[str]) -> bool:
        return bool(convs) and _width_of(convs, new_out, group_of) != _width_of(convs, dense_out, group_of)

    replace: dict[str, nn.Module] = {}
    for node in graph.nodes:
        inputs = node.all_input_nodes
        merged = frozenset().union(*(sources.get(a, frozenset()) for a in inputs))
        if node.op == "call_module":
            mod = modules[node.target]
            src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
            src_set = sources.get(src, frozenset()) if src is not None else merged
            if node in names:
                name = names[node]
                ci, co = new_w[name]
                carried = layers[name].cin + _width_of(src_set, new_out, group_of) - _width_of(
                    src_set, dense_out, group_of)  # channels that no tracked conv carries keep their number
                if carried != ci:
                    raise LatlabError(f"inconsistent widths: conv {name} asks for cin={ci} but its input carries "
                                      f"{carried} channels")
                if name != node.target and new_w[node.target] != (ci, co):
                    raise LatlabError(f"module {node.target} is called twice with different widths")
                if (ci, co) != (mod.in_channels, mod.out_channels):
                    try:
                        replace[node.target] = _new_conv(mod, ci, co, layers[name].family.depthwise)
                    except LatlabError as exc:
                        raise LatlabError(f"conv {name}: {exc}") from None
            elif isinstance(mod, nn.BatchNorm2d) and _resized(src_set):
                if _width_of(src_set, dense_out, group_of) != mod.num_features:
                    raise LatlabError(f"BatchNorm2d {node.target}: its {mod.num_features} features do not match "
                                      "the convs feeding it; unsupported structure")
                n = _width_of(src_set, new_out, group_of)
                if n != mod.num_features:
                    replace[node.target] = sliced_bn(mod, torch.arange(n))
            elif isinstance(mod, nn.Linear) and _resized(src_set):
                d = _width_of(src_set, dense_out, group_of)
                if mod.in_features % d:
                    raise LatlabError(f"Linear {node.target}: in_features={mod.in_features} is not a multiple of "
                                      f"the {d} channels feeding it; unsupported structure")
                n = mod.in_features // d * _width_of(src_set, new_out, group_of)
                if n != mod.in_features:
                    replace[node.target] = sliced_linear(mod, torch.arange(n))
            elif _resized(src_set) and not isinstance(mod, STATELESS_OK) and (
                opaque_module(mod) or has_own_state(mod)
            ):
                raise LatlabError(f"module {node.target} ({type(mod).__name__}) has per-channel state or mixes "
                                  "the channels of pruned convs; rebuild_with_widths cannot resize it")
            continue
        if node.op in ("call_function", "call_method") and _resized(merged):
            attrs = [a for a in inputs if a.op == "get_attr"]
            if attrs:
                raise LatlabError(f"parameter {attrs[0].target} is applied to pruned conv outputs at node "
                                  f"{node.name}; rebuild_with_widths cannot resize it")

    # deepcopy with the replaced modules pre-seeded in the memo: their dense tensors are never copied
    memo: dict[int, Any] = {}
    for qualname, module in replace.items():
        module.train(modules[qualname].training)
        memo[id(modules[qualname])] = module
    return copy.deepcopy(model, memo)

