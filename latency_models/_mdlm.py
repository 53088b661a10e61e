"""``mdlm``: MDP's multi-dimensional latency model (halp_mdp_spec.md §7): the LUT as an exact (cin, cout)
table per group, plus a smooth surface (roofline baseline × Gaussian-process correction) for points
never measured.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from scipy.optimize import nnls
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Kernel, Matern, WhiteKernel

from db.errors import InvalidKeyError, InvalidValueError, LatlabError, LUTMissError
from db.keys import ConvConfig, ConvFamily
from latency_models._common import (
    GroupKey,
    GroupTable,
    check_rows,
    describe_row,
    group_rows,
    group_tables,
    key_text,
    prepare,
    single_thread,
)
from latency_models.base import LatencyModel, register_model
from latency_models.features import FEATURE_COLUMNS, numeric_features

SURFACES = ("gp", "none")
GP_MIN_POINTS = 4  # fewer measured points in a group: baseline only
GP_MAX_POINTS = 600  # more: the GP trains on an evenly spaced subsample of the (cin, cout)-sorted points
GP_RESTARTS = 2
COV_MAX_POINTS = 1000  # posterior_covariance: at most this many candidates per group (evenly spaced), n×n memory
_HYPER_NAMES = ("k1__k1__constant_value", "k1__k2__length_scale", "k2__noise_level")


def _kernel(dims: int) -> Kernel:
    """ConstantKernel · Matern(ν=1.5, one length scale per input, in log2-channel units) + WhiteKernel."""
    return (ConstantKernel(1.0, (1e-3, 1e3))
            * Matern(length_scale=np.ones(dims), length_scale_bounds=(0.05, 100.0), nu=1.5)
            + WhiteKernel(1e-3, (1e-9, 1.0)))


def _roofline_design(frame: pd.DataFrame) -> np.ndarray:
    """Columns [1, GMACs, input + output MB, weight MB] of the baseline ``c0 + c1·MACs + c2·io + c3·w``."""
    f = numeric_features(frame)
    return np.column_stack([np.ones(len(f)), f["gmacs"], f["in_mb"] + f["out_mb"], f["weight_mb"]])


def _y_scale(r: np.ndarray) -> float:
    """The target scale sklearn's ``normalize_y`` divides by (std; 1 when ~0)."""
    s = float(np.std(r))
    return s if s >= 10 * np.finfo(float).eps else 1.0


@dataclass
class _Surface:
    """One group's smooth surface: ``baseline · exp(GP mean)`` of the log residual."""

    coef: np.ndarray
    floor: float
    depthwise: bool
    gp: GaussianProcessRegressor | None = None
    noise: float = float("nan")  # relative measurement noise (WhiteKernel level in log units)
    fixed: dict[str, Any] | None = None  # the hyperparameters the final GP was fitted with (what a reload sets)

    def inputs(self, frame: pd.DataFrame) -> np.ndarray:
        cout = np.log2(frame["cout"].to_numpy(dtype=float))
        if self.depthwise:
            return cout[:, None]
        return np.column_stack([np.log2(frame["cin"].to_numpy(dtype=float)), cout])

    def baseline(self, frame: pd.DataFrame) -> np.ndarray:
        return np.maximum(_roofline_design(frame) @ self.coef, self.floor)

    def predict(self, frame: pd.DataFrame, want_std: bool) -> tuple[np.ndarray, np.ndarray]:
        base = self.baseline(frame)
        if self.gp is None:
            return base, np.full(len(frame), np.nan)
        if want_std:
            mean, std = self.gp.predict(self.inputs(frame), return_std=True)
            return base * np.exp(mean), std
        return base * np.exp(self.gp.predict(self.inputs(frame))), np.full(len(frame), np.nan)

    def hyper(self) -> dict[str, Any] | None:
        return self.fixed if self.gp is not None else None


def _hyper_of(kernel: Any) -> dict[str, Any]:
    params = kernel.get_params()
    return {name: np.asarray(params[name], dtype=float).tolist() for name in _HYPER_NAMES}


def _checked_hyper(hyper: Any) -> dict[str, Any]:
    """Stored GP hyperparameters (a reload's): exactly :data:`_HYPER_NAMES`, each positive and finite."""
    if not isinstance(hyper, dict) or set(hyper) != set(_HYPER_NAMES):
        raise LatlabError(f"the stored GP hyperparameters are not {', '.join(_HYPER_NAMES)}")
    for name, value in hyper.items():
        try:
            values = np.asarray(value, dtype=float).ravel()
        except (TypeError, ValueError):
            values = np.array([np.nan])
        if not len(values) or not (np.isfinite(values).all() and (values > 0).all()):
            raise LatlabError(f"the stored GP hyperparameter {name} is {str(value)[:40]}, not positive and finite")
    return hyper


