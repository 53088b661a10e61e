"""Baselines: a per-group bilinear fit (``bilinear``) and nn-Meter-style global regressors (``rf``, ``gbdt``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor

from db.keys import ConvConfig
from latency_models._common import (
    GroupKey,
    Ranges,
    check_rows,
    group_ranges,
    group_rows,
    is_depthwise,
    prepare,
    single_thread,
)
from latency_models.base import LatencyModel, register_model
from latency_models.features import numeric_features

_LOG_FLOOR_MS = 1e-6  # latencies of 0 ms are clipped here before taking logs


def _bilinear_design(cin: np.ndarray, cout: np.ndarray, depthwise: bool) -> np.ndarray:
    ci, co = np.asarray(cin, dtype=float), np.asarray(cout, dtype=float)
    if depthwise:  # cin == cout = c: a + b·c + d·c²
        return np.column_stack([np.ones_like(co), co, co * co])
    return np.column_stack([np.ones_like(ci), ci, co, ci * co])


@register_model
class PerFamilyBilinear(LatencyModel):
    """Per-group least squares ``a + b·cin + c·cout + d·cin·cout`` (depthwise: ``a + b·c + d·c²``).

    The reference per-layer baseline. Under-determined groups get the minimum-norm solution (on
    max-scaled columns). Unknown groups raise :class:`OutOfRangeError`.
    """

    kind: ClassVar[str] = "bilinear"

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict

    def fit(self, X: pd.DataFrame | Sequence[ConvConfig], y: Any) -> PerFamilyBilinear:
        """Least-squares coefficients of every group."""
        frame, target = self._validate_xy(X, y)
        frame = prepare(frame)
        self.coef_: dict[GroupKey, np.ndarray] = {}
        for key, idx in group_rows(frame).items():
            A = _bilinear_design(frame["cin"].to_numpy()[idx], frame["cout"].to_numpy()[idx], is_depthwise(key))
            scale = np.abs(A).max(axis=0)
            scale[scale == 0] = 1.0
            coef = np.linalg.lstsq(A / scale, target[idx], rcond=None)[0]
            self.coef_[key] = coef / scale
        self.ranges_ = group_ranges(frame)
        self._mark_fitted(frame, target)
        return self

    def predict(self, X: pd.DataFrame | Sequence[ConvConfig]) -> np.ndarray:
        """The group's fitted bilinear form at each (cin, cout), in ms."""
        self._check_fitted()
        frame = prepare(X)
        rows = group_rows(frame)
        check_rows(frame, rows, self.ranges_, model="PerFamilyBilinear", strict=self.strict, per_group=True)
        out = np.empty(len(frame))
        for key, idx in rows.items():
            A = _bilinear_design(frame["cin"].to_numpy()[idx], frame["cout"].to_numpy()[idx], is_depthwise(key))
            out[idx] = A @ self.coef_[key]
        return out


class _GlobalRegressor(LatencyModel):
    """Shared parts of the global regressors: one model over all groups on :func:`numeric_features`."""

    def _prepare_fit(self, X: Any, y: Any) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        frame, target = self._validate_xy(X, y)
        frame = prepare(frame)
        return frame, target, numeric_features(frame).to_numpy(dtype=float)

    def _finish_fit(self, frame: pd.DataFrame, target: np.ndarray) -> None:
        self.ranges_: dict[GroupKey, Ranges] = group_ranges(frame)
        self._mark_fitted(frame, target)

    def _features(self, X: Any) -> np.ndarray:
        self._check_fitted()
        frame = prepare(X)
        check_rows(frame, group_rows(frame), self.ranges_, model=type(self).__name__, strict=self.strict,
                   per_group=False)
        return numeric_features(frame).to_numpy(dtype=float)


