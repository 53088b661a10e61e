"""The built-in latency models (latency_models.estimators) on synthetic LUTs from the fake backend."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.utils.estimator_checks import check_estimators_unfitted

from db.errors import LatlabError, LUTMissError
from db.keys import ConvConfig, ConvFamily
from latency_models.base import LatencyModel, NotFittedError, OutOfRangeError, get_model, list_models, model_from_state
from latency_models.estimators import (
    MDLM,
    GradientBoostingLatency,
    LinearLatencyModel,
    LUTModel,
    PerFamilyBilinear,
    RandomForestLatency,
)
from latency_models.features import frame_from_configs, numeric_features
from profiler.backends.fake import FakeBackend

KINDS = ("lut", "llm", "mdlm", "bilinear", "rf", "gbdt")
FAST = {"rf": {"n_estimators": 30}, "gbdt": {"max_iter": 60}}  # where accuracy does not matter
FAKE = FakeBackend(noise=0.0)

DENSE = ConvFamily.square(14, 3)
STEM = ConvFamily.square(64, 7, 2)
DW = ConvFamily.square(14, 3, depthwise=True)
OTHER = ConvFamily.square(7, 1)
CHANNELS = list(range(32, 257, 32))


def make(kind: str, **params: Any) -> LatencyModel:
    return get_model(kind, **{**FAST.get(kind, {}), **params})


def true_ms(configs: list[ConvConfig]) -> np.ndarray:
    return np.array([FAKE.true_latency_ms(c) for c in configs])


@pytest.fixture(scope="module")
def lut() -> tuple[list[ConvConfig], np.ndarray]:
    """A dense 8x8 lattice, a stem row (cin = 3) and a depthwise curve, at batch 8."""
    configs = [ConvConfig(DENSE, ci, co, batch=8) for ci in CHANNELS for co in CHANNELS]
    configs += [ConvConfig(STEM, 3, co, batch=8) for co in CHANNELS]
    configs += [ConvConfig(DW, c, c, batch=8) for c in CHANNELS]
    return configs, true_ms(configs)


@pytest.fixture(scope="module")
def resnet18() -> tuple[pd.DataFrame, np.ndarray]:
    from profiler.plan import build_plan

    configs = build_plan("resnet18", "full:32", input_size=64, batch=8).configs
    return frame_from_configs(configs), true_ms(configs)


def split(n: int, frac: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    k = int(frac * n)
    return perm[:k], perm[k:]


def probe(configs: list[ConvConfig]) -> list[ConvConfig]:
    """Training points plus unmeasured points inside the dense and depthwise ranges."""
    return configs + [ConvConfig(DENSE, 48, 80, batch=8), ConvConfig(DENSE, 200, 40, batch=8),
                      ConvConfig(DW, 48, 48, batch=8)]


# ------------------------------------------------------------------------------------ sklearn contract

def test_registry_lists_every_kind() -> None:
    assert set(KINDS) <= set(list_models())
    classes = (LUTModel, LinearLatencyModel, MDLM, PerFamilyBilinear, RandomForestLatency, GradientBoostingLatency)
    for kind, cls in zip(KINDS, classes, strict=True):
        assert cls.kind == kind and type(get_model(kind)) is cls


def test_a_custom_model_cannot_take_a_built_in_kind_even_before_the_built_ins_load() -> None:
    code = textwrap.dedent("""
        from latency_models.base import LatencyModel, get_model, register_model
        class Mine(LatencyModel):
            kind = "lut"
            def fit(self, X, y): return self
            def predict(self, X): return X
        try:
            register_model(Mine)
        except Exception as exc:
            print("refused:", exc)
        print(type(get_model("lut")).__name__, type(get_model("mdlm")).__name__)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["refused: a latency model kind 'lut' is already registered", "LUTModel MDLM"]
    for first in ("_lut", "_mdlm", "_linear", "estimators"):  # any module imported first registers them all
        code = f"import latency_models.{first}\nfrom latency_models.base import list_models\nprint(*list_models())"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.split() == ["bilinear", "gbdt", "llm", "lut", "mdlm", "rf"], first


