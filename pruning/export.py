"""Export a channel-masked network to a physically smaller one (spec §9.6, §13.1 item 8).

:func:`export_pruned` walks the torch.fx graph and tracks, for every tensor, the boolean keep-vector of
its channels (a conv's output carries its own mask, a depthwise conv and BN/activations/pooling pass
their input's on, ``torch.cat`` on dim 1 concatenates (an untracked input's channels all kept), add/sub/mul
require equal masks). Every conv is sliced by *mask indices* (out channels by its mask, in channels by its
input's keep-vector; a depthwise conv gets ``groups = kept``; a grouped conv keeps its ``groups`` and needs
masks that keep the same input positions in every conv group and as many outputs per group, as
:class:`pruning.graph.ChannelGroup`'s stripes make them), every BN by its input's keep-vector, and the first
Linear after the convs by the kept features (flatten-aware).

Removed residual blocks are replaced by their shortcut (:mod:`pruning._removal`): a torchvision ResNet
block by ``relu(downsample(x))`` when it has a ``downsample`` projection (kept and sliced, with the ReLU
that ``[M] clean_model_mgp`` drops, spec §12.2), else ``nn.Identity``; any other block (inverted residuals,
RegNet) by its own fx graph with the residual add returning the shortcut operand. The masked counterpart
(:func:`masked_reference`) zeroes the block's gate layer (its last BN, or its last conv in a pre-activation
block), so its residual branch adds exactly 0.
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn
from torch.utils._pytree import tree_flatten

from db.errors import LatlabError
from db.files import write_atomically
from profiler._resize import sliced_bn, sliced_conv, sliced_linear
from profiler._trace import (
    TraceResult,
    _carries_channels,
    has_channel_state,
    moves_channels,
    opaque_module,
    shaped_graph,
)
from pruning._removal import Removal, removal
from pruning.importance import conv_bn_pairs
from pruning.slices import Slices

__all__ = [
    "export_checked", "export_pruned", "export_program", "masked_reference", "save_masks", "save_pruned",
    "verify_export",
]

_JOIN = {operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
         torch.add, torch.sub, torch.mul, "add", "add_", "sub", "sub_", "mul", "mul_"}
_BN_SLICED = ("weight", "bias", "running_mean", "running_var")
RemovedBlocks = Mapping[str, Any] | Iterable[str]


def _base(name: str) -> str:
    return name.split("#", 1)[0]


def _removed(model: nn.Module, removed_blocks: RemovedBlocks | None) -> dict[str, Removal]:
    mods = dict(model.named_modules())
    out: dict[str, Removal] = {}
    for n in removed_blocks or ():
        if not n or n not in mods:
            raise LatlabError(f"removed block {n!r} is not a submodule of the model")
        out[n] = removal(n, mods[n])
    return out


def _dropped_convs(model: nn.Module, removed: Mapping[str, Removal]) -> set[str]:
    """Convs inside removed blocks, except those their shortcut still uses (a projection)."""
    mods = dict(model.named_modules())
    return {f"{bname}.{sub}" for bname, rem in removed.items() for sub, m in mods[bname].named_modules()
            if isinstance(m, nn.Conv2d) and not rem.keeps(sub)}


def _check_masks(model: nn.Module, trace: TraceResult, masks: Mapping[str, torch.Tensor],
                 dropped: set[str], exact: bool = True) -> dict[str, torch.Tensor]:
    mods = dict(model.named_modules())
    convs = {_base(layer.name): layer for layer in trace.layers}
    out: dict[str, torch.Tensor] = {}
    for call, keep in masks.items():
        name = _base(call)  # a later call of a module (conv#2) is the module
        if name not in convs or not isinstance(mods.get(name), nn.Conv2d):
            raise LatlabError(f"mask given for {call!r}, which is not a traced conv of the model")
        keep = torch.as_tensor(keep).detach().cpu()
        if name in out and not torch.equal(out[name], keep):
            raise LatlabError(f"conv {name} is called more than once and is given different masks ({call!r})")
        if keep.dtype != torch.bool or keep.shape != (mods[name].out_channels,):
            raise LatlabError(f"mask of conv {name} must be a bool tensor of shape ({mods[name].out_channels},), "
                              f"got {keep.dtype} {tuple(keep.shape)}")
        if name not in dropped and not bool(keep.any()):
            raise LatlabError(f"conv {name} keeps no channel; remove its block instead")
        why = exact and (trace.nonzero.get(call) or trace.nonzero.get(name))
        if why and name not in dropped and not bool(keep.all()):  # the slim network would compute something else
            raise LatlabError(f"conv {name} must keep all its channels ({why}); its mask drops "
                              f"{int((~keep).sum())} of {len(keep)}")
        out[name] = keep
    for group in trace.groups:
        live = [_base(n) for n in group if _base(n) not in dropped]
        ref = next((out[n] for n in live if n in out), None)
        for n in live:
            k = out.get(n, torch.ones(mods[n].out_channels, dtype=torch.bool))
            if ref is not None and not torch.equal(k, ref):
                raise LatlabError(f"coupled convs {live[0]} and {n} have different masks; a group shares one mask")
    return out


def _idx(keep: torch.Tensor) -> torch.Tensor:
    return keep.nonzero().flatten()


def _new_conv(old: nn.Conv2d, in_keep: torch.Tensor, out_keep: torch.Tensor, depthwise: bool,
              exact: bool = True) -> tuple[nn.Conv2d, torch.Tensor | None]:
    """The sliced conv and the weight's input columns it keeps (``None``: a depthwise conv's one column).

    Not ``exact``, a grouped conv whose masks do not keep the same positions in every conv group keeps the first
    ``kept / groups`` positions of each instead: its shape, not its channels."""
    oi = _idx(out_keep)
    if depthwise:
        return sliced_conv(old, torch.arange(1), oi, len(oi)), None
    if old.groups == 1:
        return sliced_conv(old, _idx(in_keep), oi, 1), _idx(in_keep)
    groups = old.groups  # grouped: each conv group keeps the same input positions and as many outputs as the others
    striped = bool((in_keep.view(groups, -1) == in_keep[: len(in_keep) // groups]).all())
    even = len(set(out_keep.view(groups, -1).sum(dim=1).tolist())) == 1
    if not exact and not (striped and even):
        kept_in = int(in_keep.sum())
        if kept_in % groups or len(oi) % groups:
            raise LatlabError(f"{kept_in} input and {len(oi)} output channels kept, which must be multiples of "
                              f"the conv's {groups} groups")
        cols = torch.arange(kept_in // groups)
        return sliced_conv(old, cols, oi, groups), cols
    if not striped:
        raise LatlabError(f"grouped conv with groups={groups}: its input mask must keep the same channels in "
                          f"each of its {groups} groups (latlab's pruner does: ChannelGroup.stripes)")
    if not even:
        raise LatlabError(f"grouped conv with groups={groups}: its mask must keep as many output channels in "
                          f"each of its {groups} groups")
    cols = _idx(in_keep[: len(in_keep) // groups])  # the kept input positions within one conv group
    return sliced_conv(old, cols, oi, groups), cols


def _linear_columns(old: nn.Linear, keep: torch.Tensor) -> torch.Tensor:
    """The input features of ``old`` fed by the kept channels (flatten-aware: ``rep`` features per channel)."""
    rep = old.in_features // len(keep)
    return (_idx(keep)[:, None] * rep + torch.arange(rep)[None]).flatten()


def _new_linear(old: nn.Linear, keep: torch.Tensor, name: str) -> nn.Linear:
    if old.in_features % len(keep):
        raise LatlabError(f"Linear {name}: in_features={old.in_features} is not a multiple of the {len(keep)} "
                          "channels feeding it; unsupported structure")
    return sliced_linear(old, _linear_columns(old, keep))


def _require_dense(node: fx.Node, mod: nn.Module | None, keep: torch.Tensor | None) -> None:
    """``node`` moves, slices or mixes channels, after which nothing is tracked: only right when nothing reaching
    it was pruned (the trace keeps such channels whole)."""
    if keep is not None and not bool(keep.all()):
        what = type(mod).__name__ if mod is not None else getattr(node.target, "__name__", node.target)
        raise LatlabError(f"node {node.name} ({what}) moves, slices or mixes pruned channels; export_pruned cannot "
                          "follow it")


def _cat_dim(node: fx.Node) -> int:
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    return int(dim) if isinstance(dim, int) else 0


def _channels(node: Any) -> int | None:
    """The channel count (dim 1) of ``node``'s tensor, ``None`` when it has none."""
    shape = getattr(node.meta.get("tensor_meta"), "shape", None) if isinstance(node, fx.Node) else None
    return int(shape[1]) if shape is not None and len(shape) > 1 else None


