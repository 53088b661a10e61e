"""The built-in latency models; importing this module registers every kind with :mod:`latency_models.base`.

* ``lut`` — :class:`LUTModel`: exact lookup per group; ``missing`` = error / nearest / bilinear.
* ``llm`` — :class:`LinearLatencyModel`: HALP's linear model (cout varies, cin frozen); ``group_costs``.
* ``mdlm`` — :class:`MDLM`: MDP's (cin, cout) table plus a GP surface; ``lattice``, ``is_measured``.
* ``bilinear`` — :class:`PerFamilyBilinear`: per-group ``a + b·cin + c·cout + d·cin·cout``.
* ``rf`` — :class:`RandomForestLatency`: nn-Meter-style random forest over all groups.
* ``gbdt`` — :class:`GradientBoostingLatency`: histogram gradient boosting on log latency.

Per-group models (lut, llm, mdlm, bilinear) refuse groups (family, batch, dtype, layout, op) they never
saw with :class:`~latency_models.base.OutOfRangeError`; the global ones (rf, gbdt) extrapolate unless
``strict=True``, which in every model also refuses cin/cout outside a group's trained range.
"""

from __future__ import annotations

from latency_models._baselines import GradientBoostingLatency, PerFamilyBilinear, RandomForestLatency
from latency_models._linear import LinearLatencyModel
from latency_models._lut import LUTModel
from latency_models._mdlm import MDLM

__all__ = [
    "MDLM", "GradientBoostingLatency", "LUTModel", "LinearLatencyModel", "PerFamilyBilinear",
    "RandomForestLatency",
]
