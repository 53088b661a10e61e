"""Adaptive sampling and model storage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from db import LatlabError, open_database
from latency_models.adaptive import estimated_within, initial_design, run_adaptive
from latency_models.base import get_model
from latency_models.features import frame_from_configs
from latency_models.store import load_model, save_model, stored_models
from profiler.backends.fake import FakeBackend
from profiler.plan import build_plan


@pytest.fixture(scope="module")
def lattice():  # type: ignore[no-untyped-def]
    plan = build_plan("resnet18", "full:32", input_size=64, batch=8)
    fake = FakeBackend(noise=0.0)
    return plan, {c: fake.true_latency_ms(c) for c in plan.configs}


def test_initial_design_covers_every_family_corner(lattice) -> None:  # type: ignore[no-untyped-def]
    plan, _ = lattice
    idx = initial_design(plan.configs, per_family=4)
    chosen = [plan.configs[i] for i in idx]
    for fam, configs in plan.by_family().items():
        mine = [c for c in chosen if c.family == fam]
        assert max(c.cin for c in mine) == max(c.cin for c in configs)
        assert min(c.cout for c in mine) == min(c.cout for c in configs)


def test_estimated_within_is_a_probability() -> None:
    p = estimated_within(np.array([1e-6, 0.01, 0.05, 1.0, np.nan]))
    assert p[0] == pytest.approx(1.0) and 0 < p[3] < p[2] < p[1] < 1 and 0 <= p[4] < 0.05


def test_adaptive_respects_budget_and_beats_random(lattice) -> None:  # type: ignore[no-untyped-def]
    plan, truth = lattice
    configs = plan.configs
    calls: list[int] = []

    def measure(cs):  # type: ignore[no-untyped-def]
        calls.append(len(cs))
        return [truth[c] for c in cs]

    budget = len(configs) // 5
    result = run_adaptive(configs, measure, budget=budget, per_round=20, target_within_5=1.01)
    assert len(result.measured) == sum(calls) == budget and len(set(result.measured)) == budget
    assert result.stopped_by == "budget" and result.rounds

    def accuracy(chosen) -> float:  # type: ignore[no-untyped-def]
        mask = np.isin(np.arange(len(configs)), [configs.index(c) for c in chosen])
        X = frame_from_configs(configs)
        y = np.array([truth[c] for c in configs])
        model = get_model("mdlm").fit(X[mask].reset_index(drop=True), y[mask])
        pred = model.predict(X[~mask].reset_index(drop=True))
        return float(np.mean(np.abs(pred / y[~mask] - 1) < 0.05))

    rng = np.random.default_rng(0)
    random_pick = [configs[i] for i in rng.choice(len(configs), budget, replace=False)]
    assert accuracy(result.measured) >= accuracy(random_pick)


def test_adaptive_stops_at_target_and_skips_failures(lattice) -> None:  # type: ignore[no-untyped-def]
    plan, truth = lattice
    failing = set(plan.configs[::7])
    result = run_adaptive(plan.configs, lambda cs: [None if c in failing else truth[c] for c in cs],
                          budget=len(plan.configs), target_within_5=0.5)
    assert result.stopped_by == "target accuracy" and len(result.measured) < len(plan.configs)
    with pytest.raises(LatlabError, match="budget"):
        run_adaptive(plan.configs, lambda cs: [1.0] * len(cs), budget=0)


def test_store_roundtrip_and_names(tmp_path: Path, lattice) -> None:  # type: ignore[no-untyped-def]
    plan, truth = lattice
    X = frame_from_configs(plan.configs)
    y = np.array([truth[c] for c in plan.configs])
    database = open_database(tmp_path / "m.db")
    model = get_model("mdlm").fit(X, y)
    save_model(database, "fake-mdlm", model, training={"note": "all"}, metrics={"within_5": 1.0})
    with pytest.raises(LatlabError, match="already exists"):
        save_model(database, "fake-mdlm", model)
    save_model(database, "fake-mdlm", get_model("llm").fit(X, y), replace=True)
    loaded = load_model(database, "fake-mdlm")
    assert loaded.kind == "llm" and np.allclose(loaded.predict(X), y)
    from sqlalchemy import event

    statements: list[str] = []
    event.listen(database.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    assert [r["name"] for r in stored_models(database)] == ["fake-mdlm"]
    assert statements and not any("latency_models.state" in sql for sql in statements)  # listing skips the states
    with pytest.raises(LatlabError, match="no latency model named 'nope'.*fake-mdlm"):
        load_model(database, "nope")
    from sqlalchemy import update

    from db.models import StoredLatencyModel

    good = model.to_state()
    group = next(iter(good["surface_hyper"]))
    for state, match in (({"kind": "mdlm", "params": {"foo": 1}}, "cannot be rebuilt.*foo.*latlab fit --replace"),
                         ({"kind": "mdlm", "params": {}}, "cannot be rebuilt"),
                         ({"kind": "rf", "params": {}}, "listed as 'mdlm' but its state is not one"),
                         ([1, 2], "listed as 'mdlm'"),
                         ({**good, "surface_hyper": "x"}, "cannot be rebuilt \\(AttributeError"),
                         ({**good, "surface_hyper": {group: {"k1": 5}}}, "hyperparameters are not k1__k1"),
                         ({**good, "surface_hyper": {group: {**good["surface_hyper"][group],
                                                             "k1__k1__constant_value": -1}}},
                          "k1__k1__constant_value is -1, not positive and finite")):
        with database.session() as session:
            session.execute(update(StoredLatencyModel).values(state=state, kind="mdlm"))
        with pytest.raises(LatlabError, match=f"stored latency model 'fake-mdlm'.*{match}"):
            load_model(database, "fake-mdlm")
    with database.session() as session:
        session.execute(update(StoredLatencyModel).values(state=good, kind="mdlm"))
    assert np.allclose(load_model(database, "fake-mdlm").predict(X), model.predict(X))


def test_posterior_covariance_offers_at_most_cov_max_points_per_group(monkeypatch: pytest.MonkeyPatch, lattice) -> None:  # type: ignore[no-untyped-def]
    """A huge family (RegNetY-32GF's SE convs: 57,005 points, a 24 GiB covariance) offers an evenly spaced subset."""
    from latency_models import _mdlm

    plan, truth = lattice
    X = frame_from_configs(plan.configs)
    y = np.array([truth[c] for c in plan.configs])
    train = np.arange(len(y)) % 3 == 0
    model = get_model("mdlm").fit(X[train], y[train])
    full = model.posterior_covariance(X[~train])
    biggest = max(len(idx) for idx, _ in full.values())
    monkeypatch.setattr(_mdlm, "COV_MAX_POINTS", biggest // 2)
    capped = model.posterior_covariance(X[~train])
    assert max(len(idx) for idx, _ in capped.values()) == biggest // 2
    assert all(cov.shape == (len(idx), len(idx)) for idx, cov in capped.values())
    offered = np.concatenate([idx for idx, _ in capped.values()])
    assert set(offered) <= set(np.concatenate([idx for idx, _ in full.values()]))
