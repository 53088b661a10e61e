"""The estimator contract all latency models follow, their registry, and pickle-free persistence.

scikit-learn conventions: ``__init__`` only stores parameters; ``fit(X, y)`` validates and learns,
returns ``self``; learned attributes end in ``_``; ``predict(X)`` returns ms per call. ``X`` is a
feature frame (:mod:`latency_models.features`) or a sequence of ``ConvConfig``.

Persistence: :meth:`LatencyModel.to_state` returns a JSON-serialisable dict (``kind``, ``params``,
the training snapshot and any learned state that refitting would not reproduce exactly) and
:func:`model_from_state` rebuilds an equal model from it. No pickle is involved.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.exceptions import NotFittedError as SklearnNotFittedError

from db.errors import InvalidValueError, LatlabError
from db.keys import ConvConfig
from latency_models.features import FEATURE_COLUMNS, as_frame


class OutOfRangeError(LatlabError):
    """A prediction was asked outside the trained range while ``strict=True``; names the point."""


class NotFittedError(LatlabError, SklearnNotFittedError):
    """``predict`` before ``fit`` (also scikit-learn's ``NotFittedError``, so its checks and handlers catch it)."""


class LatencyModel(RegressorMixin, BaseEstimator):
    """Base class: a regressor from LUT keys to latency (ms per call)."""

    kind: ClassVar[str]

    @abstractmethod
    def fit(self, X: pd.DataFrame | Sequence[ConvConfig], y: Any) -> LatencyModel:
        """Learn from configurations ``X`` and their median latencies ``y`` (ms); returns self."""

    @abstractmethod
    def predict(self, X: pd.DataFrame | Sequence[ConvConfig]) -> np.ndarray:
        """Predicted latency (ms per call) of each row of ``X``."""

    def predict_std(self, X: pd.DataFrame | Sequence[ConvConfig]) -> np.ndarray:
        """Predictive uncertainty as a *relative* standard deviation (0.05 = ±5%); NaN if unknown."""
        return np.full(len(as_frame(X)), np.nan)

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Share of rows predicted within ±10% (the nn-Meter accuracy metric), in [0, 1]."""
        pred = self.predict(X)
        y = np.asarray(y, dtype=float)
        ok = np.abs(pred - y) <= (0.10 + 1e-11) * np.abs(y)  # a band edge counts as inside, as in within_10
        return float(np.average(ok, weights=sample_weight))

    def _mark_fitted(self, frame: pd.DataFrame, target: np.ndarray) -> None:
        """Record the training snapshot (used by the default persistence) and the fitted flag."""
        self.n_features_in_ = len(FEATURE_COLUMNS)
        self.train_data_ = (frame[list(FEATURE_COLUMNS)], target)

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_features_in_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet; call fit(X, y) first")

    @staticmethod
    def _validate_xy(X: Any, y: Any) -> tuple[pd.DataFrame, np.ndarray]:
        frame = as_frame(X).reset_index(drop=True)
        target = np.asarray(y, dtype=float).ravel()
        if len(frame) == 0:
            raise InvalidValueError("cannot fit a latency model on an empty LUT")
        if len(frame) != len(target):
            raise InvalidValueError(f"X has {len(frame)} rows but y has {len(target)}")
        if not np.all(np.isfinite(target)) or np.any(target < 0):
            raise InvalidValueError("latencies must be finite and >= 0")
        return frame, target

    def to_state(self) -> dict[str, Any]:
        """JSON-serialisable state; :func:`model_from_state` rebuilds the fitted model."""
        self._check_fitted()
        return {"kind": self.kind, "params": self.get_params(deep=False), **self._extra_state()}

    def _extra_state(self) -> dict[str, Any]:
        """Training snapshot and learned state; default: the training data (refit on load)."""
        X, y = self.train_data_
        return {"X": X[list(FEATURE_COLUMNS)].to_dict(orient="list"), "y": [float(v) for v in y]}

    @classmethod
    def _from_extra_state(cls, model: LatencyModel, state: dict[str, Any]) -> LatencyModel:
        X = pd.DataFrame(state["X"], columns=list(FEATURE_COLUMNS))
        return model.fit(X, np.asarray(state["y"], dtype=float))


_REGISTRY: dict[str, type[LatencyModel]] = {}


def register_model(cls: type[LatencyModel]) -> type[LatencyModel]:
    """Class decorator: make ``cls`` reachable as ``get_model(cls.kind)``; duplicates (of a built-in kind too)
    raise."""
    if not cls.__module__.startswith("latency_models."):  # yours: after the built-ins, so a clash is caught
        _load_builtins()
    if cls.kind in _REGISTRY:
        raise LatlabError(f"a latency model kind {cls.kind!r} is already registered")
    _REGISTRY[cls.kind] = cls
    return cls


def list_models() -> list[str]:
    """The registered latency model kinds (built-ins and your own), sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_model(kind: str, **params: Any) -> LatencyModel:
    """A new, unfitted model of ``kind`` with ``params``."""
    _load_builtins()
    if kind not in _REGISTRY:
        raise LatlabError(f"unknown latency model {kind!r}; choose from {', '.join(sorted(_REGISTRY))}")
    if not isinstance(params.get("strict", False), bool):  # a truthy string would pass for True
        raise InvalidValueError(f"{kind}: strict must be true or false, got {params['strict']!r}")
    return _REGISTRY[kind](**params)


def model_from_state(state: dict[str, Any]) -> LatencyModel:
    """Rebuild a fitted model from :meth:`LatencyModel.to_state` output."""
    if not isinstance(state, dict) or "kind" not in state or "params" not in state:
        raise LatlabError("not a latency model state (expected a dict with 'kind' and 'params')")
    model = get_model(state["kind"], **state["params"])
    return type(model)._from_extra_state(model, state)


_BUILTIN_MODULES: tuple[str, ...] = ("latency_models.estimators",)
_loaded: list[bool] = []


def _load_builtins() -> None:
    if _loaded:
        return
    import importlib

    _loaded.append(True)
    try:
        for name in _BUILTIN_MODULES:
            importlib.import_module(name)
    except BaseException:
        _loaded.clear()
        raise
