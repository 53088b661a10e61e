"""Fine-tune the physically smaller network once the last pruning step is done (``prune.slim``).

After the final step the masks never change again, and the masked network and its export compute the same
function with the same gradients for every kept weight: masked rows are zero in every forward, a masked
channel's BN output is exactly 0 (γ = β = 0), a removed block adds exactly 0 to its shortcut. Training the
slim copy is therefore the same optimisation (up to floating-point reassociation in the smaller convs) on a
network that costs what the latency target says, without the masks' per-iteration work. Carried over: the
weights, the BN statistics and each kept weight's SGD momentum. A checkpoint holds the slim weights; resume
rebuilds the slim architecture from the dense model and the stored masks. At the end the slim weights are
put back into a dense-shaped state dict (zeros where pruned), from which export re-slices the same network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from pruning.export import export_pruned, verify_export
from pruning.masks import raw_parameter
from pruning.slices import Slices, put, take
from training.pruner import baked_copy

__all__ = ["carry_momentum", "dense_state_dict", "slim_copy"]


def slim_copy(masked: nn.Module, masks: Mapping[str, torch.Tensor], removed_blocks: Sequence[str],
              input_size: tuple[int, int]) -> tuple[nn.Module, Slices]:
    """The exported (slim) copy of the masked training network, checked against it, and its :data:`Slices`.

    Built and checked on the host in fp32 (no TF32 or cuDNN algorithm noise in the check); move it to the device.
    """
    from profiler.plan import trace_network

    plain = baked_copy(masked).cpu()
    slices: Slices = {}
    with torch.random.fork_rng(devices=[]):  # new layers draw a (discarded) init: keep the run's RNG stream
        slim = export_pruned(plain, trace_network(plain, tuple(input_size)), masks, removed_blocks, slices=slices)
    verify_export(plain, slim, (2, 3, *input_size))
    return slim.train(masked.training), slices


def carry_momentum(dense: nn.Module, old: torch.optim.Optimizer, slim: nn.Module, new: torch.optim.Optimizer,
                   slices: Slices) -> None:
    """Give every parameter of ``slim`` the kept part of its dense parameter's momentum buffer in ``old``."""
    modules = dict(dense.named_modules())
    for name, p in slim.named_parameters():
        owner, _, attr = name.rpartition(".")
        source = raw_parameter(modules[owner], attr)
        buf = old.state.get(source, {}).get("momentum_buffer") if source is not None else None
        if buf is not None:
            new.state[p]["momentum_buffer"] = take(buf, slices.get(name)).clone()


def dense_state_dict(slim: nn.Module, slices: Slices, template: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``slim``'s weights in the dense model's shapes (``template``): zeros at pruned channels and removed blocks."""
    state = slim.state_dict()
    unknown = sorted(set(state) - set(template))
    if unknown:
        raise KeyError(f"slim tensors with no dense counterpart: {unknown[:5]}")
    return {k: put(state[k].detach(), slices.get(k), t.shape) if k in state else torch.zeros_like(t)
            for k, t in template.items()}
