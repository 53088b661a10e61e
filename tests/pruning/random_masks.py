"""Random keep-masks for export tests: one per coupled conv group, at least one channel kept."""

from __future__ import annotations

import numpy as np
import torch

from profiler._trace import TraceResult
from pruning.cost import importance_order
from pruning.graph import NetworkSpec
from pruning.importance import coupled_groups


def random_masks(trace: TraceResult, seed: int, p: float = 0.5) -> dict[str, torch.Tensor]:
    """``{conv: keep-vector}``: each group keeps each channel with probability ``p`` (and one channel at least)."""
    gen = torch.Generator().manual_seed(seed)
    cout = {layer.name: layer.cout for layer in trace.layers}
    masks = {}
    for group in coupled_groups(trace):
        keep = torch.rand(cout[group[0]], generator=gen) < p
        keep[torch.randint(0, len(keep), (1,), generator=gen)] = True
        for name in group:
            masks[name] = keep.clone()
    return masks


def random_spec_masks(spec: NetworkSpec, seed: int) -> dict[str, torch.Tensor]:
    """``{conv: keep-vector}`` as the pruner makes them: random importances, a random number of items kept per group."""
    rng = np.random.default_rng(seed)
    masks = {}
    for g in spec.groups.values():
        keep = torch.zeros(g.width, dtype=torch.bool)
        n = int(rng.integers(1, g.m + 1)) * g.q if g.prunable else g.width
        keep[torch.as_tensor(importance_order(rng.random(g.width), g.stripes)[:n].copy())] = True
        for conv in g.convs:
            masks[conv] = keep
    return masks
