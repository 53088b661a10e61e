"""Whole-network latency as the sum of per-conv predictions (HALP/MDP's objective).

A network is its traced conv layers (:class:`~profiler.plan.ConvLayer`: name, family, dense cin/cout)
plus a width assignment ``{conv name: (cin, cout)}`` (e.g. from :func:`profiler.widths.random_pruned_widths`).
Convs missing from the widths stay dense; a conv with a zero width has been removed and costs nothing.

HALP's linear latency model (LLM) freezes each conv's input width at its current value while it varies
the output width. :func:`network_latency` reproduces that for whole networks: with ``freeze_cin`` (the
default for a model of kind ``"llm"``) each conv is priced at ``L(cin_ref, cout)`` with ``cin_ref`` its
dense cin, so the input-side savings of pruning the producer are missed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd

from db.errors import LatlabError
from db.keys import ConvConfig, ConvFamily
from latency_models.features import frame_from_configs

__all__ = [
    "CIN_REF", "LAYER_COLUMNS", "LayerLike", "lattice_sum", "layer_latencies", "network_configs", "network_frame",
    "network_latency", "predict_network",
]

CIN_REF = "cin_ref"
"""Extra feature column: the frozen input width an LLM prices a conv at (HALP's assumption)."""
LAYER_COLUMNS = ("layer", "family", "cin", "cout")
"""The columns of a per-conv table before its ms columns (:func:`layer_latencies`, :func:`predict_network`)."""


class LayerLike(Protocol):
    """What is needed of a traced conv (:class:`profiler.plan.ConvLayer` has it)."""

    name: str
    family: ConvFamily
    cin: int
    cout: int


def _kept(layers: Sequence[LayerLike], widths: Mapping[str, tuple[int, int]]) -> list[tuple[LayerLike, int, int]]:
    names = {layer.name for layer in layers}
    unknown = [n for n in widths if n not in names]
    if unknown:
        raise LatlabError(f"widths name unknown conv(s) {', '.join(sorted(unknown)[:5])}")
    out = []
    for layer in layers:
        cin, cout = widths.get(layer.name, (layer.cin, layer.cout))
        cin, cout = int(cin), int(cout)
        if cin < 0 or cout < 0:
            raise LatlabError(f"conv {layer.name}: widths must be >= 0, got ({cin}, {cout})")
        if cin == 0 or cout == 0:
            continue
        out.append((layer, cin, cout))
    return out


def network_configs(
    layers: Sequence[LayerLike], widths: Mapping[str, tuple[int, int]], *, batch: int, dtype: str = "fp32",
    layout: str = "nchw", op: str = "conv",
) -> list[ConvConfig]:
    """The LUT key of every kept conv, in layer order (convs with a zero width are skipped)."""
    return [ConvConfig(layer.family, cin, cout, batch, dtype, layout, op) for layer, cin, cout in _kept(layers, widths)]


def network_frame(
    layers: Sequence[LayerLike], widths: Mapping[str, tuple[int, int]], *, batch: int, dtype: str = "fp32",
    layout: str = "nchw", op: str = "conv", freeze_cin: bool = False,
) -> pd.DataFrame:
    """Feature frame of the kept convs; with ``freeze_cin`` an extra :data:`CIN_REF` column = dense cin.

    A depthwise conv's input width is tied to its output width, so its ``cin_ref`` is its own cin.
    """
    kept = _kept(layers, widths)
    frame = frame_from_configs(
        ConvConfig(layer.family, cin, cout, batch, dtype, layout, op) for layer, cin, cout in kept
    )
    frame.insert(0, "layer", [layer.name for layer, _, _ in kept])
    if freeze_cin:
        frame[CIN_REF] = np.array(
            [cin if layer.family.depthwise else layer.cin for layer, cin, _ in kept], dtype=np.int64
        )
    return frame


def layer_latencies(
    model: Any, layers: Sequence[LayerLike], widths: Mapping[str, tuple[int, int]], *, batch: int,
    dtype: str = "fp32", layout: str = "nchw", op: str = "conv", freeze_cin: bool | None = None,
) -> pd.DataFrame:
    """Per kept conv: ``layer``, ``family``, ``cin``, ``cout`` and ``ms`` = ``model.predict`` of its LUT key.

    ``freeze_cin=None`` freezes input widths for a model of kind ``"llm"`` only. With freezing, an LLM
    receives the :data:`CIN_REF` column (it predicts ``L(cin_ref, cout)`` itself); any other model is
    asked directly for ``L(cin_ref, cout)``.
    """
    frozen = (getattr(model, "kind", None) == "llm") if freeze_cin is None else bool(freeze_cin)
    frame = network_frame(layers, widths, batch=batch, dtype=dtype, layout=layout, op=op, freeze_cin=frozen)
    out = frame[list(LAYER_COLUMNS)].assign(ms=0.0)
    if frame.empty:
        return out
    X = frame.drop(columns=["layer"])
    if frozen and getattr(model, "kind", None) != "llm":
        X = X.assign(cin=X[CIN_REF]).drop(columns=[CIN_REF])
    pred = np.asarray(model.predict(X), dtype=float)
    if pred.shape != (len(X),) or not np.all(np.isfinite(pred)):
        raise LatlabError(f"model {type(model).__name__} returned {pred.shape} predictions (finite: "
                          f"{bool(np.all(np.isfinite(pred)))}) for {len(X)} convs")
    out["ms"] = pred
    return out


def network_latency(
    model: Any, layers: Sequence[LayerLike], widths: Mapping[str, tuple[int, int]], *, batch: int,
    dtype: str = "fp32", layout: str = "nchw", op: str = "conv", freeze_cin: bool | None = None,
) -> float:
    """Σ over the kept convs of ``model.predict`` (ms); see :func:`layer_latencies`."""
    return float(layer_latencies(model, layers, widths, batch=batch, dtype=dtype, layout=layout, op=op,
                                 freeze_cin=freeze_cin)["ms"].sum())


def predict_network(
    net: Any, input_size: int | tuple[int, int], models: Mapping[str, tuple[Any, Any]],
) -> pd.DataFrame:
    """Per conv of ``net`` as it is (its real cin and cout): ``layer``, ``family``, ``cin``, ``cout`` and one
    column of predicted ms per entry of ``models`` (``{label: (latency model, LutSettings)}``).

    Nothing is frozen: an LLM is asked for each conv's own (cin, cout). Bad input raises
    :class:`LatlabError`: a network that does not trace, or a latency model that cannot price a conv
    (a LUT miss names the configuration).
    """
    from profiler.conv_calls import is_saved_module, recorded_convs
    from profiler.plan import normalise_size, trace_network

    try:
        if is_saved_module(net):  # torch.export / TorchScript: no nn.Conv2d to trace; record the aten convs
            layers: Sequence[LayerLike] = recorded_convs(net, normalise_size(input_size))
        else:
            layers = trace_network(net, input_size).layers
    except LatlabError:
        raise
    except Exception as exc:
        raise LatlabError(f"cannot trace the network to predict its latency: {type(exc).__name__}: {exc}") from None
    widths = {layer.name: (layer.cin, layer.cout) for layer in layers}
    table: pd.DataFrame | None = None
    clash = sorted(set(models) & set(LAYER_COLUMNS))
    if clash:
        raise LatlabError(f"a latency model cannot be labelled {clash[0]!r}, a column of the per-conv table")
    for label, (model, settings) in models.items():
        frame = layer_latencies(model, layers, widths, batch=settings.batch, dtype=settings.dtype,
                                layout=settings.layout, op=settings.op, freeze_cin=False)
        table = frame.rename(columns={"ms": label}) if table is None else table.assign(**{label: frame["ms"].values})
    if table is None:
        raise LatlabError("no latency model to predict with")
    return table


def lattice_sum(
    latency: Callable[[ConvConfig], float] | Mapping[ConvConfig, float], layers: Sequence[LayerLike],
    widths: Mapping[str, tuple[int, int]], *, batch: int, dtype: str = "fp32", layout: str = "nchw",
    op: str = "conv",
) -> float:
    """Exact Σ of per-conv latencies from a function (e.g. ``FakeBackend.true_latency_ms``) or a LUT mapping.

    A mapping that lacks a configuration raises :class:`~db.errors.LUTMissError` naming it.
    """
    from db.errors import LUTMissError

    total = 0.0
    for config in network_configs(layers, widths, batch=batch, dtype=dtype, layout=layout, op=op):
        if isinstance(latency, Mapping):
            if config not in latency:
                raise LUTMissError(f"no LUT entry for {config.describe()}")
            total += float(latency[config])
        else:
            total += float(latency(config))
    return total
