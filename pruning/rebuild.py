"""Networks rebuilt at given conv widths, for timing whole pruned networks.

:func:`rebuild_with_widths` turns a width assignment (:mod:`profiler.widths`) into masks that keep each conv's
leading channels and slices the network with :func:`pruning.export.export_pruned`; :func:`measure_pruned` times
such networks for :func:`latency_models.evaluate.whole_network_eval`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from db.errors import LatlabError
from profiler._grids import group_stripes
from profiler._trace import TraceResult
from profiler.backends.base import Backend
from profiler.measure import measure_models_interleaved
from profiler.widths import Widths
from pruning.export import _base, export_pruned

__all__ = ["measure_pruned", "rebuild_with_widths"]


def _leading_mask(dense: int, width: int, stripes: int) -> torch.Tensor:
    """``width`` of ``dense`` channels kept: the leading ones, or with ``stripes`` equal stripes (the group counts
    of grouped convs writing or reading them) the leading ``width / stripes`` of every stripe."""
    if stripes > 1 and not dense % stripes and not width % stripes:
        return torch.arange(dense) % (dense // stripes) < width // stripes
    return torch.arange(dense) < width


def rebuild_with_widths(model: nn.Module, trace: TraceResult, widths: Mapping[str, tuple[int, int]]) -> nn.Module:
    """A copy of ``model`` whose convs have ``widths`` (missing convs stay dense), for timing whole pruned networks.

    Every conv keeps its leading output channels (with grouped convs on them, the leading ones of every conv group)
    and :func:`pruning.export.export_pruned` slices the network by those masks (``exact=False``: the copy has the
    widths, not the masked network's outputs): BNs follow their input, the first Linear after the convs scales its
    ``in_features`` (flatten-aware), a depthwise conv follows its input. Each conv's requested cin must equal what
    its input then carries, a depthwise conv's cout its cin, a grouped conv's widths be multiples of its groups.
    Unsupported structures (per-channel state of other module types, parameters applied to pruned channels, ops
    that move, slice or mix pruned channels, a Linear whose input is not a whole multiple of its width) raise
    :class:`LatlabError` naming the module or node.
    """
    layers = {layer.name: layer for layer in trace.layers}
    for name in widths:
        if name not in layers:
            raise LatlabError(f"widths name conv {name!r}, which the trace does not have")
    new_w = {name: tuple(int(v) for v in widths.get(name, (layer.cin, layer.cout))) for name, layer in layers.items()}
    modules = dict(model.named_modules())
    for name, (ci, co) in new_w.items():
        base, fam = _base(name), layers[name].family
        if not isinstance(modules.get(base), nn.Conv2d):
            raise LatlabError(f"conv {name} is not in the model; trace the same model you rebuild")
        if ci < 1 or co < 1:
            raise LatlabError(f"conv {name}: cannot rebuild with (cin, cout) = ({ci}, {co}); widths must be >= 1")
        if name != base and new_w[base] != (ci, co):
            raise LatlabError(f"module {base} is called twice with different widths")
        if fam.depthwise and ci != co:
            raise LatlabError(f"conv {name}: depthwise conv needs cin == cout, got {ci} and {co}")
        if not fam.depthwise and (ci % fam.groups or co % fam.groups):
            raise LatlabError(f"conv {name}: cin={ci} and cout={co} must be multiples of the conv's {fam.groups} "
                              "groups")
    for group in trace.groups:  # a residual add joins them: one width
        couts = {new_w[name][1] for name in group}
        if len(couts) > 1:
            raise LatlabError(f"coupled convs {', '.join(group)} have different output widths {sorted(couts)}")
    coupled = {name for group in trace.groups if len(group) > 1 for name in group}
    groups = trace.mask_groups()
    stripes = group_stripes(trace, groups)
    masks: dict[str, torch.Tensor] = {}
    for members, n_stripes in zip(groups, stripes, strict=True):
        for name in members:  # a module's later calls have its widths; an uncoupled depthwise conv follows its input
            if name == _base(name) and (name in coupled or not layers[name].family.depthwise):
                masks[name] = _leading_mask(layers[name].cout, new_w[name][1], n_stripes)
    rebuilt = export_pruned(model, trace, masks, exact=False)
    convs = dict(rebuilt.named_modules())
    for name, (ci, _) in new_w.items():  # its cout is its mask's (a depthwise conv's: its cin)
        carried = convs[_base(name)].in_channels
        if carried != ci:
            raise LatlabError(f"inconsistent widths: conv {name} asks for cin={ci} but its input carries {carried} "
                              "channels")
    return rebuilt


def measure_pruned(
    backend: Backend, module: nn.Module, trace: TraceResult, *, batch: int, dtype: str = "fp32",
    layout: str = "nchw", rounds: int = 1,
) -> Callable[[Sequence[Widths]], list[float]]:
    """A ``measure`` for :func:`latency_models.evaluate.whole_network_eval`: rebuild ``module`` at each width
    assignment and time the networks on ``backend`` in ``rounds`` interleaved rounds
    (:func:`profiler.measure.measure_models_interleaved`; a network that fails to run gives NaN)."""
    shape = (int(batch), 3, *trace.input_size)

    def measure(configs: Sequence[Widths]) -> list[float]:
        nets = {str(i): rebuild_with_widths(module, trace, widths) for i, widths in enumerate(configs)}
        timed = measure_models_interleaved(None, backend, nets, name="pruned", rounds=rounds, input_shape=shape,
                                           dtype=dtype, layout=layout)
        return [float("nan") if timed[k].median_ms is None else float(timed[k].median_ms) for k in nets]

    return measure
