"""Problem building from a network + latency model, one-shot pruning, and `latlab prune`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from db import LatlabError
from latency_models.base import get_model
from latency_models.features import frame_from_configs
from profiler.backends.fake import FakeBackend
from profiler.plan import build_plan, resolve_model
from pruning.cost import Settings, build_problem, importance_order, solution_masks
from pruning.graph import build_network_spec
from pruning.oneshot import magnitude_layer_scores, magnitude_scores, prune_once, taylor_scores
from pruning.solvers import get_solver

SIZE, BATCH = 64, 8


@pytest.fixture(scope="module")
def setup():  # type: ignore[no-untyped-def]
    plan = build_plan("resnet18", "full:16", input_size=SIZE, batch=BATCH)
    fake = FakeBackend(noise=0.0)
    X = frame_from_configs(plan.configs)
    y = np.array([fake.true_latency_ms(c) for c in plan.configs])
    spec = build_network_spec("resnet18", SIZE, group_sizes=16)
    _, net = resolve_model("resnet18", num_classes=10)
    return X, y, spec, net, {c: v for c, v in zip(plan.configs, y, strict=True)}


def test_problem_dense_latency_is_the_lut_sum(setup) -> None:  # type: ignore[no-untyped-def]
    X, y, spec, net, truth = setup
    from db.keys import ConvConfig

    dense = sum(truth[ConvConfig(c.family, c.cin, c.cout, BATCH)] for c in spec.convs)
    for method, kind in (("halp", "llm"), ("mgp", "llm"), ("mdlm", "mdlm"), ("mdp", "lut")):
        problem, mapping = build_problem(spec, get_model(kind).fit(X, y), {}, method=method, target=0.6,
                                         settings=Settings(BATCH))
        assert mapping.dense_latency == pytest.approx(dense, rel=1e-9)
        assert problem.budget == pytest.approx(0.6 * dense)
        assert problem.kind == {"halp": "OCP+LLM", "mgp": "MGP+LLM", "mdlm": "OCP+MDLM", "mdp": "MDP"}[method]


def test_dp_equals_milp_on_halp(setup) -> None:  # type: ignore[no-untyped-def]
    X, y, spec, net, _ = setup
    imp = magnitude_scores(net, spec)
    problem, _ = build_problem(spec, get_model("llm").fit(X, y), imp, method="halp", target=0.7,
                               settings=Settings(BATCH))
    dp, milp = get_solver("dp").solve(problem), get_solver("milp-highs").solve(problem)
    assert dp.status == milp.status == "optimal"
    assert dp.objective == pytest.approx(milp.objective, rel=1e-6)


def test_mdp_prunes_exports_and_beats_halp_value(setup) -> None:  # type: ignore[no-untyped-def]
    X, y, spec, net, _ = setup
    imp = {gid: np.random.default_rng(0).random(g.width) for gid, g in spec.groups.items()}
    mdp = prune_once(net, spec, get_model("mdlm").fit(X, y), imp, method="mdp", target=0.7,
                     settings=Settings(BATCH))
    assert mdp.result.status == "optimal" and mdp.result.latency <= 0.7 * mdp.predicted_dense_ms * (1 + 1e-9)
    assert mdp.predicted_pruned_ms == pytest.approx(mdp.result.latency, rel=1e-6)
    assert mdp.max_logit_delta < 1e-3 and mdp.counts["params_pruned"] < mdp.counts["params_dense"]
    halp = prune_once(net, spec, get_model("llm").fit(X, y), imp, method="halp", target=0.7,
                      settings=Settings(BATCH))
    # HALP prices each conv at its dense input width: same budget, less kept value, and it really is faster
    assert halp.result.objective <= mdp.result.objective + 1e-9
    assert halp.predicted_pruned_ms < 0.7 * halp.predicted_dense_ms
    summary = halp.summary()  # what the problem priced (input widths frozen) is what met the budget
    assert summary["predicted_pruned_ms"] < summary["constrained_ms"] <= summary["budget_ms"] * (1 + 1e-9)
    out = mdp.slim(torch.randn(2, 3, SIZE, SIZE))
    assert out.shape == (2, 10)


def test_importance_order_keeps_whole_positions() -> None:
    imp = np.random.default_rng(3).random(24)
    assert list(importance_order(imp)) == list(np.argsort(-imp, kind="stable"))
    order = importance_order(imp, stripes=4)  # 4 stripes of 6 channels
    positions = imp.reshape(4, 6).sum(axis=0)
    for k in range(1, 7):  # any k whole positions: the top-k positions, kept in every stripe
        keep = np.zeros(24, dtype=bool)
        keep[order[: 4 * k]] = True
        assert (keep.reshape(4, 6) == keep[:6]).all()
        assert set(np.flatnonzero(keep[:6])) == set(np.argsort(-positions)[:k])


def test_grouped_convs_prune_and_export() -> None:
    """RegNetY (grouped convs + SE): HALP prunes the channels feeding its grouped convs; they stay grouped."""
    plan = build_plan("regnet_y_400mf", "lattice", input_size=224, batch=32)
    fake = FakeBackend(noise=0.0)
    X, y = frame_from_configs(plan.configs), np.array([fake.true_latency_ms(c) for c in plan.configs])
    spec = build_network_spec("regnet_y_400mf", 224)
    _, net = resolve_model("regnet_y_400mf", num_classes=10)
    imp = {gid: np.random.default_rng(0).random(g.width) for gid, g in spec.groups.items()}
    res = prune_once(net.eval(), spec, get_model("llm").fit(X, y), imp, method="halp", target=0.75,
                     settings=Settings(32))
    assert res.result.status == "optimal" and res.max_logit_delta < 1e-3
    pairs = [(m, res.slim.get_submodule(name)) for name, m in net.named_modules()
             if isinstance(m, torch.nn.Conv2d) and 1 < m.groups < m.in_channels]
    assert all(slim.groups == dense.groups for dense, slim in pairs)
    assert sum(slim.in_channels < dense.in_channels for dense, slim in pairs) >= len(pairs) // 2


def test_min_keep_share_is_a_floor_for_every_pruned_group(setup) -> None:  # type: ignore[no-untyped-def]
    X, y, spec, net, _ = setup
    imp = {gid: np.random.default_rng(1).random(g.width) for gid, g in spec.groups.items()}
    model = get_model("lut").fit(X, y)
    free = prune_once(net, spec, model, imp, method="mdlm", target=0.6, settings=Settings(BATCH))
    floor = prune_once(net, spec, model, imp, method="mdlm", target=0.6, settings=Settings(BATCH),
                       min_keep_share=0.5)
    shares = {gid: w / spec.groups[gid].width for gid, w in floor.widths.items()}
    assert min(w / spec.groups[gid].width for gid, w in free.widths.items()) < 0.5  # no floor: some go lower
    assert min(shares.values()) >= 0.5 and floor.result.status == "optimal"
    assert floor.result.objective <= free.result.objective + 1e-9 and floor.predicted_pruned_ms <= 0.6 * (
        floor.predicted_dense_ms) * (1 + 1e-9)
    with pytest.raises(LatlabError, match="least kept share of a group's channels must be in"):
        build_problem(spec, model, imp, method="mdlm", target=0.5, settings=Settings(BATCH), min_keep_share=1.5)


def test_max_kept_blocks_bounds_the_blocks_mgp_keeps(setup) -> None:  # type: ignore[no-untyped-def]
    """MGP's --blocks_num (spec §6.3 item 6): at most N of the removable blocks stay."""
    X, y, spec, net, _ = setup
    imp = {gid: np.random.default_rng(2).random(g.width) for gid, g in spec.groups.items()}
    model = get_model("llm").fit(X, y)
    free = prune_once(net, spec, model, imp, method="mgp", target=0.8, settings=Settings(BATCH))
    bounded = prune_once(net, spec, model, imp, method="mgp", target=0.8, settings=Settings(BATCH), max_kept_blocks=4)
    assert len(spec.blocks) - len(free.removed_blocks) > 4 and bounded.result.status == "optimal"
    assert len(spec.blocks) - len(bounded.removed_blocks) <= 4 and bounded.max_logit_delta < 1e-9
    assert bounded.result.objective <= free.result.objective + 1e-9
    with pytest.raises(LatlabError, match="max_kept_blocks=2: halp removes no blocks"):
        build_problem(spec, model, imp, method="halp", target=0.8, settings=Settings(BATCH), max_kept_blocks=2)
    with pytest.raises(LatlabError, match=r"resnet18 has 8 removable blocks, so it must be in \[0, 8\]"):
        build_problem(spec, model, imp, method="mgp", target=0.8, settings=Settings(BATCH), max_kept_blocks=9)


