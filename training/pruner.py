"""Prune while training: importance, scheduled exact solves, masks and block gates (spec §4, §5.4-5.5, §8.5).

Per iteration (after ``scaler.unscale_``, before ``optimizer.step``): :meth:`TrainingPruner.after_backward`
adds this batch's BN-Taylor scores while the schedule accumulates. After ``optimizer.step``:
:meth:`TrainingPruner.after_step` fires at the schedule's global steps: importance is all-reduced, rank 0 builds
the problem for the step's latency budget ``L_s`` and solves it exactly, the new group masks and removed
blocks are broadcast, and every rank applies them (:class:`pruning.masks.ChannelMasks`,
:class:`pruning.masks.BlockGates`) and resets the importance. A solver failure is an error naming the step
and the target on every rank (never a silent keep-everything, spec §8.4, §12.1 item 7).

Documented choices:

* **Masks only shrink.** Like HALP (which sorts the *live* channels only, §4.4), a channel masked once stays
  masked: dead channels get importance 0 (live ones a tiny positive floor, so they always rank first), and the
  new mask is intersected with the current one. Removed blocks stay removed (a gated block gets no gradient).
* **Dead rows stay exactly 0.** Parametrizations already zero masked rows in every forward and their
  gradients; at each prune step the underlying parameters *and their SGD momentum buffers* are zeroed too,
  so weight decay and momentum cannot move them again (zero grad + zero momentum + zero weight = fixed point).
* **HALP/MGP (LLM) freeze each conv's input width at its current value** (§5.1): the problem is built on a copy
  of the spec whose ``cin`` is the current producer width; MDLM/MDP price the input width exactly.
* **Per-layer importance split (§4.2)** sums back to the group score, and a group's layers share one item
  decision, so the objective is the group scores, less the shares that a removed block's layers hold of a
  coupled group (conv3's part of the residual group's score, §8.2) — the per-layer objective exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from db.errors import LatlabError
from latency_models.base import LatencyModel
from pruning.cost import Settings, build_problem, solution_masks, spec_latency
from pruning.graph import NetworkSpec
from pruning.importance import TaylorImportance
from pruning.masks import BlockGates, ChannelMasks, raw_parameter
from pruning.schedule import LatencySchedule
from pruning.solvers import get_solver
from training.distributed import broadcast_object

__all__ = ["TrainingPruner", "baked_copy", "block_gates"]

log = logging.getLogger(__name__)


def block_gates(spec: NetworkSpec) -> dict[str, str]:
    """``{block: the BN or conv that ends its residual branch}`` (what :class:`~pruning.masks.BlockGates` zeroes)."""
    return {b.name: b.gate for b in spec.blocks}


def baked_copy(model: nn.Module) -> nn.Module:
    """A deep copy with every parametrization folded into plain parameters and no hooks; ``model`` is untouched."""
    plain = copy.deepcopy(model)
    for m in plain.modules():
        m._forward_pre_hooks.clear()
        if parametrize.is_parametrized(m):
            # deepcopy shares the injected Parametrized* class, and removing a parametrization deletes its
            # property from that class: give the copy a class of its own so the original keeps working
            cls = type(m)
            m.__class__ = type(cls.__name__, cls.__bases__,
                               {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")})
            for name in list(m.parametrizations.keys()):
                parametrize.remove_parametrizations(m, name, leave_parametrized=True)
    return plain


class TrainingPruner:
    """Scheduled latency-constrained pruning of ``model`` during training (see the module docstring)."""

    def __init__(
        self, model: nn.Module, spec: NetworkSpec, *, method: str, schedule: LatencySchedule,
        latency_model: LatencyModel | None, settings: Settings, solver: str = "lagrange", time_limit: float = 60.0,
        min_keep_share: float = 0.0, max_kept_blocks: int | None = None, max_kept_blocks_from: int = 1,
    ) -> None:
        """Registers the masks (and block gates for mgp/mdp) on ``model`` now; build the optimizer afterwards.

        ``latency_model`` is needed on rank 0 only (it solves); other ranks may pass None. Every prunable group
        keeps at least ``min_keep_share`` of its dense channels (and one item) unless its block is removed. From
        pruning step ``max_kept_blocks_from`` (1-based) on, at most ``max_kept_blocks`` blocks stay.
        """
        self.model, self.spec, self.method, self.schedule = model, spec, method, schedule
        self.latency_model, self.settings = latency_model, settings
        self.solver, self.time_limit, self.min_keep_share = solver, time_limit, min_keep_share
        self.max_kept_blocks, self.max_kept_blocks_from = max_kept_blocks, max_kept_blocks_from
        groups = spec.group_members()
        self.importance = TaylorImportance(model, groups)
        self.masks = ChannelMasks(model, groups)
        with_blocks = method in ("mgp", "mdp") and bool(spec.blocks)
        self.gates = BlockGates(model, block_gates(spec)) if with_blocks else None
        self.history: list[dict[str, Any]] = []
        self._internal = {b.name: [gid for gid, g in spec.groups.items() if set(g.convs) <= set(b.convs)]
                          for b in spec.blocks}

    # ----------------------------------------------------------------------------------- per iteration
    def after_backward(self, global_step: int) -> None:
        """Accumulate importance (call after ``scaler.unscale_`` and before ``optimizer.step``)."""
        if self.schedule.accumulating(global_step):
            self.importance.accumulate()

    def after_step(self, global_step: int, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any] | None:
        """At a pruning step: solve, broadcast and apply; returns the step's record (else None)."""
        if not self.schedule.is_prune_step(global_step):
            return None
        k = self.schedule.step_index(global_step)
        target = self.schedule.target(k)
        self.importance.all_reduce()
        where = f"pruning step {k + 1}/{self.schedule.steps} (global step {global_step}, target {target:.4g} ms = " \
                f"{target / self.schedule.l0:.1%} of the dense {self.schedule.l0:.4g} ms)"
        if self.importance.count == 0:
            raise LatlabError(f"{where}: no importance accumulated ({self.importance.skipped} iterations skipped "
                              "as non-finite)")
        payload: dict[str, Any] | None = None
        if not (torch.distributed.is_initialized() and torch.distributed.get_rank() != 0):
            try:
                payload = self._solve(target, where, k)
            except LatlabError as exc:
                payload = {"error": str(exc)}
        payload = broadcast_object(payload)
        if "error" in payload:
            raise LatlabError(payload["error"])
        self._apply(payload["groups"], payload["removed"], optimizer)
        self.importance.reset()
        record = dict(payload["record"], global_step=global_step, step=k + 1)
        self.history.append(record)
        return record

    # ------------------------------------------------------------------------------------------ solve
    def _current_spec(self) -> NetworkSpec:
        if self.method not in ("halp", "mgp"):
            return self.spec
        widths = self.widths()
        convs = []
        for c in self.spec.convs:
            if not c.depthwise and c.producer_group is not None and widths.get(c.producer_group):
                c = dataclasses.replace(c, cin=widths[c.producer_group])
            convs.append(c)
        return NetworkSpec(self.spec.model_name, self.spec.input_size, convs, self.spec.groups, self.spec.blocks)

    def _scores(self) -> dict[str, np.ndarray]:
        out = {}
        for gid, s in self.importance.scores().items():
            s = s.detach().cpu().double().numpy().copy()
            live = self.masks.mask(gid).cpu().numpy()
            floor = max(float(s[live].max()) if live.any() else 0.0, 1e-30) * 1e-9
            s[live] = np.maximum(s[live], floor)
            s[~live] = 0.0
            out[gid] = s
        return out

    def _layer_scores(self) -> dict[str, np.ndarray]:
        """Each conv's share of its group's score (§4.2), 0 on dead channels."""
        out = {}
        for conv, s in self.importance.layer_scores().items():
            live = self.masks.mask(self.spec.conv(conv).group).cpu().numpy()
            out[conv] = np.where(live, s.detach().cpu().double().numpy(), 0.0)
        return out

    def _solve(self, target: float, where: str, k: int) -> dict[str, Any]:
        if self.latency_model is None:
            raise LatlabError(f"{where}: rank 0 has no latency model")
        t0 = time.perf_counter()
        live = {gid: int(self.masks.mask(gid).sum()) for gid in self.spec.groups}
        for block in self.gates.removed() if self.gates else []:  # a removed block stays removed
            live.update(dict.fromkeys(self._internal[block], 0))
        problem, mapping = build_problem(self._current_spec(), self.latency_model, self._scores(), method=self.method,
                                         target=1.0, settings=self.settings, min_keep_share=self.min_keep_share,
                                         max_kept_blocks=self.max_kept_blocks if k + 1 >= self.max_kept_blocks_from
                                         else None, live=live, layer_importances=self._layer_scores())
        problem = problem.with_budget(target)
        # targets are shares of the dense network's latency (L0), not of the already pruned one this problem starts from
        mapping = dataclasses.replace(mapping, dense_latency=self.schedule.l0)
        result = get_solver(self.solver, time_limit=self.time_limit).solve(problem)
        try:
            conv_masks, removed = solution_masks(self.spec, result, mapping)
        except LatlabError as exc:
            raise LatlabError(f"{where}: solver {self.solver}: {exc}") from None
        groups = {}
        for gid, g in self.spec.groups.items():
            keep = conv_masks[g.convs[0]] & self.masks.mask(gid).cpu()
            groups[gid] = keep.nonzero().flatten().tolist()
        removed_all = sorted(set(removed) | set(self.gates.removed() if self.gates else []))
        record = {"target_ms": target, "solver_status": result.status, "solver_latency_ms": result.latency,
                  "objective": result.objective, "solve_s": round(time.perf_counter() - t0, 4),
                  "removed_blocks": removed_all}
        return {"groups": groups, "removed": removed_all, "record": record}

    # ------------------------------------------------------------------------------------------ apply
    @torch.no_grad()
    def _apply(self, groups: dict[str, list[int]], removed: list[str], optimizer: torch.optim.Optimizer | None) -> None:
        for gid, idx in groups.items():
            keep = torch.zeros(self.spec.groups[gid].width, dtype=torch.bool)
            keep[torch.as_tensor(idx, dtype=torch.long)] = True
            self.masks.set(gid, keep)
        if self.gates is not None:
            self.gates.set_removed(removed)
        self.zero_dead(optimizer)

    @torch.no_grad()
    def zero_dead(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Zero masked rows (and whole gated BNs) of the raw parameters and of their momentum buffers."""
        mods = dict(self.model.named_modules())
        state = optimizer.state if optimizer is not None else {}
        targets: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        for gid, members in self.masks.groups.items():
            drop = ~self.masks.mask(gid)
            if not bool(drop.any()):
                continue
            for conv, bn in members:
                for m, name in [(mods[conv], "weight"), (mods[conv], "bias")] + (
                        [(mods[bn], "weight"), (mods[bn], "bias")] if bn else []):
                    p = raw_parameter(m, name)
                    if p is not None:
                        targets.append((p, drop))
        gate_of = block_gates(self.spec)
        for block in self.gates.removed() if self.gates else []:
            for name in ("weight", "bias"):
                p = raw_parameter(mods[gate_of[block]], name)
                if p is not None:
                    targets.append((p, None))
        for p, drop in targets:
            tensors = [p.data]
            buf = state.get(p, {}).get("momentum_buffer") if state else None
            if buf is not None:
                tensors.append(buf)
            for t in tensors:
                if drop is None:
                    t.zero_()
                else:
                    t[drop.to(t.device)] = 0

    # --------------------------------------------------------------------------------------- queries
    def widths(self) -> dict[str, int]:
        """Kept channels per group; 0 for the groups inside removed blocks."""
        w = self.masks.kept()
        for block in self.gates.removed() if self.gates else []:
            for gid in self._internal.get(block, []):
                w[gid] = 0
        return w

    def removed_blocks(self) -> list[str]:
        """Names of the removed blocks."""
        return self.gates.removed() if self.gates else []

    def predicted_latency(self) -> float | None:
        """Predicted conv latency (ms) of the current masks (None without a latency model)."""
        if self.latency_model is None:
            return None
        w = {g: n for g, n in self.widths().items() if self.spec.groups[g].prunable}
        return spec_latency(self.latency_model, self.spec, self.settings, w, self.removed_blocks())

    def state_dict(self) -> dict[str, Any]:
        """Masks, removed blocks, importance accumulators, schedule and history (weights_only-loadable)."""
        return {"masks": self.masks.state_dict(), "gates": self.gates.state_dict() if self.gates else {"removed": []},
                "importance": self.importance.state_dict(), "schedule": self.schedule.state_dict(),
                "history": [dict(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (call before loading the model state dict is fine either way)."""
        self.masks.load_state_dict(state["masks"])
        if self.gates is not None:
            self.gates.load_state_dict(state["gates"])
        elif state["gates"].get("removed"):
            raise LatlabError("checkpoint has removed blocks but this run's method does not remove blocks")
        self.importance.load_state_dict(state["importance"])
        then, now = float(state["schedule"]["l0"]), self.schedule.l0
        if not math.isclose(then, now, rel_tol=1e-6):
            raise LatlabError(f"the checkpoint's run priced the dense network at {then:.6g} ms, the latency model "
                              f"resolved now at {now:.6g} ms: the LUT or the latency-model settings (prune.db, sweep, "
                              "hardware, latency_model, kind) changed; resume with the run's own")
        self.schedule.load_state_dict(state["schedule"])
        self.history = [dict(h) for h in state["history"]]
