"""Soft channel masks (spec §5.5, §13.1 item 6) implemented with ``torch.nn.utils.parametrize``.

Each masked conv's ``weight`` (and ``bias``) and its BN's ``weight``/``bias`` get a parametrization that
multiplies by a registered ``mask`` buffer, so masked rows are exactly zero in every forward and receive
zero gradient; the originals keep the same ``Parameter`` objects (optimizers built earlier stay valid).
BN running stats: choice = explicit zeroing. They are zeroed when masks are applied/set and, while
applied, by a BN forward *pre*-hook in training mode; the BN update that follows keeps them exactly 0,
because a masked channel's input (its conv row and bias are masked) is exactly 0. With γ = β = 0 the BN
output of a masked channel is exactly 0 in train and eval mode whatever the stats are.

Checkpoints: the mask buffers are part of ``model.state_dict()`` (keys
``….parametrizations.weight.0.mask``), so apply :class:`ChannelMasks` to the fresh model before
``load_state_dict``; :meth:`ChannelMasks.state_dict` holds the boolean masks as well.

Block gates (MGP/MDP block removal, spec §6, §9.6): :class:`BlockGates` multiplies the ``weight``/``bias``
of a residual block's gate layer (:attr:`pruning.graph.Block.gate`: the BN that ends its residual branch, or
the branch's last conv in a pre-activation block) by a scalar ``gate`` buffer through the same
parametrization mechanism, so a removed block's branch adds exactly 0 (what
:func:`pruning.export.masked_reference` does) and the gate is saved with ``model.state_dict()``. Register
:class:`ChannelMasks` first, then :class:`BlockGates` (it stacks a second parametrization on those layers),
and do both before ``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from db.errors import LatlabError
from pruning.importance import Groups, GroupsIn, _modules, _width, normalise_groups

__all__ = ["BlockGates", "ChannelMasks", "raw_parameter"]


def raw_parameter(m: nn.Module, name: str) -> torch.Tensor | None:
    """The trained tensor behind ``m.<name>``: the parametrization's ``original`` when there is one."""
    if parametrize.is_parametrized(m, name):
        return m.parametrizations[name].original
    return getattr(m, name, None)