def _pruned(keep: torch.Tensor | None) -> bool:
    return keep is not None and not bool(keep.all())


def _per_channel_params(node: fx.Node, join: bool) -> list[fx.Node]:
    """The parameters or buffers (``get_attr``) that ``node`` applies across the channels: a product or sum with
    one laid out on them (a ``(C, 1, 1)`` layer scale), any with more than one element in another op."""
    out = []
    for a in node.all_input_nodes:
        shape = getattr(a.meta.get("tensor_meta"), "shape", None)
        if a.op == "get_attr" and math.prod(shape or (1,)) > 1 and (not join or _carries_channels(a, node)):
            out.append(a)
    return out


def export_pruned(model: nn.Module, trace: TraceResult, masks: Mapping[str, torch.Tensor],
                  removed_blocks: RemovedBlocks | None = None, slices: Slices | None = None, *,
                  exact: bool = True) -> nn.Module:
    """A physically smaller copy of ``model``: convs/BNs/Linear sliced by the ``masks`` indices.

    ``masks``: ``{conv name: bool keep-vector of its output channels}`` (missing convs stay dense; the
    convs of a coupled group must share one mask; a depthwise conv follows its input and its mask, if
    given, must equal its input's). ``removed_blocks``: names (or a mapping keyed by names) of torchvision
    ResNet blocks to drop; their convs' masks are ignored. The source model is not modified.
    ``slices``, when given, is filled with where every sliced tensor of the copy comes from
    (:data:`pruning.slices.Slices`; tensors not in it are copied whole or dropped with their block).
    ``exact=False`` makes a copy with the masks' widths that need not compute what the masked network does
    (:func:`pruning.rebuild.rebuild_with_widths`, networks for timing): masks may drop channels that an op makes
    non-zero before a conv or Linear reads them (:attr:`TraceResult.nonzero`), and a grouped conv whose masks do
    not keep the same positions in every conv group keeps the first ones of each (widths multiples of its groups).
    """
    removed = _removed(model, removed_blocks)
    dropped = _dropped_convs(model, removed)
    keeps = _check_masks(model, trace, masks, dropped, exact)
    graph = shaped_graph(trace.model_name, model, trace.input_size).graph
    mods = dict(model.named_modules())
    value: dict[fx.Node, torch.Tensor | None] = {}
    replace: dict[str, nn.Module] = {}
    conv_io: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def val(a: Any) -> torch.Tensor | None:
        return value.get(a) if isinstance(a, fx.Node) else None

    for node in graph.nodes:
        ins = [value.get(a) for a in node.all_input_nodes]
        tracked = [k for k in ins if k is not None]
        first = tracked[0] if tracked else None
        if node.op in ("placeholder", "get_attr", "output"):
            value[node] = None
            continue
        if node.op == "call_module":
            mod, target = mods[node.target], str(node.target)
            src = val(node.args[0]) if node.args else first
            if isinstance(mod, nn.Conv2d):
                if target in dropped:
                    value[node] = None
                    continue
                in_keep = src if src is not None else torch.ones(mod.in_channels, dtype=torch.bool)
                if len(in_keep) != mod.in_channels:
                    raise LatlabError(f"conv {target}: its input carries {len(in_keep)} tracked channels but it has "
                                      f"in_channels={mod.in_channels}; unsupported structure")
                depthwise = mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels
                out_keep = keeps.get(target, torch.ones(mod.out_channels, dtype=torch.bool))
                if depthwise:
                    if target in keeps and not torch.equal(out_keep, in_keep):
                        raise LatlabError(f"depthwise conv {target}: its mask differs from its input's kept channels")
                    out_keep = in_keep
                if target in conv_io:
                    if not all(torch.equal(a, b) for a, b in zip(conv_io[target], (in_keep, out_keep), strict=True)):
                        raise LatlabError(f"module {target} is called twice with differently pruned inputs")
                else:
                    conv_io[target] = (in_keep, out_keep)
                    try:
                        replace[target], cols = _new_conv(mod, in_keep, out_keep, depthwise, exact)
                    except LatlabError as exc:
                        raise LatlabError(f"conv {target}: {exc}") from None
                    if slices is not None:
                        rows = _idx(out_keep)
                        slices[f"{target}.weight"] = (rows, cols)
                        if mod.bias is not None:
                            slices[f"{target}.bias"] = (rows,)
                value[node] = out_keep
                continue
            if isinstance(mod, nn.BatchNorm2d):
                if src is not None and target not in replace:
                    if len(src) != mod.num_features:
                        raise LatlabError(f"BatchNorm2d {target}: {mod.num_features} features but its input carries "
                                          f"{len(src)} tracked channels")
                    replace[target] = sliced_bn(mod, _idx(src))
                    if slices is not None:
                        kept = _idx(src)
                        slices.update({f"{target}.{a}": (kept,) for a in _BN_SLICED if getattr(mod, a) is not None})
                value[node] = src
                continue
            if isinstance(mod, nn.Linear):
                if src is not None and target not in replace:
                    replace[target] = _new_linear(mod, src, target)
                    if slices is not None:
                        slices[f"{target}.weight"] = (None, _linear_columns(mod, src))
                value[node] = None
                continue
            if _pruned(first) and (has_channel_state(mod) or opaque_module(mod)):  # Linear: handled above
                raise LatlabError(f"module {target} ({type(mod).__name__}) has per-channel state or mixes the "
                                  "pruned channels; export_pruned cannot resize it")
            if opaque_module(mod):
                value[node] = None
                continue
            if moves_channels(node, mod):
                _require_dense(node, mod, first)
                value[node] = None
            else:
                value[node] = src if src is not None else first
            continue
        # call_function / call_method
        if "tensor_meta" not in node.meta:  # sizes and arithmetic on them (x.size(2) - y.size(2)) carry no channels
            value[node] = None
            continue
        fn = node.target
        if fn in (torch.cat, torch.concat) and _cat_dim(node) in (1, -3):
            parts = [value.get(a) if isinstance(a, fx.Node) else None for a in node.args[0]]
            if any(p is None for p in parts) and any(_pruned(p) for p in parts):  # untracked channels are whole
                sizes = [_channels(a) for a in node.args[0]]
                if any(s is None for s in sizes):
                    raise LatlabError(f"torch.cat at node {node.name} joins pruned and untracked tensors")
                parts = [torch.ones(s, dtype=torch.bool) if p is None else p  # type: ignore[arg-type]
                         for p, s in zip(parts, sizes, strict=True)]
            value[node] = None if any(p is None for p in parts) else torch.cat(parts)  # type: ignore[arg-type]
            continue
        pruned_in = any(_pruned(k) for k in tracked)
        if fn in _JOIN:  # a map broadcast over the channels (a 1-channel spatial gate) scales them all alike
            width = node.meta["tensor_meta"].shape[1] if len(node.meta["tensor_meta"].shape) > 1 else None
            tracked = [k for k in tracked if len(k) == width]
            first = tracked[0] if tracked else None
        if fn in _JOIN and len(tracked) > 1:
            for k in tracked[1:]:
                if k.shape != first.shape or not torch.equal(k, first):  # type: ignore[union-attr]
                    raise LatlabError(f"operands of {node.name} carry different channel masks; coupled convs must "
                                      "share one mask")
        if moves_channels(node, None):
            _require_dense(node, None, first)
            first = None
        params = _per_channel_params(node, fn in _JOIN)  # as the trace, which fixes the channels they meet
        if params and pruned_in:
            raise LatlabError(f"parameter {params[0].target} is applied to pruned channels at node {node.name}; "
                              "export_pruned cannot resize it")
        value[node] = first

    memo: dict[int, Any] = {}
    for qualname, module in replace.items():
        module.train(mods[qualname].training)
        memo[id(mods[qualname])] = module
    for bname, rem in removed.items():  # never copy what the removed branches held
        for sub, m in mods[bname].named_modules():
            if sub and not rem.keeps(sub):
                memo.setdefault(id(m), nn.Identity())
    out = copy.deepcopy(model, memo)
    for bname in sorted(removed, key=len, reverse=True):
        parent_name, _, leaf = bname.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, leaf, removed[bname].replacement(out.get_submodule(bname)))
    return out


