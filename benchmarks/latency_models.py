"""Which latency model should I trust, and how many measurements do I need?

For three LUTs, the accuracy of every latency model (lut-bilinear, llm, mdlm, bilinear, rf, gbdt) on
held-out LUT keys (split by distinct key) when trained on 5%, 10%, 25% and 50% of the lattice, the
classic coarse-grid setup, whole-network error on random consistent prunings, and adaptive vs uniform
random sampling:

* ``fake``: the fake backend's synthetic GPU (TITAN V-like roofline, 2% noise), ResNet-50 reference
  lattice at batch 256;
* ``cpu``: real measurements on this machine's CPU (batch 1, 1 thread) of the ResNet-50 reference
  lattice and a ResNet-18 full:16 grid, read from ``--cpu-db`` (sweeps named ``bench-rn50``,
  ``bench-rn50-repeat`` and ``bench-rn18``; see ``--help`` for the commands that make them);
* ``legacy``: a TITAN V-style LUT in the MDP pickle format (6-token keys, batch 256) written from the
  fake backend with 3% noise and read back through the restricted legacy importer. It is synthetic:
  no real TITAN V values are invented.

    latlab profile --model resnet50 --backend cpu --grid reference --batch 1 --warmup 5 --repeats 25 \\
        --min-repeats 25 --threads 1 --name bench-rn50 --db cpu_luts.db   # and bench-rn50-repeat
    latlab profile --model resnet18 --backend cpu --grid full:16 --batch 1 --warmup 5 --repeats 25 \\
        --min-repeats 25 --threads 1 --name bench-rn18 --db cpu_luts.db
    python -m benchmarks.latency_models --cpu-db cpu_luts.db
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select
from threadpoolctl import threadpool_limits

from benchmarks._report import command_line
from db import open_database
from db.legacy import import_legacy
from db.models import Sweep
from latency_models.adaptive import run_adaptive
from latency_models.base import get_model
from latency_models.evaluate import (
    accuracy_vs_budget,
    candidate_models,
    evaluate_models,
    markdown_table,
    summarise_whole_network,
    whole_network_eval,
)
from latency_models.features import configs_from_frame, frame_from_configs, lut_frame
from latency_models.metrics import error_metrics
from latency_models.network import lattice_sum, network_latency
from latency_models.splits import make_split
from profiler._grids import rn50_group, rn50_group_q
from profiler.backends.fake import FakeBackend
from profiler.hardware import detect_hardware
from profiler.plan import build_plan, resolve_model, trace_network
from profiler.protocol import TimingProtocol
from profiler.widths import random_pruned_widths
from pruning.rebuild import measure_pruned

KINDS = ("lut", "llm", "mdlm", "bilinear", "rf", "gbdt")
FRACTIONS = (0.05, 0.10, 0.25, 0.50)


def fake_lut(noise: float, seed: int) -> tuple[pd.DataFrame, np.ndarray, FakeBackend]:
    plan = build_plan("resnet50", "reference", batch=256)
    backend = FakeBackend(TimingProtocol(repeats=25, seed=seed), noise=noise)
    y = np.array([backend.measure(c).median_ms for c in plan.configs])
    return frame_from_configs(plan.configs), y, backend


def legacy_lut(tmp: Path) -> tuple[pd.DataFrame, np.ndarray]:
    X, y, _ = fake_lut(noise=0.03, seed=7)
    lut = {c.legacy_key(with_groups=False): float(v) for c, v in zip(configs_from_frame(X), y, strict=True)}
    path = tmp / "rn50_titanv_style_batch256.pkl"
    path.write_bytes(pickle.dumps(lut, protocol=2))
    database = open_database(tmp / "legacy.db")
    report = import_legacy(database, path, hardware="TITAN V-style (synthetic)", dtype="fp32")
    with database.session() as s:
        return lut_frame(s, report.sweep_id)


def cpu_luts(db_path: Path) -> dict[str, tuple[pd.DataFrame, np.ndarray]]:
    database = open_database(db_path, create=False, upgrade=True)
    out = {}
    with database.session() as s:
        for sweep in s.scalars(select(Sweep)):
            if sweep.name.startswith("bench-"):
                out[sweep.name] = lut_frame(s, sweep.id)
                out[sweep.name + ":hardware"] = sweep.hardware.name  # type: ignore[assignment]
    return out


def coarse_grid(X: pd.DataFrame, y: np.ndarray) -> pd.DataFrame:
    split = make_split(X, "grid", 0.25, 0)
    return evaluate_models({"lut": get_model("lut", missing="bilinear"), "mdlm": get_model("mdlm")}, X, y, split)


def adaptive_vs_random(X: pd.DataFrame, y: np.ndarray, sizes: list[int],
                       seed: int = 0) -> tuple[pd.DataFrame, dict[int, np.ndarray]]:
    """Share of unmeasured lattice points within ±5%/±10% after measuring n points, both ways.

    Also returns, per size, the row positions the adaptive sampler chose.
    """
    configs = configs_from_frame(X)
    truth = dict(zip(configs, y, strict=True))
    rows = []
    chosen: dict[int, np.ndarray] = {}
    snapshots: dict[int, tuple[list, Any]] = {}

    def on_round(result: Any) -> None:
        n = len(result.measured)
        for size in sizes:
            if size not in snapshots and n >= size:
                snapshots[size] = (list(result.measured), None)

    run_adaptive(configs, lambda cs: [truth[c] for c in cs], budget=max(sizes), per_round=max(8, len(configs) // 60),
                 target_within_5=1.01, seed=seed, on_round=on_round)
    for size in sizes:
        if size not in snapshots:
            continue
        position = {c: i for i, c in enumerate(configs)}
        adaptive_idx = [position[c] for c in snapshots[size][0]]
        random_idx = make_split(X, "random", len(adaptive_idx) / len(X), seed)[0]  # stratified by family
        chosen[size] = np.array(adaptive_idx)
        for how, idx in (("adaptive", adaptive_idx), ("random", random_idx)):
            mask = np.zeros(len(configs), dtype=bool)
            mask[idx] = True
            model = get_model("mdlm", random_state=seed).fit(X[mask].reset_index(drop=True), y[mask])
            m = error_metrics(y[~mask], model.predict(X[~mask].reset_index(drop=True)))
            rows.append({"sampling": how, "measured": int(mask.sum()), "share_of_lattice": mask.mean(),
                         "within_5": m["within_5"], "within_10": m["within_10"], "mape": m["mape"]})
    return pd.DataFrame(rows), chosen


def uniform_prunings(fitted: dict[str, Any], trace: Any, truth: Any, sizes: dict[str, int],
                     settings: dict[str, Any]) -> pd.DataFrame:
    """One-shot uniform prunings (keep 90% ... 10% of every group): each model vs the exact lattice sum."""
    rows = []
    for keep in (1.0, 0.9, 0.7, 0.5, 0.3, 0.1):
        widths = random_pruned_widths(trace, 0, keep=keep, group_sizes=sizes)
        exact = truth(widths)
        row: dict[str, Any] = {"keep": keep, "lattice_ms": exact}
        for name, model in fitted.items():
            pred = network_latency(model, trace.layers, widths, **settings)
            row[f"{name}_vs_lattice"] = pred / exact
        rows.append(row)
    return pd.DataFrame(rows)


def whole_network(X: pd.DataFrame, y: np.ndarray, *, n: int, seed: int, measure_cpu: bool,
                  adaptive_idx: np.ndarray | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    trace = trace_network("resnet50", 224)
    train, _ = make_split(X, "random", 0.25, seed)
    models = candidate_models(KINDS, seed=seed)
    fitted = {k: m.fit(X.iloc[train].reset_index(drop=True), y[train]) for k, m in models.items()}
    if adaptive_idx is not None:
        fitted["mdlm-adaptive"] = get_model("mdlm", random_state=seed).fit(
            X.iloc[adaptive_idx].reset_index(drop=True), y[adaptive_idx])
    measured = dict(zip(configs_from_frame(X), y, strict=True))
    first = configs_from_frame(X.iloc[:1])[0]
    settings = {"batch": first.batch, "dtype": first.dtype, "layout": first.layout, "op": first.op}
    sizes = {layer.name: rn50_group_q(rn50_group(layer.name)) for layer in trace.layers}
    measure = None
    if measure_cpu:
        from profiler.backends.cpu import CpuBackend

        _, module = resolve_model("resnet50")
        backend = CpuBackend(TimingProtocol(warmup=3, repeats=15, num_threads=1))
        measure = measure_pruned(backend, module, trace, batch=first.batch)
    def truth(widths: Any) -> float:
        return lattice_sum(measured, trace.layers, widths, **settings)

    whole = whole_network_eval(fitted, trace, n, seed, truth=truth, measure=measure, group_sizes=sizes, **settings)
    return whole, uniform_prunings(fitted, trace, truth, sizes, settings)


def section(name: str, X: pd.DataFrame, y: np.ndarray, args: argparse.Namespace, *, measure_cpu: bool = False,
            rn50: bool = True) -> dict[str, Any]:
    t0 = time.time()
    print(f"[{name}] {len(X)} points, {X['family'].nunique()} families", file=sys.stderr)
    out: dict[str, Any] = {"points": len(X), "families": int(X["family"].nunique())}
    out["budget"] = accuracy_vs_budget(candidate_models(KINDS), X, y, fractions=FRACTIONS,
                                       seeds=tuple(range(args.seeds)))
    out["coarse_grid"] = coarse_grid(X, y)
    if rn50:
        sizes = [int(len(X) * f) for f in (0.05, 0.10, 0.15, 0.25, 0.35)]
        out["adaptive"], chosen = adaptive_vs_random(X, y, sizes)
        whole, uniform = whole_network(X, y, n=args.pruned, seed=0, measure_cpu=measure_cpu,
                                       adaptive_idx=chosen.get(sizes[3]))
        out["whole_network"] = summarise_whole_network(whole)
        out["uniform_prunings"] = uniform
        out["whole_network_rows"] = whole
    out["seconds"] = round(time.time() - t0, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-db", type=Path, help="database with the bench-* CPU sweeps (skip cpu if absent)")
    parser.add_argument("--datasets", default="fake,cpu,legacy", help="comma-separated: fake, cpu, legacy")
    parser.add_argument("--seeds", type=int, default=3, help="random splits per training share")
    parser.add_argument("--pruned", type=int, default=20, help="random pruned ResNet-50s per dataset")
    parser.add_argument("--measure-cpu", action="store_true", help="also time pruned ResNet-50s on the CPU")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/latency_models"))
    args = parser.parse_args(argv)
    wanted = {d.strip() for d in args.datasets.split(",")}
    results: dict[str, dict[str, Any]] = {}
    with threadpool_limits(1), tempfile.TemporaryDirectory() as tmp:
        if "fake" in wanted:
            X, y, _ = fake_lut(noise=0.02, seed=0)
            results["fake: synthetic GPU, ResNet-50 reference lattice, batch 256"] = section("fake", X, y, args)
        if "cpu" in wanted and args.cpu_db:
            luts = cpu_luts(args.cpu_db)
            hw = luts.get("bench-rn50:hardware", "CPU")
            if "bench-rn50" in luts:
                X, y = luts["bench-rn50"]
                res = section("cpu-rn50", X, y, args, measure_cpu=args.measure_cpu)
                if "bench-rn50-repeat" in luts:
                    Xr, yr = luts["bench-rn50-repeat"]
                    again = dict(zip(configs_from_frame(Xr), yr, strict=True))
                    y2 = np.array([again[c] for c in configs_from_frame(X)])
                    res["noise_floor"] = pd.DataFrame([{"comparison": "repeat sweep vs first sweep",
                                                        **error_metrics(y, y2)}])
                results[f"cpu: {hw}, ResNet-50 reference lattice, batch 1, 1 thread"] = res
            if "bench-rn18" in luts:
                X, y = luts["bench-rn18"]
                results[f"cpu: {hw}, ResNet-18 full:16 grid, batch 1, 1 thread"] = section("cpu-rn18", X, y, args,
                                                                                           rn50=False)
        if "legacy" in wanted:
            X, y = legacy_lut(Path(tmp))
            results["legacy: TITAN V-style synthetic LUT (MDP pickle, 3% noise) via the importer"] = section(
                "legacy", X, y, args)
    write(results, args, argv)
    return 0


def write(results: dict[str, dict[str, Any]], args: argparse.Namespace, argv: list[str] | None) -> None:
    hw = detect_hardware("cpu")
    command = command_line("latency_models", argv)
    md = ["# Latency model accuracy", "", f"Command: `{command}`  ",
          f"Machine: {hw.name}, torch {hw.torch_version}. Held-out points are LUT keys not used for training "
          "(split by distinct key); 'within_5' is the share of held-out points predicted within ±5%.", ""]
    blob: dict[str, Any] = {"command": command, "machine": hw.to_dict(), "datasets": {}}
    cols = ["model", "train_fraction", "n_train", "within_5", "within_10", "mape", "max_ape"]
    for name, res in results.items():
        md += [f"## {name}", "", f"{res['points']} lattice points in {res['families']} shape families "
               f"({res['seconds']} s).", "", "### Accuracy vs share of the lattice measured (random keys, "
               f"mean of {args.seeds} splits)", "", markdown_table(res["budget"][cols].round(4)), "",
               "### Coarse regular sub-grid (~25% of keys) then interpolate", "",
               markdown_table(res["coarse_grid"][["model", "n_train", "within_5", "within_10", "mape"]].round(4)), ""]
        entry: dict[str, Any] = {k: v.to_dict(orient="records") for k, v in res.items() if isinstance(v, pd.DataFrame)}
        if "noise_floor" in res:
            md += ["### Noise floor: a second sweep of the same lattice against the first", "",
                   markdown_table(res["noise_floor"].round(4)), ""]
        if "whole_network" in res:
            md += [f"### Whole ResNet-50: {args.pruned} random consistent prunings + dense (models trained on a "
                   "random 25% of keys; mdlm-adaptive on the 25% the adaptive sampler chose)",
                   "", markdown_table(res["whole_network"].round(3)), "",
                   "One-shot uniform prunings (every group keeps the same share, snapped to its channel-group "
                   "size): predicted / exact lattice sum. HALP's LLM freezes input widths at their dense values.",
                   "", markdown_table(res["uniform_prunings"].round(3)), ""]
        if "adaptive" in res:
            md += ["### Adaptive vs uniform random sampling (MDLM, accuracy on the unmeasured points)", "",
                   markdown_table(res["adaptive"].round(4)), ""]
        blob["datasets"][name] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(md))
    args.out.with_suffix(".json").write_text(json.dumps(blob, indent=1, default=float))
    stem = args.out.name
    _plot(results, args.out.with_name(stem + "_budget.png"), args.out.with_name(stem + "_adaptive.png"))
    print("\n".join(md))


def _short(name: str) -> str:
    """Two-line panel title: source, then what was measured."""
    head, _, rest = name.partition(": ")
    parts = [p.strip() for p in rest.split(",")]
    return f"{head}: {parts[0]}\n{', '.join(parts[1:])}" if len(parts) > 1 else name


def _plot(results: dict[str, dict[str, Any]], budget_png: Path, adaptive_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4.2), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items(), strict=True):
        for model, part in res["budget"].groupby("model"):
            ax.plot(100 * part["train_fraction"], 100 * part["within_5"], marker="o", label=model)
        ax.set_title(_short(name), fontsize=9)
        ax.set_xlabel("% of lattice measured (training)")
        ax.set_ylabel("% of held-out points within ±5%")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(budget_png, dpi=110)
    plt.close(fig)
    with_adaptive = {k: v for k, v in results.items() if "adaptive" in v}
    if not with_adaptive:
        return
    fig, axes = plt.subplots(1, len(with_adaptive), figsize=(5 * len(with_adaptive), 4.2), squeeze=False)
    for ax, (name, res) in zip(axes[0], with_adaptive.items(), strict=True):
        for (how, part), color in zip(res["adaptive"].groupby("sampling"), ("tab:blue", "tab:gray"), strict=False):
            ax.plot(100 * part["share_of_lattice"], 100 * part["within_5"], marker="o", color=color,
                    label=f"{how}: within ±5%")
            ax.plot(100 * part["share_of_lattice"], 100 * part["within_10"], marker="x", ls="--", color=color,
                    label=f"{how}: within ±10%")
        ax.set_title(_short(name), fontsize=9)
        ax.set_xlabel("% of lattice measured")
        ax.set_ylabel("% of unmeasured points within tolerance")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(adaptive_png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
