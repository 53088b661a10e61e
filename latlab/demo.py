"""``latlab demo``: the main job end to end on this machine's CPU with the embedded SQLite database.

1. profile the conv shape families of a real torchvision network (ResNet-18 by default) with the
   CPU backend over the pruner's channel lattice, into ``<out>/latlab.db``;
2. summarise the LUT per shape family (table + PNG);
3. time the whole dense network and compare it with the sum of its convs read from the LUT and with its
   other ops (BN, ReLU, pooling, adds, classifier) timed one by one;
4. fit every latency model on half of the LUT keys and score the rest, and predict random pruned
   versions of the network against their measured latency (``<out>/latency_models/``);
5. prune the network one-shot with HALP and MDP for this machine, export and time the slim networks;
6. train the network on a small local dataset (scikit-learn's bundled digits written as an ImageFolder,
   32×32), then prune it *while fine-tuning* with HALP and MDP at two latency targets for this machine
   (latency predicted at the deployment resolution), export, and store each slim network with the
   latencies the LLM and MDLM predicted for it (convs, and convs + other ops);
7. write ``<out>/report.md`` (with PNGs), ``<out>/lut_summary.csv`` and ``<out>/finetune.csv``.

Networks compared with the dense one (stages 4–6) are timed with it in interleaved rounds.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from db.engine import Database, hide_passwords, open_database
from db.errors import LatlabError, LUTMissError
from db.files import claim_output_folder
from db.keys import ConvConfig
from db.lut import family_summaries, lookup
from latency_models.evaluate import (
    candidate_models,
    fit_predict,
    prediction_errors,
    summarise_whole_network,
    whole_network_eval,
    write_report,
)
from latency_models.features import lut_frame
from latency_models.splits import make_split
from latency_models.store import save_model
from latlab.tables import render
from profiler.backends import get_backend, with_protocol
from profiler.measure import measure_model, measure_models_interleaved, paired_speedup
from profiler.other_ops import OtherOps, measure_other_ops
from profiler.plan import build_plan, resolve_model, trace_network
from profiler.protocol import TimingProtocol, cache_flags
from profiler.runner import SweepReport, provenance, run_sweep
from pruning.cost import DEFAULT_KIND, Settings, spec_latency
from pruning.graph import build_network_spec
from pruning.oneshot import magnitude_layer_scores, magnitude_scores, prune_once
from pruning.rebuild import measure_pruned

log = logging.getLogger(__name__)

DEMO_MODELS = ("lut", "llm", "mdlm", "bilinear", "rf", "gbdt")
_PREDICTORS = ("llm_frozen", "mdlm")  # conv latency predictions of the fine-tuned networks (see _predicted)


@dataclass
class DemoConfig:
    """Settings of the demo run (saved next to the report as ``config.json``)."""

    out_dir: str = "latlab-demo"
    db: str | None = None  # default: <out_dir>/latlab.db
    model: str = "resnet18"
    input_size: int = 224
    grid: str = "lattice"  # the pruner's channel lattice (auto group sizes): what HALP and MDP will ask for
    batch: int = 1
    backend: str = "cpu"
    threads: int | None = 1  # one thread: multi-threaded tiny convs are bimodal on small shared VMs
    warmup: int = 3
    repeats: int = 15
    max_rel_iqr: float = 0.1  # a configuration stops sampling (after 5) once IQR/median is below this
    llc_flush: bool = False  # CPU: LUT convs and other ops timed with the cache flushed, input re-read
    model_repeats: int = 30
    model_rounds: int = 24  # networks compared with the dense one are timed in this many interleaved rounds
    pruned_networks: int = 3
    prune_target: float = 0.6  # kept share of the dense conv latency for the one-shot HALP / MDP step
    finetune: bool = True  # stage 6: train on the digits, prune while fine-tuning, export, time
    finetune_targets: tuple[float, ...] = (0.8, 0.6)
    dense_epochs: int = 3
    finetune_epochs: int = 1
    train_batch: int = 32
    max_iters_per_epoch: int | None = None  # cap (tests)
    device: str = "cpu"  # where the networks are trained (cuda: AMP on)
    seed: int = 0
    progress: bool = True
    command: str = "latlab demo"  # the command line that ran it (recorded with the sweep)


@dataclass
class DemoResult:
    config: DemoConfig
    sweep: SweepReport
    lut_rows: list[dict[str, Any]]
    conv_sum_ms: float | None
    model_ms: float | None
    missing: list[str] = field(default_factory=list)
    other_ops: OtherOps | None = None  # the dense network's non-conv ops, each timed alone
    report_path: Path | None = None
    models: pd.DataFrame | None = None  # held-out accuracy per latency model
    whole_network: pd.DataFrame | None = None  # per model: error vs measured pruned networks
    pruned: pd.DataFrame | None = None  # one-shot HALP and MDP, exported and timed
    finetuned: pd.DataFrame | None = None  # dense + HALP/MDP pruned while fine-tuning: accuracy, latency
    schedules: dict[str, dict[str, int]] = field(default_factory=dict)  # the fine-tuning runs' pruning schedules
    stage_s: dict[str, float] = field(default_factory=dict)  # wall-clock seconds per stage


@contextmanager
def _timed(stage_s: dict[str, float], stage: str) -> Iterator[None]:
    """Add the wall-clock time of the block to ``stage_s[stage]``."""
    start = time.monotonic()
    try:
        yield
    finally:
        stage_s[stage] = stage_s.get(stage, 0.0) + time.monotonic() - start


def _conv_sum(database: Database, sweep_id: int, configs: list[ConvConfig]) -> tuple[float | None, list[str]]:
    total, missing = 0.0, []
    with database.session() as session:
        for config in configs:
            try:
                total += lookup(session, sweep_id, config)
            except LUTMissError as exc:
                missing.append(str(exc))
    return (None if missing else total), missing


def _plot_lut(database: Database, sweep_id: int, path: Path) -> None:
    """Measured latency against MACs per call, one colour per shape family of the sweep (log axes)."""
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


def _round_backend(config: DemoConfig, backend: Any) -> Any:
    """``backend`` with a protocol for one interleaved round: model_repeats / model_rounds samples (at least 1)."""
    per_round = max(1, config.model_repeats // config.model_rounds)
    return with_protocol(backend, repeats=per_round, min_repeats=per_round)


def _compare_models(
    X: pd.DataFrame, y: np.ndarray, config: DemoConfig, net: Any, backend: Any, out: Path, other: OtherOps,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Fit every latency model on half the LUT keys, score the rest; predict pruned networks vs measured.

    Returns the held-out table, the whole-network summary and the models fitted on every LUT key.
    """
    models = candidate_models(DEMO_MODELS, seed=config.seed)
    table, predictions = fit_predict(models, X, y, make_split(X, "random", 0.5, config.seed))
    fitted = {kind: model.fit(X, y) for kind, model in models.items()}
    trace = trace_network(config.model, config.input_size)
    measure = measure_pruned(_round_backend(config, backend), net, trace, batch=config.batch,
                             rounds=config.model_rounds)
    whole = whole_network_eval(fitted, trace, config.pruned_networks, config.seed, batch=config.batch,
                               measure=measure, other=other.latency, multiple=16)
    write_report(out / "latency_models", {"Held-out accuracy (half of the LUT keys for training)": table},
                 predictions, whole, title=f"Latency models on the demo LUT ({config.model}, {config.backend})")
    return table, summarise_whole_network(whole), fitted