@torch.no_grad()
def zero_channels(conv: nn.Module, bn: nn.Module | None, rows: torch.Tensor) -> None:
    """Zero output channels ``rows`` (bool or indices) of ``conv`` (weight rows, bias) and of the BN after it
    (γ, β, running mean and var), in place: they then output exactly 0."""
    for m, attrs in ((conv, ("weight", "bias")), (bn, ("weight", "bias", "running_mean", "running_var"))):
        for attr in attrs:
            t = getattr(m, attr, None) if m is not None else None
            if t is not None:
                t[rows] = 0


@torch.no_grad()
def masked_reference(model: nn.Module, masks: Mapping[str, torch.Tensor],
                     removed_blocks: RemovedBlocks | None = None) -> nn.Module:
    """A dense copy of ``model`` with the spec §5.5 masking applied: conv rows/bias and the following BN's
    γ, β, running mean/var zeroed for masked channels; a removed block's gate layer (BN or conv) zeroed
    entirely."""
    ref = copy.deepcopy(model)
    pairs = conv_bn_pairs(ref)
    for name, keep in masks.items():
        conv = ref.get_submodule(name)
        zero_channels(conv, ref.get_submodule(pairs[name]) if name in pairs else None,
                      ~torch.as_tensor(keep, dtype=torch.bool).to(conv.weight.device))
    for bname, rem in _removed(ref, removed_blocks).items():
        gate = ref.get_submodule(f"{bname}.{rem.gate}")
        for attr in ("weight", "bias", "running_mean", "running_var"):
            t = getattr(gate, attr, None)
            if t is not None:
                t.zero_()
    return ref