@pytest.mark.parametrize("kind", KINDS)
def test_sklearn_contract(kind: str, lut: tuple[list[ConvConfig], np.ndarray]) -> None:
    configs, y = lut
    model = make(kind)
    params = model.get_params()
    assert "strict" in params and params["strict"] is False
    assert model.set_params(strict=True) is model and model.get_params()["strict"] is True
    model.set_params(**params)
    assert model.get_params() == params
    twin = clone(model)
    assert twin is not model and twin.get_params() == params
    with pytest.raises(NotFittedError):
        model.predict(configs[:2])
    check_estimators_unfitted(kind, clone(model))  # scikit-learn's own check: its NotFittedError is raised
    before = set(vars(model))
    assert model.fit(configs, y) is model
    learned = set(vars(model)) - before
    assert learned and all(name.endswith("_") and not name.startswith("_") for name in learned)
    assert {"n_features_in_", "train_data_"} <= learned and model.n_features_in_ == 7
    assert not hasattr(clone(model), "n_features_in_")  # clone drops learned state
    pred = model.predict(frame_from_configs(configs))
    assert isinstance(pred, np.ndarray) and pred.shape == (len(configs),) and np.all(np.isfinite(pred))
    assert np.array_equal(pred, model.predict(configs))  # frame or configs
    assert 0.0 <= model.score(configs, y) <= 1.0


@pytest.mark.parametrize("kind", KINDS)
def test_persistence_roundtrip(kind: str, lut: tuple[list[ConvConfig], np.ndarray]) -> None:
    configs, y = lut
    params = {"missing": "bilinear"} if kind == "lut" else {}
    model = make(kind, **params).fit(configs, y)
    state = json.loads(json.dumps(model.to_state()))
    again = model_from_state(state)
    assert type(again) is type(model) and again.get_params() == model.get_params()
    queries = probe(configs)
    assert np.array_equal(again.predict(queries), model.predict(queries))
    assert np.array_equal(again.predict_std(queries), model.predict_std(queries), equal_nan=True)


def test_mdlm_state_keeps_gp_hyperparameters(lut: tuple[list[ConvConfig], np.ndarray]) -> None:
    configs, y = lut
    model = MDLM().fit(configs, y)
    state = json.loads(json.dumps(model.to_state()))
    assert set(state["surface_hyper"]) == {f"{f.key}|8|fp32|nchw|conv" for f in (DENSE, STEM, DW)}
    again = model_from_state(state)
    for key, surface in model.surfaces_.items():
        assert again.surfaces_[key].hyper() == surface.hyper()
        assert again.surfaces_[key].gp.optimizer is None  # reloaded without re-optimising


def test_mdlm_fits_a_surface_only_for_a_group_priced_off_its_table(lut: tuple[list[ConvConfig], np.ndarray]) -> None:
    """Pricing measured points (a pruner on a lattice LUT) fits no GP; a point off the table fits its group's
    surface only, the one a model fitting every surface up front would use."""
    configs, y = lut
    lazy = MDLM().fit(configs, y)
    assert np.array_equal(lazy.predict(configs), y) and lazy.surface_cache_ == {}
    off = [ConvConfig(DENSE, 24, 40, batch=8)]
    assert off[0] not in configs
    value = lazy.predict(off)
    assert list(lazy.surface_cache_) == [(DENSE.key, 8, "fp32", "nchw", "conv")]
    eager = MDLM().fit(configs, y)
    assert len(eager.surfaces_) == 3 and eager.predict(off) == value


