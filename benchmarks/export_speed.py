"""Is the pruned network really smaller and faster on the hardware it was pruned for, as predicted?

Prunes ResNet-50 one-shot with HALP, MGP, OCP+MDLM and MDP at several latency targets against latency
models fitted on a ResNet-50 reference LUT of the same hardware (default: this CPU's, committed in
``benchmarks/data/cpu_luts.db``, sweep ``bench-rn50``: batch 1, one thread; on a GPU box, the sweep of
``latlab profile --model resnet50 --backend cuda --grid reference``). Importance is seeded log-normal
noise per channel (no trained weights here; latency does not depend on them). Each slim network is
exported and checked against the masked one; then all of them and the dense network are timed on the
sweep's backend with its batch, dtype and layout in interleaved rounds (A B C …, then … C B A), and the
dense network's non-conv ops are timed one by one (:mod:`profiler.other_ops`).

Predictions of the pruned network's latency by HALP's LLM (input widths frozen at their dense values,
as HALP's pruner assumes) and MDP's MDLM (the real (cin, cout); on the reference lattice it equals the
LUT) are compared with the measurement (:func:`latency_models.evaluate.prediction_errors`): the *speed-up*
each predicts (dense / pruned prediction) from the convs alone and from convs + other ops against the
measured speed-up (median over rounds of the paired ratio), and the whole-network latency (convs + other
ops) against the measured one.

    latlab profile --model resnet50 --backend cpu --grid reference --threads 1 --db rn50_cpu.db
    python -m benchmarks.export_speed --db rn50_cpu.db --sweep-name ""
    python -m benchmarks.export_speed --db benchmarks/data/rn50_h200.db --sweep-name "" --backend cuda \
        --targets 0.7,0.5,0.3 --repeats 5 --out benchmarks/results/export_speed_nvidia_h200
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import select

from benchmarks._report import command_line
from db import open_database
from db.errors import LatlabError
from db.models import Sweep
from latency_models.base import get_model
from latency_models.evaluate import markdown_table, prediction_errors
from latency_models.features import configs_from_frame, lut_frame
from profiler.backends import get_backend, with_protocol
from profiler.hardware import detect_hardware
from profiler.measure import measure_models_interleaved, paired_speedup
from profiler.other_ops import measure_other_ops
from profiler.plan import resolve_model, trace_network
from profiler.protocol import TimingProtocol, cache_flags
from pruning.cost import DEFAULT_KIND, Settings, spec_latency
from pruning.graph import build_network_spec
from pruning.oneshot import prune_once

PREDICTORS = ("llm_frozen", "mdlm")


def _predict(models: dict, spec, s: Settings, widths: dict | None = None, removed: list | None = None) -> dict:
    return {"llm_frozen": spec_latency(models["llm"], spec, s, widths, removed or (), freeze_cin=True),
            "mdlm": spec_latency(models["mdlm"], spec, s, widths, removed or ())}


def _summary(pruned: pd.DataFrame) -> pd.DataFrame:
    out = []
    for p in PREDICTORS:
        speed, with_other = pruned[f"{p}_speedup_err_pct"].abs(), pruned[f"{p}+other_speedup_err_pct"].abs()
        out.append({"predictor": p, "pruned networks": len(pruned), "speed-up error, mean abs %": speed.mean(),
                    "speed-up error, max abs %": speed.max(), "within 5%": f"{int((speed <= 5).sum())}/{len(pruned)}",
                    "+ other ops: speed-up error, mean abs %": with_other.mean(),
                    "+ other ops: latency error, mean abs %": pruned[f"{p}+other_err_pct"].abs().mean(),
                    "+ other ops: latency error, mean (bias) %": pruned[f"{p}+other_err_pct"].mean()})
    return pd.DataFrame(out).round(2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, default=Path("benchmarks/data/cpu_luts.db"))
    parser.add_argument("--sweep-name", default="bench-rn50", help="name of the ResNet-50 reference sweep")
    parser.add_argument("--backend", default="cpu", help="cpu | cuda: where the networks are timed")
    parser.add_argument("--methods", default="halp,mgp,mdlm,mdp")
    parser.add_argument("--targets", default="0.8,0.6,0.4")
    parser.add_argument("--repeats", type=int, default=3, help="timed samples per network and round")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for --backend cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/export_speed_cpu"))
    args = parser.parse_args(argv)

    database = open_database(args.db, create=False, upgrade=True)
    with database.session() as session:
        sweep = session.scalars(select(Sweep).where(Sweep.name == args.sweep_name).order_by(Sweep.id)).first()
        if sweep is None:
            raise SystemExit(f"no sweep named {args.sweep_name!r} in {args.db}")
        X, y = lut_frame(session, sweep.id)
        hw_name, lut_command = sweep.hardware.name, sweep.command
        cache = cache_flags(sweep) if sweep.backend == args.backend else {}
    first = configs_from_frame(X.iloc[:1])[0]
    settings = Settings(first.batch, first.dtype, first.layout, first.op)
    models = {"llm": get_model("llm").fit(X, y), "mdlm": get_model("mdlm").fit(X, y)}
    spec = build_network_spec("resnet50", 224, group_sizes="reference")
    _, net = resolve_model("resnet50")
    rng = np.random.default_rng(args.seed)
    importances = {g.id: rng.lognormal(0.0, 1.0, g.width) for g in spec.groups.values()}
    protocol = TimingProtocol(warmup=5, repeats=args.repeats, min_repeats=args.repeats,
                              num_threads=args.threads if args.backend == "cpu" else None)
    backend = get_backend(args.backend, protocol)
    shape = (settings.batch, 3, 224, 224)
    # the other ops are priced like the LUT's convs: timed alone under the sweep's cache protocol
    ops_backend = with_protocol(backend, **cache)
    other = measure_other_ops(ops_backend, net, trace_network(net, 224), batch=settings.batch, dtype=settings.dtype,
                              layout=settings.layout, op=settings.op)
    rows = {"dense": {"method": "dense", "target": 1.0, "removed_blocks": 0, **_predict(models, spec, settings),
                      "other_ms": other.dense_ms,
                      "params_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 2)}}
    nets = {"dense": net}
    unreached: list[dict] = []  # (method, target) pairs the method cannot reach (e.g. channels alone at 30%)
    for target in (float(t) for t in args.targets.split(",")):
        for method in args.methods.split(","):
            name = f"{method}{round(100 * target)}"
            try:
                res = prune_once(net, spec, models[DEFAULT_KIND[method]], importances, method=method,
                                 target=target, settings=settings)
            except LatlabError as exc:
                unreached.append({"method": method, "target": target, "why": str(exc)})
                print(f"{name}: {exc}", file=sys.stderr)
                continue
            nets[name] = res.slim
            rows[name] = {"method": method, "target": target, "removed_blocks": len(res.removed_blocks),
                          **_predict(models, spec, settings, res.widths, res.removed_blocks),
                          "other_ms": other.latency(spec.conv_widths({g: w for g, w in res.widths.items() if w},
                                                                     res.removed_blocks)),
                          "params_m": round(res.counts["params_pruned"] / 1e6, 2),
                          "max_logit_delta": res.max_logit_delta}
            print(f"pruned {name}: {len(res.removed_blocks)} blocks removed", file=sys.stderr)
    timed = measure_models_interleaved(None, backend, nets, name="resnet50", rounds=args.rounds, input_shape=shape,
                                       dtype=settings.dtype, layout=settings.layout)
    for name, row in rows.items():
        row.update(measured_ms=timed[name].median_ms, speedup=paired_speedup(timed["dense"], timed[name]))
    frame = prediction_errors(pd.DataFrame(rows.values()), rows["dense"], PREDICTORS)
    hw = detect_hardware(args.backend)
    command = command_line("export_speed", argv)
    cols = ["method", "target", "measured_ms", "speedup", "params_m", "removed_blocks",
            *[f"{p}_speedup_err_pct" for p in PREDICTORS], *[f"{p}+other_speedup_err_pct" for p in PREDICTORS],
            *[f"{p}+other_err_pct" for p in PREDICTORS], "max_logit_delta"]
    summary = _summary(frame[frame["method"] != "dense"])
    md = ["# Pruned ResNet-50 on the hardware it was pruned for: predicted vs measured", "",
          f"Command: `{command}`  ",
          f"Machine: {hw.name}, torch {hw.torch_version}; backend `{args.backend}`, batch {settings.batch}, "
          f"{settings.dtype}, {settings.layout}, 224×224; all networks timed in {args.rounds} interleaved rounds "
          f"of {args.repeats} samples. Latency models fitted on sweep `{args.sweep_name}` ({hw_name}) of "
          f"`{args.db}`" + (f", made by `{lut_command}`." if lut_command else "."), "",
          "target = kept share of the dense conv latency (as predicted by the method's own latency model). "
          "`*_speedup_err_pct` = signed error of the speed-up a predictor expects (dense / pruned prediction) "
          "against the measured one (median over rounds of dense / pruned); `+other` adds the non-conv ops, each "
          "timed alone (under the LUT's cache protocol) and priced by the channels they still carry; "
          "`*+other_err_pct` is the whole-network "
          "latency error. `llm_frozen` is HALP's view (input widths frozen at dense).", "",
          "## Summary", "", markdown_table(summary), "",
          "## Every network", "", markdown_table(frame[[c for c in cols if c in frame.columns]].round(3)), ""]
    if unreached:
        md += ["## Targets a method cannot reach", "", markdown_table(pd.DataFrame(unreached)), ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(md))
    args.out.with_suffix(".json").write_text(json.dumps(
        {"command": command, "hardware": hw.to_dict(), "lut_command": lut_command, "rounds": args.rounds,
         "rows": frame.round(4).to_dict(orient="records"), "unreached": unreached}, indent=1, default=float))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
