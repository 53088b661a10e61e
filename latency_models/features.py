"""The feature table every latency model shares: one row per LUT configuration.

``X`` is a :class:`pandas.DataFrame` with :data:`FEATURE_COLUMNS` (the LUT key: family key string,
cin, cout, batch, dtype, layout, op); ``y`` is the median latency in ms per call. Estimators accept
either such a frame or a sequence of :class:`~db.keys.ConvConfig`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.orm import Session

from db.errors import InvalidValueError, LatlabError
from db.keys import ConvConfig, ConvFamily
from db.lut import KEY_COLUMNS, sweep_rows
from db.models import Measurement

FEATURE_COLUMNS = KEY_COLUMNS  # a LUT key is what a latency model sees
GROUP_COLUMNS = ("family", "batch", "dtype", "layout", "op")  # fixed within one 2-D (cin, cout) surface
_ELEMENT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


def frame_from_configs(configs: Iterable[ConvConfig]) -> pd.DataFrame:
    """Feature frame of ``configs`` (one row each, in order)."""
    rows = [(c.family.key, c.cin, c.cout, c.batch, c.dtype, c.layout, c.op) for c in configs]
    return pd.DataFrame(rows, columns=list(FEATURE_COLUMNS)).astype(
        {"cin": "int64", "cout": "int64", "batch": "int64"}
    )


def configs_from_frame(X: pd.DataFrame) -> list[ConvConfig]:
    """The :class:`ConvConfig` of every row of a feature frame."""
    families = {key: ConvFamily.from_key(key) for key in X["family"].unique()}
    return [
        ConvConfig(families[f], int(ci), int(co), int(b), d, lay, op)
        for f, ci, co, b, d, lay, op in X[list(FEATURE_COLUMNS)].itertuples(index=False, name=None)
    ]


def as_frame(X: pd.DataFrame | Sequence[ConvConfig]) -> pd.DataFrame:
    """Validate ``X`` (a frame with the feature columns, or configs) and return a frame."""
    if isinstance(X, pd.DataFrame):
        missing = [c for c in FEATURE_COLUMNS if c not in X.columns]
        if missing:
            raise InvalidValueError(f"feature frame lacks column(s) {', '.join(missing)}; expected {FEATURE_COLUMNS}")
        return X
    configs = list(X)
    if configs and not all(isinstance(c, ConvConfig) for c in configs):
        raise InvalidValueError("X must be a feature DataFrame or a sequence of ConvConfig")
    return frame_from_configs(configs)


def group_key(row: Any) -> tuple:
    """(family, batch, dtype, layout, op) of a frame row or config."""
    if isinstance(row, ConvConfig):
        return (row.family.key, row.batch, row.dtype, row.layout, row.op)
    return tuple(row[c] for c in GROUP_COLUMNS)


def numeric_features(X: pd.DataFrame) -> pd.DataFrame:
    """Numeric description of each row for generic regressors (nn-Meter style: config + FLOPs + sizes).

    Columns: geometry (in_h, in_w, kernel, stride, padding, dilation, groups, depthwise), cin, cout,
    batch, bytes per element, channels_last, conv_bn_relu, GMACs, input/output/weight MB.
    """
    fams = {key: ConvFamily.from_key(key) for key in X["family"].unique()}
    cin = X["cin"].to_numpy(dtype=float)
    cout = X["cout"].to_numpy(dtype=float)
    batch = X["batch"].to_numpy(dtype=float)
    f = [fams[k] for k in X["family"]]
    in_hw = np.array([fa.in_h * fa.in_w for fa in f], dtype=float)
    out_hw = np.array([fa.out_h * fa.out_w for fa in f], dtype=float)
    kk = np.array([fa.kernel_h * fa.kernel_w for fa in f], dtype=float)
    groups = np.array([ci if fa.depthwise else fa.groups for fa, ci in zip(f, cin, strict=True)], dtype=float)
    e = X["dtype"].map(_ELEMENT_BYTES).to_numpy(dtype=float)
    macs = batch * cout * out_hw * (cin / groups) * kk
    return pd.DataFrame({
        "in_h": [fa.in_h for fa in f], "in_w": [fa.in_w for fa in f],
        "kernel_h": [fa.kernel_h for fa in f], "kernel_w": [fa.kernel_w for fa in f],
        "stride": [fa.stride_h for fa in f], "pad": [fa.pad_h for fa in f], "dilation": [fa.dil_h for fa in f],
        "groups": groups, "depthwise": [float(fa.depthwise) for fa in f],
        "cin": cin, "cout": cout, "batch": batch, "elem_bytes": e,
        "channels_last": (X["layout"] == "nhwc").to_numpy(dtype=float),
        "conv_bn_relu": (X["op"] == "conv_bn_relu").to_numpy(dtype=float),
        "gmacs": macs / 1e9,
        "in_mb": e * batch * cin * in_hw / 1e6,
        "out_mb": e * batch * cout * out_hw / 1e6,
        "weight_mb": e * cout * (cin / groups) * kk / 1e6,
    }, index=X.index)


def lut_frame(session: Session, sweep_id: int, **where: Any) -> tuple[pd.DataFrame, np.ndarray]:
    """All ok measurements of a sweep as ``(X, y)``; ``where`` filters columns (e.g. ``batch=256``).

    Raises :class:`LatlabError` when nothing matches (an empty or foreign LUT).
    """
    query = sweep_rows(sweep_id, *[getattr(Measurement, c) for c in FEATURE_COLUMNS], Measurement.median_ms,
                       statuses=("ok",), **where).where(Measurement.median_ms.is_not(None))
    rows = session.execute(query.order_by(*(getattr(Measurement, c) for c in FEATURE_COLUMNS))).all()  # one order
    if not rows:
        filt = ", ".join(f"{k}={v}" for k, v in where.items() if v is not None)
        raise LatlabError(f"sweep {sweep_id} has no successful measurements{' with ' + filt if filt else ''}")
    frame = pd.DataFrame([r[:-1] for r in rows], columns=list(FEATURE_COLUMNS))
    return frame, np.array([r[-1] for r in rows], dtype=float)