def test_mdlm_fits_the_surfaces_one_call_needs_side_by_side(
    lut: tuple[list[ConvConfig], np.ndarray], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A prediction off the table of several groups (a held-out split, adaptive sampling's predict_std and
    posterior covariance) fits their surfaces in one parallel batch, not one group after another, with the
    values a group-by-group fit gives."""
    import latency_models._mdlm as mdlm_module

    configs, y = lut
    off = [ConvConfig(DENSE, 24, 40, batch=8), ConvConfig(STEM, 3, 40, batch=8), ConvConfig(DW, 40, 40, batch=8)]
    one_by_one = MDLM().fit(configs, y)
    expected = np.array([one_by_one.predict([c])[0] for c in off])
    expected_std = np.array([one_by_one.predict_std([c])[0] for c in off])
    batches: list[int] = []
    real = mdlm_module._fit_surfaces

    def counting(tables: dict, **kw: Any) -> dict:
        batches.append(len(tables))
        return real(tables, **kw)

    monkeypatch.setattr(mdlm_module, "_fit_surfaces", counting)
    model = MDLM().fit(configs, y)
    assert np.array_equal(model.predict(off), expected) and batches == [3]
    assert np.array_equal(MDLM().fit(configs, y).predict_std(off), expected_std) and batches == [3, 3]
    fresh = MDLM().fit(configs, y)
    assert set(fresh.posterior_covariance(off)) == set(fresh.tables_) and batches == [3, 3, 3]
    assert np.array_equal(model.predict(off + configs), np.concatenate([expected, y])) and batches == [3, 3, 3]


# ------------------------------------------------------------------------------------------- LUTModel

def test_lut_exact_hits_and_duplicate_mean(lut: tuple[list[ConvConfig], np.ndarray]) -> None:
    configs, y = lut
    extra = [configs[0], configs[0]]
    model = LUTModel().fit(configs + extra, np.concatenate([y, [y[0] + 1.0, y[0] + 2.0]]))
    pred = model.predict(configs)
    assert pred[0] == pytest.approx(y[0] + 1.0)  # mean of y0, y0 + 1, y0 + 2
    assert np.array_equal(pred[1:], y[1:])


def test_lut_missing_error_names_config(lut: tuple[list[ConvConfig], np.ndarray]) -> None:
    configs, y = lut
    miss = ConvConfig(DENSE, 48, 80, batch=8)
    with pytest.raises(LUTMissError) as info:
        LUTModel().fit(configs, y).predict([miss])
    assert miss.describe() in str(info.value)


def test_lut_predict_partial_leaves_misses_nan(lut: tuple[list[ConvConfig], np.ndarray]) -> None:
    configs, y = lut
    first, second = ConvConfig(DENSE, 48, 80, batch=8), ConvConfig(DW, 40, 40, batch=8)
    model = LUTModel().fit(configs, y)
    pred, refusal = model.predict_partial([configs[0], second, first, configs[1]])
    assert np.array_equal(pred[[0, 3]], y[:2]) and np.isnan(pred[[1, 2]]).all()
    assert isinstance(refusal, LUTMissError) and second.describe() in str(refusal)  # the first miss, by row
    assert model.predict_partial(configs[:3])[1] is None
    assert not np.isnan(LUTModel(missing="nearest").fit(configs, y).predict_partial([first])[0]).any()
    with pytest.raises(OutOfRangeError):  # refusals other than a miss still raise
        model.predict_partial([ConvConfig(ConvFamily.square(9, 5), 8, 8, batch=8)])


def test_lut_nearest_in_log_space() -> None:
    configs = [ConvConfig(DENSE, ci, co, batch=8) for ci, co in [(32, 32), (32, 128), (128, 32), (128, 128)]]
    model = LUTModel(missing="nearest").fit(configs, [1.0, 2.0, 3.0, 4.0])
    queries = [ConvConfig(DENSE, ci, co, batch=8) for ci, co in [(40, 60), (40, 70), (100, 100), (60, 33)]]
    # log distance: 60 is nearer 32 than 128 (log2 0.9 vs 1.1); 70 is nearer 128
    assert model.predict(queries).tolist() == [1.0, 2.0, 4.0, 1.0]


def test_lut_nearest_ties_go_to_smaller_cin_then_cout(monkeypatch: pytest.MonkeyPatch) -> None:
    import latency_models._lut as lut

    configs = [ConvConfig(DENSE, ci, co, batch=8) for ci, co in [(32, 32), (32, 128), (128, 32), (128, 128)]]
    model = LUTModel(missing="nearest").fit(configs, [1.0, 2.0, 3.0, 4.0])
    queries = [ConvConfig(DENSE, ci, co, batch=8) for ci, co in [(64, 64), (64, 128), (128, 64), (40, 60)]]
    expected = [1.0, 2.0, 3.0, 1.0]  # (64, 64) is as near all four corners in log space
    assert model.predict(queries).tolist() == expected
    monkeypatch.setattr(lut, "_NEAREST_CHUNK", 1)  # one query at a time: the same answers
    assert model.predict(queries).tolist() == expected


def _bilinear_fn(cin: np.ndarray, cout: np.ndarray) -> np.ndarray:
    return 0.5 + 0.01 * cin + 0.02 * cout + 3e-4 * cin * cout


def test_lut_bilinear_exact_on_bilinear_function() -> None:
    grid = [(ci, co) for ci in (32, 64, 128, 256) for co in (32, 96, 160, 224)]
    configs = [ConvConfig(DENSE, ci, co, batch=8) for ci, co in grid]
    y = _bilinear_fn(*np.array(grid, dtype=float).T)
    model = LUTModel(missing="bilinear").fit(configs, y)
    pts = np.array([(48, 50), (200, 100), (64, 128), (100, 224), (255, 33)], dtype=float)
    queries = [ConvConfig(DENSE, int(ci), int(co), batch=8) for ci, co in pts]
    np.testing.assert_allclose(model.predict(queries), _bilinear_fn(pts[:, 0], pts[:, 1]), rtol=1e-12)


def test_lut_bilinear_fallbacks() -> None:
    grid = [(ci, co) for ci in (32, 64, 128) for co in (32, 64, 128)]
    grid.remove((64, 64))  # a hole: cells around it lack a corner
    configs = [ConvConfig(DENSE, ci, co, batch=8) for ci, co in grid]
    y = _bilinear_fn(*np.array(grid, dtype=float).T)
    model = LUTModel(missing="bilinear").fit(configs, y)
    v = dict(zip(grid, y, strict=True))
    on_row = model.predict([ConvConfig(DENSE, 64, 96, batch=8)])[0]  # corners (64, 64) missing: along row 64
    assert on_row == pytest.approx(v[(64, 32)] / 3 + 2 * v[(64, 128)] / 3)
    assert on_row == pytest.approx(_bilinear_fn(64.0, 96.0))
    off = model.predict([ConvConfig(DENSE, 48, 40, batch=8)])[0]  # no corners, no row/column: nearest
    assert off == v[(64, 32)]  # log distance 0.36 vs 0.46 to (32, 32)
    # nearest measured point is itself refused when out of range under strict
    with pytest.raises(OutOfRangeError):
        LUTModel(missing="bilinear", strict=True).fit(configs, y).predict([ConvConfig(DENSE, 256, 64, batch=8)])


def test_lut_depthwise_interpolates_along_channels(lut: tuple[list[ConvConfig], np.ndarray]) -> None:
    configs, y = lut
    model = LUTModel(missing="bilinear").fit(configs, y)
    lo, hi = (FAKE.true_latency_ms(ConvConfig(DW, c, c, batch=8)) for c in (32, 64))
    assert model.predict([ConvConfig(DW, 48, 48, batch=8)])[0] == pytest.approx((lo + hi) / 2)


def test_lut_never_averages_globally(lut: tuple[list[ConvConfig], np.ndarray]) -> None:
    configs, y = lut
    with pytest.raises(OutOfRangeError, match="never trained"):
        LUTModel(missing="nearest").fit(configs, y).predict([ConvConfig(OTHER, 32, 32, batch=8)])


# ------------------------------------------------------------------------------------------------- LLM

ROW_CINS = (64, 128)
ROW_COUTS = (32, 64, 96, 128)
ROWS = {64: [1.0, 1.9, 3.1, 3.0], 128: [2.0, 2.5, 2.4, 4.0]}  # noisy: not monotone


@pytest.fixture()
def llm() -> LinearLatencyModel:
    configs = [ConvConfig(DENSE, ci, co, batch=8) for ci in ROW_CINS for co in ROW_COUTS]
    return LinearLatencyModel().fit(configs, [v for ci in ROW_CINS for v in ROWS[ci]])


def test_llm_exact_on_measured_points(llm: LinearLatencyModel) -> None:
    configs = [ConvConfig(DENSE, ci, co, batch=8) for ci in ROW_CINS for co in ROW_COUTS]
    assert llm.predict(configs).tolist() == [v for ci in ROW_CINS for v in ROWS[ci]]


def test_llm_freezes_cin_at_nearest_row_and_interpolates_cout(llm: LinearLatencyModel) -> None:
    r = ROWS[128]
    # cin=100 is nearer 128 than 64 in log space; cout=80 lies halfway between 64 and 96
    assert llm.predict([ConvConfig(DENSE, 100, 80, batch=8)])[0] == pytest.approx((r[1] + r[2]) / 2)
    assert llm.predict([ConvConfig(DENSE, 88, 64, batch=8)])[0] == ROWS[64][1]  # log2(88/64) < log2(128/88)
    # beyond the row: linear from the last two points, clipped at 0
    assert llm.predict([ConvConfig(DENSE, 128, 160, batch=8)])[0] == pytest.approx(r[3] + (r[3] - r[2]))
    assert llm.predict([ConvConfig(DENSE, 64, 16, batch=8)])[0] == pytest.approx(0.55)
    big_drop = LinearLatencyModel().fit([ConvConfig(DENSE, 64, 32, batch=8), ConvConfig(DENSE, 64, 64, batch=8)],
                                        [0.1, 5.0])
    assert big_drop.predict([ConvConfig(DENSE, 64, 8, batch=8)])[0] == 0.0
    with pytest.raises(OutOfRangeError, match="cout=160"):
        llm.set_params(strict=True).predict([ConvConfig(DENSE, 128, 160, batch=8)])


@pytest.mark.parametrize(("low", "high", "query"), [(2, 8, 4), (1, 49, 7), (3, 27, 9), (5, 45, 15)])
def test_exact_log_ties_go_to_the_smaller_width(low: int, high: int, query: int) -> None:
    """query² = low·high: equally far in log space. Rounding of the logs must not pick the larger (as it did)."""
    rows = [ConvConfig(DENSE, ci, co, batch=8) for ci in (low, high) for co in (4, 16)]
    y = [1.0, 2.0, 10.0, 20.0]  # the low row is 1, 2; the high row 10, 20
    llm = LinearLatencyModel().fit(rows, y)
    assert llm.predict([ConvConfig(DENSE, query, 4, batch=8)])[0] == 1.0
    nearest = make("lut", missing="nearest").fit(rows, y)
    assert nearest.predict([ConvConfig(DENSE, query, 8, batch=8)])[0] == 1.0  # (low, 4): smaller cin, then cout


def test_llm_cin_ref_column(llm: LinearLatencyModel) -> None:
    X = frame_from_configs([ConvConfig(DENSE, 64, 96, batch=8)] * 3)
    X["cin_ref"] = [128, np.nan, 70]
    assert llm.predict(X).tolist() == [ROWS[128][2], ROWS[64][2], ROWS[64][2]]
    X["cin_ref"] = [0, 1, 2]
    with pytest.raises(LatlabError, match="cin_ref"):
        llm.predict(X)


def test_llm_group_costs(llm: LinearLatencyModel) -> None:
    r = ROWS[128]
    deltas = llm.group_costs(ConvConfig(DENSE, 128, 128, batch=8), q=32)
    assert deltas == pytest.approx([r[0], r[1] - r[0], r[2] - r[1], r[3] - r[2]])
    assert deltas[2] < 0  # noisy LUT: kept negative
    assert deltas.sum() == pytest.approx(r[3])
    # cin frozen at config.cin (nearest row 64), default n = cout // q, explicit n_groups
    assert llm.group_costs(ConvConfig(DENSE, 60, 96, batch=8), q=32).sum() == pytest.approx(ROWS[64][2])
    assert len(llm.group_costs(ConvConfig(DENSE, 60, 96, batch=8), q=32, n_groups=2)) == 2
    assert llm.group_costs(ConvConfig(DENSE, 60, 16, batch=8), q=32).size == 0
    with pytest.raises(LatlabError):
        llm.group_costs(ConvConfig(DENSE, 60, 96, batch=8), q=0)


@settings(max_examples=30, deadline=None)
@given(q=st.integers(1, 64), n=st.integers(1, 12), cin=st.integers(1, 512))
def test_llm_group_costs_telescope(q: int, n: int, cin: int) -> None:
    configs = [ConvConfig(DENSE, ci, co, batch=8) for ci in ROW_CINS for co in ROW_COUTS]
    model = LinearLatencyModel().fit(configs, [v for ci in ROW_CINS for v in ROWS[ci]])
    config = ConvConfig(DENSE, cin, q * n, batch=8)
    deltas = model.group_costs(config, q=q)
    assert len(deltas) == n
    assert deltas.sum() == pytest.approx(model.predict([config])[0])
    couts = q * np.arange(1, n + 1)
    levels = model.predict([ConvConfig(DENSE, cin, int(c), batch=8) for c in couts])
    assert deltas == pytest.approx(np.diff(np.concatenate([[0.0], levels])))


def test_llm_depthwise_is_one_curve(lut: tuple[list[ConvConfig], np.ndarray]) -> None:
    configs, y = lut
    model = LinearLatencyModel().fit(configs, y)
    lo, hi = (FAKE.true_latency_ms(ConvConfig(DW, c, c, batch=8)) for c in (32, 64))
    assert model.predict([ConvConfig(DW, 48, 48, batch=8)])[0] == pytest.approx((lo + hi) / 2)


# ------------------------------------------------------------------------------------------------ MDLM

def test_mdlm_exact_on_measured_points(lut: tuple[list[ConvConfig], np.ndarray]) -> None:
    configs, y = lut
    model = MDLM().fit(configs + configs[:1], np.concatenate([y, [y[0] * 3]]))
    pred = model.predict(configs)
    assert pred[0] == pytest.approx(2 * y[0])
    assert np.array_equal(pred[1:], y[1:])
    assert model.is_measured(probe(configs)).tolist() == [True] * len(configs) + [False] * 3


def test_mdlm_lattice(lut: tuple[list[ConvConfig], np.ndarray]) -> None:
    configs, y = lut
    model = MDLM().fit(configs, y)
    cins, couts = [0, 32, 48, 64, 256], [0, 32, 96, 100]
    M = model.lattice(DENSE, cins, couts, batch=8)
    assert M.shape == (len(couts), len(cins))
    assert np.all(M[0] == 0) and np.all(M[:, 0] == 0)  # zero channels: the layer is gone
    for i, co in enumerate(couts[1:], 1):
        for j, ci in enumerate(cins[1:], 1):
            assert M[i, j] == pytest.approx(model.predict([ConvConfig(DENSE, ci, co, batch=8)])[0], rel=1e-12)
    assert M[2, 3] == FAKE.true_latency_ms(ConvConfig(DENSE, 64, 96, batch=8))  # measured
    assert np.array_equal(model.lattice(DENSE.key, cins, couts, batch=8), M)
    with pytest.raises(LatlabError, match="depthwise"):
        model.lattice(DW, [32], [32], batch=8)
    with pytest.raises(OutOfRangeError):
        model.lattice(DENSE, [32], [32], batch=16)


def test_mdlm_surface_accuracy_on_held_out_fake_points(resnet18: tuple[pd.DataFrame, np.ndarray]) -> None:
    X, y = resnet18
    train, test = split(len(X), 0.25)
    model = MDLM().fit(X.iloc[train], y[train])
    held = X.iloc[test]
    known = held["family"].isin(set(X["family"].iloc[train])).to_numpy()
    err = np.abs(model.predict(held[known]) / y[test][known] - 1)
    assert known.sum() > 400
    assert np.mean(err <= 0.05) >= 0.85  # measured: 0.893 within ±5%, 0.949 within ±10%
    assert np.mean(err <= 0.10) >= 0.92


def test_mdlm_surface_none_is_a_table(lut: tuple[list[ConvConfig], np.ndarray]) -> None:
    configs, y = lut
    model = MDLM(surface="none").fit(configs, y)
    assert np.array_equal(model.predict(configs), y)
    miss = ConvConfig(DENSE, 48, 80, batch=8)
    with pytest.raises(LUTMissError) as info:
        model.predict([miss])
    assert miss.describe() in str(info.value)
    with pytest.raises(LatlabError, match="surface"):
        MDLM(surface="spline").fit(configs, y)


def test_mdlm_predict_std_grows_away_from_data() -> None:
    configs = [ConvConfig(DENSE, ci, co, batch=8) for ci in CHANNELS for co in CHANNELS]
    y = true_ms(configs) * np.exp(np.random.default_rng(1).normal(0, 0.01, len(configs)))
    model = MDLM().fit(configs, y)
    at, between, far = model.predict_std([ConvConfig(DENSE, 64, 64, batch=8), ConvConfig(DENSE, 48, 80, batch=8),
                                          ConvConfig(DENSE, 2048, 2048, batch=8)])
    assert 0 < at < far and between < far
    assert at < 0.05  # ~ the 1% measurement noise


def test_mdlm_small_groups_use_baseline_only() -> None:
    configs = [ConvConfig(DENSE, 32, 32, batch=8), ConvConfig(DENSE, 64, 64, batch=8), ConvConfig(DENSE, 32, 64,
                                                                                                   batch=8)]
    model = MDLM().fit(configs, true_ms(configs))
    (surface,) = model.surfaces_.values()
    assert surface.gp is None
    pred = model.predict([ConvConfig(DENSE, 64, 32, batch=8)])[0]
    assert pred > 0 and np.isnan(model.predict_std([ConvConfig(DENSE, 64, 32, batch=8)])[0])


# ------------------------------------------------------------------------------------------ strict mode

@pytest.mark.parametrize("kind", KINDS)
def test_strict_refuses_out_of_range_and_unknown_groups(kind: str, lut: tuple[list[ConvConfig], np.ndarray]) -> None:
    configs, y = lut
    params = {"missing": "nearest"} if kind == "lut" else {}
    model = make(kind, strict=True, **params).fit(configs, y)
    for bad, what in [(ConvConfig(DENSE, 512, 64, batch=8), "cin=512"), (ConvConfig(DENSE, 64, 16, batch=8),
                                                                            "cout=16"),
                      (ConvConfig(DENSE, 64, 64, batch=16), "batch=16"), (ConvConfig(OTHER, 64, 64, batch=8), "")]:
        with pytest.raises(OutOfRangeError) as info:
            model.predict([configs[0], bad])
        assert bad.describe() in str(info.value) and what in str(info.value)
    assert np.all(np.isfinite(model.predict(probe(configs))))  # inside the ranges: fine


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_group_without_strict(kind: str, lut: tuple[list[ConvConfig], np.ndarray]) -> None:
    configs, y = lut
    model = make(kind).fit(configs, y)
    unknown = ConvConfig(OTHER, 64, 64, batch=8)
    if kind in ("rf", "gbdt"):  # global models extrapolate
        assert np.all(np.isfinite(model.predict([unknown]))) and model.predict([unknown])[0] > 0
        return
    with pytest.raises(OutOfRangeError, match="never trained") as info:
        model.predict([unknown])
    assert unknown.describe() in str(info.value)


# --------------------------------------------------------------------------------- bilinear / rf / gbdt

def test_bilinear_recovers_bilinear_function() -> None:
    grid = [(ci, co) for ci in CHANNELS for co in CHANNELS]
    configs = [ConvConfig(DENSE, ci, co, batch=8) for ci, co in grid]
    configs += [ConvConfig(DW, c, c, batch=8) for c in CHANNELS]
    c = np.array(CHANNELS, dtype=float)
    y = np.concatenate([_bilinear_fn(*np.array(grid, dtype=float).T), 0.2 + 0.01 * c + 1e-4 * c * c])
    model = PerFamilyBilinear().fit(configs, y)
    queries = [ConvConfig(DENSE, 40, 300, batch=8), ConvConfig(DW, 100, 100, batch=8)]
    assert model.predict(queries) == pytest.approx([_bilinear_fn(40.0, 300.0), 0.2 + 1.0 + 1.0], rel=1e-9)


@pytest.mark.parametrize("kind", ["bilinear", "rf", "gbdt"])
def test_regressors_on_held_out_fake_data(kind: str, resnet18: tuple[pd.DataFrame, np.ndarray]) -> None:
    X, y = resnet18
    train, test = split(len(X), 0.75, seed=3)
    model = get_model(kind).fit(X.iloc[train], y[train])
    held = X.iloc[test]
    known = held["family"].isin(set(X["family"].iloc[train])).to_numpy()
    err = np.abs(model.predict(held[known]) / y[test][known] - 1)
    assert np.median(err) <= 0.25


def test_rf_predict_std_is_relative_tree_spread(lut: tuple[list[ConvConfig], np.ndarray]) -> None:
    configs, y = lut
    model = RandomForestLatency(n_estimators=40).fit(configs, y)
    queries = probe(configs)
    std = model.predict_std(queries)
    assert std.shape == (len(queries),) and np.all(np.isfinite(std)) and np.all(std >= 0)
    F = numeric_features(frame_from_configs(queries)).to_numpy()
    trees = np.stack([tree.predict(F) for tree in model.forest_.estimators_])
    assert std == pytest.approx(trees.std(axis=0) / trees.mean(axis=0))
    assert model.forest_.max_features == 6


# ------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kind", KINDS)
def test_bad_input(kind: str, lut: tuple[list[ConvConfig], np.ndarray]) -> None:
    configs, y = lut
    model = make(kind)
    for X, target in [([], []), (configs, y[:-1]), (configs[:2], [1.0, -1.0]), (configs[:2], [1.0, np.nan]),
                      (pd.DataFrame({"family": [DENSE.key]}), [1.0]), (["not a config"], [1.0]),
                      (frame_from_configs(configs[:1]).assign(family="f14_bogus"), [1.0]),
                      (frame_from_configs(configs[:1]).assign(dtype="fp8"), [1.0])]:
        with pytest.raises(LatlabError):
            model.fit(X, target)
    bad_cin = frame_from_configs(configs[:1]).assign(cin=0)
    with pytest.raises(LatlabError, match="cin"):
        model.fit(bad_cin, y[:1])
    model.fit(configs, y)
    with pytest.raises(LatlabError, match="cin"):
        model.predict(bad_cin)
    assert model.predict([]).shape == (0,)


def test_bad_parameters_are_value_errors_as_in_sklearn(lut: tuple[list[ConvConfig], np.ndarray]) -> None:
    """`except ValueError` catches a bad parameter of every kind, as it does for scikit-learn's own estimators."""
    configs, y = lut
    with pytest.raises(LatlabError, match="missing"):
        LUTModel(missing="mean").fit(configs, y)
    for kind, bad in (("lut", {"missing": "mean"}), ("mdlm", {"surface": "foo"}),
                      ("rf", {"n_estimators": -1}), ("gbdt", {"max_iter": 0})):
        with pytest.raises(ValueError):
            get_model(kind, **bad).fit(configs, y)
    with pytest.raises(ValueError, match="rows"):
        get_model("mdlm").fit(configs, y[:-1])


def test_gbdt_splits_on_a_lut_too_small_for_sklearns_leaf_size() -> None:
    """scikit-learn's min_samples_leaf=20 cannot split 30 rows: the model was one constant (219% off)."""
    widths = (16, 32, 64, 128, 256)
    configs = [ConvConfig(DENSE, ci, co, batch=8) for ci in widths for co in (*widths, 512)]
    y = np.array([c.cin * c.cout * 1e-4 + 0.01 for c in configs])
    model = make("gbdt", max_iter=100).fit(configs, y)
    assert np.abs(model.predict(configs) / y - 1).mean() < 0.1
    assert len(np.unique(make("gbdt", max_iter=100, min_samples_leaf=20).fit(configs, y).predict(configs))) == 1
