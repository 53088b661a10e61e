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
from profiler._trace import TraceResult, _PathTracer, _UnionFind

__all__ = [
    "Groups", "TaylorImportance", "build_groups", "conv_bn_pairs", "coupled_groups", "magnitude_importance",
    "normalise_groups",
]

Groups = dict[str, list[tuple[str, "str | None"]]]


def _base(name: str) -> str:
    return name.split("#", 1)[0]


def conv_bn_pairs(model: nn.Module, trace: TraceResult | None = None) -> dict[str, str]:
    """``{conv name: bn name}`` for every Conv2d whose output goes straight into a BatchNorm2d (torch.fx).

    A conv whose output has other users besides that BN is still paired (the BN is applied right after it).
    With ``trace`` given, only its convs are reported.
    """
    try:
        graph = _PathTracer().trace(model)
    except Exception as exc:
        raise LatlabError(f"torch.fx cannot trace the model: {type(exc).__name__}: {exc}") from None
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


def coupled_groups(trace: TraceResult, merge_depthwise: bool = True) -> list[tuple[str, ...]]:
    """``trace.groups`` (plus singletons for unlisted convs), module names only (``#k`` calls dropped).

    With ``merge_depthwise`` a depthwise conv joins its producer's group: its output channels are its
    input channels, so both must share one mask.
    """
    names: list[str] = []
    uf = _UnionFind()
    for layer in trace.layers:
        b = _base(layer.name)
        if b not in names:
            names.append(b)
            uf.add(b)
    for g in trace.groups:
        for other in g[1:]:
            uf.union(_base(g[0]), _base(other))
    if merge_depthwise:
        for layer in trace.layers:
            if layer.family.depthwise and len(layer.producers) == 1:
                uf.union(_base(layer.producers[0]), _base(layer.name))
    by_root: dict[str, list[str]] = {}
    for n in names:
        by_root.setdefault(uf.find(n), []).append(n)
    return [tuple(g) for g in by_root.values()]


def build_groups(model: nn.Module, trace: TraceResult, merge_depthwise: bool = True) -> Groups:
    """Importance/mask groups of ``model``: ``{first conv name: [(conv, bn or None), ...]}``."""
    pairs = conv_bn_pairs(model, trace)
    return {g[0]: [(c, pairs.get(c)) for c in g] for g in coupled_groups(trace, merge_depthwise)}


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


def _bn_term(bn: nn.BatchNorm2d) -> torch.Tensor:
    """``γ·∂γ + β·∂β`` per channel in fp32 (missing grads count as 0)."""
    total = torch.zeros(bn.num_features, dtype=torch.float32, device=_device(bn))
    for p in _bn_params(bn):
        if p is not None and p.grad is not None:
            total += p.detach().float() * p.grad.detach().float()
    return total


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


