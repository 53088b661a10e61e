"""Helpers shared by the built-in estimators: frame preparation, per-group tables and range checks.

A *group* is one (family, batch, dtype, layout, op) combination (:data:`GROUP_COLUMNS`): inside it only
(cin, cout) vary, so per-group models see a 2-D surface (1-D for depthwise families, where cin == cout).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from db.errors import InvalidKeyError
from db.keys import ConvConfig, ConvFamily, check_exec_settings
from latency_models.base import OutOfRangeError
from latency_models.features import FEATURE_COLUMNS, GROUP_COLUMNS, as_frame

GroupKey = tuple[str, int, str, str, str]  # (family key, batch, dtype, layout, op)
Ranges = tuple[int, int, int, int]  # (cin min, cin max, cout min, cout max)


def prepare(X: pd.DataFrame | Sequence[ConvConfig]) -> pd.DataFrame:
    """``X`` as a frame with a fresh index and integer cin/cout/batch >= 1 (other columns are kept).

    Family keys and dtype/layout/op values are validated too (:class:`InvalidKeyError`).
    """
    frame = as_frame(X).reset_index(drop=True)
    cast = {}
    for column in ("cin", "cout", "batch"):
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(values) | (values < 1) | (values != np.round(values))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InvalidKeyError(f"{column} must be an integer >= 1, got {frame[column].iloc[i]!r} in row {i}")
        cast[column] = values.astype(np.int64)
    for key in frame["family"].unique():
        ConvFamily.from_key(str(key))
    for dtype, layout, op in frame[["dtype", "layout", "op"]].drop_duplicates().itertuples(index=False):
        check_exec_settings(dtype, layout, op)
    return frame.assign(**cast)


def single_thread() -> threadpool_limits:
    """Context: BLAS/OpenMP pools limited to one thread.

    The fits are small (a few hundred points per GP, ~1e3 rows per booster): threads gain little, and
    on a busy 2-core host their spin-waits made fits 10-40x slower. One thread also keeps refits
    bit-identical across machines.
    """
    return threadpool_limits(limits=1)


def describe(family: Any, cin: Any, cout: Any, batch: Any, dtype: Any, layout: Any, op: Any) -> str:
    """The :meth:`ConvConfig.describe` text of one LUT key given as loose values."""
    return f"{family} cin={int(cin)} cout={int(cout)} batch={int(batch)} dtype={dtype} layout={layout} op={op}"


def describe_row(frame: pd.DataFrame, i: int, *, cin: Any = None) -> str:
    """:func:`describe` of row ``i`` of a feature frame (``cin`` overrides the row's own)."""
    row = frame.iloc[int(i)]
    return describe(row["family"], row["cin"] if cin is None else cin, row["cout"], row["batch"], row["dtype"],
                    row["layout"], row["op"])


def normalise_key(key: Sequence[Any]) -> GroupKey:
    """A group key with plain Python types (hashable, comparable, printable)."""
    family, batch, dtype, layout, op = key
    return (str(family), int(batch), str(dtype), str(layout), str(op))


def key_text(key: GroupKey) -> str:
    """Text form of a group key, used as a JSON object key."""
    return "|".join(str(part) for part in key)


def is_depthwise(key: GroupKey) -> bool:
    """True for a depthwise family (key ending in ``_gdw``), whose surface is 1-D (cin == cout)."""
    return key[0].endswith("_gdw")


def group_rows(frame: pd.DataFrame) -> dict[GroupKey, np.ndarray]:
    """Row positions of each group of ``frame``, in order of first appearance."""
    if len(frame) == 0:
        return {}
    groups = frame.groupby(list(GROUP_COLUMNS), sort=False).indices
    return {normalise_key(k): np.asarray(v) for k, v in groups.items()}


@dataclass
class GroupTable:
    """The measured points of one group, duplicates averaged, sorted by (cin, cout)."""

    key: GroupKey
    cin: np.ndarray
    cout: np.ndarray
    y: np.ndarray
    values: dict[tuple[int, int], float] = field(repr=False)

    @property
    def depthwise(self) -> bool:
        return is_depthwise(self.key)

    @property
    def ranges(self) -> Ranges:
        return int(self.cin.min()), int(self.cin.max()), int(self.cout.min()), int(self.cout.max())

    @cached_property
    def axes(self) -> tuple[np.ndarray, np.ndarray]:
        """The distinct measured cin and cout values, sorted."""
        return np.unique(self.cin), np.unique(self.cout)

    @cached_property
    def log_points(self) -> tuple[np.ndarray, np.ndarray]:
        """log cin and log cout of the measured points (for distances in log space)."""
        return np.log(self.cin), np.log(self.cout)

    def lookup(self, cin: np.ndarray, cout: np.ndarray) -> np.ndarray:
        """Measured value at each (cin, cout); NaN where not measured."""
        return np.array([self.values.get((int(a), int(b)), np.nan) for a, b in zip(cin, cout, strict=True)],
                        dtype=float)


def group_tables(frame: pd.DataFrame, y: np.ndarray) -> dict[GroupKey, GroupTable]:
    """Per-group tables of the measured points; duplicate keys are averaged (mean)."""
    columns = list(FEATURE_COLUMNS)
    means = frame[columns].assign(_y=y).groupby(columns, sort=True)["_y"].mean().reset_index()
    tables: dict[GroupKey, GroupTable] = {}
    for key, rows in group_rows(means).items():
        part = means.iloc[rows]
        cin = part["cin"].to_numpy(dtype=np.int64)
        cout = part["cout"].to_numpy(dtype=np.int64)
        vals = part["_y"].to_numpy(dtype=float)
        points = zip(cin.tolist(), cout.tolist(), strict=True)
        tables[key] = GroupTable(key, cin, cout, vals, dict(zip(points, vals.tolist(), strict=True)))
    return tables


def group_ranges(frame: pd.DataFrame) -> dict[GroupKey, Ranges]:
    """Trained (cin min, cin max, cout min, cout max) of every group of ``frame``."""
    agg = frame.groupby(list(GROUP_COLUMNS), sort=False).agg(
        cin_min=("cin", "min"), cin_max=("cin", "max"), cout_min=("cout", "min"), cout_max=("cout", "max"))
    return {normalise_key(k): tuple(int(v) for v in row) for k, row in zip(agg.index, agg.to_numpy(), strict=True)}


def check_rows(
    frame: pd.DataFrame, rows: Mapping[GroupKey, np.ndarray], ranges: Mapping[GroupKey, Ranges], *,
    model: str, strict: bool, per_group: bool, cin: np.ndarray | None = None,
) -> None:
    """Raise :class:`OutOfRangeError` for the first row that the model must not predict.

    A group absent from ``ranges`` is refused when ``per_group`` (nothing to predict from) or ``strict``;
    with ``strict`` a cin (``cin`` overrides the frame's) or cout outside the group's trained range is too.
    """
    cins = frame["cin"].to_numpy() if cin is None else np.asarray(cin)
    couts = frame["cout"].to_numpy()
    for key, idx in rows.items():
        if key not in ranges:
            if per_group or strict:
                why = ("it predicts each group from that group's own measurements" if per_group
                       else "strict=True refuses groups absent from the training data")
                raise OutOfRangeError(
                    f"{describe_row(frame, idx[0], cin=cins[idx[0]])}: {model} was never trained on family "
                    f"{key[0]} at batch={key[1]} dtype={key[2]} layout={key[3]} op={key[4]}; {why}"
                )
            continue
        if not strict:
            continue
        lo_i, hi_i, lo_o, hi_o = ranges[key]
        for name, values, lo, hi in (("cin", cins[idx], lo_i, hi_i), ("cout", couts[idx], lo_o, hi_o)):
            outside = (values < lo) | (values > hi)
            if outside.any():
                i = idx[int(np.flatnonzero(outside)[0])]
                raise OutOfRangeError(
                    f"{describe_row(frame, i, cin=cins[i])}: {name}={int(values[outside][0])} is outside the "
                    f"trained range [{lo}, {hi}] of its group (strict=True)"
                )


def out_of_row(frame: pd.DataFrame, i: int, cin: int, name: str, value: int, lo: int, hi: int,
               where: str) -> OutOfRangeError:
    """An :class:`OutOfRangeError` for a value outside a measured row/column (strict mode)."""
    return OutOfRangeError(
        f"{describe_row(frame, i, cin=cin)}: {name}={value} is outside [{lo}, {hi}] measured {where} (strict=True)"
    )
