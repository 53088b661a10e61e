"""Can latlab prune this network? Random masks as the pruner makes them, exported and checked.

:func:`check_export` is what ``latlab graph --check`` runs before anyone sweeps a LUT for a network: on a copy
with random BatchNorm parameters and statistics taken from a random batch, every prunable group keeps a random
number of items chosen by random importances (whole positions across the stripes of grouped convs), every other
removable block goes, and the slim network is exported, compared with the masked dense one and passed through
``torch.export``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pruning.cost import importance_order
from pruning.export import export_checked, export_program
from pruning.graph import NetworkSpec

__all__ = ["ExportCheck", "calibrate_bn", "check_export", "random_masks", "randomise_bn"]


def random_masks(spec: NetworkSpec, seed: int) -> dict[str, torch.Tensor]:
    """``{conv: keep-vector}`` as the pruner makes them: random importances, a random number of items kept per
    prunable group, at least one item fewer than all where there are two (so that every such group is tested);
    fixed groups keep every channel."""
    rng = np.random.default_rng(seed)
    masks = {}
    for g in spec.groups.values():
        keep = torch.zeros(g.width, dtype=torch.bool)
        n = int(rng.integers(1, max(g.m, 2))) * g.q if g.prunable else g.width
        keep[torch.as_tensor(importance_order(rng.random(g.width), g.stripes)[:n].copy())] = True
        for conv in g.modules:
            masks[conv] = keep
    return masks


@torch.no_grad()
def randomise_bn(model: nn.Module, seed: int) -> None:
    """Give every BatchNorm2d random affine parameters and running statistics (in place), so that a check
    notices a BN sliced at the wrong channels even on a freshly initialised network; other norms (GroupNorm,
    LayerNorm) get a random affine bias, so that a branch they end is not 0 by its initialisation."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
        elif isinstance(m, nn.GroupNorm | nn.LayerNorm) and getattr(m, "bias", None) is not None:
            m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)


@torch.no_grad()
def calibrate_bn(model: nn.Module, batch: torch.Tensor) -> None:
    """Set every BatchNorm2d's running statistics to those of ``batch`` (the rest of the network stays in eval
    mode), so that an untrained network's activations stay of order one instead of growing layer by layer."""
    was_training = model.training
    model.eval()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: one batch sets the statistics
        m.train()
    try:
        model(batch)
    finally:
        for m, momentum in zip(bns, saved, strict=True):
            m.momentum = momentum
        model.train(was_training)


@dataclass
class ExportCheck:
    """What :func:`check_export` did and found."""

    kept_items: int
    items: int
    removed_blocks: list[str]
    max_logit_delta: float
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    onnx_max_delta: float | None = None


def check_export(model: nn.Module, spec: NetworkSpec, *, seed: int = 0, onnx: str | Path | None = None
                 ) -> ExportCheck:
    """Export ``model`` (not modified) with :func:`random_masks` and every other block of ``spec`` removed,
    check it against the masked network (:class:`LatlabError` beyond tolerance) and ``torch.export`` it.

    With ``onnx``, the program is also written there as ONNX and run in ONNX Runtime against the slim network.
    """
    t0 = time.perf_counter()
    net = copy.deepcopy(model).float().eval()
    randomise_bn(net, seed)
    calibrate_bn(net, torch.randn(4, 3, *spec.input_size, generator=torch.Generator().manual_seed(seed)))
    masks = random_masks(spec, seed)
    removed = [b.name for b in spec.blocks][::2]
    slim, delta, counts = export_checked(net, spec.input_size, masks, removed)
    program = export_program(slim, spec.input_size)
    onnx_delta = None
    if onnx is not None:
        from pruning.onnx_export import onnx_max_delta, save_onnx

        example = torch.randn(2, 3, *spec.input_size, generator=torch.Generator().manual_seed(seed))
        onnx_delta = onnx_max_delta(save_onnx(program, onnx), slim.eval(), example)
    kept = sum(int(masks[g.convs[0]].sum()) // g.q for g in spec.groups.values() if g.prunable)
    return ExportCheck(kept, spec.n_items, removed, delta, counts, time.perf_counter() - t0, onnx_delta)
