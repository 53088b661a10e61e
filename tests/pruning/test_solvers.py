"""Known-answer and property tests of pruning.problem and every pruning.solvers back-end."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from db.errors import LatlabError
from pruning.problem import BlockValue, Group, LinearTerm, PairwiseTerm, PruningProblem, Solution
from pruning.solvers import get_solver, list_solvers

_spec = importlib.util.spec_from_file_location("pruning_instances", Path(__file__).with_name("instances.py"))
inst = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(inst)


def _available(name: str) -> bool:
    mod = {"milp-highs": "highspy", "milp-cbc": "pulp", "scip": "pyscipopt", "mindtpy": "pyomo"}.get(name)
    return mod is None or importlib.util.find_spec(mod) is not None


EXACT = [s for s in ("lagrange", "milp-highs", "milp-cbc", "scip") if _available(s)]
ALL = [s for s in list_solvers() if _available(s)]
PROPS = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
TOL = 1e-6


def _applies(name: str, problem: PruningProblem) -> bool:
    return name != "dp" or (problem.is_linear and not problem.has_blocks)


KNOWN = [inst.knapsack_linear, inst.negative_costs, inst.pairwise_chain, inst.block_removal, inst.block_value]


@pytest.mark.parametrize("make", KNOWN, ids=lambda f: f.__name__)
@pytest.mark.parametrize("backend", ALL)
def test_known_answers(make, backend: str) -> None:
    problem, value, kept, *removed = make()
    if not _applies(backend, problem):
        pytest.skip("dp handles linear problems without blocks only")
    assert problem.brute_force()[0] == pytest.approx(value)
    res = get_solver(backend, time_limit=30).solve(problem)
    assert res.status == ("feasible" if backend == "mindtpy" else "optimal"), res.message
    assert res.objective == pytest.approx(value)
    assert res.kept == kept
    assert res.removed_blocks == (removed[0] if removed else frozenset())
    assert res.latency <= problem.budget + 1e-9
    if backend != "mindtpy":
        assert res.bound == pytest.approx(value, abs=1e-6)
        assert res.gap == pytest.approx(0.0, abs=1e-6)


def test_dp_does_not_loosen_budget_with_negative_costs() -> None:
    problem, value, kept = inst.negative_costs()
    res = get_solver("dp").solve(problem)
    assert res.kept == kept and problem.latency(res.solution) <= problem.budget


def test_dp_rejects_pairwise_and_blocks() -> None:
    with pytest.raises(LatlabError):
        get_solver("dp").solve(inst.pairwise_chain()[0])
    with pytest.raises(LatlabError):
        get_solver("dp").solve(inst.block_removal()[0])


def test_dp_coarse_grid_is_feasible_with_valid_bound() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        p = inst.random_problem(rng, pairwise=False, block=False, n_groups=4)
        best = p.brute_force()[0]
        res = get_solver("dp", grid_steps=5, max_grid_steps=5).solve(p)
        assert res.ok and not p.check(res.solution)
        assert res.objective <= best + TOL <= res.bound + 2 * TOL
        assert res.status in ("optimal", "feasible")


@PROPS
@given(seed=st.integers(0, 2**32 - 1))
def test_linear_no_blocks_all_agree(seed: int) -> None:
    p = inst.random_problem(np.random.default_rng(seed), pairwise=False, block=False)
    best = p.brute_force()[0]
    for name in ["dp", *[s for s in ALL if s != "dp"]]:
        res = get_solver(name, time_limit=30).solve(p)
        assert res.ok and not p.check(res.solution), (name, res.message)
        if name == "mindtpy":
            assert res.objective <= best + TOL
        else:
            assert res.status == "optimal", (name, res.message)
            assert res.objective == pytest.approx(best, abs=TOL), name


@PROPS
@given(seed=st.integers(0, 2**32 - 1), pairwise=st.booleans(), block=st.booleans())
def test_exact_backends_match_brute_force(seed: int, pairwise: bool, block: bool) -> None:
    p = inst.random_problem(np.random.default_rng(seed), pairwise=pairwise, block=block)
    best = p.brute_force()[0]
    assert best is not None
    for name in EXACT:
        res = get_solver(name, time_limit=30).solve(p)
        assert res.status == "optimal", (name, res.message)
        assert not p.check(res.solution)
        assert res.objective == pytest.approx(best, abs=TOL), name


@pytest.mark.skipif(not _available("mindtpy"), reason="pyomo not installed")
@PROPS
@given(seed=st.integers(0, 2**32 - 1), pairwise=st.booleans(), block=st.booleans())
def test_mindtpy_never_beats_milp(seed: int, pairwise: bool, block: bool) -> None:
    p = inst.random_problem(np.random.default_rng(seed), pairwise=pairwise, block=block)
    milp = get_solver("milp-highs").solve(p)
    res = get_solver("mindtpy", time_limit=30).solve(p)
    if res.status == "infeasible":  # ECP cuts are not valid on a non-convex model: allowed, but said so
        assert "not a proof" in res.message
        return
    assert res.status == "feasible", res.message
    assert not p.check(res.solution)
    assert res.objective <= milp.objective + TOL


@PROPS
@given(seed=st.integers(0, 2**32 - 1), pairwise=st.booleans(), block=st.booleans())
def test_infeasible_budget_reported_by_all(seed: int, pairwise: bool, block: bool) -> None:
    p = inst.random_problem(np.random.default_rng(seed), pairwise=pairwise, block=block)
    lo = min(p.latency(s) for s in p.enumerate_solutions())
    p = p.with_budget(lo - 0.05 * (abs(lo) + 1))
    for name in ALL:
        if not _applies(name, p):
            continue
        res = get_solver(name, time_limit=30).solve(p)
        assert res.status == "infeasible", (name, res.status, res.message)
        assert res.solution is None and "budget" in res.message


def test_check_detects_violations() -> None:
    p, _, kept, removed = inst.block_removal()
    assert p.check(Solution(kept, removed)) == []
    assert any("exceeds budget" in e for e in p.check(Solution((2, 2))))
    assert any("internal to removed block" in e for e in p.check(Solution((2, 1), frozenset({0}))))
    assert any("outside" in e for e in p.check(Solution((0, 1))))
    assert p.value(Solution((2, 0), frozenset({0}))) == 12.0
    assert p.latency(p.dense_solution()) == pytest.approx(2 + 4 + 3)


def test_max_kept_blocks_forces_removal() -> None:
    p, *_ = inst.block_removal()
    p = PruningProblem(p.groups, 100.0, pairwise=p.pairwise, max_kept_blocks=0)
    for name in EXACT:
        res = get_solver(name).solve(p)
        assert res.status == "optimal" and res.removed_blocks == frozenset({0}), name


def test_layer_removal_with_min_keep_zero() -> None:
    groups = [Group(2, np.array([0, 1, 2.0]), min_keep=0), Group(1, np.array([0, 5.0]))]
    lin = [LinearTerm(0, np.array([0, 3, 4.0])), LinearTerm(1, np.array([0, 2.0]))]
    p = PruningProblem(groups, 2.5, linear=lin)
    for name in ["dp", *EXACT]:
        res = get_solver(name).solve(p)
        assert res.status == "optimal" and res.kept == (0, 1), name


def test_max_keep_caps_a_group_even_where_more_is_cheaper() -> None:
    """A group whose third item lowers the latency (a non-monotone LUT) still keeps at most ``max_keep``; a
    block's internal group with ``max_keep=0`` forces its block out."""
    groups = [Group(3, np.array([0, 5, 6, 6.0]), max_keep=2), Group(2, np.array([0, 1, 2.0]))]
    lin = [LinearTerm(0, np.array([0, 3, 4, 1.0])), LinearTerm(1, np.array([0, 1, 2.0]))]
    p = PruningProblem(groups, 10.0, linear=lin)
    assert p.brute_force()[1].kept == (2, 2)
    for name in ["dp", *EXACT]:
        res = get_solver(name).solve(p)
        assert res.status == "optimal" and res.kept == (2, 2), name
    q, *_ = inst.block_removal()
    gi = next(i for i, g in enumerate(q.groups) if g.block is not None and g.min_keep >= 1)
    capped = [Group(g.size, g.values, g.min_keep, g.block, g.name, 0 if i == gi else None)
              for i, g in enumerate(q.groups)]
    q = PruningProblem(capped, 1e9, linear=q.linear, pairwise=q.pairwise)
    for name in EXACT:
        res = get_solver(name).solve(q)
        assert res.status == "optimal" and q.groups[gi].block in res.removed_blocks, name


