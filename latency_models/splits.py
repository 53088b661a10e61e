"""Train/test splits of a feature frame that never leak a LUT key across the split.

Identical shapes repeat across the blocks of a network, so a LUT (or a merged set of sweeps) can hold
the same key ``(family, cin, cout, batch, dtype, layout, op)`` more than once. Every split here
assigns *distinct keys* to a side and then maps the rows back, so all rows of one key land on the
same side. Indices are positional (use them with ``X.iloc``) and sorted.

Kinds (:func:`make_split`):

* ``random``: a seeded random share of the distinct keys of every (cin, cout) surface trains (at
  least one key per surface: "measure 25% of the lattice" means of every family).
* ``family``: whole shape families are held out (see also :func:`leave_one_family_out` and
  :func:`family_kfold`).
* ``extrapolate``: per (cin, cout) surface, keys with cin *and* cout at or below a quantile of the
  surface's distinct values train; the test keys have a larger cin or cout than every training key.
* ``grid``: per surface, a regular coarse sub-lattice (every k-th distinct cin and cout, always with
  the min and max) trains: the "bilinear from a coarse sub-grid" setup of MDP.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from db.errors import LatlabError
from latency_models.features import FEATURE_COLUMNS, GROUP_COLUMNS, as_frame
from latency_models.split_kinds import SPLIT_KINDS

Split = tuple[np.ndarray, np.ndarray]


def distinct_keys(X: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """``(codes, keys)``: each row's index into ``keys``, the distinct LUT keys in sorted order."""
    frame = as_frame(X)
    cols = list(FEATURE_COLUMNS)
    grouped = frame[cols].groupby(cols, sort=True)
    codes = grouped.ngroup().to_numpy()
    keys = grouped.size().reset_index()[cols]
    return codes, keys


def _rows(codes: np.ndarray, train_keys: np.ndarray) -> Split:
    """Row indices of the keys marked in the boolean ``train_keys`` and of the others."""
    in_train = train_keys[codes]
    return np.flatnonzero(in_train), np.flatnonzero(~in_train)


def _check_fraction(train_fraction: float) -> float:
    f = float(train_fraction)
    if not 0.0 < f < 1.0:
        raise LatlabError(f"train_fraction must be in (0, 1), got {train_fraction!r}")
    return f


def _check_nonempty(split: Split, kind: str) -> Split:
    train, test = split
    if len(train) == 0 or len(test) == 0:
        side = "training" if len(train) == 0 else "test"
        raise LatlabError(f"{kind} split leaves no {side} rows; use more data or another train_fraction")
    return split


def random_split(X: pd.DataFrame, train_fraction: float, seed: int = 0) -> Split:
    """Per (cin, cout) surface, a seeded random ``train_fraction`` of its distinct keys trains.

    Every surface keeps at least one training key (a one-key surface trains only), so per-family
    models are judged on points of families they have seen; the test side is never empty overall: where
    every surface has a single key, one of them is held out (per-family models count it missing).
    """
    f = _check_fraction(train_fraction)
    codes, keys = distinct_keys(X)
    n = len(keys)
    if n < 2:
        raise LatlabError(f"a random split needs at least 2 distinct LUT keys, got {n}")
    rng = np.random.default_rng(seed)
    mask = np.zeros(n, dtype=bool)
    for positions in keys.groupby(list(GROUP_COLUMNS), sort=True).indices.values():
        positions = rng.permutation(positions)
        mask[positions[: max(1, int(round(f * len(positions))))]] = True
    if mask.all():  # every surface had a single key: hold one out anyway
        mask[rng.integers(n)] = False
    return _rows(codes, mask)


