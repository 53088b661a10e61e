"""Latency models fitted on a LUT: estimators (lut, llm, mdlm, bilinear, rf, gbdt), evaluation, adaptive sampling.

Modules: ``features`` (the shared feature frame), ``base`` (contract, registry, persistence), ``estimators``,
``splits``, ``metrics``, ``network`` (whole-network latency), ``evaluate`` + ``plots`` (comparison reports),
``store`` (models in the database), ``adaptive`` (adaptive LUT sampling).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from db._lazy import lazy_getattr

if TYPE_CHECKING:
    from latency_models.base import LatencyModel, OutOfRangeError, get_model, list_models, model_from_state

__all__ = [
    "LatencyModel", "OutOfRangeError", "get_model", "list_models", "model_from_state",
]
# each name is imported from its submodule on first use (importing one submodule stays light)
__getattr__ = lazy_getattr(__name__, {
    **dict.fromkeys(("LatencyModel", "OutOfRangeError", "get_model", "list_models", "model_from_state"),
                    "latency_models.base"),
})
