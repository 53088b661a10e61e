from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator
from threadpoolctl import threadpool_limits

from db.errors import LatlabError, LUTMissError
from latency_models.base import get_model, list_models
from latency_models.evaluate import (
    RESULT_COLUMNS,
    accuracy_vs_budget,
    evaluate_models,
    fit_predict,
    markdown_table,
    prediction_errors,
    summarise_whole_network,
    whole_network_eval,
    write_report,
)
from latency_models.features import frame_from_configs
from latency_models.metrics import METRIC_COLUMNS
from latency_models.network import lattice_sum
from latency_models.splits import make_split
from profiler.backends.fake import FakeBackend
from profiler.plan import TraceResult, build_plan, resolve_model, trace_network
from pruning.rebuild import measure_pruned

BATCH = 32
FAKE = FakeBackend(noise=0.0)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class HalfBroken(BaseEstimator):
    """Stand-in: predicts the training mean but refuses every row with an odd cout/8."""

    kind = "half"

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> HalfBroken:
        self.mean_ = float(np.mean(y))
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        if ((X["cout"] // 8) % 2 == 1).any():
            raise LUTMissError("odd cout")
        return np.full(len(X), self.mean_)


class PerFamily(BaseEstimator):
    """Stand-in: refuses the families it was not fitted on, as the per-family models do."""

    kind = "per-family"

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> PerFamily:
        self.families_, self.calls_ = set(X["family"]), 0
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        self.calls_ += 1
        if not set(X["family"]) <= self.families_:
            raise LUTMissError("unknown family")
        return np.ones(len(X))


class CannotFit(BaseEstimator):
    kind = "broken"

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> CannotFit:
        raise RuntimeError("boom")

    def predict(self, X: pd.DataFrame) -> np.ndarray:  # pragma: no cover - never fitted
        raise AssertionError


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Single-threaded BLAS/OpenMP: oversubscribed thread pools make the GP/boosting fits erratic on CI."""
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def net() -> tuple[object, TraceResult]:
    _, module = resolve_model("resnet18")
    return module, trace_network(module, 64)


@pytest.fixture(scope="module")
def lut(net: tuple[object, TraceResult]) -> tuple[pd.DataFrame, np.ndarray]:
    """A small fake LUT (random:25 per family, 2% multiplicative noise) of resnet18 at 64x64."""
    plan = build_plan(net[1], "random:25:8", batch=BATCH)
    X = frame_from_configs(plan.configs)
    noise = np.random.default_rng(0).lognormal(0.0, 0.02, len(X))
    return X, np.array([FAKE.true_latency_ms(c) for c in plan.configs]) * noise


def test_evaluate_models_all_kinds(lut: tuple[pd.DataFrame, np.ndarray]) -> None:
    X, y = lut
    models = {kind: get_model(kind) for kind in list_models()}
    models["half"] = HalfBroken()
    models["broken"] = CannotFit()
    split = make_split(X, "random", 0.5, seed=0)
    table = evaluate_models(models, X, y, split)
    assert list(table.columns) == list(RESULT_COLUMNS)
    assert list(table["model"]) == list(models)
    rows = table.set_index("model")
    n_test = len(split[1])
    assert (rows["n_test"] == n_test).all() and (rows["n_train"] == len(split[0])).all()
    # a strict LUT cannot answer keys it never saw: all missing, no crash
    assert rows.loc["lut", "missing"] == n_test and rows.loc["lut", "n"] == 0
    assert "LUTMissError" in rows.loc["lut", "error"]
    # the stand-in fails exactly on the odd rows; metrics on the others
    odd = int(((X.iloc[split[1]]["cout"] // 8) % 2 == 1).sum())
    assert rows.loc["half", "missing"] == odd and rows.loc["half", "n"] == n_test - odd
    assert rows.loc["broken", "missing"] == n_test and "fit failed" in rows.loc["broken", "error"]
    for kind in ("bilinear", "mdlm", "llm", "rf", "gbdt"):
        assert rows.loc[kind, "missing"] == 0, rows.loc[kind, "error"]
        assert 0 <= rows.loc[kind, "mape"] < 100 and rows.loc[kind, "fit_s"] >= 0
    assert models["lut"].__dict__.get("tables_") is None  # the caller's models stay unfitted


def test_a_family_the_model_never_saw_costs_one_call(lut: tuple[pd.DataFrame, np.ndarray]) -> None:
    X, y = lut
    fitted: dict = {}
    split = make_split(X, "family", 0.5, seed=0)
    table, _ = fit_predict({"per-family": PerFamily()}, X, y, split, keep_fitted=fitted)
    families = X.iloc[split[1]]["family"].nunique()
    assert families > 2 and table.loc[0, "missing"] == len(split[1])
    # all rows, then each family's first row: no retry row by row (once 25 s for 3,000 rows of a large LUT)
    assert fitted["per-family"].calls_ == 1 + families


def test_zero_latencies_held_out_are_named(lut: tuple[pd.DataFrame, np.ndarray]) -> None:
    X, y = lut
    train, test = make_split(X, "random", 0.5, seed=0)
    y = y.copy()
    y[test[:3]] = 0.0  # an imported LUT may hold them
    with pytest.raises(LatlabError, match=r"3 held-out LUT row\(s\) measure 0 ms, e.g. f.* cin=\d+ cout=\d+ batch=32"):
        fit_predict({"lut": get_model("lut")}, X, y, (train, test))


def test_fit_predict_long_frame(lut: tuple[pd.DataFrame, np.ndarray]) -> None:
    X, y = lut
    split = make_split(X, "grid", 0.3)
    _, preds = fit_predict({"bilinear": get_model("bilinear"), "half": HalfBroken()}, X, y, split)
    assert {"family", "cin", "cout", "measured", "model", "predicted", "pct_error"} <= set(preds.columns)
    assert len(preds) == 2 * len(split[1])
    ok = preds.dropna(subset=["predicted"])
    np.testing.assert_allclose(ok["pct_error"], 100 * (ok["predicted"] - ok["measured"]) / ok["measured"])


def test_accuracy_vs_budget(lut: tuple[pd.DataFrame, np.ndarray]) -> None:
    X, y = lut
    models = {"bilinear": get_model("bilinear"), "llm": get_model("llm")}
    table = accuracy_vs_budget(models, X, y, fractions=(0.1, 0.5), seeds=(0, 1))
    assert len(table) == 4
    assert {"model", "train_fraction", "split", "n_seeds", "train_share", "n_train", "missing",
            *METRIC_COLUMNS} <= set(table.columns)
    assert (table["n_seeds"] == 2).all()
    shares = table.groupby("train_fraction")["train_share"].mean()
    assert shares[0.1] == pytest.approx(0.1, abs=0.05) and shares[0.5] == pytest.approx(0.5, abs=0.05)
    grid = accuracy_vs_budget(models, X, y, fractions=(0.25,), split_kind="grid", seeds=(0, 1, 2))
    assert (grid["n_seeds"] == 1).all()  # deterministic kinds run once


class CountingFits(BaseEstimator):
    """Stand-in: a per-family mean that counts the fits of all its copies."""

    kind = "counting"
    fits: list[int] = []

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> CountingFits:
        CountingFits.fits.append(len(X))
        self.means_ = pd.Series(y, index=X["family"].to_numpy()).groupby(level=0).mean()
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return self.means_.reindex(X["family"].to_numpy()).to_numpy()


def test_accuracy_vs_budget_reuses_a_split_already_evaluated(lut: tuple[pd.DataFrame, np.ndarray]) -> None:
    """``latlab evaluate --budget-curve``: its held-out split (25% of keys, its seed) is a point of the curve,
    fitted once, not twice (every model on a 96k-row LUT: minutes); the curve is the one fitted in full."""
    X, y = lut
    models = {"bilinear": get_model("bilinear"), "counting": CountingFits()}
    CountingFits.fits = []
    full = accuracy_vs_budget(models, X, y, fractions=(0.1, 0.25), seeds=(3,))
    assert len(CountingFits.fits) == 2
    told: list[str] = []
    CountingFits.fits = []
    held = evaluate_models(models, X, y, make_split(X, "random", 0.25, 3), progress=told.append)
    assert len(CountingFits.fits) == 1 and told[-1].startswith("counting: fitting on ")
    reused = accuracy_vs_budget(models, X, y, fractions=(0.1, 0.25), seeds=(3,), done={(0.25, 3): held},
                                progress=told.append)
    assert len(CountingFits.fits) == 2 and told[-1].startswith("training share 10% (seed 3): counting: fitting on ")
    pd.testing.assert_frame_equal(reused.drop(columns="fit_s"), full.drop(columns="fit_s"))
    assert "train_fraction" not in held  # the caller's table is left as it was


@pytest.fixture(scope="module")
def whole(net: tuple[object, TraceResult]) -> pd.DataFrame:
    module, trace = net
    plan = build_plan(trace, "full:16", batch=BATCH)
    X = frame_from_configs(plan.configs)
    y = np.array([FAKE.true_latency_ms(c) for c in plan.configs])
    fitted = {kind: get_model(kind).fit(X, y) for kind in ("lut", "llm", "bilinear")}

    def truth(widths: dict[str, tuple[int, int]]) -> float:
        return lattice_sum(FAKE.true_latency_ms, trace.layers, widths, batch=BATCH)

    return whole_network_eval(fitted, trace, 4, np.random.default_rng(0), batch=BATCH, truth=truth,
                              measure=measure_pruned(FAKE, module, trace, batch=BATCH), multiple=16)


def test_whole_network_eval(whole: pd.DataFrame) -> None:
    assert {"config", "dense", "macs_ratio", "model", "predicted_ms", "lattice_ms", "measured_ms",
            "err_vs_lattice_pct", "err_vs_measured_pct", "error"} <= set(whole.columns)
    assert len(whole) == 5 * 3 and whole["dense"].sum() == 3
    assert whole[["predicted_ms", "lattice_ms", "measured_ms"]].notna().all().all()
    pruned = whole[~whole["dense"]]
    assert (pruned["macs_ratio"] < 1).all()
    by_model = pruned.groupby("model")["err_vs_lattice_pct"]
    assert by_model.min()["llm"] > 2.0  # HALP's frozen input widths over-estimate every pruned network
    assert by_model.apply(lambda s: s.abs().max())["lut"] < 1e-6  # on-lattice LUT: exact
    # the measured whole model adds non-conv layers: the lattice sum is below it
    assert (whole["lattice_ms"] < whole["measured_ms"]).all()
    summary = summarise_whole_network(whole)
    assert {"model", "n_pruned", "dense_vs_lattice_pct", "mean_vs_lattice_pct", "mape_vs_measured"} <= set(
        summary.columns)


def test_write_report(tmp_path: Path, lut: tuple[pd.DataFrame, np.ndarray], whole: pd.DataFrame) -> None:
    X, y = lut
    models = {"bilinear": get_model("bilinear"), "lut": get_model("lut"), "gbdt": get_model("gbdt")}
    table, preds = fit_predict(models, X, y, make_split(X, "random", 0.5, 0))
    path = write_report(tmp_path / "rep", {"Random split": table}, preds, whole, title="Test report",
                        plane_model="bilinear")
    assert path == tmp_path / "rep" / "report.md"
    text = path.read_text()
    assert text.startswith("# Test report")
    assert "| model | n_train |" in text and "## Whole-network latency" in text
    pngs = sorted(p.name for p in path.parent.glob("*.png"))
    assert pngs == ["error_cdf.png", "error_plane_bilinear.png", "pred_vs_measured.png", "whole_network.png"]
    for name in pngs:
        assert (path.parent / name).read_bytes()[:8] == PNG_MAGIC
        assert f"]({name})" in text
    assert (path.parent / "random_split.csv").exists() and (path.parent / "whole_network.csv").exists()


def test_markdown_table() -> None:
    df = pd.DataFrame({"a": [1.23456789, float("nan")], "b": ["x|y", None], "c": [True, False]})
    assert markdown_table(df).splitlines() == ["| a | b | c |", "|---|---|---|", "| 1.235 | x\\|y | True |",
                                               "|  |  | False |"]


def test_prediction_errors_of_pruned_networks() -> None:
    dense = {"m": 80.0, "other_ms": 20.0}  # predicts 100 ms for the dense network
    pruned = pd.DataFrame([{"m": 40.0, "other_ms": 10.0, "measured_ms": 55.0, "speedup": 2.0}])
    out = prediction_errors(pruned, dense, ("m",))
    assert out.loc[0, "m_speedup_err_pct"] == pytest.approx(0.0)  # 80 / 40 = 2, as measured
    assert out.loc[0, "m+other_speedup_err_pct"] == pytest.approx(0.0)  # 100 / 50 = 2
    assert out.loc[0, "m+other_err_pct"] == pytest.approx(100 * (50 / 55 - 1))
    assert "m_speedup_err_pct" not in pruned  # the input frame is left as it was