def test_validation_errors() -> None:
    g = Group(2, np.array([0, 1, 2.0]))
    with pytest.raises(LatlabError):
        PruningProblem([Group(2, np.array([0, 1.0]))], 1.0)
    with pytest.raises(LatlabError):
        PruningProblem([g], 1.0, linear=[LinearTerm(0, np.array([0, 1.0]))])
    with pytest.raises(LatlabError):
        PruningProblem([g, g], 1.0, pairwise=[PairwiseTerm(1, 0, np.ones((3, 3)))])
    with pytest.raises(LatlabError, match="internal to block"):  # its whole value already goes with the block
        PruningProblem([g, Group(2, g.values, block=0)], 1.0, block_values=[BlockValue(1, 0, g.values)])
    with pytest.raises(LatlabError, match="values"):
        PruningProblem([g], 1.0, blocks=[0], block_values=[BlockValue(0, 0, np.array([1, 1, 2.0]))])
    with pytest.raises(LatlabError):
        get_solver("nope")
    with pytest.raises(LatlabError):
        get_solver("dp", bogus=1)


def test_from_importances_sorts_descending() -> None:
    g = Group.from_importances([1.0, 3.0, 2.0])
    assert list(g.values) == [0, 3, 5, 6]


@pytest.mark.skipif(not _available("mindtpy"), reason="pyomo not installed")
def test_mindtpy_oa_needs_ipopt() -> None:
    import pyomo.environ as pyo

    if pyo.SolverFactory("ipopt").available(exception_flag=False):
        pytest.skip("ipopt is installed; the OA path runs")
    with pytest.raises(LatlabError, match="install ipopt"):
        get_solver("mindtpy", strategy="OA", mip_solver="glpk").solve(inst.pairwise_chain()[0])