@torch.no_grad()
def verify_export(masked_model: nn.Module, exported: nn.Module, input_shape: tuple[int, ...] | list[int],
                  rtol: float = 1e-6, seed: int = 0) -> float:
    """Max |Δ output| between the two models on one random batch (eval mode, float64; the models are copied).

    Raises :class:`LatlabError` when it exceeds ``rtol`` × max |output| (plus 1e-12, for an all-zero output).
    Both run in float64, so what differs is the structure, not rounding (an exact export differs by about
    1e-15 of the output); the bound is relative, so it holds for an untrained network's tiny logits as well.
    """
    a = copy.deepcopy(masked_model).double().eval()
    b = copy.deepcopy(exported).double().eval()
    dev = next(a.parameters()).device
    x = torch.randn(*input_shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dev)
    outs_a, spec_a = tree_flatten(a(x))  # a tensor, or a tuple, list or dict of them
    outs_b, spec_b = tree_flatten(b(x.to(next(b.parameters()).device)))
    shapes_a = [tuple(t.shape) for t in outs_a if isinstance(t, torch.Tensor)]
    shapes_b = [tuple(t.shape) for t in outs_b if isinstance(t, torch.Tensor)]
    if spec_a != spec_b or shapes_a != shapes_b:
        raise LatlabError(f"exported model outputs shapes {shapes_b}, masked model {shapes_a}")
    pairs = [(ya, yb.to(ya.device)) for ya, yb in zip(outs_a, outs_b, strict=True) if isinstance(ya, torch.Tensor)]
    diff = max((float((ya - yb).abs().max()) for ya, yb in pairs if ya.numel()), default=0.0)
    scale = max((float(ya.abs().max()) for ya, _ in pairs if ya.numel()), default=0.0)
    if not diff <= rtol * scale + 1e-12:
        raise LatlabError(f"exported model differs from the masked model: max |Δ| = {diff:.3g} > {rtol:g} × "
                          f"max |output| {scale:.3g}")
    return diff