@register_model
class RandomForestLatency(_GlobalRegressor):
    """nn-Meter-style random forest over all groups at once on config + GMACs + tensor sizes; target ms.

    Unknown groups are extrapolated unless ``strict=True``. :meth:`predict_std` is the relative spread
    (std / mean) of the per-tree predictions. Fully grown trees grow with the LUT: ``max_samples`` (rows drawn
    per tree; ``None``: as many as the LUT has) keeps the forest's time and memory bounded on large LUTs.
    """

    kind: ClassVar[str] = "rf"

    def __init__(self, n_estimators: int = 320, max_depth: int | None = None, max_features: int | float | str = 6,
                 max_samples: int | float | None = None, random_state: int = 0, strict: bool = False) -> None:
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.max_features = max_features
        self.max_samples = max_samples
        self.random_state = random_state
        self.strict = strict

    def fit(self, X: pd.DataFrame | Sequence[ConvConfig], y: Any) -> RandomForestLatency:
        """Fit the forest on every row of the LUT."""
        frame, target, F = self._prepare_fit(X, y)
        max_features, max_samples = self.max_features, self.max_samples
        if isinstance(max_features, int) and not isinstance(max_features, bool):
            max_features = min(max_features, F.shape[1])
        if isinstance(max_samples, int) and not isinstance(max_samples, bool) and max_samples > len(F):
            max_samples = None  # a cap above the LUT's size: every row, as without one
        self.forest_ = RandomForestRegressor(
            n_estimators=self.n_estimators, max_depth=self.max_depth, max_features=max_features,
            max_samples=max_samples, random_state=self.random_state,
        ).fit(F, target)
        self._finish_fit(frame, target)
        return self

    def predict(self, X: pd.DataFrame | Sequence[ConvConfig]) -> np.ndarray:
        """Mean of the trees' predictions (ms)."""
        F = self._features(X)
        return self.forest_.predict(F) if len(F) else np.empty(0)

    def predict_std(self, X: pd.DataFrame | Sequence[ConvConfig]) -> np.ndarray:
        """Relative spread std/mean of the per-tree predictions."""
        F = self._features(X)
        if not len(F):
            return np.empty(0)
        per_tree = np.stack([tree.predict(F) for tree in self.forest_.estimators_])
        mean = per_tree.mean(axis=0)
        return per_tree.std(axis=0) / np.maximum(mean, _LOG_FLOOR_MS)


@register_model
class GradientBoostingLatency(_GlobalRegressor):
    """Histogram gradient boosting on config + GMACs + tensor sizes with target log(ms) (predicts exp).

    Early stopping is off, so a refit with the same ``random_state`` is identical. Unknown groups are
    extrapolated unless ``strict=True``. ``min_samples_leaf`` ``None`` is scikit-learn's 20, or a tenth of the
    rows on a LUT under 40 rows: with 20 there, no split is possible and the model predicts one constant.
    """

    kind: ClassVar[str] = "gbdt"

    def __init__(self, max_iter: int = 500, learning_rate: float = 0.05, max_leaf_nodes: int = 31,
                 min_samples_leaf: int | None = None, random_state: int = 0, strict: bool = False) -> None:
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.min_samples_leaf = min_samples_leaf
        self.random_state = random_state
        self.strict = strict

    def fit(self, X: pd.DataFrame | Sequence[ConvConfig], y: Any) -> GradientBoostingLatency:
        """Fit the boosted trees on log latency."""
        frame, target, F = self._prepare_fit(X, y)
        booster = HistGradientBoostingRegressor(
            max_iter=self.max_iter, learning_rate=self.learning_rate, max_leaf_nodes=self.max_leaf_nodes,
            min_samples_leaf=self.min_samples_leaf or (20 if len(F) >= 40 else max(1, len(F) // 10)),
            early_stopping=False, random_state=self.random_state,
        )
        with single_thread():
            self.booster_ = booster.fit(F, np.log(np.maximum(target, _LOG_FLOOR_MS)))
        self._finish_fit(frame, target)
        return self

    def predict(self, X: pd.DataFrame | Sequence[ConvConfig]) -> np.ndarray:
        """exp of the predicted log latency (ms)."""
        F = self._features(X)
        if not len(F):
            return np.empty(0)
        with single_thread():
            return np.exp(self.booster_.predict(F))