@pytest.mark.skipif(not _available("mindtpy"), reason="pyomo not installed")
def test_mindtpy_oa_runs_when_ipopt_present() -> None:
    import pyomo.environ as pyo

    if not pyo.SolverFactory("ipopt").available(exception_flag=False):
        pytest.skip("install ipopt (e.g. conda install -c conda-forge ipopt) to run MindtPy OA")
    p, value, _ = inst.pairwise_chain()
    res = get_solver("mindtpy", strategy="OA", mip_solver="glpk").solve(p)
    assert res.ok and res.objective <= value + TOL


def test_mindtpy_ecp_with_glpk() -> None:
    import shutil

    if not _available("mindtpy") or shutil.which("glpsol") is None:
        pytest.skip("needs pyomo and glpsol")
    p, value, kept = inst.knapsack_linear()
    res = get_solver("mindtpy", mip_solver="glpk").solve(p)
    assert res.status == "feasible" and res.objective == pytest.approx(value)


def test_import_is_lazy() -> None:
    mods = "('pyomo', 'pulp', 'pyscipopt', 'highspy')"
    code = f"import sys, pruning.solvers; print(any(m in sys.modules for m in {mods}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_result_as_dict() -> None:
    p, value, kept = inst.knapsack_linear()
    d = get_solver("milp-highs").solve(p).as_dict()
    assert d["status"] == "optimal" and d["kept"] == list(kept) and d["backend"] == "milp-highs"