def _prune(fitted: dict[str, Any], config: DemoConfig, net: Any, backend: Any) -> pd.DataFrame:
    """HALP (LLM) and MDP (MDLM) one-shot at ``config.prune_target`` of the dense conv latency, timed in
    interleaved rounds with the dense network."""
    spec = build_network_spec(net, config.input_size, group_sizes="auto")
    importances, layer_importances = magnitude_scores(net, spec), magnitude_layer_scores(net, spec)
    rows: dict[str, dict[str, Any]] = {}
    nets = {"dense": net}
    for method, kind in (("halp", "llm"), ("mdp", "mdlm")):
        row: dict[str, Any] = {"method": method, "target": config.prune_target}
        try:
            res = prune_once(net, spec, fitted[kind], importances, method=method,
                             target=config.prune_target, settings=Settings(config.batch),
                             layer_importances=layer_importances)
        except LatlabError as exc:
            log.warning(f"one-shot {method} at {config.prune_target:.0%}: {exc}")
            rows[method] = row | {"status": str(exc)}
            continue
        nets[method] = res.slim
        rows[method] = row | {
            "status": res.result.status, "solve_s": round(res.result.seconds, 3),
            "predicted_conv_ms": round(res.predicted_pruned_ms, 3), "params": res.counts["params_pruned"],
            "removed_blocks": len(res.removed_blocks), "max_logit_delta": res.max_logit_delta,
        }
    timed = measure_models_interleaved(None, _round_backend(config, backend), nets, name=config.model,
                                       rounds=config.model_rounds,
                                       input_shape=(config.batch, 3, config.input_size, config.input_size))
    for method, row in rows.items():
        if method in timed:
            speedup = paired_speedup(timed["dense"], timed[method])
            row.update(measured_ms=round(timed[method].median_ms or float("nan"), 3),
                       speedup=round(speedup, 3) if speedup else None)
    return pd.DataFrame(rows.values())


