"""Is the pruned network really smaller and faster on the hardware it was pruned for, as predicted?

Prunes ResNet-50 one-shot with HALP, MGP, OCP+MDLM and MDP at several latency targets against latency
models fitted on a ResNet-50 reference LUT of the same hardware (default: this CPU's, committed in
``benchmarks/data/cpu_luts.db``, sweep ``bench-rn50``: batch 1, one thread; on a GPU box, the sweep of
``latlab profile --model resnet50 --backend cuda --grid reference``). Importance is seeded log-normal
noise per channel (no trained weights here; latency does not depend on them). Each slim network is
exported, checked against the masked one, and timed on the sweep's backend with its batch, dtype and
layout next to the dense network.

Predictions of the pruned network's latency by HALP's LLM (input widths frozen at their dense values,
as HALP's pruner assumes) and MDP's MDLM (the real (cin, cout); on the reference lattice it equals the
LUT) are compared with the measurement in two ways: the raw conv-only LUT sum against the whole
measured network (the LUT holds convs only, so it is low by the non-conv share), and the *speed-up*
they predict (dense / pruned prediction) against the measured speed-up.

    python -m benchmarks.export_speed --db benchmarks/data/cpu_luts.db
    python -m benchmarks.export_speed --db rn50_h200.db --sweep-name "" --backend cuda \
        --out benchmarks/results/export_speed_h200
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import select

from db import open_database
from db.models import Sweep
from latency_models.base import get_model
from latency_models.evaluate import markdown_table
from latency_models.features import configs_from_frame, lut_frame
from profiler.backends import get_backend
from profiler.hardware import detect_hardware
from profiler.plan import resolve_model
from profiler.protocol import TimingProtocol
from pruning.cost import DEFAULT_KIND, Settings, spec_latency
from pruning.graph import build_network_spec
from pruning.oneshot import prune_once

PREDICTORS = ("llm_frozen", "mdlm")


def _predict(models: dict, spec, s: Settings, widths: dict | None = None, removed: list | None = None) -> dict:
    return {"llm_frozen": spec_latency(models["llm"], spec, s, widths, removed or (), freeze_cin=True),
            "mdlm": spec_latency(models["mdlm"], spec, s, widths, removed or ())}


def _summary(rows: list[dict]) -> pd.DataFrame:
    pruned = pd.DataFrame([r for r in rows if r["method"] != "dense"])
    out = []
    for p in PREDICTORS:
        speed = pruned[f"{p}_speedup_err_pct"].abs()
        raw = pruned[f"{p}_vs_measured_pct"]
        out.append({"predictor": p, "pruned networks": len(pruned), "speed-up error, mean abs %": speed.mean(),
                    "speed-up error, max abs %": speed.max(), "within 5%": f"{int((speed <= 5).sum())}/{len(pruned)}",
                    "conv sum vs measured, mean %": raw.mean()})
    return pd.DataFrame(out).round(2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, default=Path("benchmarks/data/cpu_luts.db"))
    parser.add_argument("--sweep-name", default="bench-rn50", help="name of the ResNet-50 reference sweep")
    parser.add_argument("--backend", default="cpu", help="cpu | cuda: where the networks are timed")
    parser.add_argument("--methods", default="halp,mgp,mdlm,mdp")
    parser.add_argument("--targets", default="0.8,0.6,0.4")
    parser.add_argument("--repeats", type=int, default=20)
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
        hw_name = sweep.hardware.name
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

    def timed(module) -> float:  # type: ignore[no-untyped-def]
        return backend.measure_model(module, shape, dtype=settings.dtype, layout=settings.layout).median_ms

    dense_ms = timed(net)
    dense_pred = _predict(models, spec, settings)
    rows = [{"method": "dense", "target": 1.0, "measured_ms": round(dense_ms, 3), "speedup": 1.0,
             "params_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 2), "removed_blocks": 0,
             **{f"{p}_ms": round(v, 3) for p, v in dense_pred.items()}}]
    for target in (float(t) for t in args.targets.split(",")):
        for method in args.methods.split(","):
            res = prune_once(net, spec, models[DEFAULT_KIND[method]], importances, method=method, target=target,
                             settings=settings)
            pred = _predict(models, spec, settings, res.widths, res.removed_blocks)
            ms = timed(res.slim)
            row = {"method": method, "target": target, "measured_ms": round(ms, 3),
                   "speedup": round(dense_ms / ms, 3), "params_m": round(res.counts["params_pruned"] / 1e6, 2),
                   "removed_blocks": len(res.removed_blocks), "max_logit_delta": res.max_logit_delta}
            for p, v in pred.items():
                row[f"{p}_ms"] = round(v, 3)
                row[f"{p}_vs_measured_pct"] = round(100 * (v - ms) / ms, 2)
                predicted_speedup = dense_pred[p] / v
                row[f"{p}_speedup_err_pct"] = round(100 * (predicted_speedup - dense_ms / ms) / (dense_ms / ms), 2)
            rows.append(row)
            print({k: row[k] for k in ("method", "target", "measured_ms", "speedup", "mdlm_speedup_err_pct")},
                  file=sys.stderr)
    hw = detect_hardware(args.backend)
    command = "python -m benchmarks.export_speed " + " ".join(argv if argv is not None else sys.argv[1:])
    cols = ["method", "target", "measured_ms", "speedup", "params_m", "removed_blocks",
            *[f"{p}_speedup_err_pct" for p in PREDICTORS], "max_logit_delta"]
    summary = _summary(rows)
    md = ["# Pruned ResNet-50 on the hardware it was pruned for: predicted vs measured", "",
          f"Command: `{command}`  ",
          f"Machine: {hw.name}, torch {hw.torch_version}; backend `{args.backend}`, batch {settings.batch}, "
          f"{settings.dtype}, {settings.layout}, 224×224, median of {args.repeats}. Latency models fitted on sweep "
          f"`{args.sweep_name}` ({hw_name}) of `{args.db}`.", "",
          "target = kept share of the dense conv latency (as predicted by the method's own latency model). "
          "`*_speedup_err_pct` = signed error of the speed-up a predictor expects (dense / pruned prediction) "
          "against the measured speed-up; `llm_frozen` is HALP's view (input widths frozen at dense).", "",
          "## Summary", "", markdown_table(summary), "",
          "## Every network", "", markdown_table(pd.DataFrame(rows)[[c for c in cols if c in rows[-1]]]), ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(md))
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "hardware": hw.to_dict(),
                                                         "rows": rows}, indent=1, default=float))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
