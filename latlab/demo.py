"""``latlab demo``: the main job end to end on this machine's CPU with the embedded SQLite database.

1. profile the conv shape families of a real torchvision network (ResNet-18 by default) with the
   CPU backend over a Latin-hypercube channel grid, into ``<out>/latlab.db``;
2. summarise the LUT per shape family (table + PNG);
3. time the whole dense network and compare it with the sum of its convs read from the LUT
   (how much of the network's latency a conv-only LUT explains);
4. fit every latency model on half of the LUT keys and score the rest, and predict random pruned
   versions of the network against their measured latency (``<out>/latency_models/``);
5. prune the network one-shot with HALP and MDP for this machine, export and time the slim networks;
6. write ``<out>/report.md``, ``<out>/lut_summary.csv`` and ``<out>/lut_latency.png``.

Fine-tuning on a small dataset (issue #6) will extend this report.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from db.engine import Database, open_database
from db.errors import LatlabError, LUTMissError
from db.keys import ConvConfig
from db.lut import family_summaries, lookup
from latency_models.evaluate import (
    candidate_models,
    fit_predict,
    measure_pruned,
    summarise_whole_network,
    whole_network_eval,
    write_report,
)
from latency_models.features import lut_frame
from latency_models.splits import make_split
from latlab.tables import render
from profiler.backends import get_backend
from profiler.measure import measure_model
from profiler.plan import build_plan, resolve_model, trace_network
from profiler.protocol import TimingProtocol
from profiler.runner import SweepReport, run_sweep
from pruning.cost import Settings
from pruning.graph import build_network_spec
from pruning.oneshot import magnitude_scores, prune_once

log = logging.getLogger(__name__)

DEMO_MODELS = ("lut", "llm", "mdlm", "bilinear", "rf", "gbdt")


@dataclass
class DemoConfig:
    """Settings of the demo run (saved next to the report as ``config.json``)."""

    out_dir: str = "latlab-demo"
    db: str | None = None  # default: <out_dir>/latlab.db
    model: str = "resnet18"
    input_size: int = 224
    grid: str = "lhs:12:16"
    batch: int = 1
    backend: str = "cpu"
    threads: int | None = 1  # one thread: multi-threaded tiny convs are bimodal on small shared VMs
    warmup: int = 3
    repeats: int = 15
    model_repeats: int = 30
    pruned_networks: int = 3
    prune_target: float = 0.6  # kept share of the dense conv latency for the one-shot HALP / MDP step
    seed: int = 0
    progress: bool = True


@dataclass
class DemoResult:
    config: DemoConfig
    sweep: SweepReport
    lut_rows: list[dict[str, Any]]
    conv_sum_ms: float | None
    model_ms: float | None
    missing: list[str] = field(default_factory=list)
    report_path: Path | None = None
    models: pd.DataFrame | None = None  # held-out accuracy per latency model
    whole_network: pd.DataFrame | None = None  # per model: error vs measured pruned networks
    pruned: pd.DataFrame | None = None  # one-shot HALP and MDP, exported and timed


def _conv_sum(database: Database, sweep_id: int, configs: list[ConvConfig]) -> tuple[float | None, list[str]]:
    total, missing = 0.0, []
    with database.session() as session:
        for config in configs:
            try:
                total += lookup(session, sweep_id, config)
            except LUTMissError as exc:
                missing.append(str(exc))
    return (None if missing else total), missing


def _plot(rows: list[dict[str, Any]], database: Database, sweep_id: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sqlalchemy import select

    from db.keys import ConvFamily
    from db.models import Measurement

    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)
    with database.session() as session:
        data = session.execute(
            select(Measurement.family, Measurement.cin, Measurement.cout, Measurement.batch, Measurement.median_ms)
            .where(Measurement.sweep_id == sweep_id, Measurement.status == "ok")
        ).all()
    by_family: dict[str, tuple[list[float], list[float]]] = {}
    for fam, cin, cout, batch, ms in data:
        gmacs = ConvFamily.from_key(fam).macs(cin, cout, batch) / 1e9
        xs, ys = by_family.setdefault(fam, ([], []))
        xs.append(gmacs)
        ys.append(ms)
    for fam, (xs, ys) in sorted(by_family.items()):
        f = ConvFamily.from_key(fam)
        ax.scatter(xs, ys, s=14, label=f"{f.in_h}px k{f.kernel_h} s{f.stride_h}" + (" dw" if f.depthwise else ""))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("GMAC per call")
    ax.set_ylabel("median latency per call (ms)")
    ax.set_title("Measured conv latency by shape family")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _compare_models(
    X: pd.DataFrame, y: np.ndarray, config: DemoConfig, net: Any, backend: Any, out: Path,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Fit every latency model on half the LUT keys, score the rest; predict pruned networks vs measured.

    Returns the held-out table, the whole-network summary and the models fitted on every LUT key.
    """
    models = candidate_models(DEMO_MODELS, seed=config.seed)
    table, predictions = fit_predict(models, X, y, make_split(X, "random", 0.5, config.seed))
    fitted = {kind: model.fit(X, y) for kind, model in models.items()}
    trace = trace_network(config.model, config.input_size)
    measure = measure_pruned(backend, net, trace, batch=config.batch)
    whole = whole_network_eval(fitted, trace, config.pruned_networks, config.seed, batch=config.batch,
                               measure=measure, multiple=16)
    write_report(out / "latency_models", {"Held-out accuracy (half of the LUT keys for training)": table},
                 predictions, whole, title=f"Latency models on the demo LUT ({config.model}, {config.backend})")
    return table, summarise_whole_network(whole), fitted