def _train_config(config: DemoConfig, data: Path, out: Path, **extra: Any) -> Any:
    from training.config import load_config

    return load_config(None, {
        "data.path": str(data), "data.input_size": 32, "data.batch_size": config.train_batch, "data.workers": 0,
        "model.name": config.model, "model.num_classes": 10, "optim.lr": 1.024, "optim.warmup_epochs": 1,
        "optim.schedule": "cosine", "run.out": str(out), "run.seed": config.seed, "run.device": config.device,
        "run.amp": config.device == "cuda", "run.max_iters_per_epoch": config.max_iters_per_epoch,
        "run.log_every": 10, **extra,
    })


def _predicted(fitted: dict[str, Any], spec: Any, other: OtherOps, widths: dict[str, int], removed: list[str],
               config: DemoConfig) -> dict[str, float]:
    """Conv latency (ms) HALP's LLM (input widths frozen) and the MDLM predict for a pruned network, and the
    time of its other ops (BN, ReLU, pooling, adds, classifier) priced from their dense timings."""
    s = Settings(config.batch)
    return {"llm_frozen": spec_latency(fitted["llm"], spec, s, widths, removed, freeze_cin=True),
            "mdlm": spec_latency(fitted["mdlm"], spec, s, widths, removed),
            "other_ms": other.latency(spec.conv_widths({g: w for g, w in widths.items() if w}, removed))}


def _store_models(database: Database, sweep_id: int, fitted: dict[str, Any], held_out: pd.DataFrame) -> dict[str, str]:
    """HALP's LLM and the MDLM fitted on the whole LUT, stored by name with their held-out scores (as `latlab
    fit` stores them): the fine-tuning pruners use exactly these, and `latlab models list` shows them."""
    stored = {}
    for kind in ("llm", "mdlm"):
        row = held_out[held_out["model"] == kind]
        metrics = {k: v for k, v in row.iloc[0].to_dict().items() if k not in ("model", "error")} if len(row) else {}
        stored[kind] = f"demo-sweep{sweep_id}-{kind}"
        save_model(database, stored[kind], fitted[kind], sweep_id=sweep_id, metrics=metrics, replace=True)
    return stored