def _bench():  # type: ignore[no-untyped-def]
    """benchmarks/solvers.py as a module (the ResNet-50 instance builders)."""
    path = Path(__file__).parents[2] / "benchmarks" / "solvers.py"
    spec = importlib.util.spec_from_file_location("bench_solvers", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def _network_needing_search():  # type: ignore[no-untyped-def]
    """The first random network whose dual bound does not close at once, and lagrange's result on it."""
    for seed in range(50):
        p = inst.random_network(np.random.default_rng(seed), pairwise=True, blocks=True)
        res = get_solver("lagrange").solve(p)
        if "branch and bound" in res.message:
            return p, res
    raise AssertionError("no random network needed the branch and bound")


def test_resnet50_dp_matches_highs_and_time_limit_is_honoured() -> None:
    build = _bench().build
    p = build("OCP+LLM")
    p = p.with_budget(0.5 * p.latency(p.dense_solution()))
    dp, milp = get_solver("dp").solve(p), get_solver("milp-highs").solve(p)
    assert dp.status == milp.status == "optimal"
    assert dp.objective == pytest.approx(milp.objective, rel=1e-9)
    assert len(p.groups) == 37 and sum(g.size for g in p.groups) == 246 and len(p.linear) == 53
    if not _available("scip"):
        return
    q = build("MDP")
    q = q.with_budget(0.3 * q.latency(q.dense_solution()))
    assert len(q.blocks) == 16
    res = get_solver("scip", time_limit=1.0).solve(q)
    assert res.seconds < 5.0
    assert res.status in ("feasible", "optimal", "timeout")
    if res.solution is not None:
        assert not q.check(res.solution)


@PROPS
@given(seed=st.integers(0, 2**32 - 1), pairwise=st.booleans(), max_kept=st.sampled_from([None, 0, 1]))
def test_two_blocks_match_brute_force(seed: int, pairwise: bool, max_kept: int | None) -> None:
    p = inst.resnet_like(np.random.default_rng(seed), pairwise=pairwise)
    p.max_kept_blocks = max_kept
    best = p.brute_force()[0]
    for name in EXACT:
        res = get_solver(name, time_limit=30).solve(p)
        if best is None:
            assert res.status == "infeasible", (name, res.message)
            continue
        assert res.status == "optimal", (name, res.message)
        assert not p.check(res.solution)
        assert res.objective == pytest.approx(best, abs=TOL), name


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), pairwise=st.booleans(), blocks=st.booleans())
def test_lagrange_matches_highs_on_random_networks(seed: int, pairwise: bool, blocks: bool) -> None:
    p = inst.random_network(np.random.default_rng(seed), pairwise=pairwise, blocks=blocks)
    ref = get_solver("milp-highs", time_limit=60).solve(p)
    res = get_solver("lagrange", time_limit=60).solve(p)
    assert res.status == ref.status, (res.message, ref.message)
    if ref.status == "optimal":
        assert not p.check(res.solution)
        assert res.objective == pytest.approx(ref.objective, rel=1e-7, abs=1e-9)
        assert res.bound == pytest.approx(res.objective, rel=1e-7)


@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), pairwise=st.booleans())
def test_lagrange_matches_highs_with_tied_importances(seed: int, pairwise: bool) -> None:
    p = inst.random_network(np.random.default_rng(seed), pairwise=pairwise, blocks=True, tied=True)
    ref = get_solver("milp-highs", time_limit=60).solve(p)
    res = get_solver("lagrange", time_limit=60, handover_labels=0).solve(p)
    assert res.status == ref.status, (res.message, ref.message)
    if ref.status == "optimal":
        assert not p.check(res.solution)
        assert res.objective == pytest.approx(ref.objective, rel=1e-9, abs=1e-9)


def test_pareto_drops_labels_tied_in_value() -> None:
    from pruning.solvers.lagrange import _pareto

    X = np.array([[0, 1], [0, 1], [0, 1], [0, 1], [0, 2]])  # variable 1 is live; the last label differs there
    val = np.array([1.0, 1.0, 1.0, 2.0, 1.0])
    lat = np.array([1.0, 1.0, 2.0, 3.0, 5.0])
    kept = sorted(_pareto(X, val, lat, [1], np.array([1, 3])).tolist())
    assert kept == [0, 3, 4]  # an exact twin (1) and an equal value at more latency (2) are dominated


def test_lagrange_tied_resnet50_needs_no_handover() -> None:
    """All items worth 1 (no --weights): equal-valued labels are dominated, so the search stays small."""
    base = _bench().build("MDP")
    groups = [dataclasses.replace(g, values=np.arange(g.size + 1, dtype=float)) for g in base.groups]
    base = dataclasses.replace(base, groups=groups, block_values=[])
    p = base.with_budget(0.6 * base.latency(base.dense_solution()))
    res = get_solver("lagrange", handover_labels=4000).solve(p)  # before ties were dominated: 8,172 labels
    ref = get_solver("milp-highs").solve(p)
    assert res.status == ref.status == "optimal" and "milp-highs" not in res.message, res.message
    assert res.objective == pytest.approx(ref.objective, rel=1e-9)


