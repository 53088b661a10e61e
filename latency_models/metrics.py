"""Error metrics of latency predictions, in percent of the measured latency.

The signed percentage error of one point is ``100 * (predicted - measured) / measured``; every metric
below is a statistic of it. ``within_5``/``within_10`` are the nn-Meter style accuracy shares.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from db.errors import LatlabError

METRIC_COLUMNS = ("mape", "rmspe", "max_ape", "within_5", "within_10", "bias", "n")
"""Keys of :func:`error_metrics`, in report order."""

_EPS = 1e-9  # 1.05 vs 1.0 is 5.000000000000004 %; a band edge counts as inside


def percentage_errors(y_true: Any, y_pred: Any) -> np.ndarray:
    """Signed percentage errors ``100 * (pred - true) / true``; validates shapes and values."""
    t = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(y_pred, dtype=float).ravel()
    if t.shape != p.shape:
        raise LatlabError(f"y_true has {t.size} values but y_pred has {p.size}")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(p))):
        raise LatlabError("latencies must be finite to compute error metrics")
    if np.any(t <= 0):
        raise LatlabError("measured latencies must be > 0 to compute percentage errors")
    return 100.0 * (p - t) / t


def error_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """MAPE, RMSPE and max abs error (all %), shares within ±5% / ±10% (fractions), mean signed % error, n.

    An empty input gives ``n = 0`` and NaN for every other metric.
    """
    pct = percentage_errors(y_true, y_pred)
    if pct.size == 0:
        return {k: (0 if k == "n" else float("nan")) for k in METRIC_COLUMNS}
    ape = np.abs(pct)
    return {
        "mape": float(ape.mean()),
        "rmspe": float(np.sqrt(np.mean(pct**2))),
        "max_ape": float(ape.max()),
        "within_5": float(np.mean(ape <= 5.0 + _EPS)),
        "within_10": float(np.mean(ape <= 10.0 + _EPS)),
        "bias": float(pct.mean()),
        "n": int(pct.size),
    }
