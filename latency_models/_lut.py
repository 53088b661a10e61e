"""``lut``: the lookup table itself, with an explicit policy for configurations never measured."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from db.errors import InvalidValueError, LUTMissError
from db.keys import ConvConfig
from latency_models._common import GroupTable, check_rows, describe_row, group_rows, group_tables, prepare
from latency_models.base import LatencyModel, register_model

MISSING_POLICIES = ("error", "nearest", "bilinear")


def _bracket(values: np.ndarray, x: int) -> tuple[int, int] | None:
    """Nearest entries of sorted ``values`` below and above ``x`` (equal when ``x`` is one); None outside."""
    j = int(np.searchsorted(values, x))
    if j < len(values) and values[j] == x:
        return int(x), int(x)
    if j == 0 or j == len(values):
        return None
    return int(values[j - 1]), int(values[j])


def _lerp(x: float, x0: float, x1: float, y0: float, y1: float) -> float:
    return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)


@register_model
class LUTModel(LatencyModel):
    """Exact LUT lookup per (family, batch, dtype, layout, op) group; duplicate training keys are averaged.

    ``missing`` decides what an unmeasured (cin, cout) of a known group gives:

    * ``"error"``: :class:`~db.errors.LUTMissError` naming the configuration;
    * ``"nearest"``: the measured point of the group nearest in (log cin, log cout) (ties: smaller cin, cout);
    * ``"bilinear"``: enclose the point by the nearest measured cin values below/above and cout values
      below/above (over the whole group); if the four corners are measured, bilinear interpolation.
      Otherwise, if the point lies on a measured cin row (or cout column) whose own nearest measured
      neighbours enclose it, linear interpolation along that row (column); otherwise ``"nearest"``.
      Depthwise groups (cin == cout) interpolate linearly along the measured channel counts.

    Never a global average. An unknown group raises :class:`OutOfRangeError` (there is nothing to look up);
    ``strict=True`` also refuses a cin/cout outside the group's trained range.
    """

    kind: ClassVar[str] = "lut"

    def __init__(self, missing: str = "error", strict: bool = False) -> None:
        self.missing = missing
        self.strict = strict

    def fit(self, X: pd.DataFrame | Sequence[ConvConfig], y: Any) -> LUTModel:
        """Store the measured table (mean of duplicates) of every group."""
        if self.missing not in MISSING_POLICIES:
            raise InvalidValueError(f"LUTModel missing={self.missing!r}; choose from {', '.join(MISSING_POLICIES)}")
        frame, target = self._validate_xy(X, y)
        frame = prepare(frame)
        self.tables_ = group_tables(frame, target)
        self._mark_fitted(frame, target)
        return self

    def predict(self, X: pd.DataFrame | Sequence[ConvConfig]) -> np.ndarray:
        """Measured latency (ms) of each row, or the ``missing`` policy's value for unmeasured rows."""
        return self._predict(X, tolerate_misses=False)[0]

    def predict_partial(self, X: pd.DataFrame | Sequence[ConvConfig]) -> tuple[np.ndarray, LUTMissError | None]:
        """:meth:`predict`, but an unmeasured row under ``missing="error"`` gives NaN instead of raising.

        Returns ``(predictions, the first miss's error or None)``; other refusals (an unknown group, a strict
        range) still raise. Scoring a LUT on held-out keys, all misses, costs one call instead of one per row."""
        return self._predict(X, tolerate_misses=True)

    def _predict(self, X: pd.DataFrame | Sequence[ConvConfig], tolerate_misses: bool,
                 ) -> tuple[np.ndarray, LUTMissError | None]:
        self._check_fitted()
        frame = prepare(X)
        rows = group_rows(frame)
        check_rows(frame, rows, {k: t.ranges for k, t in self.tables_.items()}, model="LUTModel",
                   strict=self.strict, per_group=True)
        out = np.empty(len(frame))
        first_miss = len(frame)  # the first row left NaN when misses are tolerated
        cin, cout = frame["cin"].to_numpy(), frame["cout"].to_numpy()
        for key, idx in rows.items():
            table = self.tables_[key]
            vals = table.lookup(cin[idx], cout[idx])
            misses = np.flatnonzero(np.isnan(vals))
            if len(misses) and tolerate_misses and self.missing == "error":  # left NaN
                first_miss = min(first_miss, int(idx[misses[0]]))
            elif len(misses):
                vals[misses] = self._missing_values(table, frame, idx[misses], cin[idx[misses]], cout[idx[misses]])
            out[idx] = vals
        return out, LUTMissError(self._miss_message(frame, first_miss)) if first_miss < len(frame) else None

    @staticmethod
    def _miss_message(frame: pd.DataFrame, i: int) -> str:
        return f"no measurement for {describe_row(frame, i)} (LUTModel missing='error')"

    def _missing_values(self, table: GroupTable, frame: pd.DataFrame, rows: np.ndarray, ci: np.ndarray,
                        co: np.ndarray) -> np.ndarray:
        """The ``missing`` policy's values of the unmeasured points (``ci``, ``co``) of one group (frame ``rows``)."""
        if self.missing == "error":
            raise LUTMissError(self._miss_message(frame, int(rows[0])))
        values = np.full(len(ci), np.nan)
        if self.missing == "bilinear":
            for j, (c, o) in enumerate(zip(ci.tolist(), co.tolist(), strict=True)):
                value = _bilinear(table, c, o)
                values[j] = np.nan if value is None else value
        rest = np.flatnonzero(np.isnan(values))
        values[rest] = _nearest(table, ci[rest], co[rest])
        return values