def _families(X: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    codes, keys = distinct_keys(X)
    families = sorted(keys["family"].unique())
    if len(families) < 2:
        raise LatlabError(f"a family split needs at least 2 shape families, got {len(families)}")
    return codes, families


def family_split(X: pd.DataFrame, train_fraction: float, seed: int = 0) -> Split:
    """Whole families train or test: a seeded family order, cut where the key share is closest to the fraction."""
    f = _check_fraction(train_fraction)
    codes, keys = distinct_keys(X)
    _, families = _families(X)
    order = [families[i] for i in np.random.default_rng(seed).permutation(len(families))]
    counts = keys["family"].value_counts()
    share = np.cumsum([counts[fam] for fam in order])[:-1] / len(keys)  # 1 .. F-1 families in training
    cut = int(np.argmin(np.abs(share - f))) + 1
    mask = keys["family"].isin(order[:cut]).to_numpy()
    return _rows(codes, mask)


def leave_one_family_out(X: pd.DataFrame) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """``(family, train_idx, test_idx)`` for each family held out in turn (families in sorted order)."""
    codes, keys = distinct_keys(X)
    _, families = _families(X)
    for fam in families:
        train, test = _rows(codes, (keys["family"] != fam).to_numpy())
        yield fam, train, test


def family_kfold(X: pd.DataFrame, k: int = 5, seed: int = 0) -> list[Split]:
    """Seeded k-fold over families: fold i tests on the i-th of ``k`` near-equal sets of families."""
    codes, keys = distinct_keys(X)
    _, families = _families(X)
    if not 2 <= k <= len(families):
        raise LatlabError(f"family k-fold needs 2 <= k <= {len(families)} (the number of families), got {k}")
    order = np.random.default_rng(seed).permutation(len(families))
    folds = np.array_split(order, k)
    out = []
    for fold in folds:
        held = {families[i] for i in fold}
        out.append(_rows(codes, (~keys["family"].isin(held)).to_numpy()))
    return out


def _surfaces(keys: pd.DataFrame) -> list[np.ndarray]:
    """Positions in ``keys`` of each (family, batch, dtype, layout, op) surface."""
    return [np.asarray(idx) for idx in keys.groupby(list(GROUP_COLUMNS), sort=True).indices.values()]


def _extrapolate_mask(keys: pd.DataFrame, quantile: float) -> np.ndarray:
    cin = keys["cin"].to_numpy()
    cout = keys["cout"].to_numpy()
    mask = np.zeros(len(keys), dtype=bool)
    for pos in _surfaces(keys):
        t_in = np.quantile(np.unique(cin[pos]), quantile, method="lower")
        t_out = np.quantile(np.unique(cout[pos]), quantile, method="lower")
        mask[pos] = (cin[pos] <= t_in) & (cout[pos] <= t_out)
    return mask


def extrapolate_split(X: pd.DataFrame, quantile: float) -> Split:
    """Per surface, train on keys with cin and cout <= the ``quantile`` of its distinct cin / cout values.

    Every test key then has a larger cin or a larger cout than all training keys of its surface.
    """
    if not 0.0 <= float(quantile) <= 1.0:
        raise LatlabError(f"quantile must be in [0, 1], got {quantile!r}")
    codes, keys = distinct_keys(X)
    return _rows(codes, _extrapolate_mask(keys, float(quantile)))


def extrapolate_quantile(X: pd.DataFrame, train_fraction: float) -> float:
    """The quantile (on a 1% grid) whose :func:`extrapolate_split` training share is closest to the fraction."""
    f = _check_fraction(train_fraction)
    _, keys = distinct_keys(X)
    best, best_gap = 0.0, np.inf
    for q in np.linspace(0.0, 1.0, 101):
        share = _extrapolate_mask(keys, float(q)).mean()
        if 0.0 < share < 1.0 and abs(share - f) < best_gap:
            best, best_gap = float(q), abs(share - f)
    return best


def _subaxis(values: np.ndarray, step: int) -> np.ndarray:
    """Every ``step``-th of the sorted distinct ``values``, plus the largest."""
    axis = np.unique(values)
    return np.union1d(axis[::step], axis[-1:])


def _grid_surface_mask(cin: np.ndarray, cout: np.ndarray, step: int) -> np.ndarray:
    return np.isin(cin, _subaxis(cin, step)) & np.isin(cout, _subaxis(cout, step))


def grid_split(X: pd.DataFrame, step: int | None = None, train_fraction: float | None = None) -> Split:
    """Train on the coarse sub-lattice of each surface: every ``step``-th distinct cin and cout, with min/max.

    Give ``step`` (one k for all surfaces) or ``train_fraction`` (per surface, the k >= 2 whose training
    share is closest to it; ties go to the coarser grid). With k = 2 about a quarter of a square lattice
    trains, so fractions above ~0.3 give that share.
    """
    if (step is None) == (train_fraction is None):
        raise LatlabError("grid_split needs exactly one of step and train_fraction")
    if step is not None and (not isinstance(step, (int, np.integer)) or step < 1):
        raise LatlabError(f"grid step must be an integer >= 1, got {step!r}")
    f = None if train_fraction is None else _check_fraction(train_fraction)
    codes, keys = distinct_keys(X)
    cin = keys["cin"].to_numpy()
    cout = keys["cout"].to_numpy()
    mask = np.zeros(len(keys), dtype=bool)
    for pos in _surfaces(keys):
        ci, co = cin[pos], cout[pos]
        if step is not None:
            mask[pos] = _grid_surface_mask(ci, co, int(step))
            continue
        longest = max(len(np.unique(ci)), len(np.unique(co)))
        best, best_gap = None, np.inf
        for k in range(2 if longest > 2 else 1, max(longest, 1) + 1):  # k = 1 would be the whole lattice
            m = _grid_surface_mask(ci, co, k)
            gap = abs(m.mean() - f)
            if gap <= best_gap:  # later (coarser) k wins ties
                best, best_gap = m, gap
        mask[pos] = best
    return _rows(codes, mask)


def make_split(X: pd.DataFrame, kind: str = "random", train_fraction: float = 0.5, seed: int = 0) -> Split:
    """``(train_idx, test_idx)`` positional row indices; see the module docstring for the kinds.

    ``seed`` matters for ``random`` and ``family``; ``extrapolate`` and ``grid`` are deterministic and
    choose their quantile / step so the training share of distinct keys is closest to ``train_fraction``.
    Raises :class:`LatlabError` when a side would be empty.
    """
    if kind not in SPLIT_KINDS:
        raise LatlabError(f"unknown split kind {kind!r}; choose from {', '.join(SPLIT_KINDS)}")
    frame = as_frame(X)
    if len(frame) == 0:
        raise LatlabError("cannot split an empty feature frame")
    if kind == "random":
        split = random_split(frame, train_fraction, seed)
    elif kind == "family":
        split = family_split(frame, train_fraction, seed)
    elif kind == "extrapolate":
        split = extrapolate_split(frame, extrapolate_quantile(frame, train_fraction))
    else:
        split = grid_split(frame, train_fraction=train_fraction)
    return _check_nonempty(split, kind)
