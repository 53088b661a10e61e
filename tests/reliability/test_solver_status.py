"""Solver time-out and infeasible budget give a clear status, never a silent "keep everything"."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pruning.solvers import get_solver

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_solvers", ROOT / "benchmarks" / "solvers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["milp-highs", "lagrange"])
def test_time_limit_gives_timeout_status(bench, figure, name: str) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("highspy")
    p = bench.build("MDP")
    p = p.with_budget(0.3 * p.latency(p.dense_solution()))
    res = get_solver(name, time_limit=0.001).solve(p)
    figure(f"ResNet-50 MDP on {name} with a 1 ms time limit -> status {res.status!r} in {res.seconds:.2f}s: "
           f"{res.message}")
    assert res.status in ("timeout", "feasible")
    assert res.seconds < 10 and "time limit" in res.message.lower()
    if res.solution is not None:  # an incumbent is reported only if it passes the re-check
        assert not p.check(res.solution)


@pytest.mark.parametrize("name, kind", [("dp", "OCP+LLM"), ("milp-highs", "MDP"), ("lagrange", "MDP")])
def test_infeasible_budget_is_reported(bench, figure, name: str, kind: str) -> None:  # type: ignore[no-untyped-def]
    if name != "dp":
        pytest.importorskip("highspy")
    p = bench.build(kind).with_budget(1e-6)
    res = get_solver(name).solve(p)
    figure(f"{kind} with a 1e-6 ms budget on {name} -> status {res.status!r}: {res.message}")
    assert res.status == "infeasible" and res.solution is None and not res.ok
    assert "below the minimum" in res.message