def test_lagrange_time_limit_returns_checked_incumbent() -> None:
    p = inst.random_network(np.random.default_rng(5), pairwise=True, blocks=True)
    res = get_solver("lagrange", time_limit=0.0).solve(p)
    assert res.status in ("feasible", "optimal"), res.message
    assert not p.check(res.solution) and res.bound >= res.objective - 1e-9
    if res.status == "feasible":
        assert "time limit" in res.message


def test_lagrange_resnet50_mdp_matches_highs() -> None:
    base = _bench().build("MDP")
    dense = base.latency(base.dense_solution())
    for target in (0.3, 0.6):
        p = base.with_budget(target * dense)
        res, ref = get_solver("lagrange").solve(p), get_solver("milp-highs").solve(p)
        assert res.status == ref.status == "optimal", res.message
        assert res.objective == pytest.approx(ref.objective, rel=1e-9)
        assert res.removed_blocks == ref.removed_blocks


@pytest.mark.skipif(not _available("milp-highs"), reason="highspy not installed")
def test_lagrange_hands_over_to_highs_when_labels_explode() -> None:
    p, _ = _network_needing_search()
    res = get_solver("lagrange", handover_labels=1).solve(p)
    ref = get_solver("milp-highs").solve(p)
    assert res.status == ref.status == "optimal"
    assert "solved by milp-highs" in res.message and "labels" in res.message and res.backend == "lagrange"
    assert res.objective == pytest.approx(ref.objective, rel=1e-9)


def test_lagrange_keeps_large_models_from_highs() -> None:
    """A problem whose MILP exceeds ``handover_columns`` is finished by the search itself, exactly."""
    p, _ = _network_needing_search()
    res = get_solver("lagrange", handover_labels=1, handover_columns=0).solve(p)
    ref = get_solver("milp-highs").solve(p)
    assert res.status == ref.status == "optimal" and "milp-highs" not in res.message, res.message
    assert res.objective == pytest.approx(ref.objective, rel=1e-9)


@pytest.mark.skipif(not _available("milp-highs"), reason="highspy not installed")
def test_lagrange_gives_a_graph_too_wide_for_its_tables_to_highs_or_refuses_it() -> None:
    p, exact = _network_needing_search()
    res = get_solver("lagrange", max_table=1).solve(p)
    assert res.status == "optimal" and "elimination table" in res.message and "milp-highs" in res.message
    assert res.objective == pytest.approx(exact.objective, rel=1e-9)
    with pytest.raises(LatlabError, match=r"too large to solve exactly.*--group-sizes"):
        get_solver("lagrange", max_table=1, handover_columns=0).solve(p)


def test_milp_columns_counts_highs_model() -> None:
    from pruning.solvers.lagrange import milp_columns
    from pruning.solvers.milp import build_model

    p = inst.random_network(np.random.default_rng(3), pairwise=True, blocks=False)  # no blocks: no u columns
    assert milp_columns(p) == len(build_model(p).names)


