"""Prunable structure of a CNN: channel groups, their sizes q, producers, BNs and removable blocks.

:func:`build_network_spec` traces a torchvision model (or any fx-traceable module) with
:func:`profiler.plan.trace_network` and derives what HALP/MDP read from their hand-written ResNet50
tables (halp_mdp_spec.md §2, §6.1):

* **groups** — convs whose output channels must share one mask. A residual add or an SE ``mul``
  couples its operands (found by the trace); a depthwise conv joins its producer's group
  (cin = cout = conv groups); several calls of one module share a group. Coupled groups are named
  ``stageS`` for torchvision's ResNet50 (the spec's names) and ``<first conv>:coupled`` otherwise;
  a singleton group is named after its conv.
* **q** — the channel-group size of each group (``group_sizes``): ``"reference"`` = the HALP/MDP
  sizes of ResNet50; ``"auto"`` = 8 for widths <= 64, 16 for <= 256, 32 above; an ``int`` forces q;
  a ``dict`` maps conv or group names to q (the others use the auto rule). The group's q is the max
  over its entries (spec §2.3) made to divide the width (gcd); in a striped group, the most whole
  positions (below) whose channels do not exceed it, at least one position.
* **stripes** — the lcm of the group counts of the grouped convs that read or write the group (1 without
  any; 32 for ResNeXt's ``32x4d`` blocks): the channels are cut into ``stripes`` equal consecutive
  stripes, and a mask keeps the same positions in every stripe (a position = one channel of each
  stripe), so every conv group of a grouped conv keeps the same channels and the pruned conv stays a
  grouped conv with the same ``groups``. The pruner's items are whole positions.
* **prunable** — a group is prunable unless its width is fixed: a depthwise conv fed by the network
  input (its cin is the image), convs whose channels reach the network output directly (e.g. the
  class logits of a segmentation head), convs whose channels meet an op the export cannot slice (a
  permute or transpose, a module with per-channel state other than BN, e.g. ConvNeXt's LayerNorm), or
  a concat (a conv reading it would be priced by several groups at once), and a depthwise conv on a
  concat (:meth:`profiler._trace.TraceResult.fixed_groups`). A conv reading a concat (or a split) of
  fixed groups has a fixed cin and no producer group. Channels feeding a classifier Linear stay prunable.
  ``keep`` fixes more on request (:meth:`NetworkSpec.keeping`): ``stem`` (HALP and MDP never prune it,
  spec §4.4, §8.2) or globs over conv names and group ids, e.g. ``layer4.*``.
* **blocks** — residual blocks whose residual branch can be dropped while shapes stay: a module whose
  add joins an identity shortcut or a single-conv projection shortcut (which then stays, like ResNet's
  ``layerX.0``; spec §6.1) and a branch ending in a BN, or in a conv where no BN follows it (pre-activation
  blocks); that layer is the block's ``gate``, what the training gate and the masked reference zero, so that
  :func:`pruning.export.export_pruned` can replace it. MobileNetV2/V3 inverted residuals qualify only
  with a shortcut (stride 1, cin = cout); SE convs inside the branch belong to the block.

Unsupported structures (a conv fed by several channel groups that are not concatenated, e.g. through
``torch.maximum``; coupled convs of unequal width; a module called from different groups) raise
:class:`LatlabError` naming the conv.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn

from db.errors import LatlabError
from db.keys import ConvFamily
from profiler import _grids
from profiler._grids import auto_group_size
from profiler._trace import TraceResult, normalise_size
from profiler.plan import resolve_model, trace_network
from pruning._graph_fx import graph_facts
from pruning._removal import removal

__all__ = [
    "Block", "ChannelGroup", "NetworkSpec", "PrunableConv", "auto_group_size", "build_network_spec", "trace_keeping",
]

log = logging.getLogger(__name__)

GroupSizes = str | int | Mapping[str, int]


@dataclass(frozen=True)
class PrunableConv:
    """One conv: dense widths, fixed geometry, its output group and the group feeding its input."""

    name: str
    family: ConvFamily
    cin: int
    cout: int
    group: str
    producer_group: str | None
    bn: str | None
    fmap_in: int
    producers: tuple[str, ...] = ()

    @property
    def depthwise(self) -> bool:
        """True for a depthwise conv (cin = cout = conv groups)."""
        return self.family.depthwise


@dataclass(frozen=True)
class ChannelGroup:
    """Convs sharing one output channel mask; ``width`` dense channels in ``width // q`` items of ``q``.

    ``stripes`` > 1: grouped convs read or write the group, and a mask keeps the same positions in each of
    its ``stripes`` equal consecutive stripes (``q`` is a multiple of ``stripes``). ``fixed_by``: why a group
    that is not prunable keeps its width (e.g. ``"cat in features.denseblock1"``, ``"network output"``).
    """

    id: str
    convs: tuple[str, ...]
    width: int
    q: int
    coupled: bool
    prunable: bool = True
    stripes: int = 1
    fixed_by: str = ""

    @property
    def m(self) -> int:
        """Number of channel items (``width // q``)."""
        return self.width // self.q

    @property
    def modules(self) -> tuple[str, ...]:
        """The conv modules the mask applies to: :attr:`convs` less later calls of one module (``conv#2`` …)."""
        return tuple(c for c in self.convs if "#" not in c)


@dataclass(frozen=True)
class Block:
    """A removable residual block: the convs of its residual branch, the groups at its input and output, and
    the layer (a BN or a conv) whose weight and bias zeroed zero the branch."""

    name: str
    convs: tuple[str, ...]
    input_group: str | None
    output_group: str
    gate: str


@dataclass
class NetworkSpec:
    """The prunable structure of one network at one input size (see the module docstring)."""

    model_name: str
    input_size: tuple[int, int]
    convs: list[PrunableConv]
    groups: dict[str, ChannelGroup]
    blocks: list[Block] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by_name = {c.name: c for c in self.convs}

    def conv(self, name: str) -> PrunableConv:
        """The conv called ``name`` (``LatlabError`` if there is none)."""
        try:
            return self._by_name[name]
        except KeyError:
            raise LatlabError(f"network {self.model_name!r} has no conv {name!r}") from None

    def group_members(self) -> dict[str, list[tuple[str, str | None]]]:
        """``{group id: [(conv, its BN or None)]}``: the input of importance and masks. A conv module's later calls
        (``conv#2`` …) are left out: they share its weight, and their group is fixed."""
        return {gid: [(c, self.conv(c).bn) for c in g.modules] for gid, g in self.groups.items()}

    def group_of(self, conv: str) -> str:
        """Group id of ``conv``'s output channels."""
        return self.conv(conv).group

    def producer_group(self, conv: str) -> str | None:
        """Group id feeding ``conv``'s input; ``None`` when its input width is fixed (e.g. the RGB image)."""
        return self.conv(conv).producer_group

    @property
    def items(self) -> dict[str, int]:
        """Channel items ``m = width / q`` of every prunable group."""
        return {g.id: g.m for g in self.groups.values() if g.prunable}

    @property
    def n_items(self) -> int:
        """Total channel items over the prunable groups."""
        return sum(self.items.values())

    def dense_widths(self) -> dict[str, int]:
        """``{group id: dense width}``."""
        return {g.id: g.width for g in self.groups.values()}

    def conv_widths(
        self, group_widths: Mapping[str, int], removed_blocks: Iterable[str] = ()
    ) -> dict[str, tuple[int, int]]:
        """``{conv: (cin, cout)}`` for group widths (missing groups stay dense) and removed blocks.

        cout is the conv's group width, cin its producer group's width (or its fixed dense cin); a
        depthwise conv has cin = cout. Convs of removed blocks get ``(0, 0)``. The result feeds
        :func:`latency_models.network.network_latency`.
        """
        widths = self.dense_widths()
        for gid, w in group_widths.items():
            if gid not in self.groups:
                raise LatlabError(f"network {self.model_name!r} has no channel group {gid!r}")
            g = self.groups[gid]
            if isinstance(w, bool) or int(w) != w or not 0 <= int(w) <= g.width:
                raise LatlabError(f"group {gid}: width must be an integer in [0, {g.width}], got {w!r}")
            if not g.prunable and int(w) != g.width:
                raise LatlabError(f"group {gid} is not prunable; its width must stay {g.width}, got {w}")
            widths[gid] = int(w)
        blocks = {b.name: b for b in self.blocks}
        removed: set[str] = set()
        for name in removed_blocks:
            if name not in blocks:
                raise LatlabError(f"network {self.model_name!r} has no removable block {name!r}; "
                                  f"blocks: {', '.join(blocks) or 'none'}")
            removed.update(blocks[name].convs)
        out: dict[str, tuple[int, int]] = {}
        for c in self.convs:
            if c.name in removed:
                out[c.name] = (0, 0)
                continue
            cout = widths[c.group]
            cin = cout if c.depthwise else (widths[c.producer_group] if c.producer_group else c.cin)
            out[c.name] = (cin, cout)
        return out

    def keeping(self, patterns: Iterable[str]) -> NetworkSpec:
        """This network with the groups of the convs matching ``patterns`` kept whole, and their blocks kept.

        A pattern is ``stem`` (the first convs: no other conv feeds them) or a glob over conv names and group ids
        (``layer4.*``, ``stage1``). A kept group is fixed with ``fixed_by = "keep PATTERN"``; a block holding a
        kept conv is no longer removable. A pattern that matches nothing raises :class:`LatlabError`.
        """
        kept: dict[str, str] = {}  # conv -> the first pattern that keeps it
        for pattern in patterns:
            hits = [c.name for c in self.convs if (pattern == "stem" and not c.producers)
                    or fnmatchcase(c.name, pattern) or fnmatchcase(c.group, pattern)]
            if not hits:
                raise LatlabError(f"keep pattern {pattern!r} matches no conv or channel group of {self.model_name!r} "
                                  f"(`latlab graph --model {self.model_name}` lists them)")
            for conv in hits:
                kept.setdefault(conv, pattern)
        groups = dict(self.groups)
        for conv, pattern in kept.items():
            g = groups[self.group_of(conv)]
            if g.prunable:
                groups[g.id] = dataclasses.replace(g, prunable=False, fixed_by=f"keep {pattern}")
        blocks = [b for b in self.blocks if kept.keys().isdisjoint(b.convs)]
        return NetworkSpec(self.model_name, self.input_size, self.convs, groups, blocks)

    def summary(self) -> dict[str, int]:
        """Counts: convs, groups, coupled and singleton groups, prunable groups, items, blocks."""
        coupled = sum(g.coupled for g in self.groups.values())
        return {
            "convs": len(self.convs),
            "groups": len(self.groups),
            "coupled": coupled,
            "singleton": len(self.groups) - coupled,
            "prunable": sum(g.prunable for g in self.groups.values()),
            "items": self.n_items,
            "blocks": len(self.blocks),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description (convs, groups, blocks, summary)."""
        return {
            "model": self.model_name,
            "input_size": list(self.input_size),
            "summary": self.summary(),
            "convs": [{"name": c.name, "family": c.family.key, "cin": c.cin, "cout": c.cout, "group": c.group,
                       "producer_group": c.producer_group, "bn": c.bn, "fmap_in": c.fmap_in} for c in self.convs],
            "groups": [{"id": g.id, "convs": list(g.convs), "width": g.width, "q": g.q, "m": g.m, "coupled": g.coupled,
                        "prunable": g.prunable, "stripes": g.stripes, "fixed_by": g.fixed_by}
                       for g in self.groups.values()],
            "blocks": [{"name": b.name, "convs": list(b.convs), "input_group": b.input_group,
                        "output_group": b.output_group, "gate": b.gate} for b in self.blocks],
        }


def _base(name: str) -> str:
    return name.split("#", 1)[0]


def _rn50_groups(trace: TraceResult) -> dict[str, str] | None:
    try:
        return _grids.check_resnet50(trace)
    except LatlabError:
        return None


def _group_q(
    gid: str, members: list[str], width: int, group_sizes: GroupSizes, rn50: dict[str, str] | None,
    model_name: str,
) -> int:
    if isinstance(group_sizes, str):
        if group_sizes == "auto":
            return auto_group_size(width)
        if group_sizes == "reference":
            if rn50 is None:
                raise LatlabError(f"the 'reference' group sizes are HALP/MDP's for torchvision resnet50 only; model "
                                  f"{model_name!r} is not resnet50: use group_sizes='auto' (or an int)")
            return _grids.rn50_group_q(gid)
        raise LatlabError(f"group_sizes must be 'auto', 'reference', an int or a dict, got {group_sizes!r}")
    if isinstance(group_sizes, int) and not isinstance(group_sizes, bool):
        return math.gcd(width, min(group_sizes, width))
    entries = [int(group_sizes[k]) for k in [gid, *members, *map(_base, members)] if k in group_sizes]
    return math.gcd(width, min(max(entries), width)) if entries else auto_group_size(width)


def _gate_of_block(module: nn.Module, name: str) -> str | None:
    """The layer (full name) that gates block ``name``, or None when export cannot replace the block by its
    shortcut (see :mod:`pruning._removal`)."""
    try:
        return f"{name}.{removal(name, module.get_submodule(name)).gate}"
    except (AttributeError, LatlabError) as exc:
        log.debug("residual add in %s is not a removable block: %s", name, exc)
        return None


def _check_group_sizes(group_sizes: Any, names: set[str]) -> None:
    if isinstance(group_sizes, bool):
        raise LatlabError(f"group_sizes must be 'auto', 'reference', an int or a dict, got {group_sizes!r}")
    if isinstance(group_sizes, int):
        if group_sizes < 1:
            raise LatlabError(f"group size must be >= 1, got {group_sizes}")
    elif isinstance(group_sizes, Mapping):
        for k, v in group_sizes.items():
            if k not in names:
                raise LatlabError(f"group_sizes names {k!r}, which is neither a conv nor a group of the network")
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise LatlabError(f"group size of {k!r} must be an integer >= 1, got {v!r}")
    elif not isinstance(group_sizes, str):
        raise LatlabError(f"group_sizes must be 'auto', 'reference', an int or a dict, got {group_sizes!r}")


def build_network_spec(
    model: str | nn.Module, input_size: int | tuple[int, int] = 224, *, group_sizes: GroupSizes = "auto",
    name: str | None = None, keep: Iterable[str] = (),
) -> NetworkSpec:
    """Trace ``model`` and derive its channel groups, group sizes, producers, BNs and removable blocks.

    A model name is built on the meta device (no weight init; falls back to CPU when its builder needs
    real tensors); a module is traced as given and keeps its train/eval mode. ``name`` names the network in
    reports and messages (default: the model name, or the module's class name). ``keep``: patterns of convs
    to keep whole (:meth:`NetworkSpec.keeping`).
    """
    hw = normalise_size(input_size)
    if isinstance(model, nn.Module):
        was_training = model.training
        resolved, module = resolve_model(model)
        try:
            trace = trace_network(module, hw)
            facts = graph_facts(name or resolved, module, [layer.name for layer in trace.layers])
        finally:
            module.train(was_training)
    else:
        try:  # a name is built on the meta device: no weight init, and shapes propagate without compute
            with torch.device("meta"):
                resolved, module = resolve_model(model)
            trace = trace_network(module, hw)
        except LatlabError:  # a builder or op that needs real tensors (e.g. RegNet's init): build on CPU
            resolved, module = resolve_model(model)
            trace = trace_network(module, hw)
        facts = graph_facts(name or resolved, module, [layer.name for layer in trace.layers])
    name = name or resolved
    trace.model_name = name
    layers = {layer.name: layer for layer in trace.layers}
    if not layers:
        raise LatlabError(f"model {name!r} has no nn.Conv2d layers to prune")

    mask_groups = trace.mask_groups()
    rn50 = _rn50_groups(trace)
    gid_of: dict[str, str] = {}
    for mem in mask_groups:
        gid = rn50[mem[0]] if rn50 is not None else mem[0] if len(mem) == 1 else f"{mem[0]}:coupled"
        for n in mem:
            gid_of[n] = gid
    group_members = {gid_of[mem[0]]: mem for mem in mask_groups}

    widths: dict[str, int] = {}
    for gid, mem in group_members.items():
        couts = {layers[n].cout for n in mem}
        if len(couts) != 1:
            raise LatlabError(f"model {name!r}: coupled convs {', '.join(mem)} have different output widths "
                              f"{sorted(couts)}; unsupported structure")
        widths[gid] = couts.pop()

    fixed_groups = {gid_of[mask_groups[i][0]]: why for i, why in trace.fixed_groups(mask_groups).items()}
    inputs = trace.input_groups(mask_groups, [gid_of[mem[0]] for mem in mask_groups])
    producer_group = {conv: None if i is None else gid_of[mask_groups[i][0]] for conv, i in inputs.items()}

    _check_group_sizes(group_sizes, set(layers) | {_base(n) for n in layers} | set(group_members))
    stripes = dict(zip(group_members, _grids.group_stripes(trace, mask_groups), strict=True))

    groups: dict[str, ChannelGroup] = {}
    for gid, mem in group_members.items():
        q = _grids.striped_q(_group_q(gid, mem, widths[gid], group_sizes, rn50, name), widths[gid], stripes[gid])
        groups[gid] = ChannelGroup(gid, tuple(mem), widths[gid], q, len(mem) > 1, gid not in fixed_groups,
                                   stripes[gid], fixed_groups.get(gid, ""))

    convs = [
        PrunableConv(layer.name, layer.family, layer.cin, layer.cout, gid_of[layer.name],
                     producer_group[layer.name], facts.bn[layer.name], layer.family.in_h, layer.producers)
        for layer in trace.layers
    ]
    blocks = []
    for raw in facts.blocks:
        gate = _gate_of_block(module, raw.name)
        if gate is None:
            continue
        in_groups = sorted({gid_of[n] for n in raw.input_convs})
        ends = [n for n in raw.convs if not any(n in layers[c].producers for c in raw.convs)]
        out_group = gid_of[ends[-1]]  # the branch's last conv writes the block output
        blocks.append(Block(raw.name, raw.convs, in_groups[0] if len(in_groups) == 1 else None, out_group, gate))
    return NetworkSpec(name, hw, convs, groups, blocks).keeping(keep)


def trace_keeping(model: str | nn.Module, input_size: int | tuple[int, int], keep: Iterable[str]) -> TraceResult:
    """:func:`~profiler.plan.trace_network` of ``model`` with the convs of every group that the ``keep`` patterns
    fix (:meth:`NetworkSpec.keeping`) marked fixed, so that a ``lattice`` sweep plan measures those groups at
    their whole width only, as the pruner will ask for them."""
    hw = normalise_size(input_size)
    spec = build_network_spec(model, hw, keep=keep)
    kept = {conv: g.fixed_by for g in spec.groups.values() if (g.fixed_by or "").startswith("keep ")
            for conv in g.convs}
    trace = trace_network(model, hw)
    return dataclasses.replace(trace, fixed={**kept, **trace.fixed})