def _prune(fitted: dict[str, Any], config: DemoConfig, net: Any, backend: Any, dense_ms: float | None) -> pd.DataFrame:
    """HALP (LLM) and MDP (MDLM) one-shot at ``config.prune_target`` of the dense conv latency, timed."""
    spec = build_network_spec(net, config.input_size, group_sizes="auto")
    importances = magnitude_scores(net, spec)
    rows = []
    for method, kind in (("halp", "llm"), ("mdp", "mdlm")):
        row: dict[str, Any] = {"method": method, "target": config.prune_target}
        try:
            res = prune_once(net, spec, fitted[kind], importances, method=method,
                             target=config.prune_target, settings=Settings(config.batch))
        except LatlabError as exc:
            rows.append(row | {"status": str(exc)[:120]})
            continue
        shape = (config.batch, 3, config.input_size, config.input_size)
        measured = backend.measure_model(res.slim, shape).median_ms
        rows.append(row | {
            "status": res.result.status, "solve_s": round(res.result.seconds, 3),
            "predicted_conv_ms": round(res.predicted_pruned_ms, 3), "measured_ms": round(measured, 3),
            "speedup": round(dense_ms / measured, 3) if dense_ms else None,
            "params": res.counts["params_pruned"], "removed_blocks": len(res.removed_blocks),
            "max_logit_delta": res.max_logit_delta,
        })
    return pd.DataFrame(rows)


def run_demo(config: DemoConfig) -> DemoResult:
    """Run the demo chain and write its report; returns what it measured."""
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(config), indent=2))
    database = open_database(config.db or out / "latlab.db")
    plan = build_plan(config.model, config.grid, input_size=config.input_size, batch=config.batch)
    protocol = TimingProtocol(warmup=config.warmup, repeats=config.repeats, min_repeats=min(5, config.repeats),
                              num_threads=config.threads, seed=config.seed)
    backend = get_backend(config.backend, protocol)
    sweep = run_sweep(database, plan, backend, name="demo", progress=config.progress, command="latlab demo")
    with database.session() as session:
        lut_rows = family_summaries(session, sweep.sweep_id)

    dense = [ConvConfig(layer.family, layer.cin, layer.cout, config.batch) for layer in plan.layers]
    conv_sum, missing = _conv_sum(database, sweep.sweep_id, dense)
    name, net = resolve_model(config.model)
    model_protocol = TimingProtocol(warmup=config.warmup, repeats=config.model_repeats,
                                    min_repeats=min(10, config.model_repeats), num_threads=config.threads,
                                    seed=config.seed)
    whole = measure_model(database, get_backend(config.backend, model_protocol), net, name=name,
                          input_shape=(config.batch, 3, config.input_size, config.input_size))
    result = DemoResult(config, sweep, lut_rows, conv_sum, whole.median_ms, missing)
    model_backend = get_backend(config.backend, model_protocol)
    with database.session() as session:
        X, y = lut_frame(session, sweep.sweep_id)
    result.models, result.whole_network, fitted = _compare_models(X, y, config, net, model_backend, out)
    result.pruned = _prune(fitted, config, net, model_backend, whole.median_ms)

    (out / "lut_summary.csv").write_text(render(lut_rows, "csv"))
    _plot(lut_rows, database, sweep.sweep_id, out / "lut_latency.png")
    result.report_path = out / "report.md"
    result.report_path.write_text(_report(result, whole.hardware, plan.description))
    database.dispose()
    return result