def _fit_surface(frame: pd.DataFrame, y: np.ndarray, depthwise: bool, *, use_gp: bool, random_state: int,
                 hyper: dict[str, Any] | None) -> _Surface:
    """Relative (1/t-weighted) NNLS roofline baseline, then a GP on log(t) − log(baseline).

    With ``hyper`` the GP kernel hyperparameters are fixed to it (no optimiser): an exact reload.
    """
    t = np.maximum(y, max(1e-9, 1e-6 * float(y.max())))
    A = _roofline_design(frame)
    scale = np.abs(A).max(axis=0)
    scale[scale == 0] = 1.0
    coef = nnls(A / scale / t[:, None], np.ones(len(t)))[0] / scale
    surface = _Surface(coef, 0.01 * float(t.min()), depthwise)
    if not use_gp or len(t) < GP_MIN_POINTS:
        return surface
    keep = np.unique(np.linspace(0, len(t) - 1, min(len(t), GP_MAX_POINTS)).round().astype(int))
    Z = surface.inputs(frame)[keep]
    r = np.log(t[keep]) - np.log(surface.baseline(frame.iloc[keep]))
    if hyper is None:  # find them; then fit as a reload does, so that a reload repeats every step exactly
        search = GaussianProcessRegressor(_kernel(Z.shape[1]), normalize_y=True, n_restarts_optimizer=GP_RESTARTS,
                                          random_state=random_state)
        hyper = _hyper_of(search.fit(Z, r).kernel_)  # inside _fit_surfaces' one-BLAS-thread context
    kernel = _kernel(Z.shape[1])
    hyper = _checked_hyper(hyper)
    kernel.set_params(**{name: np.asarray(value, dtype=float) if name.endswith("length_scale") else value
                         for name, value in hyper.items()})
    gp = GaussianProcessRegressor(kernel, normalize_y=True, optimizer=None)
    gp.fit(Z, r)  # sklearn sets theta = log(θ) back on the kernel: the values may move by an ulp, the same each time
    surface.gp, surface.fixed = gp, hyper
    surface.noise = float(np.sqrt(gp.kernel_.k2.noise_level)) * _y_scale(r)
    return surface


def _fit_surfaces(tables: dict[GroupKey, GroupTable], *, use_gp: bool, random_state: int,
                  hyper: dict[str, Any]) -> dict[GroupKey, _Surface]:
    """Every group's surface, fitted side by side on the host's cores (one thread each: the GP's linear
    algebra releases the GIL; each group's fit is independent and seeded, so the result does not depend
    on the order). Hyperparameters at a bound (e.g. no noise) are expected: ConvergenceWarning is off."""
    def fit(key: GroupKey) -> _Surface:
        t = tables[key]
        return _fit_surface(_group_frame(key, t.cin, t.cout), t.y, t.depthwise, use_gp=use_gp,
                            random_state=random_state, hyper=hyper.get(key_text(key)))

    with warnings.catch_warnings(), single_thread():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with ThreadPoolExecutor(max_workers=max(1, min(len(tables), os.cpu_count() or 1))) as pool:
            return dict(zip(tables, pool.map(fit, tables), strict=True))


def _group_frame(key: GroupKey, cin: np.ndarray, cout: np.ndarray) -> pd.DataFrame:
    family, batch, dtype, layout, op = key
    return pd.DataFrame({"family": family, "cin": cin, "cout": cout, "batch": batch, "dtype": dtype,
                         "layout": layout, "op": op}, columns=list(FEATURE_COLUMNS))


