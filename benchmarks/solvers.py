"""How fast and how good is every pruning back-end on ResNet50- and ResNet101-sized instances?

By default (``--source synthetic``) builds the ResNet50 structure of the spec (§2.2/§2.3: 37 groups,
246 items, 53 convs with their producer groups, 16 bottleneck blocks) with a synthetic roofline-like conv
latency (FLOP term ∝ cin·cout·f²·k², a memory term, a launch overhead and a deterministic ±8 % "kernel
choice" ripple so the tables are non-monotone like real LUTs) and random item importances.  For OCP+LLM,
MGP+LLM, OCP+MDLM and MDP at latency targets 0.1…0.9 of the dense latency it times every applicable
back-end on one thread and writes
``benchmarks/results/solvers.{md,json}``.  ``--source fake|legacy`` takes the latency tables from a
model fitted on a LUT; ``--source resnet101`` (any torchvision classifier, e.g. ``regnet_y_32gf``) traces
that network (auto group sizes) and times its convs with the fake backend.

    .venv/bin/python -m benchmarks.solvers --time-limit 10
    .venv/bin/python -m benchmarks.solvers --source resnet101 --backends lagrange,milp-highs \
        --out benchmarks/results/solvers_resnet101
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from pruning.problem import BlockValue, Group, LinearTerm, PairwiseTerm, PruningProblem
from pruning.solvers import get_solver

# (stage, blocks, mid width, out width, input f of stage, per-block (q1, m1, q2, m2)); spec §2.3
STAGES = [
    (1, 3, 64, 256, 56, [(32, 2, 32, 2)] * 3),
    (2, 4, 128, 512, 56, [(32, 4, 32, 4)] * 4),
    (3, 6, 256, 1024, 28, [(64, 4, 64, 4)] + [(128, 2, 32, 8)] * 5),
    (4, 3, 512, 2048, 14, [(64, 8, 64, 8)] + [(32, 16, 32, 16)] * 2),
]
COUPLED_Q = {1: 64, 2: 128, 3: 128, 4: 128}


def conv_latency(cin: float, cout: float, f_in: int, k: int, stride: int) -> float:
    """Synthetic batch-256 conv latency in ms (0 when either width is 0)."""
    if cin <= 0 or cout <= 0:
        return 0.0
    f_out = f_in // stride
    flops = 2 * 256 * cin * cout * f_out**2 * k**2
    mem = 4 * 256 * (cin * f_in**2 + cout * f_out**2)
    t = max(flops / 14e12, mem / 650e9) * 1e3 + 0.01
    ripple = 1 + 0.08 * np.sin(0.37 * cin + 0.11 * cout + k)  # kernel-choice effects: non-monotone
    return float(t * ripple)


def resnet50_layers() -> tuple[list[dict], list[dict]]:
    """Groups (size, q, block) and the 53 conv layers (group, producer, k, stride, f, block)."""
    groups = [{"name": "conv1", "q": 2, "m": 32, "block": None}]
    layers = [{"name": "conv1", "group": 0, "producer": None, "cin": 3, "k": 7, "s": 2, "f": 224, "block": None}]
    prev = 0  # producer group of the next stage's first block
    block_id = 0
    for stage, nb, _mid, out, f0, qs in STAGES:
        coupled = len(groups)
        groups.append({"name": f"stage{stage}", "q": COUPLED_Q[stage], "m": out // COUPLED_Q[stage], "block": None})
        f_half = f0 // 2 if stage > 1 else f0
        ds_stride = 1 if stage == 1 else 2
        layers.append(
            {"name": f"layer{stage}.0.downsample.0", "group": coupled, "producer": prev, "k": 1, "s": ds_stride}
            | {"f": f0, "block": None}
        )
        for b in range(nb):
            q1, m1, q2, m2 = qs[b]
            g1, g2 = len(groups), len(groups) + 1
            groups.append({"name": f"layer{stage}.{b}.conv1", "q": q1, "m": m1, "block": block_id})
            groups.append({"name": f"layer{stage}.{b}.conv2", "q": q2, "m": m2, "block": block_id})
            f_in = f0 if b == 0 else f_half
            s2 = 2 if (b == 0 and stage > 1) else 1
            src = prev if b == 0 else coupled
            pre = f"layer{stage}.{b}"
            layers += [
                {"name": f"{pre}.conv1", "group": g1, "producer": src, "k": 1, "s": 1, "f": f_in, "block": block_id},
                {"name": f"{pre}.conv2", "group": g2, "producer": g1, "k": 3, "s": s2, "f": f_in, "block": block_id},
                {"name": f"{pre}.conv3", "group": coupled, "producer": g2, "k": 1, "s": 1, "f": f_half}
                | {"block": block_id},
            ]
            block_id += 1
        prev = coupled
    return groups, layers


def build(variant: str, seed: int = 0) -> PruningProblem:
    """``OCP+LLM``, ``MGP+LLM``, ``OCP+MDLM`` or ``MDP`` on ResNet50 (budget set later with ``with_budget``)."""
    rng = np.random.default_rng(seed)
    gspec, lspec = resnet50_layers()
    blocks = variant in ("MGP+LLM", "MDP")
    pairwise = variant in ("OCP+MDLM", "MDP")
    groups = []
    for i, g in enumerate(gspec):
        imp = rng.lognormal(0.0, 1.0, g["m"])
        min_keep = g["m"] if i == 0 else 1  # the stem stays at full width (§8.2 constraint 3)
        groups.append(Group.from_importances(imp, min_keep=min_keep, block=g["block"] if blocks else None))
    lin, pw = [], []
    for L in lspec:
        g = gspec[L["group"]]
        blk = L["block"] if blocks else None
        k, s, f = L["k"], L["s"], L["f"]
        if L["producer"] is None:
            vec = np.array([conv_latency(L["cin"], i * g["q"], f, k, s) for i in range(g["m"] + 1)])
            (pw.append(PairwiseTerm(L["group"], None, vec, blk, L["name"])) if pairwise else None)
            if not pairwise:
                lin.append(LinearTerm(L["group"], vec, blk, L["name"]))
            continue
        p = gspec[L["producer"]]
        if pairwise:
            mat = np.array(
                [[conv_latency(j * p["q"], i * g["q"], f, k, s) for j in range(p["m"] + 1)] for i in range(g["m"] + 1)]
            )
            pw.append(PairwiseTerm(L["group"], L["producer"], mat, blk, L["name"]))
        else:  # LLM: input width frozen at the producer's dense width (§5.1)
            cin = p["q"] * p["m"]
            vec = np.array([conv_latency(cin, i * g["q"], f, k, s) for i in range(g["m"] + 1)])
            lin.append(LinearTerm(L["group"], vec, blk, L["name"]))
    shares = _conv3_shares(groups, lspec, np.random.default_rng(seed + 1)) if blocks else []
    return PruningProblem(groups, 1.0, linear=lin, pairwise=pw, name=f"resnet50 {variant}", block_values=shares)


def _conv3_shares(groups: list[Group], lspec: list[dict], rng: np.random.Generator) -> list[BlockValue]:
    """Each bottleneck's conv3 share of its stage group's item values (a random split over the group's layers, as
    §4.2 splits the group score): what removing the block takes with it."""
    shares = []
    for gi, g in enumerate(groups):
        layers = [L for L in lspec if L["group"] == gi]
        if len(layers) < 2:
            continue
        split = rng.random((len(layers), g.size))
        split /= split.sum(axis=0)
        for L, frac in zip(layers, split, strict=True):
            if L["block"] is not None:
                items = np.diff(g.values) * frac
                shares.append(BlockValue(gi, L["block"], np.concatenate([[0.0], np.cumsum(items)]), L["name"]))
    return shares


_METHOD = {"OCP+LLM": ("halp", "llm"), "MGP+LLM": ("mgp", "llm"), "OCP+MDLM": ("mdlm", "mdlm"), "MDP": ("mdp", "mdlm")}


def build_from_lut(variant: str, source: str, seed: int = 0) -> PruningProblem:
    """The ResNet-50 problem built by ``pruning.cost`` from a latency model fitted on a LUT.

    ``source``: ``fake`` (the fake backend's ResNet-50 reference lattice, batch 256) or ``legacy`` (a
    TITAN V-style MDP pickle written from the fake backend with 3% noise, read by the legacy importer).
    Importances are random log-normal per channel (seeded).
    """
    import tempfile

    from benchmarks.latency_models import fake_lut, legacy_lut
    from latency_models.base import get_model
    from pruning.graph import build_network_spec

    if source not in _LUTS:
        if source == "fake":
            X, y, _ = fake_lut(noise=0.02, seed=0)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                X, y = legacy_lut(Path(tmp))
        _LUTS[source] = (X, y)
    X, y = _LUTS[source]
    spec = build_network_spec("resnet50", 224, group_sizes="reference")
    return _spec_problem(spec, get_model(_METHOD[variant][1]).fit(X, y), variant, seed)


def _spec_problem(spec, model, variant: str, seed: int) -> PruningProblem:
    """``variant``'s problem on a traced network with seeded log-normal importances, batch 256."""
    from pruning.cost import Settings, build_problem

    rng = np.random.default_rng(seed)
    imp = {gid: rng.lognormal(0.0, 1.0, g.width) for gid, g in spec.groups.items()}
    problem, _ = build_problem(spec, model, imp, method=_METHOD[variant][0], target=1.0, settings=Settings(256))
    return problem


