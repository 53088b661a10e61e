"""BN-Taylor channel importance (spec §4.1-4.3) with a per-layer split (§4.2) and a magnitude fallback.

Groups are ``{group name: [(conv name, bn name or None), ...]}``; all convs of a group share one
output-channel mask. :func:`build_groups` makes them from a :class:`~profiler.plan.TraceResult`.

Per-iteration order (spec §9.3, §13.1 item 3)::

    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)      # with AMP: read *unscaled* gradients
    importance.accumulate()         # after DDP's gradient all-reduce (backward already did it)
    scaler.step(optimizer); scaler.update()

Iterations with a non-finite score (any group) are skipped and counted in :attr:`TaylorImportance.skipped`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import fx, nn

from db.errors import LatlabError
from profiler._trace import TraceResult, fx_trace

__all__ = [
    "Groups", "TaylorImportance", "build_groups", "conv_bn_pairs", "coupled_groups", "magnitude_importance",
    "magnitude_layer_importance", "normalise_groups",
]

Groups = dict[str, list[tuple[str, "str | None"]]]


def _base(name: str) -> str:
    return name.split("#", 1)[0]


def conv_bn_pairs(model: nn.Module, trace: TraceResult | None = None) -> dict[str, str]:
    """``{conv name: bn name}`` for every Conv2d whose output goes straight into a BatchNorm2d (torch.fx).

    A conv whose output has other users besides that BN is still paired (the BN is applied right after it).
    With ``trace`` given, only its convs are reported.
    """
    graph = fx_trace(model, "the model")[0]
    modules = dict(model.named_modules())
    wanted = {_base(layer.name) for layer in trace.layers} if trace is not None else None
    out: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0] if node.args else None
        is_conv = isinstance(src, fx.Node) and src.op == "call_module" and isinstance(modules.get(src.target),
                                                                                       nn.Conv2d)
        if is_conv and (wanted is None or src.target in wanted):
            out.setdefault(str(src.target), str(node.target))
    return out


def coupled_groups(trace: TraceResult) -> list[tuple[str, ...]]:
    """:meth:`~profiler.plan.TraceResult.mask_groups` by module name (``#k`` calls folded into the module).

    A depthwise conv joins its producer's group: its output channels are its input channels, so both must
    share one mask.
    """
    return [tuple(dict.fromkeys(_base(n) for n in g)) for g in trace.mask_groups()]


def build_groups(model: nn.Module, trace: TraceResult) -> Groups:
    """Importance/mask groups of ``model``: ``{first conv name: [(conv, bn or None), ...]}``."""
    pairs = conv_bn_pairs(model, trace)
    return {g[0]: [(c, pairs.get(c)) for c in g] for g in coupled_groups(trace)}


GroupsIn = Mapping[str, Sequence["tuple[str, str | None] | str"]]


def normalise_groups(groups: GroupsIn, bn_of: Mapping[str, str] | None = None) -> Groups:
    """``{group: [(conv, bn or None), ...]}`` from members given as pairs or as conv names (BN from ``bn_of``)."""
    out: Groups = {}
    for g, members in groups.items():
        row: list[tuple[str, str | None]] = []
        for m in members:
            if isinstance(m, str):
                row.append((m, (bn_of or {}).get(m)))
            else:
                conv, bn = m
                row.append((conv, bn))
        out[g] = row
    return out


def _modules(model: nn.Module, groups: Mapping[str, Sequence[tuple[str, str | None]]]) -> dict[str, nn.Module]:
    mods = dict(model.named_modules())
    out: dict[str, nn.Module] = {}
    for gname, members in groups.items():
        if not members:
            raise LatlabError(f"group {gname!r} is empty")
        for conv, bn in members:
            for name, kind in ((conv, nn.Conv2d), (bn, nn.BatchNorm2d)):
                if name is None:
                    continue
                if not isinstance(mods.get(name), kind):
                    raise LatlabError(f"group {gname!r}: {name!r} is not a {kind.__name__} of the model")
                out[name] = mods[name]
    return out


def _width(mods: Mapping[str, nn.Module], members: Sequence[tuple[str, str | None]], gname: str) -> int:
    widths = {mods[c].out_channels for c, _ in members}
    if len(widths) != 1:
        raise LatlabError(f"group {gname!r}: coupled convs have different output widths {sorted(widths)}")
    return widths.pop()


def _bn_params(bn: nn.BatchNorm2d) -> list[torch.Tensor | None]:
    params = getattr(bn, "parametrizations", None)
    if params is not None:  # masked by pruning.masks: gradients live on the originals
        return [params[n].original if n in params else getattr(bn, n) for n in ("weight", "bias")]
    return [bn.weight, bn.bias]


def _conv_weight(conv: nn.Conv2d) -> torch.Tensor:
    params = getattr(conv, "parametrizations", None)
    if params is not None and "weight" in params:
        return params["weight"].original
    return conv.weight


def _conv_term(conv: nn.Conv2d) -> torch.Tensor:
    """``Σ_j w_j·∂w_j`` per output channel in fp32."""
    w = _conv_weight(conv)
    if w.grad is None:
        return torch.zeros(conv.out_channels, dtype=torch.float32, device=w.device)
    return (w.detach().float() * w.grad.detach().float()).flatten(1).sum(1)


def _device(m: nn.Module) -> torch.device:
    p = next(m.parameters(), None)
    if p is None:
        p = next(m.buffers(), None)
    return p.device if p is not None else torch.device("cpu")


class _Layout:
    """Where each group's and each member conv's channels sit in the flat accumulators.

    Members whose group is priced by BN terms come first (their terms are one batched product). A group of
    one member scores ``|term|``; the members of coupled groups are summed in a zero-padded
    ``(coupled groups, members, width)`` block by one dense reduction (deterministic, unlike a scatter-add
    on a GPU)."""

    def __init__(self, groups: Groups, widths: Mapping[str, int], device: torch.device) -> None:
        names = list(groups)
        by_bn = {g: all(b is not None for _, b in m) for g, m in groups.items()}
        slots = [(g, i, c, b) for kind in (True, False) for g in names if by_bn[g] == kind
                 for i, (c, b) in enumerate(groups[g])]
        self.group_slices = _slices([(g, widths[g]) for g in names])
        self.layer_slices = _slices([(c, widths[g]) for g, _, c, _ in slots])
        self.bns = [(b, widths[g]) for g, _, _, b in slots if by_bn[g]]
        self.convs = [c for g, _, c, _ in slots if not by_bn[g]]
        coupled = [g for g in names if len(groups[g]) > 1]
        row = {g: k for k, g in enumerate(coupled)}
        members = max((len(groups[g]) for g in coupled), default=1)
        width = max((widths[g] for g in coupled), default=1)
        self.block = (len(coupled), members, width)
        term_pos = {c: torch.arange(s.start, s.stop) for c, s in self.layer_slices.items()}
        n_terms = sum(widths[g] for g, _, _, _ in slots)
        in_coupled = [(g, i, c) for g, i, c, _ in slots if g in row]
        # terms of coupled members, and where they go in the block / which (group, channel) of it they belong to
        self.coupled_terms = _cat([term_pos[c] for _, _, c in in_coupled], device)
        self.block_pos = _cat([(row[g] * members + i) * width + torch.arange(widths[g]) for g, i, _ in in_coupled],
                              device)
        self.block_group = _cat([row[g] * width + torch.arange(widths[g]) for g, _, _ in in_coupled], device)
        # group channel -> position in cat(|terms|, coupled group sums)
        self.group_pos = _cat([n_terms + row[g] * width + torch.arange(widths[g]) if g in row
                               else term_pos[groups[g][0][0]] for g in names], device)


def _cat(parts: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    return (torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)).to(device)


def _slices(sizes: Sequence[tuple[str, int]]) -> dict[str, slice]:
    out, off = {}, 0
    for name, n in sizes:
        out[name] = slice(off, off + n)
        off += n
    return out


class TaylorImportance:
    """Accumulates HALP's BN-Taylor group scores and MGP/MDP's per-layer split of them.

    Group score per channel: ``|Σ_{l∈G} (γ_l·∂γ_l + β_l·∂β_l)|`` (sum inside the abs, §4.1); when a
    conv of the group has no BN, ``|Σ_{l∈G} Σ_j w_j·∂w_j|`` over the group's conv weights instead.
    Layer score (§4.2): the group score split in proportion to each layer's own ``|term_l|``.
    Every group is accumulated at once in a few batched ops (a ResNet-50 iteration launches a few dozen
    kernels, not one per BN and group), into flat buffers that :meth:`scores` shows per group.
    """

    def __init__(self, model: nn.Module, groups: GroupsIn, bn_of: Mapping[str, str] | None = None) -> None:
        """``groups``: pairs ``(conv, bn or None)`` or conv names whose BN is looked up in ``bn_of``
        (e.g. :func:`conv_bn_pairs`)."""
        self.model = model
        self.groups: Groups = normalise_groups(groups, bn_of)
        self._mods = _modules(model, self.groups)
        self._width = {g: _width(self._mods, m, g) for g, m in self.groups.items()}
        self._device = _device(model)
        self._layout = _Layout(self.groups, self._width, self._device)
        self._zeros = {w: torch.zeros(w, device=self._device) for _, w in self._layout.bns}  # a param without grad
        n_group = sum(s.stop - s.start for s in self._layout.group_slices.values())
        n_layer = sum(s.stop - s.start for s in self._layout.layer_slices.values())
        self._group_flat = torch.zeros(n_group, dtype=torch.float32, device=self._device)
        self._layer_flat = torch.zeros(n_layer, dtype=torch.float32, device=self._device)
        self._group_acc = {g: self._group_flat[s] for g, s in self._layout.group_slices.items()}  # views
        self._layer_acc = {c: self._layer_flat[s] for c, s in self._layout.layer_slices.items()}
        self._counts = torch.zeros(2, dtype=torch.float64, device=self._device)  # counted, skipped

    def reset(self) -> None:
        """Zero the accumulators and the counters (after a pruning step)."""
        self._group_flat.zero_()
        self._layer_flat.zero_()
        self._counts = torch.zeros(2, dtype=torch.float64, device=self._device)

    @property
    def count(self) -> int:
        """Iterations accumulated (reading it waits for the device)."""
        return int(self._counts[0].item())

    @property
    def skipped(self) -> int:
        """Iterations skipped because a score was not finite."""
        return int(self._counts[1].item())

    def _set_counts(self, count: float, skipped: float) -> None:
        self._counts = torch.tensor([count, skipped], dtype=torch.float64, device=self._device)

    def _terms(self) -> torch.Tensor:
        """Every member's term, flat in slot order: ``γ·∂γ + β·∂β`` of the BN members (one batched product),
        then ``Σ_j w_j·∂w_j`` of the convs in groups without a BN on every member."""
        values: list[list[torch.Tensor]] = [[], []]  # γ then β of every BN
        grads: list[list[torch.Tensor]] = [[], []]
        for bn, width in self._layout.bns:
            for k, p in enumerate(_bn_params(self._mods[bn])):  # type: ignore[arg-type]
                has = p is not None and p.grad is not None
                values[k].append(p.detach() if has else self._zeros[width])  # type: ignore[union-attr]
                grads[k].append(p.grad.detach() if has else self._zeros[width])  # type: ignore[union-attr]
        parts = []
        if self._layout.bns:
            prod = torch.cat(values[0] + values[1]).float() * torch.cat(grads[0] + grads[1]).float()
            half = prod.numel() // 2
            parts.append(prod[:half] + prod[half:])
        parts += [_conv_term(self._mods[c]).to(self._device) for c in self._layout.convs]  # type: ignore[arg-type]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    @torch.no_grad()
    def accumulate(self) -> torch.Tensor:
        """Add this iteration's scores; call after backward (and ``GradScaler.unscale_``).

        Returns a 0-dim bool tensor, False when the iteration was skipped as non-finite. Nothing here waits
        for the device (no host sync), so the host keeps queueing work ahead of a GPU.
        """
        lay = self._layout
        term = self._terms()
        if term.device != self._device:
            raise LatlabError(f"the model's parameters are on {term.device} but its importance was set up on "
                              f"{self._device}: build TaylorImportance (and TrainingPruner) after moving the model")
        absterm = term.abs()  # a member of a one-conv group: its layer score is the group score |term|
        coupled = term[lay.coupled_terms]
        block = term.new_zeros(lay.block).view(-1).index_put_((lay.block_pos,), coupled).view(lay.block)
        sums = block.sum(1).abs().view(-1)  # (coupled groups × width): the sum inside the abs
        total = block.abs().sum(1).view(-1)
        total = torch.where(total == 0, torch.ones_like(total), total)
        mine = sums[lay.block_group]
        layer = absterm.index_put((lay.coupled_terms,), mine * coupled.abs() / total[lay.block_group])
        group = torch.cat([absterm, sums])[lay.group_pos]
        ok = torch.isfinite(group).all()
        self._group_flat += torch.where(ok, group, 0.0)  # a skipped iteration adds exactly 0
        self._layer_flat += torch.where(ok, layer, 0.0)
        okf = ok.to(torch.float64)
        self._counts += torch.stack([okf, 1.0 - okf])
        return ok

    def all_reduce(self) -> None:
        """Sum accumulators and counts over DDP ranks (no-op unless torch.distributed is initialised).

        Scores are sum/count, so after this every rank holds the mean over all ranks' counted iterations.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return
        flat = torch.cat([self._group_flat, self._layer_flat, self._counts.to(torch.float32)])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        n_group, n_layer = self._group_flat.numel(), self._layer_flat.numel()
        self._group_flat.copy_(flat[:n_group])
        self._layer_flat.copy_(flat[n_group:n_group + n_layer])
        self._set_counts(float(flat[-2]), float(flat[-1]))

    def _avg(self, acc: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        count = self.count
        if count == 0:
            raise LatlabError(f"no importance accumulated yet ({self.skipped} iterations skipped as non-finite)")
        return {k: v / count for k, v in acc.items()}

    def scores(self) -> dict[str, torch.Tensor]:
        """``{group: accumulated score / counted iterations}`` (fp32, one entry per output channel)."""
        return self._avg(self._group_acc)

    def layer_scores(self) -> dict[str, torch.Tensor]:
        """``{conv: its share of its group's score}`` (§4.2); the shares of a group sum to the group score."""
        return self._avg(self._layer_acc)

    def state_dict(self) -> dict[str, Any]:
        """Tensors and ints only (safe for ``torch.load(weights_only=True)``)."""
        return {"group": {k: v.clone() for k, v in self._group_acc.items()},
                "layer": {k: v.clone() for k, v in self._layer_acc.items()},
                "count": self.count, "skipped": self.skipped}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`; the groups must match."""
        for key, store in (("group", self._group_acc), ("layer", self._layer_acc)):
            got = state[key]
            if set(got) != set(store):
                raise LatlabError(f"importance state has different {key} names than this model's groups")
            for k, v in got.items():
                if v.shape != store[k].shape:
                    raise LatlabError(f"importance state for {k!r} has shape {tuple(v.shape)}, "
                                      f"expected {tuple(store[k].shape)}")
                store[k].copy_(v.detach().to(device=self._device, dtype=torch.float32))  # into the flat buffer
        self._set_counts(int(state["count"]), int(state["skipped"]))


@torch.no_grad()
def magnitude_layer_importance(
    model: nn.Module, groups: GroupsIn, bn_of: Mapping[str, str] | None = None
) -> dict[str, torch.Tensor]:
    """Data-free fallback per conv: its BN ``|γ|``, or its filters' L2 norm without a BN."""
    gr = normalise_groups(groups, bn_of)
    mods = _modules(model, gr)
    out: dict[str, torch.Tensor] = {}
    for g, members in gr.items():
        _width(mods, members, g)
        for c, b in members:
            if b is not None and getattr(mods[b], "weight", None) is not None:
                out[c] = mods[b].weight.detach().float().abs()
            else:
                out[c] = mods[c].weight.detach().float().flatten(1).norm(dim=1)
    return out


@torch.no_grad()
def magnitude_importance(
    model: nn.Module, groups: GroupsIn, bn_of: Mapping[str, str] | None = None
) -> dict[str, torch.Tensor]:
    """Data-free fallback per group: the sum of :func:`magnitude_layer_importance` over its members."""
    layers = magnitude_layer_importance(model, groups, bn_of)
    return {g: torch.stack([layers[c] for c, _ in members]).sum(dim=0)
            for g, members in normalise_groups(groups, bn_of).items()}