def _finetune(config: DemoConfig, out: Path, database: Database, fitted: dict[str, Any], stored: dict[str, str],
              backend: Any, ops_backend: Any) -> tuple[pd.DataFrame, dict[str, dict[str, int]]]:
    """Dense training on the digits, then HALP / MDP pruning while fine-tuning at each target; the exported
    networks and the dense one are then timed in interleaved rounds on ``backend`` and stored (the dense
    network's other ops are timed on ``ops_backend``). Returns the table and the pruning schedules used."""
    import torch

    from profiler.measure import load_model
    from training.data import make_digits_imagefolder
    from training.trainer import train

    data = make_digits_imagefolder(out / "digits", image_size=32, seed=config.seed)
    runs = out / "runs"
    dense = train(_train_config(config, data, runs / "dense", **{"optim.epochs": config.dense_epochs}),
                  progress=config.progress)
    weights = dense.paths["final_state"]
    _, dense_net = load_model(config.model, weights=weights, num_classes=10)
    spec = build_network_spec(dense_net, config.input_size, group_sizes="auto")
    other = measure_other_ops(ops_backend, dense_net, trace_network(dense_net, config.input_size),
                              batch=config.batch)
    dense_pred = _predicted(fitted, spec, other, spec.dense_widths(), [], config)
    rows: dict[str, dict[str, Any]] = {"digits-dense": {
        "method": "dense", "target": 1.0, "top1": dense.metrics["top1"], **dense_pred, "removed_blocks": 0}}
    nets: dict[str, Any] = {"digits-dense": dense_net}
    failed: list[dict[str, Any]] = []
    schedules = finetune_schedules(config.finetune_epochs * dense.global_step // max(1, dense.epochs_done))
    for target in config.finetune_targets:
        for method in ("halp", "mdp"):
            variant = f"digits-{method}{round(100 * target)}"
            cfg = _train_config(config, data, runs / variant, **{
                "optim.epochs": config.finetune_epochs, "optim.warmup_epochs": 0, "model.weights": str(weights),
                "prune.method": method,
                "prune.ratio": round(1.0 - target, 6), "prune.latency_model": stored[DEFAULT_KIND[method]],
                "prune.db": database.url.render_as_string(hide_password=False),
                "prune.input_size": config.input_size, "prune.group_sizes": "auto", **schedules[method]})
            try:
                res = train(cfg, progress=config.progress)
            except LatlabError as exc:
                log.warning(f"{variant}: {exc}")
                failed.append({"method": method, "target": target, "status": str(exc)})
                continue
            widths = {g: int(m.sum()) for g, m in res.masks.items()}
            rows[variant] = {"method": method, "target": target, "top1": res.metrics["top1"],
                             **_predicted(fitted, spec, other, widths, res.removed_blocks, config),
                             "removed_blocks": len(res.removed_blocks)}
            nets[variant] = torch.export.load(str(res.paths["slim"])).module()
    shape = (config.batch, 3, config.input_size, config.input_size)
    timed = measure_models_interleaved(
        database, _round_backend(config, backend), nets, name=config.model, rounds=config.model_rounds,
        input_shape=shape,
        extra_details={v: {"predicted_conv_ms": {p: row[p] for p in _PREDICTORS},
                           "predicted_other_ops_ms": row["other_ms"], "top1": row["top1"]} for v, row in rows.items()})
    for variant, row in rows.items():
        row.update(measured_ms=timed[variant].median_ms,
                   speedup=paired_speedup(timed["digits-dense"], timed[variant]))
    frame = pd.DataFrame([*rows.values(), *failed])
    for p in _PREDICTORS:
        frame[f"{p}+other_ms"] = frame[p] + frame["other_ms"]
    return prediction_errors(frame, dense_pred, _PREDICTORS), schedules


def finetune_schedules(iterations: int) -> dict[str, dict[str, int]]:
    """Pruning schedules of the fine-tuning runs: HALP 6 steps 3 iterations apart, MDP one step at iteration 10,
    compressed to fit a run of fewer ``iterations`` (``--max-iters``)."""
    halp_steps = max(1, min(6, iterations))
    return {"halp": {"prune.steps": halp_steps, "prune.every": max(1, min(3, iterations // halp_steps))},
            "mdp": {"prune.steps": 1, "prune.every": max(1, min(10, iterations))}}


def _plot_finetune(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = frame.dropna(subset=["measured_ms"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for method, part in ok.groupby("method", sort=False):
        left.scatter(part["measured_ms"], part["top1"], s=40, label=method)
        for _, r in part.iterrows():
            left.annotate(f"{r['target']:.0%}", (r["measured_ms"], r["top1"]), fontsize=8,
                          xytext=(4, 3), textcoords="offset points")
    left.set_xlabel("measured latency of the exported network (ms)")
    left.set_ylabel("top-1 on the digits validation set (%)")
    left.set_title("Accuracy vs measured latency")
    left.grid(alpha=0.3)
    left.legend()
    pruned = ok[ok["method"] != "dense"]
    dense = ok[ok["method"] == "dense"].iloc[0]
    for p, label in (("llm_frozen", "HALP's LLM (input widths frozen)"), ("mdlm", "MDLM")):
        right.scatter(pruned["speedup"], dense[p] / pruned[p], s=40, marker="o", label=f"{label}: convs")
        whole = pruned[p] + pruned["other_ms"]
        right.scatter(pruned["speedup"], (dense[p] + dense["other_ms"]) / whole, s=50, marker="x",
                      label=f"{label}: convs + other ops")
    lim = [0.9, max(2.0, float(np.nanmax(pruned["speedup"])) * 1.2 if len(pruned) else 2.0)]
    right.plot(lim, lim, color="grey", lw=1, ls="--")
    right.set_xlabel("measured speed-up over dense")
    right.set_ylabel("predicted speed-up")
    right.set_title("Predicted vs measured speed-up")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_demo(config: DemoConfig) -> DemoResult:
    """Run the demo chain and write its report; returns what it measured."""
    out = Path(config.out_dir)
    plan = build_plan(config.model, config.grid, input_size=config.input_size, batch=config.batch)
    name, net = resolve_model(config.model)  # a bad model or grid fails before anything is written
    claim_output_folder(out, "demo", writes=None)  # not over files of the user's or of another command
    saved = {**asdict(config), "provenance": provenance()}
    (out / "config.json").write_text(hide_passwords(json.dumps(saved, indent=2)))
    stage_s: dict[str, float] = {}
    database = open_database(config.db or out / "latlab.db")
    with _timed(stage_s, "1. LUT sweep"):
        protocol = TimingProtocol(warmup=config.warmup, repeats=config.repeats, min_repeats=min(5, config.repeats),
                                  max_rel_iqr=config.max_rel_iqr, num_threads=config.threads, seed=config.seed,
                                  llc_flush=config.llc_flush)
        backend = get_backend(config.backend, protocol)
        sweep = run_sweep(database, plan, backend, name="demo", progress=config.progress, command=config.command)
        with database.session() as session:
            lut_rows = family_summaries(session, sweep.sweep_id)

    with _timed(stage_s, "2. whole network and its other ops"):
        dense = [ConvConfig(layer.family, layer.cin, layer.cout, config.batch) for layer in plan.layers]
        conv_sum, missing = _conv_sum(database, sweep.sweep_id, dense)
        model_protocol = TimingProtocol(warmup=config.warmup, repeats=config.model_repeats,
                                        min_repeats=min(10, config.model_repeats), num_threads=config.threads,
                                        seed=config.seed)
        model_backend = get_backend(config.backend, model_protocol)
        # the other ops are priced like the convs: timed alone under the LUT's cache protocol
        ops_backend = with_protocol(model_backend, **cache_flags(protocol))
        whole = measure_model(database, model_backend, net, name=name,
                              input_shape=(config.batch, 3, config.input_size, config.input_size))
        result = DemoResult(config, sweep, lut_rows, conv_sum, whole.median_ms, missing, stage_s=stage_s)
        result.other_ops = measure_other_ops(ops_backend, net, trace_network(net, config.input_size),
                                             batch=config.batch)
    with _timed(stage_s, "3. latency models"):
        with database.session() as session:
            X, y = lut_frame(session, sweep.sweep_id)
        result.models, result.whole_network, fitted = _compare_models(X, y, config, net, model_backend, out,
                                                                      result.other_ops)
        stored = _store_models(database, sweep.sweep_id, fitted, result.models)
    with _timed(stage_s, "4. one-shot pruning"):
        result.pruned = _prune(fitted, config, net, model_backend)
        result.pruned.to_csv(out / "oneshot.csv", index=False)
    if config.finetune:
        with _timed(stage_s, "5. train, prune while fine-tuning, export, time"):
            result.finetuned, result.schedules = _finetune(config, out, database, fitted, stored, model_backend,
                                                           ops_backend)
            result.finetuned.to_csv(out / "finetune.csv", index=False)
            _plot_finetune(result.finetuned, out / "finetune.png")

    with _timed(stage_s, "report and plots"):
        (out / "lut_summary.csv").write_text(render(lut_rows, "csv"))
        _plot_lut(database, sweep.sweep_id, out / "lut_latency.png")
        result.report_path = out / "report.md"
    result.report_path.write_text(_report(result, whole.hardware, plan.description))
    database.dispose()
    return result


def _sample_text(c: DemoConfig) -> str:
    """What one timed sample of the demo's sweep is, on its backend."""
    if c.backend == "fake":
        return ("the fake backend computes each sample from its analytical latency surface with seeded noise "
                "(nothing is timed).")
    if c.llc_flush:
        return ("cold cache: each sample is one call, made after the last-level cache was flushed and the input "
                "read back (`--llc-flush`; the other ops in section 2 are timed the same way).")
    if c.backend == "cuda":
        return "warm caches: each sample is one call between two CUDA events, cuDNN autotuned during warm-up."
    return "warm caches: each sample is a torch.utils.benchmark block of calls of at least 1 ms."


def _report(r: DemoResult, hardware: str, plan: dict[str, Any]) -> str:
    c = r.config
    def share(part: float | None) -> str:
        return f"{100 * part / r.model_ms:.1f}%" if part and r.model_ms else "n/a"

    other = r.other_ops.dense_ms if r.other_ops is not None else None
    both = r.conv_sum_ms + other if r.conv_sum_ms is not None and other is not None else None
    whole = [{
        "model": c.model, "batch": c.batch, "input": f"{c.input_size}x{c.input_size}",
        "measured_ms (whole net)": r.model_ms, "sum of conv LUT entries (ms)": r.conv_sum_ms,
        "convs explain": share(r.conv_sum_ms), "other ops, each timed alone (ms)": other,
        "convs + other ops explain": share(both),
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
        f"up to {c.repeats} timed samples per configuration (at least {min(5, c.repeats)}, then until "
        f"IQR/median < {c.max_rel_iqr:g}), median and IQR stored; {_sample_text(c)}", "",
        render(r.lut_rows, "markdown"),
        "![latency per shape family](lut_latency.png)", "",
        "## 2. Whole network vs its convs", "",
        render(whole, "markdown"),
        "The LUT holds convolutions only (as HALP/MDP's does): BN, ReLU, pooling, adds and the classifier "
        "make up the rest of the measured time. latlab times each of those ops alone on the same backend "
        "(`profiler.other_ops`); a pruned network's other ops are priced from these times, scaled by the "
        "share of channels each op still carries:", "",
        render(r.other_ops.table(), "markdown") if r.other_ops is not None and r.other_ops.table()
        else "No other ops were timed.\n",
    ]
    if r.models is not None:
        cols = ["model", "n_train", "n_test", "missing", "mape", "within_5", "within_10", "max_ape"]
        lines += [
            "## 3. Latency models", "",
            "Each model is fitted on half of the LUT keys and scored on the other half (split by distinct key); "
            "details, plots and per-point predictions in [latency_models/report.md](latency_models/report.md). "
            "`mape` and `max_ape` are in %, `within_5` / `within_10` shares of the held-out points.",
            "", render(r.models[cols].round(4).to_dict(orient="records"), "markdown"),
        ]
    if r.whole_network is not None:
        cols = [c for c in ("model", "n_pruned", "dense_vs_measured_pct", "mean_vs_measured_pct",
                            "mape_vs_measured", "dense_vs_measured_whole_pct", "mape_vs_measured_whole")
                if c in r.whole_network.columns]
        lines += [
            f"Whole {c.model} and {c.pruned_networks} random consistent prunings of it, rebuilt and timed: each "
            "model's sum over the convs against the measured network (signed %, negative = under-estimate, "
            "expected since only convs are modelled), and (`*_whole*`) the sum over the convs plus the other "
            "ops priced as in section 2.", "",
            render(r.whole_network[cols].round(2).to_dict(orient="records"), "markdown"),
        ]
    if r.pruned is not None:
        lines += [
            "## 4. Prune for this machine", "",
            f"One-shot HALP (linear latency model, input widths frozen) and MDP (multi-dimensional model with "
            f"block removal) at {c.prune_target:.0%} of the dense conv latency, solved exactly, exported to a "
            "physically smaller network (checked against the masked one: max |Δ logits|) and timed on the same "
            "backend, in interleaved rounds with the dense network. Importance is BN |γ| of the untrained "
            "network: this shows latency, not accuracy (fine-tuning "
            "comes with the training stage).", "",
            render(r.pruned[[k for k in ("method", "target", "status", "solve_s", "predicted_conv_ms", "measured_ms",
                                         "speedup", "params", "removed_blocks", "max_logit_delta")
                             if k in r.pruned.columns]].to_dict(orient="records"), "markdown"),
            "CSV: [oneshot.csv](oneshot.csv)", "",
        ]

    if r.finetuned is not None:
        lines += _finetune_section(r.finetuned, c, r.schedules)
    if r.missing:
        lines += ["Missing LUT entries:", "", *[f"- {m}" for m in r.missing], ""]
    if r.stage_s:
        times = [{"stage": k, "seconds": round(v, 1)} for k, v in r.stage_s.items()]
        times.append({"stage": "total", "seconds": round(sum(r.stage_s.values()), 1)})
        lines += ["## Time per stage", "", render(times, "markdown")]
    return "\n".join(lines)


def _finetune_section(ft: pd.DataFrame, c: DemoConfig, schedules: dict[str, dict[str, int]]) -> list[str]:
    """Report section 5: accuracy and measured latency, then predicted vs measured latency and speed-up."""
    def cols(names: tuple[str, ...]) -> list[dict[str, Any]]:
        return ft[[n for n in names if n in ft.columns]].round(3).to_dict(orient="records")

    pruned = ft[ft["method"] != "dense"]
    halp, mdp = schedules["halp"], schedules["mdp"]

    def mean_abs(col: str) -> str:
        return f"{pruned[col].abs().mean():.1f}%" if col in pruned else "n/a"

    return [
        "## 5. Prune while fine-tuning, then measure", "",
        f"{c.model} trained from scratch for {c.dense_epochs} epoch{'s' * (c.dense_epochs != 1)}"
        f"{f' of at most {c.max_iters_per_epoch} iterations' if c.max_iters_per_epoch else ''} on scikit-learn's "
        "bundled digits (written as an ImageFolder, 32×32, 10 classes; no download), then pruned *while "
        f"fine-tuning* for {c.finetune_epochs} epoch{'s' * (c.finetune_epochs != 1)} with HALP (LLM, "
        f"{halp['prune.steps']} steps, {halp['prune.every']} iterations apart) and MDP (MDLM with block removal, one "
        f"shot at iteration {mdp['prune.every']}) at "
        f"{', '.join(f'{t:.0%}' for t in c.finetune_targets)} of the dense conv latency predicted at "
        f"{c.input_size}×{c.input_size}, batch {c.batch}; after its last pruning step each run trains the "
        "exported (slim) network. The exported networks and the dense one are timed "
        f"together in {c.model_rounds} interleaved rounds (A B C …, then … C B A, so that the host's drift hits "
        "them alike) and stored in the database (`model_measurements`, variant `digits-…`, with the predicted "
        "latencies in `details`); `speedup` is the median over rounds of dense / pruned.", "",
        render(cols(("method", "target", "top1", "measured_ms", "speedup", "removed_blocks", "status")), "markdown"),
        "Predicted vs measured. `llm_frozen` / `mdlm`: the conv latency (ms) HALP's LLM (input widths frozen) "
        "and the MDLM predict; `other_ms`: the network's other ops priced from their dense timings "
        "(section 2). `*_speedup_err_pct` compares the speed-up a model predicts (dense / pruned) from the convs "
        "alone with the measured one; `*+other_*` uses the whole-network prediction (convs + other ops) for "
        "the latency itself and for the speed-up.", "",
        render(cols(("method", "target", "measured_ms", "llm_frozen", "mdlm", "other_ms",
                     "llm_frozen_speedup_err_pct", "mdlm_speedup_err_pct", "llm_frozen+other_err_pct",
                     "mdlm+other_err_pct", "llm_frozen+other_speedup_err_pct", "mdlm+other_speedup_err_pct")),
               "markdown"),
        "Mean |error| over the pruned networks:", "",
        render([{"prediction": "speed-up from the convs alone",
                 "HALP's LLM": mean_abs("llm_frozen_speedup_err_pct"), "MDLM": mean_abs("mdlm_speedup_err_pct")},
                {"prediction": "speed-up, convs + other ops",
                 "HALP's LLM": mean_abs("llm_frozen+other_speedup_err_pct"),
                 "MDLM": mean_abs("mdlm+other_speedup_err_pct")},
                {"prediction": "whole-network latency, convs + other ops",
                 "HALP's LLM": mean_abs("llm_frozen+other_err_pct"), "MDLM": mean_abs("mdlm+other_err_pct")}],
               "markdown"),
        "![accuracy vs latency, predicted vs measured](finetune.png)", "",
    ]