@register_model
class MDLM(LatencyModel):
    """MDP's multi-dimensional latency model: exact on measured (cin, cout), a smooth surface elsewhere.

    Measured points return the measured value (mean over duplicates). ``surface="gp"`` fits per group a
    baseline ``t ≈ c0 + c1·MACs + c2·(input + output bytes) + c3·weight bytes`` (non-negative, relative
    least squares, clipped at 1% of the group's fastest measurement) and a Gaussian process on
    ``log t − log baseline`` over (log2 cin, log2 cout) (log2 cout alone for depthwise groups); the
    prediction is ``baseline · exp(GP mean)``. Groups with fewer than 4 points use the baseline alone;
    a group with more than 600 points trains its GP on 600 evenly spaced points of its (cin, cout)-sorted
    table. ``surface="none"`` is the paper's raw table: unmeasured points raise
    :class:`~db.errors.LUTMissError`. Unknown groups raise :class:`OutOfRangeError`.
    """

    kind: ClassVar[str] = "mdlm"

    def __init__(self, surface: str = "gp", strict: bool = False, random_state: int = 0) -> None:
        self.surface = surface
        self.strict = strict
        self.random_state = random_state

    def fit(self, X: pd.DataFrame | Sequence[ConvConfig], y: Any) -> MDLM:
        """Tabulate the measurements and fit each group's surface."""
        frame, target = self._validate_xy(X, y)
        return self._fit(prepare(frame), target, None)

    def _fit(self, frame: pd.DataFrame, target: np.ndarray, hyper: dict[str, Any] | None) -> MDLM:
        if self.surface not in SURFACES:
            raise InvalidValueError(f"MDLM surface={self.surface!r}; choose from {', '.join(SURFACES)}")
        self.tables_: dict[GroupKey, GroupTable] = group_tables(frame, target)
        self.surface_hyper_ = {k: _checked_hyper(v) for k, v in (hyper or {}).items() if v is not None}  # a reload's
        self.surface_cache_: dict[GroupKey, _Surface] = {}  # fitted when first needed: a point off the table
        self._mark_fitted(frame, target)
        return self

    @property
    def surfaces_(self) -> dict[GroupKey, _Surface]:
        """Every group's surface; those no prediction has needed yet are fitted now (side by side)."""
        self._check_fitted()
        self._fit_surfaces([k for k in self.tables_ if k not in self.surface_cache_])
        return dict(self.surface_cache_)

    def _surface(self, key: GroupKey) -> _Surface:
        """The surface of group ``key``, fitted on first use. A surface costs seconds (a GP with restarts per
        group: 23 s for ResNet-50's 15 families); pricing only measured points, as a pruner on a lattice LUT
        does, fits none. Each group's fit is seeded on its own, so the result does not depend on when."""
        if key not in self.surface_cache_:
            self._fit_surfaces([key])
        return self.surface_cache_[key]

    def _fit_surfaces(self, keys: list[GroupKey]) -> None:
        if keys:
            fitted = _fit_surfaces({k: self.tables_[k] for k in keys}, use_gp=self.surface == "gp",
                                   random_state=self.random_state, hyper=self.surface_hyper_)
            self.surface_cache_.update(fitted)

    def _evaluate(self, X: Any, want_std: bool) -> tuple[np.ndarray, np.ndarray]:
        self._check_fitted()
        frame = prepare(X)
        rows = group_rows(frame)
        check_rows(frame, rows, {k: t.ranges for k, t in self.tables_.items()}, model="MDLM", strict=self.strict,
                   per_group=True)
        mean, std = np.empty(len(frame)), np.empty(len(frame))
        cin, cout = frame["cin"].to_numpy(), frame["cout"].to_numpy()
        looked = {key: self.tables_[key].lookup(cin[idx], cout[idx]) for key, idx in rows.items()}
        for key, idx in rows.items():
            miss = idx[np.isnan(looked[key])]
            if miss.size and self.surface == "none":
                raise LUTMissError(f"no measurement for {describe_row(frame, miss[0])} (MDLM surface='none')")
        # every surface this call needs, fitted side by side (one at a time per group would leave the cores idle)
        self._fit_surfaces([key for key, measured in looked.items() if key not in self.surface_cache_
                            and (np.isnan(measured).any() or want_std)])
        for key, idx in rows.items():
            measured = looked[key]
            hit = ~np.isnan(measured)
            mean[idx[hit]] = measured[hit]
            std[idx[hit]] = self._surface(key).noise if want_std and hit.any() else np.nan
            miss = idx[~hit]
            if miss.size:
                mean[miss], std[miss] = self._surface(key).predict(frame.iloc[miss], want_std)
        return mean, std

    def predict(self, X: pd.DataFrame | Sequence[ConvConfig]) -> np.ndarray:
        """Measured latency (ms) where measured, else the group's surface."""
        return self._evaluate(X, want_std=False)[0]

    def predict_std(self, X: pd.DataFrame | Sequence[ConvConfig]) -> np.ndarray:
        """GP std of log latency (≈ relative std) off the table; the fitted relative noise level on it.

        NaN for groups without a GP (fewer than 4 points).
        """
        return self._evaluate(X, want_std=True)[1]

    def posterior_covariance(
        self, X: pd.DataFrame | Sequence[ConvConfig]
    ) -> dict[GroupKey, tuple[np.ndarray, np.ndarray]]:
        """Per group with a GP surface: (positions of X's unmeasured rows, GP posterior covariance of their
        log-latency residuals, measurement noise included on the diagonal). Used to plan measurements.

        A group with more unmeasured rows than :data:`COV_MAX_POINTS` offers an evenly spaced subset of them (the
        covariance is n×n: RegNetY-32GF's 57,005-point SE family would need 24 GiB)."""
        self._check_fitted()
        frame = prepare(X)
        measured = self.is_measured(frame)
        out: dict[GroupKey, tuple[np.ndarray, np.ndarray]] = {}
        wanted = {key: idx[~measured[idx]] for key, idx in group_rows(frame).items() if key in self.tables_}
        wanted = {key: idx for key, idx in wanted.items() if idx.size}
        self._fit_surfaces([key for key in wanted if key not in self.surface_cache_])  # side by side
        for key, idx in wanted.items():
            surface = self._surface(key)
            if surface.gp is None:
                continue
            if idx.size > COV_MAX_POINTS:
                idx = idx[np.unique(np.linspace(0, idx.size - 1, COV_MAX_POINTS).round().astype(int))]
            with single_thread():
                _, cov = surface.gp.predict(surface.inputs(frame.iloc[idx]), return_cov=True)
            out[key] = (idx, np.atleast_2d(cov))
        return out

    def is_measured(self, X: pd.DataFrame | Sequence[ConvConfig]) -> np.ndarray:
        """True where the row's exact configuration was measured (False for unknown groups too)."""
        self._check_fitted()
        frame = prepare(X)
        out = np.zeros(len(frame), dtype=bool)
        cin, cout = frame["cin"].to_numpy(), frame["cout"].to_numpy()
        for key, idx in group_rows(frame).items():
            if key in self.tables_:
                out[idx] = ~np.isnan(self.tables_[key].lookup(cin[idx], cout[idx]))
        return out

    def lattice(
        self, family: ConvFamily | str, cin_values: Sequence[int], cout_values: Sequence[int], *, batch: int,
        dtype: str = "fp32", layout: str = "nchw", op: str = "conv",
    ) -> np.ndarray:
        """MDP's latency matrix ``M[i, j] = L(cin_j, cout_i)`` (ms), shape (len(cout_values), len(cin_values)).

        Measured values where available, else the surface; a zero channel count costs 0 (the layer is gone).
        Depthwise families have one channel count and are refused (predict their cin == cout points).
        """
        fam = family if isinstance(family, ConvFamily) else ConvFamily.from_key(str(family))
        if fam.depthwise:
            raise LatlabError(f"depthwise family {fam.key} has no (cin, cout) lattice; predict cin == cout points")
        cin = np.asarray(cin_values, dtype=np.int64).ravel()
        cout = np.asarray(cout_values, dtype=np.int64).ravel()
        if (cin < 0).any() or (cout < 0).any():
            raise InvalidKeyError("lattice channel counts must be >= 0")
        grid_cin, grid_cout = np.meshgrid(cin, cout)
        M = np.zeros(grid_cin.shape)
        live = (grid_cin > 0) & (grid_cout > 0)
        if live.any():
            key = (fam.key, int(batch), dtype, layout, op)
            M[live] = self.predict(_group_frame(key, grid_cin[live], grid_cout[live]))
        return M

    def _extra_state(self) -> dict[str, Any]:
        state = super()._extra_state()
        state["surface_hyper"] = {key_text(k): s.hyper() for k, s in self.surfaces_.items() if s.gp is not None}
        return state

    @classmethod
    def _from_extra_state(cls, model: LatencyModel, state: dict[str, Any]) -> LatencyModel:
        if not isinstance(model, MDLM):
            raise LatlabError(f"expected an MDLM to restore, got {type(model).__name__}")
        frame, target = model._validate_xy(pd.DataFrame(state["X"], columns=list(FEATURE_COLUMNS)), state["y"])
        return model._fit(prepare(frame), target, state.get("surface_hyper"))
