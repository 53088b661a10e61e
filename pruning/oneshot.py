"""One-shot latency-constrained pruning: importance → problem → exact solve → masks → slim network.

The training loop (issue #6) repeats the same steps on a schedule; this module does them once, for
``latlab prune`` and for users who prune a trained network and fine-tune it elsewhere.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from db.errors import LatlabError
from latency_models.base import LatencyModel
from pruning.cost import ProblemMap, Settings, build_problem, group_widths, solution_masks, spec_latency
from pruning.export import export_checked, save_pruned
from pruning.graph import NetworkSpec
from pruning.importance import TaylorImportance, magnitude_importance, magnitude_layer_importance
from pruning.loss import ClassificationLoss
from pruning.problem import SolveResult
from pruning.solvers import get_solver

log = logging.getLogger(__name__)


def _numpy(scores: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: s.cpu().numpy() for k, s in scores.items()}


def magnitude_scores(model: nn.Module, spec: NetworkSpec) -> dict[str, np.ndarray]:
    """Data-free importance per group (BN |γ| summed over the group's convs)."""
    return _numpy(magnitude_importance(model, spec.group_members()))


def magnitude_layer_scores(model: nn.Module, spec: NetworkSpec) -> dict[str, np.ndarray]:
    """Data-free importance per conv (its BN |γ|): its share of :func:`magnitude_scores`."""
    return _numpy(magnitude_layer_importance(model, spec.group_members()))


def taylor_scores(model: nn.Module, spec: NetworkSpec, batches: Any, *, max_batches: int
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """HALP's BN-Taylor importance over up to ``max_batches`` (images, labels) batches: per group, and per conv
    (its share, §4.2). The loss is training's (label smoothing 0.1); the model's buffers (BN running statistics)
    are restored afterwards, so the network that is then exported is the one given."""
    importance = TaylorImportance(model, spec.group_members())
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    model.train()
    loss_fn = ClassificationLoss(label_smoothing=0.1)  # GoogLeNet/Inception-v3 train with their auxiliary heads
    seen = 0
    try:
        for images, labels in batches:
            model.zero_grad(set_to_none=True)
            loss_fn(model(images), labels).backward()
            importance.accumulate()
            seen += 1
            if seen >= max_batches:
                break
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
    if seen == 0:
        raise LatlabError("the dataset gave no batches to compute importance from")
    return _numpy(importance.scores()), _numpy(importance.layer_scores())


@dataclass
class PruneResult:
    """Everything a one-shot pruning produced."""

    method: str
    target: float
    result: SolveResult
    mapping: ProblemMap
    masks: dict[str, torch.Tensor]
    removed_blocks: list[str]
    widths: dict[str, int]
    predicted_dense_ms: float
    predicted_pruned_ms: float
    slim: nn.Module | None = None
    max_logit_delta: float | None = None
    counts: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """One flat record of the run: method, target, solver status and time, predicted latencies, counts."""
        return {
            "method": self.method, "target": self.target, "status": self.result.status,
            "solver": self.result.backend, "solve_s": round(self.result.seconds, 4),
            "objective": self.result.objective, "bound": self.result.bound, "gap": self.result.gap,
            "predicted_dense_ms": self.predicted_dense_ms, "predicted_pruned_ms": self.predicted_pruned_ms,
            "constrained_ms": self.result.latency, "budget_ms": self.target * self.predicted_dense_ms,
            "removed_blocks": self.removed_blocks, "max_logit_delta": self.max_logit_delta, **self.counts,
        }


def prune_once(
    model: nn.Module, spec: NetworkSpec, latency_model: LatencyModel, importances: dict[str, np.ndarray], *,
    method: str, target: float, settings: Settings, solver: str = "lagrange", time_limit: float = 60.0,
    verify_input: tuple[int, ...] | None = None, min_keep_share: float = 0.0, max_kept_blocks: int | None = None,
    layer_importances: dict[str, np.ndarray] | None = None,
) -> PruneResult:
    """Solve the pruning problem and export the slim network (verified against the masked one).

    ``importances`` per group; ``layer_importances`` per conv (its share; mgp/mdp, see
    :func:`pruning.cost.build_problem`).
    """
    problem, mapping = build_problem(spec, latency_model, importances, method=method, target=target,
                                     settings=settings, min_keep_share=min_keep_share, max_kept_blocks=max_kept_blocks,
                                     layer_importances=layer_importances)
    if solver == "dp" and (problem.has_blocks or not problem.is_linear):
        raise LatlabError(f"the dp solver handles halp (OCP+LLM) only; use lagrange or milp-highs for {method}")
    result = get_solver(solver, time_limit=time_limit).solve(problem)
    masks, removed = solution_masks(spec, result, mapping)
    widths = group_widths(spec, result, mapping)
    pruned_ms = spec_latency(latency_model, spec, settings, widths, removed)
    out = PruneResult(method, target, result, mapping, masks, removed, widths, mapping.dense_latency, pruned_ms)
    t0 = time.perf_counter()
    out.slim, out.max_logit_delta, counts = export_checked(model, spec.input_size, masks, removed, verify_input)
    out.counts = {**counts, "export_s": round(time.perf_counter() - t0, 3)}
    return out


_HALP_NOTE = "; HALP prices every conv at its dense input width, so it over-prices the pruned network"


def save_outputs(res: PruneResult, spec: NetworkSpec, out_dir: Path, config: dict[str, Any]) -> dict[str, Path]:
    """Write masks (weights-only loadable), the slim network (torch.export .pt2), result.json, report.md."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    assert res.slim is not None
    paths = {**save_pruned(out_dir, res.slim, res.masks, res.removed_blocks, spec.input_size,
                           model=spec.model_name, variant=f"{res.method}{round(100 * res.target)}"),
             "result": out_dir / "result.json", "report": out_dir / "report.md"}
    body = {"config": config, "summary": res.summary(), "solver": res.result.as_dict(),
            "group_widths": res.widths, "dense_widths": spec.dense_widths()}
    paths["result"].write_text(json.dumps(body, indent=2, default=float))
    made = config.get("provenance") or {}
    lines = [
        f"# {spec.model_name}: {res.method} at {res.target:.0%} of the dense latency", "",
        f"- input {spec.input_size[0]}×{spec.input_size[1]}; latency model: {config.get('latency_model', '?')}; LUT "
        f"settings: {', '.join(f'{k} {v}' for k, v in (config.get('lut_settings') or {}).items()) or '?'}",
        f"- solver `{res.result.backend}`: {res.result.status} in {res.result.seconds:.3f} s, objective "
        f"{_num(res.result.objective)}, bound {_num(res.result.bound)}",
        f"- predicted conv latency: dense {res.predicted_dense_ms:.4g} ms → pruned {res.predicted_pruned_ms:.4g} ms; "
        f"as the method's problem prices it {res.result.latency:.4g} ms (budget "
        f"{res.target * res.predicted_dense_ms:.4g} ms{_HALP_NOTE if res.method == 'halp' else ''})",
        f"- parameters {res.counts['params_dense']:,} → {res.counts['params_pruned']:,}; MACs/image "
        f"{res.counts['macs_dense']:,} → {res.counts['macs_pruned']:,}",
        f"- removed blocks: {', '.join(res.removed_blocks) or 'none'}",
        f"- exported network checked against the masked one: max |Δ logits| = {res.max_logit_delta:.2e}", "",
        "| group | dense | kept |", "|---|---|---|",
        *[f"| {g} | {spec.groups[g].width} | {w} |" for g, w in res.widths.items()], "",
    ]
    if made:
        lines += [f"Made by latlab {made.get('latlab')} with torch {made.get('torch')}, torchvision "
                  f"{made.get('torchvision')} (CUDA {made.get('cuda')}, cuDNN {made.get('cudnn')}); the options are in "
                  "config.json.", ""]
    paths["report"].write_text("\n".join(lines))
    return paths


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.10g}"
