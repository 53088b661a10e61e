"""Is the pruned network really smaller and faster on the hardware it was pruned for?

Prunes ResNet-50 one-shot (BN-magnitude importance on random weights — latency does not depend on the
weights) with HALP and MDP at several latency targets against the MDLM / LLM fitted on this CPU's
ResNet-50 reference LUT (``benchmarks/data/cpu_luts.db``, sweep ``bench-rn50``: batch 1, one thread),
exports the slim networks and times them with the CPU backend (batch 1, one thread) next to the dense one.

    python -m benchmarks.export_speed --db benchmarks/data/cpu_luts.db
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
from sqlalchemy import select

from db import open_database
from db.models import Sweep
from latency_models.base import get_model
from latency_models.evaluate import markdown_table
from latency_models.features import lut_frame
from profiler.backends.cpu import CpuBackend
from profiler.hardware import detect_hardware
from profiler.plan import resolve_model
from profiler.protocol import TimingProtocol
from pruning.cost import Settings
from pruning.graph import build_network_spec
from pruning.oneshot import magnitude_scores, prune_once


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, default=Path("benchmarks/data/cpu_luts.db"))
    parser.add_argument("--sweep-name", default="bench-rn50")
    parser.add_argument("--targets", default="0.8,0.6,0.4")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/export_speed_cpu"))
    args = parser.parse_args(argv)

    database = open_database(args.db, create=False, upgrade=True)
    with database.session() as s:
        sweep = s.scalars(select(Sweep).where(Sweep.name == args.sweep_name)).one()
        X, y = lut_frame(s, sweep.id)
    models = {"llm": get_model("llm").fit(X, y), "mdlm": get_model("mdlm").fit(X, y)}
    spec = build_network_spec("resnet50", 224, group_sizes="reference")
    _, net = resolve_model("resnet50")
    importances = magnitude_scores(net, spec)
    backend = CpuBackend(TimingProtocol(warmup=3, repeats=args.repeats, min_repeats=args.repeats, num_threads=1))
    dense = backend.measure_model(net, (1, 3, 224, 224))
    rows = [{"method": "dense", "target": 1.0, "predicted_ms": None, "measured_ms": round(dense.median_ms, 2),
             "speedup": 1.0, "params_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 2),
             "removed_blocks": 0, "max_logit_delta": None}]
    for target in (float(t) for t in args.targets.split(",")):
        for method, kind in (("halp", "llm"), ("mdp", "mdlm")):
            res = prune_once(net, spec, models[kind], importances, method=method, target=target,
                             settings=Settings(1))
            timing = backend.measure_model(res.slim, (1, 3, 224, 224))
            rows.append({
                "method": method, "target": target, "predicted_ms": round(res.predicted_pruned_ms, 2),
                "measured_ms": round(timing.median_ms, 2), "speedup": round(dense.median_ms / timing.median_ms, 3),
                "params_m": round(res.counts["params_pruned"] / 1e6, 2), "removed_blocks": len(res.removed_blocks),
                "max_logit_delta": res.max_logit_delta,
            })
            print(rows[-1], file=sys.stderr)
    hw = detect_hardware("cpu")
    command = "python -m benchmarks.export_speed " + " ".join(argv if argv is not None else sys.argv[1:])
    md = ["# Pruned ResNet-50 on the CPU it was pruned for", "", f"Command: `{command}`  ",
          f"Machine: {hw.name}, torch {hw.torch_version}; batch 1, 224×224, one thread, median of {args.repeats}.",
          f"Latency models fitted on sweep `{args.sweep_name}` of `{args.db}` (conv-only LUT sums: "
          "predicted_ms covers the convs, measured_ms the whole network).", "",
          "target = kept share of the dense conv latency.", "",
          markdown_table(pd.DataFrame(rows)), ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(md))
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows}, indent=1, default=float))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
