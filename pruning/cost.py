"""From a network, its channel importances and a latency model to a :class:`PruningProblem`, and back.

Methods (halp_mdp_spec.md §5-§8):

* ``halp`` (OCP+LLM): channels only; each conv's latency as a function of its own kept output items
  with its input width frozen at the current value (HALP's linear model, §5.1).
* ``mgp`` (MGP+LLM): the same plus removable blocks (§6): a removed block's convs cost nothing, its
  internal groups' value is lost, and so is its layers' share of a coupled group's value (conv3's share of
  the residual group, §4.2 / §8.2: :class:`~pruning.problem.BlockValue`).
* ``mdlm`` (OCP+MDLM): channels only; each conv's latency as the pairwise table
  ``M[k_out, k_in] = L(k_in·q_producer, k_out·q)`` (§7), so shrinking a producer is priced exactly.
* ``mdp`` (MGP+MDLM): pairwise terms and removable blocks (§8).

Items: a group's channels are sorted by importance and cut into items of ``q`` channels (§4.4); an
item's value is the sum of its channels' importances, and keeping ``k`` items keeps the top ``k·q``
channels. A group cut into stripes by grouped convs (:attr:`ChannelGroup.stripes`) ranks *positions*
instead: a position is the same channel of every stripe, scored by their summed importance, so any
``k`` items keep the same channels in each conv group. Latencies come from any fitted latency model
(``predict`` on LUT keys); the LLM gets the frozen input width through its ``cin_ref`` column.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from db.errors import LatlabError
from db.keys import ConvConfig
from latency_models.base import LatencyModel
from latency_models.features import frame_from_configs
from latency_models.network import network_latency
from latency_models.resolve import LutSettings as Settings  # execution settings of the LUT keys
from pruning.graph import ChannelGroup, NetworkSpec, PrunableConv
from pruning.methods import DEFAULT_KIND as DEFAULT_KIND  # re-exported: where most callers import it
from pruning.methods import METHODS
from pruning.problem import BlockValue, Group, LinearTerm, PairwiseTerm, PruningProblem, SolveResult

MAX_GAP = 0.01  # a solution proven within 1% of the optimum is used; further (time limit) is refused


@dataclass
class ProblemMap:
    """How problem indices map back to the network: group ids, blocks, channel orders."""

    group_ids: list[str]
    block_names: list[str]
    order: dict[str, np.ndarray]  # group id -> channel indices sorted by importance (descending)
    dense_latency: float  # what targets are shares of (the dense network's predicted conv latency)


def _predict(model: LatencyModel, configs: list[ConvConfig], cin_ref: list[int] | None) -> np.ndarray:
    if not configs:
        return np.zeros(0)
    frame = frame_from_configs(configs)
    if cin_ref is not None and getattr(model, "kind", None) == "llm":
        frame = frame.assign(cin_ref=cin_ref)
    return np.asarray(model.predict(frame), dtype=float)


def importance_order(importance: np.ndarray, stripes: int = 1) -> np.ndarray:
    """Channel indices by descending importance; with ``stripes`` > 1, whole positions across the stripes.

    The ``len(importance) / stripes`` positions are ranked by the summed importance of their channels, and
    each position contributes its channel in every stripe, in stripe order (stable on ties).
    """
    if stripes == 1:
        return np.argsort(-importance, kind="stable")
    per_stripe = len(importance) // stripes
    ranked = np.argsort(-importance.reshape(stripes, per_stripe).sum(axis=0), kind="stable")
    return (ranked[:, None] + per_stripe * np.arange(stripes)[None]).ravel()


def _group_importance(importances: Mapping[str, np.ndarray], gid: str, width: int) -> np.ndarray:
    """Group ``gid``'s per-channel importance (all ones when not given)."""
    return np.asarray(importances.get(gid, np.ones(width)), dtype=float).ravel()