def export_checked(model: nn.Module, input_size: tuple[int, int], masks: Mapping[str, torch.Tensor],
                   removed_blocks: RemovedBlocks | None = None, verify_input: tuple[int, ...] | None = None,
                   ) -> tuple[nn.Module, float, dict[str, int]]:
    """Export, verify and count: ``(slim network, max |Δ logits| against the masked model, counts)``.

    ``counts``: ``params_dense``, ``params_pruned``, ``macs_dense``, ``macs_pruned`` (per image).
    """
    from profiler.measure import count_params_and_macs
    from profiler.plan import trace_network

    size = tuple(input_size)
    slim = export_pruned(model, trace_network(model, size), masks, removed_blocks)
    delta = verify_export(masked_reference(model, masks, removed_blocks), slim, verify_input or (2, 3, *size))
    dense, pruned = (count_params_and_macs(m, (1, 3, *size)) for m in (model, slim))
    return slim, delta, {"params_dense": dense["params"], "params_pruned": pruned["params"],
                         "macs_dense": dense["macs_per_image"], "macs_pruned": pruned["macs_per_image"]}


def export_program(slim: nn.Module, input_size: tuple[int, int]) -> torch.export.ExportedProgram:
    """``torch.export`` of the slim network in eval mode, any batch size."""
    return torch.export.export(slim.eval(), (torch.zeros(2, 3, *input_size),),
                               dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))