_NEAREST_CHUNK = 1 << 22  # query × table distances computed at once


def _nearest(table: GroupTable, ci: np.ndarray, co: np.ndarray) -> np.ndarray:
    """Values of the measured points nearest to each (ci, co) in log space; ties (to 1e-12, past rounding) go
    to the smaller cin, then the smaller cout (the table is sorted by (cin, cout): the first minimum)."""
    log_cin, log_cout = table.log_points
    qc, qo = np.log(np.asarray(ci, float))[:, None], np.log(np.asarray(co, float))[:, None]
    nearest = np.empty(len(qc), dtype=np.intp)
    step = max(1, _NEAREST_CHUNK // max(1, len(log_cin)))
    for a in range(0, len(qc), step):
        d = np.round((log_cin[None, :] - qc[a:a + step]) ** 2 + (log_cout[None, :] - qo[a:a + step]) ** 2, 12)
        nearest[a:a + step] = d.argmin(axis=1)
    return table.y[nearest]


def _bilinear(table: GroupTable, ci: int, co: int) -> float | None:
    """Bilinear value from measured corners, else linear along a measured row/column; None if neither."""
    v = table.values
    if table.depthwise:  # one axis: linear along the measured diagonal cin == cout
        diag = _bracket(table.cin, ci) if ci == co else None
        return None if diag is None else _lerp(ci, diag[0], diag[1], v[(diag[0],) * 2], v[(diag[1],) * 2])
    cins, couts = table.axes
    bc, bo = _bracket(cins, ci), _bracket(couts, co)
    if bc is not None and bo is not None:
        (c0, c1), (o0, o1) = bc, bo
        corners = [(c0, o0), (c0, o1), (c1, o0), (c1, o1)]
        if all(p in v for p in corners):
            lo = _lerp(co, o0, o1, v[(c0, o0)], v[(c0, o1)])
            hi = _lerp(co, o0, o1, v[(c1, o0)], v[(c1, o1)])
            return _lerp(ci, c0, c1, lo, hi)
    on_row = table.cin == ci
    if on_row.any():  # linear in cout along the measured row cin = ci
        row_bracket = _bracket(table.cout[on_row], co)
        if row_bracket is not None:
            o0, o1 = row_bracket
            return _lerp(co, o0, o1, v[(ci, o0)], v[(ci, o1)])
    on_col = table.cout == co
    if on_col.any():  # linear in cin along the measured column cout = co
        col_bracket = _bracket(np.sort(table.cin[on_col]), ci)
        if col_bracket is not None:
            c0, c1 = col_bracket
            return _lerp(ci, c0, c1, v[(c0, co)], v[(c1, co)])
    return None
