"""Random keep-masks for export tests: one per coupled conv group, at least one channel kept."""

from __future__ import annotations

import torch

from profiler._trace import TraceResult
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