class _RowMask(nn.Module):
    """Parametrization: multiply along dim 0 by ``mask``."""

    def __init__(self, n: int, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("mask", torch.ones(n, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)


class ChannelMasks:
    """One keep-mask per coupled group, shared by all its convs and their BNs."""

    def __init__(self, model: nn.Module, groups: GroupsIn, bn_of: Mapping[str, str] | None = None,
                 apply: bool = True) -> None:
        """``groups`` as for :class:`~pruning.importance.TaylorImportance`; ``apply`` registers the masks now."""
        self.model = model
        self.groups: Groups = normalise_groups(groups, bn_of)
        self._mods = _modules(model, self.groups)
        self._width = {g: _width(self._mods, m, g) for g, m in self.groups.items()}
        dev = next(model.parameters()).device
        self._keep = {g: torch.ones(w, dtype=torch.bool, device=dev) for g, w in self._width.items()}
        self._drop = {g: ~k for g, k in self._keep.items()}  # what the BN hooks zero, kept ready for each forward
        self._hooks: list[Any] = []
        self.applied = False
        if apply:
            self.apply()

    # -------------------------------------------------------------------------------------- masks
    def set(self, group: str, keep: torch.Tensor) -> None:
        """Set ``group``'s kept output channels (bool, one per channel); all its convs share it.

        Call between iterations (e.g. after ``optimizer.step()``), not between a forward and its backward.
        """
        if group not in self._keep:
            raise LatlabError(f"unknown mask group {group!r}")
        keep = torch.as_tensor(keep).to(device=self._keep[group].device)
        if keep.dtype != torch.bool or keep.shape != self._keep[group].shape:
            raise LatlabError(f"mask for group {group!r} must be a bool tensor of shape "
                              f"{tuple(self._keep[group].shape)}, got {keep.dtype} {tuple(keep.shape)}")
        self._keep[group] = keep.clone()
        self._drop[group] = ~keep
        if self.applied:
            self._sync(group)

    def mask(self, group: str) -> torch.Tensor:
        """A copy of ``group``'s keep-mask."""
        return self._keep[group].clone()

    def kept(self) -> dict[str, int]:
        """``{group: number of kept channels}``."""
        return {g: int(k.sum()) for g, k in self._keep.items()}

    def conv_masks(self) -> dict[str, torch.Tensor]:
        """``{conv name: keep-mask}`` (the input :func:`pruning.export.export_pruned` takes)."""
        return {c: self._keep[g].clone() for g, m in self.groups.items() for c, _ in m}

    # ---------------------------------------------------------------------------------- apply/remove
    def _targets(self, group: str) -> list[tuple[nn.Module, str]]:
        out: list[tuple[nn.Module, str]] = []
        for c, b in self.groups[group]:
            conv = self._mods[c]
            out.append((conv, "weight"))
            if raw_parameter(conv, "bias") is not None:
                out.append((conv, "bias"))
            if b is not None:
                bn = self._mods[b]
                out += [(bn, n) for n in ("weight", "bias") if raw_parameter(bn, n) is not None]
        return out

    def apply(self) -> None:
        """Register the parametrizations and BN hooks (idempotent) and zero masked BN running stats."""
        if not self.applied:
            for g in self.groups:
                for m, name in self._targets(g):
                    if not parametrize.is_parametrized(m, name):
                        raw = raw_parameter(m, name)
                        parametrize.register_parametrization(m, name, _RowMask(raw.shape[0], raw.device, raw.dtype))
                for _, b in self.groups[g]:
                    if b is not None:
                        self._hooks.append(self._mods[b].register_forward_pre_hook(self._make_hook(g, b)))
            self.applied = True
        for g in self.groups:
            self._sync(g)

    def _make_hook(self, group: str, bn_name: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            if module.training:
                self._zero_stats(group, bn_name)
        return hook

    @torch.no_grad()
    def _zero_stats(self, group: str, bn_name: str) -> None:
        bn = self._mods[bn_name]
        drop = self._drop[group]
        for stat in ("running_mean", "running_var"):
            t = getattr(bn, stat, None)
            if t is not None:  # via .data: no autograd version bump (stats are not used by BN's backward)
                t.data.masked_fill_(drop.to(t.device), 0)  # elementwise: no host sync (bool indexing would sync)

    @torch.no_grad()
    def _sync(self, group: str) -> None:
        keep = self._keep[group]
        for m, name in self._targets(group):
            if parametrize.is_parametrized(m, name):
                for p in m.parametrizations[name]:
                    if isinstance(p, _RowMask):
                        p.mask.copy_(keep.to(p.mask.device, p.mask.dtype))
        for _, b in self.groups[group]:
            if b is not None:
                self._zero_stats(group, b)

    def remove(self, bake: bool = True) -> None:
        """Unregister everything. ``bake=True`` leaves plain parameters holding the masked (zeroed) values."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        for g in self.groups:
            for m, name in self._targets(g):
                if parametrize.is_parametrized(m, name):
                    parametrize.remove_parametrizations(m, name, leave_parametrized=bake)
        self.applied = False

    # ------------------------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, torch.Tensor]:
        """``{group: bool keep-mask}`` (safe for ``torch.load(weights_only=True)``)."""
        return {g: k.clone().cpu() for g, k in self._keep.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore masks from :meth:`state_dict` (the group names must match)."""
        if set(state) != set(self._keep):
            raise LatlabError("mask state names different groups than this model's")
        for g, k in state.items():
            self.set(g, k)


class _Gate(nn.Module):
    """Parametrization: multiply by a scalar ``gate`` buffer (1 = block kept, 0 = block removed)."""

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("gate", torch.ones((), device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate.to(x.dtype)


class BlockGates:
    """Gate whole residual blocks off by zeroing their gate layer (a BN's γ, β and, like masked channels, its
    running stats; or a conv's weight and bias)."""

    def __init__(self, model: nn.Module, gates: Mapping[str, str]) -> None:
        """``gates``: ``{block name: name of the BN or conv that ends its residual branch}`` (what
        :attr:`pruning.graph.Block.gate` holds).

        Every block gets a gate (open) now, so ``model.state_dict()`` keys do not depend on which are removed.
        """
        mods = dict(model.named_modules())
        self._layers: dict[str, nn.Module] = {}
        self._gates: dict[str, list[_Gate]] = {}
        self._removed: set[str] = set()
        self._hooks: list[Any] = []
        for block, name in gates.items():
            layer = mods.get(name)
            if not isinstance(layer, nn.BatchNorm2d | nn.Conv2d):
                raise LatlabError(f"block {block!r}: {name!r} is not a BatchNorm2d or Conv2d of the model")
            self._layers[block] = layer
            self._gates[block] = []
            for param in ("weight", "bias"):
                raw = raw_parameter(layer, param)
                if raw is None:
                    if isinstance(layer, nn.Conv2d) and param == "bias":
                        continue
                    raise LatlabError(f"block {block!r}: its BN {name} has no affine {param}; cannot gate it")
                gate = _Gate(raw.device, raw.dtype)
                parametrize.register_parametrization(layer, param, gate)
                self._gates[block].append(gate)
            if isinstance(layer, nn.BatchNorm2d):
                self._hooks.append(layer.register_forward_pre_hook(self._make_hook(block)))

    @property
    def blocks(self) -> list[str]:
        """Names of the gateable blocks."""
        return list(self._layers)

    def removed(self) -> list[str]:
        """Names of the gated-off blocks (sorted)."""
        return sorted(self._removed)

    def set_removed(self, blocks: Sequence[str] | set[str]) -> None:
        """Gate exactly ``blocks`` off (others on); unknown names raise."""
        unknown = set(blocks) - set(self._layers)
        if unknown:
            raise LatlabError(f"unknown blocks {sorted(unknown)}; gateable: {', '.join(self._layers) or 'none'}")
        self._removed = set(blocks)
        with torch.no_grad():
            for block, gates in self._gates.items():
                for g in gates:
                    g.gate.fill_(0.0 if block in self._removed else 1.0)
            for block in self._removed:
                self._zero_stats(block)

    def _make_hook(self, block: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            if module.training and block in self._removed:
                self._zero_stats(block)
        return hook

    @torch.no_grad()
    def _zero_stats(self, block: str) -> None:
        for stat in ("running_mean", "running_var"):
            t = getattr(self._layers[block], stat, None)
            if t is not None:
                t.data.zero_()

    def state_dict(self) -> dict[str, list[str]]:
        """``{"removed": [block names]}`` (safe for ``torch.load(weights_only=True)``)."""
        return {"removed": self.removed()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self.set_removed(list(state.get("removed", [])))

    def remove(self) -> None:
        """Remove the hooks (the parametrizations go with :meth:`ChannelMasks.remove`)."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