def masks_file_content(masks: Mapping[str, torch.Tensor], removed_blocks: Iterable[str]) -> dict[str, Any]:
    """What latlab's ``masks.pt`` holds: ``{"masks", "removed_blocks"}`` (weights_only-loadable, read by
    ``latlab measure --mask`` and :func:`pruning.mask_files.read_mask_file`)."""
    return {"masks": {k: v.detach().cpu().clone() for k, v in masks.items()}, "removed_blocks": list(removed_blocks)}


def save_masks(path: Path, masks: Mapping[str, torch.Tensor], removed_blocks: Iterable[str]) -> Path:
    """Write :func:`masks_file_content` to ``path`` (atomically)."""
    return write_atomically(path, partial(torch.save, masks_file_content(masks, removed_blocks)))


def save_pruned(out_dir: Path, slim: nn.Module, masks: Mapping[str, torch.Tensor], removed_blocks: Iterable[str],
                input_size: tuple[int, int], *, model: str, variant: str) -> dict[str, Path]:
    """Write ``masks.pt`` (:func:`save_masks`) and ``pruned.pt2`` (torch.export of the slim network, any batch
    size, labelled with the source ``model`` and the ``variant``; ``latlab measure --module`` times it)."""
    from profiler.measure import save_program

    paths = {"masks": save_masks(out_dir / "masks.pt", masks, removed_blocks), "slim": out_dir / "pruned.pt2"}
    save_program(export_program(slim, input_size), paths["slim"], model=model, variant=variant)
    return paths