def _report(r: DemoResult, hardware: str, plan: dict[str, Any]) -> str:
    c = r.config
    share = (f"{100 * r.conv_sum_ms / r.model_ms:.1f}%" if r.conv_sum_ms and r.model_ms else "n/a")
    whole = [{
        "model": c.model, "batch": c.batch, "input": f"{c.input_size}x{c.input_size}",
        "measured_ms (whole net)": r.model_ms, "sum of conv LUT entries (ms)": r.conv_sum_ms,
        "convs explain": share,
    }]
    lines = [
        "# latlab demo report", "",
        f"Hardware: **{hardware}**, backend `{c.backend}`, batch {c.batch}, fp32, NCHW. "
        f"Database: `{c.db or Path(c.out_dir) / 'latlab.db'}` (sweep {r.sweep.sweep_id}).", "",
        "## 1. LUT sweep", "",
        f"{c.model} at {c.input_size}x{c.input_size}: {plan['n_layers']} convs in {plan['n_families']} shape "
        f"families; grid `{c.grid}` gives {r.sweep.planned} configurations. This run measured "
        f"{r.sweep.measured} ({r.sweep.already_done} were already stored; failed: "
        f"{sum(r.sweep.failed.values())}) in {r.sweep.elapsed_s:.1f} s. Protocol: {c.warmup} warm-up calls, "
        f"up to {c.repeats} timed samples per configuration (torch.utils.benchmark), median and IQR stored.", "",
        render(r.lut_rows, "markdown"),
        "![latency per shape family](lut_latency.png)", "",
        "## 2. Whole network vs its convs", "",
        render(whole, "markdown"),
        "The LUT holds convolutions only (as HALP/MDP's does): BN, ReLU, pooling, adds and the classifier "
        "make up the rest of the measured time.", "",
    ]
    if r.models is not None:
        cols = ["model", "n_train", "n_test", "missing", "mape", "within_5", "within_10", "max_ape"]
        lines += [
            "## 3. Latency models", "",
            "Each model is fitted on half of the LUT keys and scored on the other half (split by distinct key); "
            "details, plots and per-point predictions in [latency_models/report.md](latency_models/report.md).",
            "", render(r.models[cols].round(4).to_dict(orient="records"), "markdown"),
        ]
    if r.whole_network is not None:
        cols = [c for c in ("model", "n_pruned", "dense_vs_measured_pct", "mean_vs_measured_pct",
                            "mape_vs_measured") if c in r.whole_network.columns]
        lines += [
            f"Whole {c.model} and {c.pruned_networks} random consistent prunings of it, rebuilt and timed: each "
            "model's sum over the convs against the measured network (signed %, negative = under-estimate, "
            "expected since only convs are modelled).", "",
            render(r.whole_network[cols].round(2).to_dict(orient="records"), "markdown"),
        ]
    if r.pruned is not None:
        lines += [
            "## 4. Prune for this machine", "",
            f"One-shot HALP (linear latency model, input widths frozen) and MDP (multi-dimensional model with "
            f"block removal) at {c.prune_target:.0%} of the dense conv latency, solved exactly, exported to a "
            "physically smaller network (checked against the masked one: max |Δ logits|) and timed on the same "
            "backend. Importance is BN |γ| of the untrained network: this shows latency, not accuracy (fine-tuning "
            "comes with the training stage).", "",
            render(r.pruned.to_dict(orient="records"), "markdown"),
        ]

    if r.missing:
        lines += ["Missing LUT entries:", "", *[f"- {m}" for m in r.missing], ""]
    return "\n".join(lines)