def _groups(spec: NetworkSpec, importances: Mapping[str, np.ndarray], block_of_group: dict[str, int],
            min_keep_share: float, live: Mapping[str, int]) -> tuple[list[Group], dict[str, np.ndarray]]:
    groups, order = [], {}
    for gid, g in spec.groups.items():
        imp = _group_importance(importances, gid, g.width)
        if imp.shape != (g.width,) or not np.all(np.isfinite(imp)):
            raise LatlabError(f"importance of group {gid} must be {g.width} finite values, got shape {imp.shape}")
        order[gid] = importance_order(imp, g.stripes)
        items = imp[order[gid]].reshape(g.m, g.q).sum(axis=1)
        keep = g.m if not g.prunable else max(1, math.ceil(min_keep_share * g.m - 1e-9))
        most = min(int(live[gid]) // g.q, g.m) if gid in live else None
        if most:
            keep = min(keep, most)
        groups.append(Group.from_importances(items, min_keep=keep, block=block_of_group.get(gid), name=gid,
                                             max_keep=most))
    return groups, order


def _block_values(spec: NetworkSpec, importances: Mapping[str, np.ndarray],
                  layer_importances: Mapping[str, np.ndarray] | None, order: Mapping[str, np.ndarray],
                  block_of_conv: Mapping[str, int], internal: Mapping[str, int]) -> list[BlockValue]:
    """Per (coupled group, block holding some of its convs): the share of the group's value those convs hold.

    The share of a conv is its ``layer_importances`` entry (§4.2's split, which sums to the group score); without
    them every conv of the group holds an equal share.
    """
    index = {gid: i for i, gid in enumerate(spec.groups)}
    names = [b.name for b in spec.blocks]
    out: list[BlockValue] = []
    for gid, g in spec.groups.items():
        if gid in internal:  # its whole value goes with its block already
            continue
        by_block: dict[int, list[str]] = {}
        for c in g.convs:
            if c in block_of_conv:
                by_block.setdefault(block_of_conv[c], []).append(c)
        for b, convs in by_block.items():
            if layer_importances is None:
                share = _group_importance(importances, gid, g.width) * len(convs) / len(g.convs)
            else:
                missing = [c for c in convs if c not in layer_importances]
                if missing:
                    raise LatlabError(f"no per-layer importance for conv {missing[0]} (group {gid})")
                share = sum(np.asarray(layer_importances[c], dtype=float).ravel() for c in convs)
                if share.shape != (g.width,) or not np.all(np.isfinite(share)):
                    raise LatlabError(f"per-layer importance of {', '.join(convs)} must be {g.width} finite values")
            items = share[order[gid]].reshape(g.m, g.q).sum(axis=1)
            out.append(BlockValue(index[gid], b, np.concatenate([[0.0], np.cumsum(items)]), f"{gid}@{names[b]}"))
    return out


def _priced_states(g: ChannelGroup) -> tuple[np.ndarray, np.ndarray]:
    """The kept item counts to price for group ``g``, and for each ``k = 1..m`` the index of its price.

    A fixed group is priced at its full width only: no decision keeps fewer of its items, and the LUT of a
    lattice sweep holds only its full width.
    """
    if g.prunable:
        return np.arange(1, g.m + 1), np.arange(g.m)
    return np.array([g.m]), np.zeros(g.m, dtype=int)


def check_prunable(spec: NetworkSpec, method: str) -> None:
    """:class:`LatlabError` when ``method`` has nothing to decide on ``spec`` (no group of 2+ items, no block)."""
    with_blocks = method in ("mgp", "mdp")
    if not any(g.prunable and g.m > 1 for g in spec.groups.values()) and not (with_blocks and spec.blocks):
        raise LatlabError(f"{spec.model_name}: nothing for {method} to prune (no channel group with more than one "
                          f"item{', no removable block' if with_blocks else ''}); `latlab graph --model "
                          f"{spec.model_name}` shows its groups")


def check_limits(spec: NetworkSpec, method: str, *, min_keep_share: float = 0.0,
                 max_kept_blocks: int | None = None) -> None:
    """:class:`LatlabError` unless ``min_keep_share`` is in [0, 1] and ``max_kept_blocks`` is None or a block
    count ``method`` can keep on ``spec`` (the limits of :func:`build_problem`, checked before any work)."""
    if not 0 <= min_keep_share <= 1:
        raise LatlabError(f"the least kept share of a group's channels must be in [0, 1], got {min_keep_share}")
    if max_kept_blocks is None:
        return
    if method not in ("mgp", "mdp"):
        raise LatlabError(f"max_kept_blocks={max_kept_blocks}: {method} removes no blocks (mgp and mdp do)")
    if not 0 <= max_kept_blocks <= len(spec.blocks):
        raise LatlabError(f"max_kept_blocks={max_kept_blocks}: {spec.model_name} has {len(spec.blocks)} removable "
                          f"blocks, so it must be in [0, {len(spec.blocks)}]")


def build_problem(
    spec: NetworkSpec, model: LatencyModel, importances: Mapping[str, np.ndarray], *, method: str,
    target: float, settings: Settings, min_keep_share: float = 0.0, max_kept_blocks: int | None = None,
    live: Mapping[str, int] | None = None, layer_importances: Mapping[str, np.ndarray] | None = None,
) -> tuple[PruningProblem, ProblemMap]:
    """The pruning problem of ``method`` at ``target`` × the dense latency (both from ``model``).

    ``importances`` maps group id -> one score per channel (missing groups: uniform). A prunable group keeps
    at least one item, and at least ``min_keep_share`` of its items (rounded up) unless its block is removed.
    ``max_kept_blocks`` (mgp, mdp): keep at most that many of the removable blocks (MGP's ``--blocks_num``).
    ``live`` (pruning during training): the channels each group still has; it keeps at most those (their
    importances must be 0 elsewhere, so that they rank last), and 0 removes the group's block.
    ``layer_importances`` (mgp, mdp): conv -> its share of its group's scores (§4.2), for the value a removed
    block's layers take from a coupled group; without them, each conv of a group holds an equal share.
    """
    if method not in METHODS:
        raise LatlabError(f"unknown pruning method {method!r}; choose from {', '.join(METHODS)}")
    if not 0 < target <= 1:
        raise LatlabError(f"target must be the kept share of latency in (0, 1], got {target}")
    check_prunable(spec, method)
    check_limits(spec, method, min_keep_share=min_keep_share, max_kept_blocks=max_kept_blocks)
    with_blocks = method in ("mgp", "mdp")
    pairwise = method in ("mdlm", "mdp")
    block_names = [b.name for b in spec.blocks] if with_blocks else []
    block_of_conv = {c: i for i, b in enumerate(spec.blocks) if with_blocks for c in b.convs}
    block_of_group = {
        gid: block_of_conv[g.convs[0]] for gid, g in spec.groups.items()
        if g.convs[0] in block_of_conv and all(block_of_conv.get(c) == block_of_conv[g.convs[0]] for c in g.convs)
    }
    groups, order = _groups(spec, importances, block_of_group, min_keep_share, live or {})
    index = {gid: i for i, gid in enumerate(spec.groups)}
    # every conv's priced states first, then one prediction for all pairwise and one for all linear terms
    pair_convs: list[tuple[PrunableConv, ChannelGroup, ChannelGroup, np.ndarray, np.ndarray, np.ndarray,
                           np.ndarray]] = []
    line_convs: list[tuple[PrunableConv, ChannelGroup, int, np.ndarray]] = []
    pair_configs: list[ConvConfig] = []
    line_configs: list[ConvConfig] = []
    line_cins: list[int] = []
    for conv in spec.convs:
        g = spec.groups[conv.group]
        ks, rows = _priced_states(g)
        p = spec.groups.get(conv.producer_group) if conv.producer_group else None
        if pairwise and p is not None and not conv.depthwise:
            kin, cols = _priced_states(p)
            pair_configs += [ConvConfig(conv.family, int(j) * p.q, int(i) * g.q, settings.batch, settings.dtype,
                                        settings.layout, settings.op) for i in ks for j in kin]
            pair_convs.append((conv, g, p, ks, rows, kin, cols))
            continue
        cins = [int(k * g.q) if conv.depthwise else conv.cin for k in ks]
        line_configs += [ConvConfig(conv.family, ci, int(k * g.q), settings.batch, settings.dtype, settings.layout,
                                    settings.op) for ci, k in zip(cins, ks, strict=True)]
        line_cins += cins
        line_convs.append((conv, g, len(ks), rows))
    pair_ms, start = _predict(model, pair_configs, None), 0
    terms: list[PairwiseTerm] = []
    for conv, g, p, ks, rows, kin, cols in pair_convs:
        matrix = np.zeros((g.m + 1, p.m + 1))
        matrix[1:, 1:] = pair_ms[start:start + len(ks) * len(kin)].reshape(len(ks), len(kin))[np.ix_(rows, cols)]
        start += len(ks) * len(kin)
        terms.append(PairwiseTerm(index[g.id], index[p.id], matrix, block_of_conv.get(conv.name), conv.name))
    line_ms, start = _predict(model, line_configs, line_cins), 0
    linear: list[LinearTerm] = []
    for conv, g, n, rows in line_convs:
        costs = np.concatenate([[0.0], line_ms[start:start + n][rows]])
        start += n
        linear.append(LinearTerm(index[g.id], costs, block_of_conv.get(conv.name), conv.name))
    dense = sum(t.costs[-1] for t in linear) + sum(t.matrix[-1, -1] for t in terms)
    shares = _block_values(spec, importances, layer_importances, order, block_of_conv, block_of_group)
    problem = PruningProblem(groups, budget=float(target * dense), linear=linear, pairwise=terms,
                             blocks=list(range(len(block_names))), max_kept_blocks=max_kept_blocks,
                             name=f"{spec.model_name} {method} {target:g}", block_values=shares)
    return problem, ProblemMap(list(spec.groups), block_names, order, float(dense))


def spec_latency(model: LatencyModel, spec: NetworkSpec, settings: Settings,
                 group_widths: Mapping[str, int] | None = None, removed_blocks: Iterable[str] = (), *,
                 freeze_cin: bool = False) -> float:
    """Predicted conv latency (ms) of ``spec`` at ``group_widths`` (0 or missing: dense) without ``removed_blocks``.

    ``freeze_cin=True`` is HALP's view: every conv priced at its dense input width.
    """
    widths = spec.conv_widths({g: w for g, w in (group_widths or {}).items() if w}, removed_blocks)
    return float(network_latency(model, spec.convs, widths, batch=settings.batch, dtype=settings.dtype,
                                 layout=settings.layout, op=settings.op, freeze_cin=freeze_cin))


def solution_masks(spec: NetworkSpec, result: SolveResult, mapping: ProblemMap) -> tuple[dict[str, torch.Tensor],
                                                                                       list[str]]:
    """``({conv: kept output channels}, removed block names)`` of a solved problem.

    Raises :class:`LatlabError` if the result holds no solution (infeasible, time-out, error), or one the solver
    stopped on (time limit) more than ``MAX_GAP`` below its proven bound.
    """
    if not result.ok or result.solution is None:
        reach = (f"; the lowest target this network reaches is {result.min_latency / mapping.dense_latency:.3f}"
                 if result.min_latency is not None and mapping.dense_latency > 0 else "")
        raise LatlabError(f"no pruning solution ({result.status}): {result.message}{reach}")
    if result.status != "optimal" and result.gap is not None and result.gap > MAX_GAP:
        raise LatlabError(f"the solver stopped {result.gap:.1%} short of its proven bound ({result.status}: "
                          f"{result.message}); its solution may keep far less than the best one. Raise the time limit")
    removed = [mapping.block_names[b] for b in sorted(result.solution.removed_blocks)]
    masks: dict[str, torch.Tensor] = {}
    for gid, k in zip(mapping.group_ids, result.solution.kept, strict=True):
        g = spec.groups[gid]
        keep = torch.zeros(g.width, dtype=torch.bool)
        n = int(k) * g.q if k else g.width  # a removed block's internal groups: irrelevant, keep dense
        keep[torch.as_tensor(mapping.order[gid][:n].copy())] = True
        for conv in g.modules:
            masks[conv] = keep
    return masks, removed


def group_widths(spec: NetworkSpec, result: SolveResult, mapping: ProblemMap) -> dict[str, int]:
    """Kept channels per group (0 for the internal groups of removed blocks)."""
    if result.solution is None:
        return {}
    return {gid: int(k) * spec.groups[gid].q for gid, k in zip(mapping.group_ids, result.solution.kept, strict=True)}