_LUTS: dict[str, tuple] = {}


class FakeLatency:
    """A latency "model" that asks the fake backend (no noise) for every configuration: exact tables for any graph."""

    def __init__(self) -> None:
        from profiler.backends.fake import FakeBackend
        from profiler.protocol import TimingProtocol

        self.backend = FakeBackend(TimingProtocol(repeats=3, seed=0), noise=0.0)

    def predict(self, frame) -> np.ndarray:
        from latency_models.features import configs_from_frame

        return np.array([self.backend.measure(c).median_ms for c in configs_from_frame(frame)])


def build_from_graph(variant: str, arch: str, seed: int = 0) -> PruningProblem:
    """``arch`` traced by ``pruning.graph`` (auto group sizes), conv latencies from the fake backend, batch 256."""
    from pruning.graph import build_network_spec

    return _spec_problem(build_network_spec(arch, 224), FakeLatency(), variant, seed)


def build_source(variant: str, source: str) -> PruningProblem:
    if source == "synthetic":
        return build(variant)
    if source in ("fake", "legacy"):
        return build_from_lut(variant, source)
    return build_from_graph(variant, source)


BACKENDS = {
    "OCP+LLM": ["dp", "lagrange", "milp-highs", "milp-cbc", "scip", "mindtpy"],
    "MGP+LLM": ["lagrange", "milp-highs", "milp-cbc", "scip", "mindtpy"],
    "OCP+MDLM": ["lagrange", "milp-highs", "milp-cbc", "scip", "mindtpy"],
    "MDP": ["lagrange", "milp-highs", "milp-cbc", "scip", "mindtpy"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9")
    ap.add_argument("--time-limit", type=float, default=10.0, help="per solve, seconds")
    ap.add_argument("--variants", default=",".join(BACKENDS))
    ap.add_argument("--backends", default=None, help="comma list; default: all applicable")
    ap.add_argument("--mindtpy-targets", default="", help="comma list of targets MindtPy runs at (default: all)")
    ap.add_argument("--source", default="synthetic",
                    help="latency tables: synthetic (roofline), fake / legacy (a model fitted on the fake / "
                         "legacy-format LUT), or a torchvision classifier's name (resnet101, regnet_y_32gf: traced "
                         "with auto group sizes and timed by the fake backend)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="solves faster than 1 s are repeated this many times and the median time is reported")
    ap.add_argument("--out", default="benchmarks/results/solvers")
    ap.add_argument("--from-json", default=None, help="only re-render the Markdown from an existing JSON")
    args = ap.parse_args()
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
        Path(args.from_json).with_suffix(".md").write_text(render_md(data["meta"], data["rows"]))
        return
    targets = [float(t) for t in args.targets.split(",")]
    mindtpy_targets = {float(t) for t in args.mindtpy_targets.split(",")} if args.mindtpy_targets else set(targets)
    rows = []
    t_start = time.perf_counter()
    for variant in args.variants.split(","):
        base = build_source(variant, args.source)
        dense = base.latency(base.dense_solution())
        sizes = {
            "groups": len(base.groups),
            "items": sum(g.size for g in base.groups),
            "layers": len(base.linear) + len(base.pairwise),
            "blocks": len(base.blocks),
            "states": sum(len(g.states()) for g in base.groups),
        }
        print(f"{variant}: dense latency {dense:.3f} ms, {sizes}", flush=True)
        for tgt in targets:
            prob = base.with_budget(tgt * dense)
            for name in BACKENDS[variant]:
                if args.backends and name not in args.backends.split(","):
                    continue
                if name == "mindtpy" and tgt not in mindtpy_targets:
                    continue
                solver = get_solver(name, time_limit=args.time_limit, threads=1, mip_gap=0.0)
                res = solver.solve(prob)
                if res.seconds < 1.0 and args.repeats > 1:
                    times = [res.seconds] + [solver.solve(prob).seconds for _ in range(args.repeats - 1)]
                    res.seconds = float(np.median(times))
                row = {"variant": variant, "target": tgt, "budget": prob.budget, "dense": dense, **sizes}
                row |= {k: v for k, v in res.as_dict().items() if k not in ("kept", "removed_blocks")}
                row["n_removed_blocks"] = None if res.solution is None else len(res.removed_blocks)
                rows.append(row)
                obj = "-" if res.objective is None else f"{res.objective:.4f}"
                print(f"  {tgt:.1f} {name:11s} {res.status:10s} {res.seconds:7.2f}s obj {obj}", flush=True)
    total = time.perf_counter() - t_start
    flags = [(k, v) for k, v in vars(args).items() if k != "from_json"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python -m benchmarks.solvers " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in flags if v),
        "machine": machine(),
        "source": args.source,
        "repeats": args.repeats,
        "threads": 1,
        "total_seconds": total,
    }
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(render_md(meta, rows))
    print(f"wrote {out}.json/.md in {total:.1f}s")


def machine() -> str:
    """CPU model, core count and Python version."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def summary(rows: list[dict]) -> list[str]:
    """Per variant and back-end: proven optima, median/max time, worst objective vs the best found."""
    best: dict[tuple[str, float], float] = {}
    for r in rows:
        if r["objective"] is not None:
            key = (r["variant"], r["target"])
            best[key] = max(best.get(key, -np.inf), r["objective"])
    lines = [
        "| variant | backend | optimal / feasible / infeasible / timeout+error "
        "| median s | max s | worst objective vs best |",
        "|---|---|---|---|---|---|",
    ]
    seen = []
    for r in rows:
        if (r["variant"], r["backend"]) not in seen:
            seen.append((r["variant"], r["backend"]))
    for variant, backend in seen:
        rs = [r for r in rows if r["variant"] == variant and r["backend"] == backend]
        counts = [sum(r["status"] == s for r in rs) for s in ("optimal", "feasible", "infeasible")]
        counts.append(sum(r["status"] in ("timeout", "error") for r in rs))
        secs = sorted(r["seconds"] for r in rs)
        ratios = [r["objective"] / best[(variant, r["target"])] for r in rs if r["objective"] is not None]
        worst = f"{min(ratios):.4f}" if ratios else "-"
        lines.append(
            f"| {variant} | {backend} | {' / '.join(map(str, counts))} | {float(np.median(secs)):.2f} | "
            f"{secs[-1]:.2f} | {worst} |"
        )
    return lines


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


_SOURCES = {
    "synthetic": "Synthetic roofline-like latencies (non-monotone ±8 % ripple).",
    "fake": "Latency tables from `pruning.cost.build_problem`: LLM / MDLM fitted on the fake backend's ResNet-50 "
            "reference LUT (batch 256, 2% noise).",
    "legacy": "Latency tables from `pruning.cost.build_problem`: LLM / MDLM fitted on a TITAN V-style MDP pickle "
              "(synthetic, 3% noise) read through the legacy importer.",
}
_TRACED = ("torchvision {} traced by `pruning.graph` with the auto group sizes (more channel states than the HALP/MDP "
           "reference sizes); conv latency tables from the fake backend (batch 256, no noise).")
_NAMES = {"resnet101": "ResNet-101", "resnet50": "ResNet-50", "regnet_y_32gf": "RegNetY-32GF"}


def structure(rows: list[dict]) -> str:
    """Instance sizes per variant, from the rows."""
    seen: dict[str, str] = {}
    for r in rows:
        if r["variant"] not in seen and "states" in r:
            seen[r["variant"]] = (f"{r['variant']}: {r['groups']} groups / {r['items']} items / {r['states']} "
                                  f"one-hot states / {r['layers']} convs / {r['blocks']} blocks")
    return "; ".join(seen.values()) + "." if seen else ""


def render_md(meta: dict, rows: list[dict]) -> str:
    source = meta.get("source", "synthetic")
    net = _NAMES.get(source, "ResNet50" if source in _SOURCES else source)
    lines = [
        f"# Pruning solvers on {net} instances",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}, one solver thread; total {meta['total_seconds']:.0f} s.",
        "",
        _SOURCES.get(source, _TRACED.format(net)) + " Random log-normal importances. "
        + structure(rows) + " Objective = kept importance; bound = proven "
        "upper bound where the back-end gives one; gap = (bound − objective)/bound. "
        "MindtPy (ECP, HiGHS master) has no optimality guarantee. "
        f"Times: solves under 1 s are the median of {meta.get('repeats', 1)} runs.",
        "",
        "## Summary",
        "",
        *summary(rows),
        "",
        "## All runs",
        "",
        "| variant | target | backend | status | time s | objective | bound | gap | latency/budget | blocks removed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = None if r["latency"] is None else r["latency"] / r["budget"]
        lines.append(
            f"| {r['variant']} | {r['target']:.1f} | {r['backend']} | {r['status']} | {r['seconds']:.2f} | "
            f"{_f(r['objective'], '.4f')} | {_f(r['bound'], '.4f')} | {_f(r['gap'], '.2e')} | {_f(ratio, '.5f')} | "
            f"{_f(r['n_removed_blocks'], 'd')} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