class TaylorImportance:
    """Accumulates HALP's BN-Taylor group scores and MGP/MDP's per-layer split of them.

    Group score per channel: ``|Σ_{l∈G} (γ_l·∂γ_l + β_l·∂β_l)|`` (sum inside the abs, §4.1); when a
    conv of the group has no BN, ``|Σ_{l∈G} Σ_j w_j·∂w_j|`` over the group's conv weights instead.
    Layer score (§4.2): the group score split in proportion to each layer's own ``|term_l|``.
    """

    def __init__(self, model: nn.Module, groups: GroupsIn, bn_of: Mapping[str, str] | None = None) -> None:
        """``groups``: pairs ``(conv, bn or None)`` or conv names whose BN is looked up in ``bn_of``
        (e.g. :func:`conv_bn_pairs`)."""
        self.model = model
        self.groups: Groups = normalise_groups(groups, bn_of)
        self._mods = _modules(model, self.groups)
        self._width = {g: _width(self._mods, m, g) for g, m in self.groups.items()}
        self._device = _device(model)
        self._counts = torch.zeros(2, dtype=torch.float64, device=self._device)  # counted, skipped
        self._group_acc: dict[str, torch.Tensor] = {}
        self._layer_acc: dict[str, torch.Tensor] = {}
        self.reset()

    def reset(self) -> None:
        """Zero the accumulators and the counters (after a pruning step)."""
        self._group_acc = {g: torch.zeros(w, dtype=torch.float32, device=self._device) for g, w in self._width.items()}
        self._layer_acc = {c: torch.zeros(self._width[g], dtype=torch.float32, device=self._device)
                           for g, m in self.groups.items() for c, _ in m}
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

    def _terms(self, members: Sequence[tuple[str, str | None]]) -> list[torch.Tensor]:
        if all(b is not None for _, b in members):
            return [_bn_term(self._mods[b]) for _, b in members]  # type: ignore[index, arg-type]
        return [_conv_term(self._mods[c]) for c, _ in members]  # type: ignore[arg-type]

    @torch.no_grad()
    def accumulate(self) -> torch.Tensor:
        """Add this iteration's scores; call after backward (and ``GradScaler.unscale_``).

        Returns a 0-dim bool tensor, False when the iteration was skipped as non-finite. Nothing here waits
        for the device (no host sync), so the host keeps queueing work ahead of a GPU.
        """
        group_s: dict[str, torch.Tensor] = {}
        layer_s: dict[str, torch.Tensor] = {}
        finite = []
        for g, members in self.groups.items():
            terms = [t.to(self._device) for t in self._terms(members)]
            s_g = torch.stack(terms).sum(0).abs()
            group_s[g] = s_g
            finite.append(torch.isfinite(s_g).all())
            if len(members) == 1:
                layer_s[members[0][0]] = s_g
                continue
            a = torch.stack(terms).abs()
            total = a.sum(0)
            total = torch.where(total == 0, torch.ones_like(total), total)
            for (c, _), a_l in zip(members, a, strict=True):
                layer_s[c] = s_g * a_l / total
        ok = torch.stack(finite).all()
        for acc, scores in ((self._group_acc, group_s), (self._layer_acc, layer_s)):
            for k, s in scores.items():
                acc[k] += torch.where(ok, s, torch.zeros_like(s))  # a skipped iteration adds exactly 0
        okf = ok.to(torch.float64)
        self._counts += torch.stack([okf, 1.0 - okf])
        return ok

    def all_reduce(self) -> None:
        """Sum accumulators and counts over DDP ranks (no-op unless torch.distributed is initialised).

        Scores are sum/count, so after this every rank holds the mean over all ranks' counted iterations.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return
        keys_g, keys_l = sorted(self._group_acc), sorted(self._layer_acc)
        flat = torch.cat([self._group_acc[k] for k in keys_g] + [self._layer_acc[k] for k in keys_l])
        flat = torch.cat([flat, self._counts.to(flat.dtype)])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        off = 0
        for store, keys in ((self._group_acc, keys_g), (self._layer_acc, keys_l)):
            for k in keys:
                n = store[k].numel()
                store[k] = flat[off:off + n].clone()
                off += n
        self._set_counts(float(flat[off]), float(flat[off + 1]))

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
                store[k] = v.detach().to(device=self._device, dtype=torch.float32).clone()
        self._set_counts(int(state["count"]), int(state["skipped"]))


@torch.no_grad()
def magnitude_importance(
    model: nn.Module, groups: GroupsIn, bn_of: Mapping[str, str] | None = None
) -> dict[str, torch.Tensor]:
    """Data-free fallback: per group, Σ over members of BN ``|γ|``, or the conv filter L2 norm without a BN."""
    gr = normalise_groups(groups, bn_of)
    mods = _modules(model, gr)
    out: dict[str, torch.Tensor] = {}
    for g, members in gr.items():
        _width(mods, members, g)
        total = None
        for c, b in members:
            if b is not None and getattr(mods[b], "weight", None) is not None:
                s = mods[b].weight.detach().float().abs()
            else:
                s = mods[c].weight.detach().float().flatten(1).norm(dim=1)
            total = s if total is None else total + s.to(total.device)
        out[g] = total  # type: ignore[assignment]
    return out
