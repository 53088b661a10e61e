"""How stable are the CPU backend's numbers? Within-run noise and run-to-run spread of repeated sweeps.

For a few ResNet-18 conv configurations (dense widths of several shape families plus pruned points),
run the same sweep ``--runs`` times through the real runner (each run is a separate sweep in one
SQLite file) and report, per configuration:

* ``rel_iqr``: IQR/median of the samples within a run (median over runs),
* ``spread``: (max - min) / median of the per-run medians (run-to-run spread),
* ``cv``: standard deviation / mean of the per-run medians.

Writes JSON and Markdown to ``--out`` (default ``benchmarks/results/profiler_noise_cpu.*``).

    python benchmarks/profiler_noise.py --runs 5 --repeats 30
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import select

from benchmarks._report import machine, machine_line, write_result
from db import open_database
from db.lut import load_lut, row_config
from db.models import Measurement
from latlab.tables import render
from profiler.backends import get_backend
from profiler.plan import SweepPlan, build_plan
from profiler.protocol import TimingProtocol
from profiler.runner import run_sweep


def pick_configs(batch: int, input_size: int) -> SweepPlan:
    """Dense point of each ResNet-18 family plus one half-width point per family."""
    full = build_plan("resnet18", "full:16", input_size=input_size, batch=batch)
    chosen = []
    for configs in full.by_family().values():
        dense = max(configs, key=lambda c: (c.cin * c.cout, c.cin))
        half = min(configs, key=lambda c: abs(c.cin - dense.cin // 2) + abs(c.cout - dense.cout // 2))
        chosen += [dense] + ([half] if half != dense else [])
    description = {**full.description, "grid": {"text": "dense + half-width points per family"},
                   "n_configs": len(chosen)}
    return SweepPlan(chosen, description, full.layers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="repeated sweeps (default 5)")
    parser.add_argument("--repeats", type=int, default=30, help="timed samples per configuration")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up calls per configuration")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/profiler_noise_cpu"),
                        help="output path without extension")
    args = parser.parse_args(argv)

    plan = pick_configs(args.batch, args.input_size)
    protocol = TimingProtocol(warmup=args.warmup, repeats=args.repeats, min_repeats=args.repeats,
                              num_threads=args.threads)
    per_run: list[dict] = []
    rel_iqr: dict = {c: [] for c in plan.configs}
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        database = open_database(Path(tmp) / "noise.db")
        for run in range(args.runs):
            report = run_sweep(database, plan, get_backend("cpu", protocol), name=f"noise-run-{run}", progress=False)
            with database.session() as s:
                per_run.append(load_lut(s, report.sweep_id))
                for m in s.scalars(select(Measurement).where(Measurement.sweep_id == report.sweep_id)):
                    rel_iqr[row_config(m)].append(m.iqr_ms / m.median_ms)
        database.dispose()
    elapsed = time.time() - start

    rows = []
    for c in plan.configs:
        medians = [run[c] for run in per_run]
        mid = statistics.median(medians)
        rows.append({
            "family": c.family.key, "cin": c.cin, "cout": c.cout, "median_ms": round(mid, 5),
            "rel_iqr": round(statistics.median(rel_iqr[c]), 4),
            "spread": round((max(medians) - min(medians)) / mid, 4),
            "cv": round(statistics.stdev(medians) / statistics.fmean(medians), 4) if len(medians) > 1 else 0.0,
        })
    summary = {
        "median_rel_iqr": statistics.median(r["rel_iqr"] for r in rows),
        "median_run_to_run_spread": statistics.median(r["spread"] for r in rows),
        "max_run_to_run_spread": max(r["spread"] for r in rows),
        "median_cv": statistics.median(r["cv"] for r in rows),
        "configs": len(rows), "runs": args.runs, "elapsed_s": round(elapsed, 1),
    }
    host = machine()
    result = {
        "benchmark": "profiler_noise", "backend": "cpu",
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "machine": host,
        "protocol": protocol.to_dict(), "batch": args.batch, "input_size": args.input_size,
        "summary": summary, "rows": rows,
    }
    md = [
        "# CPU profiler noise", "",
        f"Command: `{result['command']}`  ",
        f"{machine_line(host)}  ",
        f"Protocol: {args.warmup} warm-up, {args.repeats} samples per configuration (blocks >= 1 ms), "
        f"batch {args.batch}, {args.input_size}px, {args.runs} repeated sweeps, {elapsed:.0f} s in all.", "",
        render([{k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()}], "markdown"),
        render(rows, "markdown"),
    ]
    write_result(args.out, result, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
