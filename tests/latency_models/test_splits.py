from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from db.errors import LatlabError
from db.keys import ConvConfig, ConvFamily
from latency_models.features import FEATURE_COLUMNS, GROUP_COLUMNS, frame_from_configs
from latency_models.splits import (
    distinct_keys,
    extrapolate_split,
    family_kfold,
    grid_split,
    leave_one_family_out,
    make_split,
    random_split,
)

AXIS = list(range(8, 129, 8))  # 16 values


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    fams = [ConvFamily.square(56, 3), ConvFamily.square(28, 1), ConvFamily.square(14, 3, 2)]
    configs = [ConvConfig(f, ci, co) for f in fams for ci in AXIS for co in AXIS]
    configs += [ConvConfig(fams[0], ci, co, batch=8) for ci in AXIS[:6] for co in AXIS[:6]]  # 2nd surface
    dw = ConvFamily.square(28, 3, depthwise=True)
    configs += [ConvConfig(dw, c, c) for c in AXIS]
    base = frame_from_configs(configs)
    # identical keys repeat (the same shape in several blocks): duplicate a third of the rows
    dup = base.iloc[::3]
    return pd.concat([base, dup, dup.iloc[::2]], ignore_index=True)


def _keys(X: pd.DataFrame, idx: np.ndarray) -> set[tuple]:
    return set(X.iloc[idx][list(FEATURE_COLUMNS)].itertuples(index=False, name=None))


def _check_partition(X: pd.DataFrame, train: np.ndarray, test: np.ndarray) -> None:
    assert len(train) and len(test)
    assert not set(train) & set(test)
    assert sorted([*train, *test]) == list(range(len(X)))
    assert not _keys(X, train) & _keys(X, test), "a LUT key landed on both sides"


def _key_share(X: pd.DataFrame, train: np.ndarray) -> float:
    return len(_keys(X, train)) / len(distinct_keys(X)[1])


@pytest.mark.parametrize("kind", ["random", "family", "extrapolate", "grid"])
@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_no_key_on_both_sides(frame: pd.DataFrame, kind: str, fraction: float) -> None:
    train, test = make_split(frame, kind, fraction, seed=1)
    _check_partition(frame, train, test)
    # a regular sub-grid cannot hit every share: k = 2 trains ~1/4 to 1/3 of a lattice
    tolerance = {"random": 0.01, "family": 0.35, "extrapolate": 0.1, "grid": 0.2}[kind]
    assert _key_share(frame, train) == pytest.approx(fraction, abs=tolerance)


def test_random_is_seeded(frame: pd.DataFrame) -> None:
    a = random_split(frame, 0.3, seed=5)
    b = random_split(frame, 0.3, seed=5)
    c = random_split(frame, 0.3, seed=6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


def test_extrapolate_tests_on_larger_channels(frame: pd.DataFrame) -> None:
    train, test = extrapolate_split(frame, 0.5)
    _check_partition(frame, train, test)
    tr, te = frame.iloc[train], frame.iloc[test]
    for key, part in te.groupby(list(GROUP_COLUMNS)):
        seen = tr.set_index(list(GROUP_COLUMNS)).loc[[key]]
        larger = (part["cin"] > seen["cin"].max()) | (part["cout"] > seen["cout"].max())
        assert larger.all()
    # the training corner is the small-channel corner of each family
    dense = tr[(tr["family"] == frame["family"].iloc[0]) & (tr["batch"] == 1)]
    assert dense["cin"].max() <= 64 and dense["cout"].max() <= 64


def test_grid_is_a_regular_subgrid_with_min_and_max(frame: pd.DataFrame) -> None:
    train, test = grid_split(frame, step=3)
    _check_partition(frame, train, test)
    tr = frame.iloc[train]
    for key, surface in frame.groupby(list(GROUP_COLUMNS)):
        sub = tr.set_index(list(GROUP_COLUMNS)).loc[[key]]
        for axis in ("cin", "cout"):
            values = np.unique(surface[axis])
            assert values.min() in set(sub[axis]) and values.max() in set(sub[axis])
            expected = set(values[::3]) | {values.max()}
            assert set(sub[axis]) == expected
        corners = {(surface["cin"].min(), surface["cout"].min()), (surface["cin"].max(), surface["cout"].max())}
        assert corners <= set(zip(sub["cin"], sub["cout"], strict=True))


def test_grid_fraction_picks_closest_step(frame: pd.DataFrame) -> None:
    only = frame[(frame["family"] == frame["family"].iloc[0]) & (frame["batch"] == 1)].reset_index(drop=True)
    train, _ = make_split(only, "grid", 0.25)
    # 16 values per axis: step 2 keeps 8 + the max = 9 (81/256 = 32 %), step 3 keeps 6 (36/256 = 14 %)
    assert _key_share(only, train) == pytest.approx(81 / 256)
    train, _ = make_split(only, "grid", 0.1)  # step 3: 14 %, step 4: 5*5/256 = 10 %
    assert _key_share(only, train) == pytest.approx(25 / 256)
    train, _ = make_split(only, "grid", 0.9)  # never the whole lattice
    assert _key_share(only, train) == pytest.approx(81 / 256)


def test_leave_one_family_out(frame: pd.DataFrame) -> None:
    families = sorted(frame["family"].unique())
    seen = []
    for fam, train, test in leave_one_family_out(frame):
        _check_partition(frame, train, test)
        assert set(frame.iloc[test]["family"]) == {fam}
        assert fam not in set(frame.iloc[train]["family"])
        seen.append(fam)
    assert seen == families


def test_family_kfold_partitions_families(frame: pd.DataFrame) -> None:
    folds = family_kfold(frame, k=2, seed=0)
    assert len(folds) == 2
    held = []
    for train, test in folds:
        _check_partition(frame, train, test)
        held += sorted(set(frame.iloc[test]["family"]))
    assert sorted(held) == sorted(frame["family"].unique())
    with pytest.raises(LatlabError):
        family_kfold(frame, k=10)


def test_errors(frame: pd.DataFrame) -> None:
    with pytest.raises(LatlabError, match="unknown split kind"):
        make_split(frame, "bogus", 0.5)
    with pytest.raises(LatlabError, match="train_fraction"):
        make_split(frame, "random", 1.0)
    one = frame[frame["family"] == frame["family"].iloc[0]]
    with pytest.raises(LatlabError, match="2 shape families"):
        make_split(one, "family", 0.5)
    with pytest.raises(LatlabError):
        grid_split(frame)
