"""Predicted vs measured latency of pruned networks, repeated: how far off are HALP's LLM and the MDLM?

Each repetition builds a fresh LUT of ResNet-18's conv shapes on this machine (the pruner's ``lattice``
grid; by default on the CPU with one thread at batch 1, with ``--backend cuda`` on the GPU), fits HALP's
linear model (LLM) and MDP's MDLM on it, prunes ResNet-18 one-shot with HALP (OCP+LLM) and MDP (MGP+MDLM
with block removal) at each target, exports the slim networks, times the non-conv ops of the dense network
one by one (:mod:`profiler.other_ops`), and times the dense and slim networks in interleaved rounds.
Weights do not change latency, so nothing is trained.

Per pruned network and latency model it reports the error of the predicted speed-up (dense / pruned)
from the convs alone and from convs + other ops, and of the whole-network latency (convs + other ops).
Repeating the whole chain shows how much of the error is this host's timing noise. Writes JSON and
Markdown to ``--out``.

    python -m benchmarks.prediction_error --repeats 4 --targets 0.8,0.6
    python -m benchmarks.prediction_error --backend cuda --batch 64 --dtype fp16 --layout nhwc --repeats 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks._report import machine_line, result_header, write_result
from db import open_database
from db.errors import LatlabError
from latency_models.evaluate import candidate_models, prediction_errors
from latency_models.features import lut_frame
from latlab.tables import render
from profiler.backends import get_backend
from profiler.measure import measure_models_interleaved, paired_speedup
from profiler.other_ops import measure_other_ops
from profiler.plan import build_plan, resolve_model, trace_network
from profiler.protocol import TimingProtocol
from profiler.runner import run_sweep
from pruning.cost import Settings, spec_latency
from pruning.graph import build_network_spec
from pruning.oneshot import magnitude_layer_scores, magnitude_scores, prune_once

PREDICTORS = {"llm": ("llm", True), "mdlm": ("mdlm", False)}  # column -> (model kind, freeze input widths)


def one_repetition(rep: int, args: argparse.Namespace, tmp: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """LUT → models → HALP / MDP one-shot → export → other ops → interleaved timing; one row per network, and
    one per (method, target) the method cannot reach."""
    size, batch, dtype, layout = args.input_size, args.batch, args.dtype, args.layout
    threads = args.threads if args.backend == "cpu" else None
    cache = {"l2_flush": args.l2_flush, "llc_flush": args.llc_flush}
    lut_protocol = TimingProtocol(warmup=3, repeats=15, min_repeats=5, max_rel_iqr=0.1, num_threads=threads, **cache)
    database = open_database(tmp / f"lut{rep}.db")
    plan = build_plan(args.model, "lattice", input_size=size, batch=batch, dtype=dtype, layout=layout)
    sweep = run_sweep(database, plan, get_backend(args.backend, lut_protocol), name=f"rep{rep}", progress=False)
    with database.session() as session:
        X, y = lut_frame(session, sweep.sweep_id)
    database.dispose()
    models = {k: m.fit(X, y) for k, m in candidate_models(("llm", "mdlm"), seed=rep).items()}
    _, net = resolve_model(args.model)
    spec = build_network_spec(net, size, group_sizes="auto")
    settings = Settings(batch, dtype, layout)
    importances, layer_importances = magnitude_scores(net, spec), magnitude_layer_scores(net, spec)
    nets: dict[str, Any] = {"dense": net}
    shapes: dict[str, tuple[dict[str, int], list[str]]] = {"dense": ({}, [])}
    unreached: list[dict[str, Any]] = []
    for target in args.targets:
        for method, kind in (("halp", "llm"), ("mdp", "mdlm")):
            name = f"{method}{round(100 * target)}"
            try:
                res = prune_once(net, spec, models[kind], importances, method=method, target=target,
                                 settings=settings, layer_importances=layer_importances)
            except LatlabError as exc:
                unreached.append({"rep": rep, "network": name, "why": str(exc)})
                continue
            nets[name] = res.slim
            shapes[name] = ({g: w for g, w in res.widths.items() if w}, list(res.removed_blocks))
    timing = TimingProtocol(warmup=1, repeats=1, min_repeats=1, num_threads=threads)
    other = measure_other_ops(get_backend(args.backend, replace(lut_protocol, max_rel_iqr=0.0)), net,
                              trace_network(net, size), batch=batch, dtype=dtype, layout=layout)
    timed = measure_models_interleaved(None, get_backend(args.backend, timing), nets, name=args.model,
                                       rounds=args.rounds, input_shape=(batch, 3, size, size), dtype=dtype,
                                       layout=layout)
    pred: dict[str, dict[str, float]] = {}
    for name, (widths, removed) in shapes.items():
        pred[name] = {col: spec_latency(models[kind], spec, settings, widths, removed, freeze_cin=frozen)
                      for col, (kind, frozen) in PREDICTORS.items()}
        pred[name]["other_ms"] = other.latency(spec.conv_widths(widths, removed))
    pruned = pd.DataFrame([{"rep": rep, "network": name, "removed_blocks": len(shapes[name][1]),
                            "measured_ms": timed[name].median_ms,
                            "speedup": paired_speedup(timed["dense"], timed[name]), **pred[name]}
                           for name in nets if name != "dense"])
    errors = prediction_errors(pruned, pred["dense"], tuple(PREDICTORS))
    return errors.drop(columns=[*PREDICTORS, "other_ms"]).to_dict(orient="records"), unreached


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=4, help="whole chain repetitions (fresh LUT each)")
    parser.add_argument("--targets", default="0.8,0.6", help="kept share of the dense conv latency")
    parser.add_argument("--rounds", type=int, default=24, help="interleaved timing rounds (one pass each)")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--backend", default="cpu", help="cpu | cuda | fake: where the LUT and networks are timed")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", default="fp32", help="fp32 | fp16 | bf16")
    parser.add_argument("--layout", default="nchw", help="nchw | nhwc")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for --backend cpu")
    parser.add_argument("--l2-flush", action="store_true",
                        help="time the LUT's convs and the other ops cold (L2 flushed before each call)")
    parser.add_argument("--llc-flush", action="store_true",
                        help="time them with the last-level cache flushed and the input read back before each call")
    parser.add_argument("--out", type=Path, default=None,
                        help="output path without extension (default benchmarks/results/prediction_error_BACKEND)")
    args = parser.parse_args(argv)
    args.targets = [float(t) for t in args.targets.split(",")]
    args.out = args.out or Path(f"benchmarks/results/prediction_error_{args.backend}")

    start = time.time()
    rows: list[dict[str, Any]] = []
    unreached: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            got, missed = one_repetition(rep, args, Path(tmp))
            rows, unreached = rows + got, unreached + missed
            print(f"repetition {rep + 1}/{args.repeats} done ({time.time() - start:.0f} s)", file=sys.stderr)
    if not rows:
        raise SystemExit(f"no method reached any target: {unreached}")
    elapsed = time.time() - start
    frame = pd.DataFrame(rows)
    error_cols = [c for c in frame.columns if c.endswith("_pct")]
    per_rep = frame.groupby("rep")[error_cols].agg(lambda s: s.abs().mean()).reset_index()
    summary = [{"error": col, "mean_abs_pct": round(float(frame[col].abs().mean()), 2),
                "median_abs_pct": round(float(frame[col].abs().median()), 2),
                "best_rep_pct": round(float(per_rep[col].min()), 2),
                "worst_rep_pct": round(float(per_rep[col].max()), 2)}
               for col in error_cols]
    result = {
        **result_header("prediction_error", argv, args.backend),
        "model": args.model, "batch": args.batch, "dtype": args.dtype, "layout": args.layout,
        "targets": args.targets, "repeats": args.repeats, "rounds": args.rounds,
        "l2_flush": args.l2_flush, "llc_flush": args.llc_flush,
        "elapsed_s": round(elapsed, 1), "summary": summary, "rows": frame.round(4).to_dict(orient="records"),
        "unreached": unreached,
    }
    md = [
        "# Predicted vs measured latency of pruned networks (repeated)", "",
        f"Command: `{result['command']}`  ",
        f"{machine_line(result['machine'])}; backend `{args.backend}`"
        f"{f', {args.threads} thread(s)' if args.backend == 'cpu' else ''}, batch {args.batch}, {args.dtype}, "
        f"{args.layout}, {args.input_size}px  ",
        f"{args.repeats} repetitions of: `lattice` LUT of {args.model} (fresh sweep"
        f"{', L2 flushed before each timed call' if args.l2_flush else ''}"
        f"{', last-level cache flushed and input read back before each timed call' if args.llc_flush else ''}"
        ") → LLM and MDLM fitted → "
        f"HALP and MDP one-shot at {', '.join(f'{t:.0%}' for t in args.targets)} of the dense conv latency → "
        f"exported → other ops timed one by one → dense and slim networks timed in {args.rounds} interleaved "
        f"rounds; {elapsed:.0f} s in all. Errors are signed % (predicted / measured − 1); `llm` is HALP's "
        "linear model with input widths frozen (as HALP prices), `mdlm` MDP's model; `+other` adds the "
        "non-conv ops priced from their dense timings.", "",
        "Mean |error| over all pruned networks, and over the networks of the best / worst repetition:", "",
        render(summary, "markdown"),
        "Per network:", "",
        render(frame.round(2).to_dict(orient="records"), "markdown"),
        f"Median over networks of |MDLM speed-up error| (convs alone): "
        f"{statistics.median(frame['mdlm_speedup_err_pct'].abs()):.1f}%; HALP's LLM: "
        f"{statistics.median(frame['llm_speedup_err_pct'].abs()):.1f}%.",
    ]
    if unreached:
        md += ["", "Targets a method cannot reach:", "", render(unreached, "markdown")]
    write_result(args.out, result, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
