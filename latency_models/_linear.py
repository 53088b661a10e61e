"""``llm``: HALP's linear latency model (halp_mdp_spec.md §5.1): latency along cout with cin frozen."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from db.errors import InvalidKeyError, InvalidValueError
from db.keys import ConvConfig
from latency_models._common import GroupTable, check_rows, group_rows, group_tables, out_of_row, prepare
from latency_models.base import LatencyModel, register_model
from latency_models.features import FEATURE_COLUMNS


def _along(x: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Piecewise-linear ``ys(xs)`` at ``x``; linear from the two end points beyond them, clipped at >= 0.

    A single point gives its value everywhere (there is no slope to extrapolate).
    """
    x = np.asarray(x, dtype=float)
    if len(xs) == 1:
        return np.full(x.shape, float(ys[0]))
    out = np.interp(x, xs, ys)
    lo, hi = x < xs[0], x > xs[-1]
    out[lo] = ys[0] + (ys[1] - ys[0]) / (xs[1] - xs[0]) * (x[lo] - xs[0])
    out[hi] = ys[-1] + (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]) * (x[hi] - xs[-1])
    return np.maximum(out, 0.0)


@register_model
class LinearLatencyModel(LatencyModel):
    """HALP's linear latency model (LLM): a layer's latency as a function of its own cout, cin frozen.

    ``predict`` gives ``L(cin, cout)`` from the measured row at the measured cin nearest (in log space,
    ties to the smaller) to the row's ``cin`` (or to its optional ``cin_ref`` column, e.g. the producer's
    width at the start of a pruning step; NaN ``cin_ref`` falls back to ``cin``), linearly interpolated
    in cout between that row's measured couts; beyond the row it extrapolates linearly from the last two
    points, clipped at >= 0 (``strict=True`` raises :class:`OutOfRangeError` instead). Measured points
    are returned exactly (duplicates averaged). Depthwise groups (cin == cout) are one curve over the
    channel count and ignore ``cin_ref``. Unknown groups raise :class:`OutOfRangeError`.
    """

    kind: ClassVar[str] = "llm"

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict

    def fit(self, X: pd.DataFrame | Sequence[ConvConfig], y: Any) -> LinearLatencyModel:
        """Store the measured rows (cin -> sorted couts, mean latencies) of every group."""
        frame, target = self._validate_xy(X, y)
        frame = prepare(frame)
        self.tables_: dict[Any, GroupTable] = group_tables(frame, target)
        self._mark_fitted(frame, target)
        return self

    def predict(self, X: pd.DataFrame | Sequence[ConvConfig]) -> np.ndarray:
        """``L(cin_ref or cin, cout)`` in ms, cin frozen at the nearest measured row."""
        self._check_fitted()
        frame = prepare(X)
        cin = frame["cin"].to_numpy()
        if "cin_ref" in frame.columns:
            ref = pd.to_numeric(frame["cin_ref"], errors="coerce").to_numpy(dtype=float)
            use = np.isfinite(ref)
            if np.any(ref[use] < 1) or np.any(ref[use] != np.round(ref[use])):
                raise InvalidKeyError("cin_ref must hold integers >= 1 (or NaN to use cin)")
            cin = np.where(use, ref, cin).astype(np.int64)
        rows = group_rows(frame)
        check_rows(frame, rows, {k: t.ranges for k, t in self.tables_.items()}, model="LinearLatencyModel",
                   strict=self.strict, per_group=True, cin=cin)
        cout = frame["cout"].to_numpy()
        out = np.empty(len(frame))
        for key, idx in rows.items():
            table = self.tables_[key]
            if table.depthwise:
                out[idx] = _along(cout[idx], table.cout, table.y)
                continue
            measured = np.unique(table.cin)
            gap = np.round(np.abs(np.log(measured)[None, :] - np.log(cin[idx])[:, None]), 12)  # ties: not rounding's
            nearest = measured[np.argmin(gap, axis=1)]  # measured is ascending: a tie goes to the smaller
            for row_cin in np.unique(nearest):
                sel = idx[nearest == row_cin]
                on_row = table.cin == row_cin
                xs, ys = table.cout[on_row], table.y[on_row]
                if self.strict:
                    outside = (cout[sel] < xs[0]) | (cout[sel] > xs[-1])
                    if outside.any():
                        i = int(sel[np.flatnonzero(outside)[0]])
                        raise out_of_row(frame, i, int(cin[i]), "cout", int(cout[i]), int(xs[0]), int(xs[-1]),
                                         f"in the LUT row cin={int(row_cin)}")
                out[sel] = _along(cout[sel], xs, ys)
        return out

    def group_costs(self, config: ConvConfig, q: int, n_groups: int | None = None) -> np.ndarray:
        """HALP's per-channel-group latency contributions of ``config``'s layer at frozen cin = ``config.cin``.

        ``Δ_i = L(cin, i·q) − L(cin, (i−1)·q)`` for ``i = 1..n`` (``n = config.cout // q`` by default) with
        ``L(cin, 0) = 0`` (zero channels: the layer is gone). They may be negative on a noisy LUT and sum
        to ``L(cin, n·q)``.
        """
        self._check_fitted()
        if int(q) < 1:
            raise InvalidValueError(f"channel group size q must be >= 1, got {q}")
        n = config.cout // int(q) if n_groups is None else int(n_groups)
        if n < 0:
            raise InvalidValueError(f"n_groups must be >= 0, got {n_groups}")
        couts = int(q) * np.arange(1, n + 1)
        frame = pd.DataFrame({
            "family": config.family.key, "cin": config.cin, "cout": couts, "batch": config.batch,
            "dtype": config.dtype, "layout": config.layout, "op": config.op,
        }, columns=list(FEATURE_COLUMNS))
        latency = self.predict(frame) if n else np.empty(0)
        return np.diff(np.concatenate([[0.0], latency]))