def test_infeasible_target_is_an_error(setup) -> None:  # type: ignore[no-untyped-def]
    X, y, spec, net, _ = setup
    with pytest.raises(LatlabError, match="infeasible"):
        prune_once(net, spec, get_model("mdlm").fit(X, y), {}, method="mdlm", target=0.01, settings=Settings(BATCH))
    with pytest.raises(LatlabError, match="unknown pruning method"):
        build_problem(spec, get_model("llm").fit(X, y), {}, method="halp2", target=0.5, settings=Settings(BATCH))


def test_cli_prune_end_to_end(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    db = str(tmp_path / "lut.db")
    code, _, err = cli(["profile", "--model", "resnet18", "--backend", "fake", "--grid", "full:16", "--batch",
                        str(BATCH), "--input-size", str(SIZE), "-q", "--db", db])
    assert code == 0, err
    out = tmp_path / "r18-mdp"
    argv = ["prune", "--model", "resnet18", "--num-classes", "10", "--input-size", str(SIZE), "--method", "mdp",
            "--target", "0.7", "--group-sizes", "16", "--keep", "stem", "--out", str(out), "--db", db]
    code, stdout, err = cli(argv)
    assert code == 0, err
    assert "latency model: mdlm fitted on sweep 1" in stdout and "solving mdp to 70%" in stdout  # progress
    result = json.loads((out / "result.json").read_text())
    assert result["summary"]["status"] == "optimal" and result["summary"]["max_logit_delta"] < 1e-3
    stem_group = next(g for g in result["dense_widths"] if g.startswith("conv1"))  # coupled to stage 1's residual
    assert result["group_widths"][stem_group] == result["dense_widths"][stem_group] and result["config"]["keep"] == [
        "stem"]
    saved = torch.load(out / "masks.pt", weights_only=True)
    assert set(saved["masks"]) and all(m.dtype == torch.bool for m in saved["masks"].values())
    assert saved["removed_blocks"] == result["summary"]["removed_blocks"]
    code, stdout, err = cli(["measure", "--model", "resnet18", "--num-classes", "10", "--mask", str(out / "masks.pt"),
                             "--input-size", str(SIZE), "--batch", "2", "--repeats", "3", "--warmup", "1",
                             "--threads", "1", "--no-store", "-f", "csv"])
    assert code == 0 and ",ok," in stdout, err  # the mask file rebuilds the same slim network
    code, stdout, err = cli(["measure", "--model", "resnet18", "--num-classes", "10", "--mask", str(out / "masks.pt"),
                             "--speedup", "--rounds", "2", "--backend", "fake", "--input-size", str(SIZE), "--batch",
                             str(BATCH), "--repeats", "3", "--no-store", "-f", "json"])
    assert code == 0, err
    row = json.loads(stdout)[0]
    assert row["speedup"] > 1.0 and row["dense_median_ms"] > row["median_ms"]
    code, _, err = cli(["measure", "--model", "resnet18", "--speedup", "--no-store"])
    assert code != 0 and "--speedup compares a --mask-pruned" in err
    assert "max |Δ logits|" in (out / "report.md").read_text()
    code, stdout, err = cli(["measure", "--module", str(out / "pruned.pt2"), "--input-size", str(SIZE), "--batch",
                             "2", "--repeats", "3", "--warmup", "1", "--threads", "1", "--no-store", "-f", "json"])
    assert code == 0, err
    row = json.loads(stdout)[0]  # stored under the network it was pruned from, not "pruned"/"dense"
    assert (row["model"], row["variant"], row["status"]) == ("resnet18", "mdp70", "ok")
    for bad, expected in (
        (["--method", "halp3"], "unknown method"),
        (["--target", "0.001"], "infeasible"),
        (["--data", str(tmp_path / "nope")], "does not exist"),
        (["--solver", "gurobi"], "unknown solver"),
        (["--keep", "layer9.*"], "keep pattern 'layer9.*' matches no conv"),
        (["--target", "1.5"], "--target must be the kept share"),
        (["--input-size", "224"], "sweep this network at 224 px"),  # the LUT was swept at SIZE
    ):
        args = list(argv)
        flag = bad[0]
        if flag in args:
            args[args.index(flag) + 1] = bad[1]
        else:
            args += bad
        code, _, err = cli(args)
        assert code == 1 and expected in err and len(err.strip().splitlines()) == 1, (bad, err)


def test_removed_blocks_take_their_share_of_coupled_groups(setup) -> None:  # type: ignore[no-untyped-def]
    """§8.2: a removed block's layers lose their share of a coupled (residual) group's value, not only the block's
    internal groups; the share is the per-layer score (§4.2), or an equal split without one."""
    X, y, spec, net, _ = setup
    groups, layers = magnitude_scores(net, spec), magnitude_layer_scores(net, spec)
    lat = get_model("llm").fit(X, y)
    problem, mapping = build_problem(spec, lat, groups, method="mgp", target=0.6, settings=Settings(BATCH),
                                     layer_importances=layers)
    assert len(problem.block_values) == len(spec.blocks)  # each BasicBlock's conv2 writes its stage's group
    for t in problem.block_values:
        gid, block = mapping.group_ids[t.group], spec.blocks[t.block]
        convs = [c for c in spec.groups[gid].convs if c in block.convs]
        assert t.values[-1] == pytest.approx(sum(layers[c].sum() for c in convs), rel=1e-6)
    equal, _ = build_problem(spec, lat, groups, method="mgp", target=0.6, settings=Settings(BATCH))
    for t in equal.block_values:
        g = spec.groups[mapping.group_ids[t.group]]
        assert t.values[-1] == pytest.approx(groups[g.id].sum() / len(g.convs), rel=1e-6)
    halp, _ = build_problem(spec, lat, groups, method="halp", target=0.6, settings=Settings(BATCH),
                            layer_importances=layers)
    assert not halp.block_values


def test_a_solution_far_from_its_bound_is_refused(setup) -> None:  # type: ignore[no-untyped-def]
    """A solver stopped by its time limit far below its bound gives no masks (it could keep almost nothing)."""
    X, y, spec, net, _ = setup
    problem, mapping = build_problem(spec, get_model("llm").fit(X, y), magnitude_scores(net, spec), method="halp",
                                     target=0.7, settings=Settings(BATCH))
    res = get_solver("lagrange").solve(problem)
    solution_masks(spec, res, mapping)
    res.status, res.gap, res.message = "feasible", 0.5, "time limit"
    with pytest.raises(LatlabError, match=r"stopped 50\.0% short of its proven bound"):
        solution_masks(spec, res, mapping)


def test_taylor_scores_leave_the_network_as_it_was(setup) -> None:  # type: ignore[no-untyped-def]
    _, _, spec, net, _ = setup
    before = {k: v.clone() for k, v in net.state_dict().items()}
    batches = [(torch.randn(4, 3, SIZE, SIZE), torch.randint(0, 10, (4,))) for _ in range(2)]
    groups, layers = taylor_scores(net, spec, batches, max_batches=2)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # BN running stats untouched
    for gid, g in spec.groups.items():  # the per-layer shares sum to the group score (§4.2)
        np.testing.assert_allclose(sum(layers[c] for c in g.convs), groups[gid], rtol=1e-4, atol=1e-12)