@settings(max_examples=10, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_lagrange_expands_labels_in_chunks_with_same_answer(seed: int) -> None:
    """Labels expanded a few at a time (each chunk Pareto-filtered, then all together) give the same optimum."""
    import pruning.solvers.lagrange as lagrange

    p = inst.random_network(np.random.default_rng(seed), pairwise=True, blocks=True)
    whole = get_solver("lagrange", handover_labels=0).solve(p)
    saved, lagrange._CHUNK = lagrange._CHUNK, 5  # one or two labels per chunk
    try:
        chunked = get_solver("lagrange", handover_labels=0).solve(p)
    finally:
        lagrange._CHUNK = saved
    assert chunked.status == whole.status
    if whole.status == "optimal":
        assert chunked.objective == pytest.approx(whole.objective, rel=1e-12)
        assert not p.check(chunked.solution)


def test_lagrange_label_guard_reports_feasible_with_bound() -> None:
    p, exact = _network_needing_search()
    res = get_solver("lagrange", handover_labels=0, max_labels=1, beam=1).solve(p)
    assert res.status in ("feasible", "optimal"), res.message
    assert not p.check(res.solution) and res.objective <= exact.objective + 1e-9 <= res.bound + 2e-9
    if res.status == "feasible":
        assert "more than 1 labels" in res.message


def _rescaled(p: PruningProblem, value: float, latency: float) -> PruningProblem:
    """``p`` with every value multiplied by ``value`` and every latency by ``latency`` (same decisions)."""
    r = dataclasses.replace
    return r(p, groups=[r(g, values=g.values * value) for g in p.groups],
             block_values=[r(t, values=t.values * value) for t in p.block_values],
             linear=[r(t, costs=t.costs * latency) for t in p.linear],
             pairwise=[r(t, matrix=t.matrix * latency) for t in p.pairwise],
             budget=p.budget * latency, constant=p.constant * latency)


@pytest.mark.parametrize("value_scale", [1e-10, 1e-7, 1e6])
@pytest.mark.parametrize("seed", range(4))
def test_exact_backends_ignore_the_scale_of_values_and_latencies(seed: int, value_scale: float) -> None:
    # Taylor importance sums may total 1e-6: absolute solver tolerances once returned worse "optimal" answers
    p = inst.random_network(np.random.default_rng(seed), pairwise=bool(seed % 2), blocks=True)
    ref = get_solver("lagrange").solve(p)
    assert ref.status == "optimal"
    for latency_scale in (1.0, 1e-4):
        q = _rescaled(p, value_scale, latency_scale)
        for name in EXACT:
            res = get_solver(name, time_limit=30).solve(q)
            assert res.status == "optimal", (name, res.message)
            assert res.objective / value_scale == pytest.approx(ref.objective, rel=1e-7), (name, latency_scale)


@pytest.mark.parametrize("seed", range(6))
def test_budget_just_below_a_reachable_latency(seed: int) -> None:
    # HiGHS' default feasibility tolerance once returned an over-budget point (an "error") or a wrong optimum
    p = inst.random_network(np.random.default_rng(seed), pairwise=bool(seed % 2), blocks=True)
    q = p.with_budget(get_solver("lagrange").solve(p).latency * (1 - 1e-7))
    ref = get_solver("lagrange").solve(q)
    for name in EXACT:
        res = get_solver(name, time_limit=30).solve(q)
        assert res.status == ref.status == "optimal", (name, res.message)
        assert res.objective == pytest.approx(ref.objective, rel=1e-9), name


def test_exact_backends_name_the_minimum_latency_when_infeasible() -> None:
    p = inst.random_network(np.random.default_rng(3), pairwise=True, blocks=True)
    least = get_solver("lagrange").solve(p.with_budget(-1e9)).min_latency
    assert least is not None
    for name in EXACT:
        res = get_solver(name).solve(p.with_budget(least * 0.99))
        assert res.status == "infeasible" and res.min_latency == pytest.approx(least), name


def test_degenerate_problems_are_solved() -> None:
    one = [Group.from_importances([1.0], min_keep=1)]
    # dp: every group pinned and a large spare budget (the cost grid once overflowed)
    free = PruningProblem(one, budget=5000.0, linear=[LinearTerm(0, np.array([0.0, 3000.0]))])
    assert get_solver("dp").solve(free).kept == (1,)
    # a block nothing refers to (CBC leaves its variable without a value); no latency terms at all (SCIP)
    lonely = PruningProblem([Group.from_importances([1.0, 2.0])], budget=10.0, blocks=[0])
    for name in EXACT:
        res = get_solver(name).solve(lonely)
        assert res.status == "optimal" and res.kept == (2,), (name, res.message)


def test_budgets_just_below_a_reachable_latency_found_by_an_audit() -> None:
    # CBC once called this feasible budget infeasible; SCIP with a feasibility tolerance below its epsilon
    # returned a worse point as "optimal"
    p = inst.random_problem(np.random.default_rng(1), pairwise=True, block=True).with_budget(5.8978357)
    assert get_solver("milp-cbc").solve(p).status != "infeasible"
    q = inst.random_problem(np.random.default_rng(5), pairwise=False, block=False).with_budget(4.8214988)
    res = get_solver("scip").solve(q)
    assert res.status == "optimal" and res.objective == pytest.approx(q.brute_force()[0], rel=1e-12)
