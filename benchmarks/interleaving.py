"""Does timing networks in turns make whole-network speed-ups trustworthy on a drifting host?

Three ResNet-18s are timed on the CPU backend: ``dense``, ``twin`` (a second, independently initialised
ResNet-18: same architecture, so its true speed-up is exactly 1) and ``pruned`` (the inner width of every
residual block halved, rebuilt by :func:`pruning.rebuild.rebuild_with_widths`). Each trial times them twice
with the same number of forward passes per network:

* ``sequential``: one :func:`profiler.measure.measure_model` call per network, one after the other
  (``--rounds`` x ``--repeats`` samples each), speed-up = ratio of medians;
* ``interleaved``: :func:`profiler.measure.measure_models_interleaved` with ``--rounds`` rounds of
  ``--repeats`` samples, speed-up = :func:`profiler.measure.paired_speedup`.

Reported per method: the twin's speed-up error (|measured - 1|, the truth is known) and the spread of
the pruned network's speed-up over trials ((max - min) / median). Writes JSON and Markdown to ``--out``.

    python -m benchmarks.interleaving --trials 6 --rounds 24 --repeats 1 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torchvision

from benchmarks._report import machine_line, result_header, write_result
from latlab.tables import render
from profiler.backends import get_backend
from profiler.measure import measure_model, measure_models_interleaved, paired_speedup
from profiler.plan import trace_network
from profiler.protocol import TimingProtocol
from pruning.rebuild import rebuild_with_widths


def networks(input_size: int) -> dict[str, torch.nn.Module]:
    """Dense ResNet-18, an independently initialised twin, and a copy with every block's inner width halved."""
    torch.manual_seed(0)
    dense = torchvision.models.resnet18().eval()
    twin = torchvision.models.resnet18().eval()
    trace = trace_network(dense, input_size)
    layers = {layer.name: layer for layer in trace.layers}
    widths = {}
    for name, layer in layers.items():  # each block's inner conv halved; the residual widths stay whole
        if name.startswith("layer") and name.endswith(".conv1"):
            widths[name] = (layer.cin, layer.cout // 2)
            second = layers[name.replace(".conv1", ".conv2")]
            widths[second.name] = (layer.cout // 2, second.cout)
    pruned = rebuild_with_widths(dense, trace, widths).eval()
    return {"dense": dense, "twin": twin, "pruned": pruned}


def _summary(values: list[float], truth: float | None) -> dict[str, float]:
    mid = statistics.median(values)
    out = {"median": round(mid, 4), "spread": round((max(values) - min(values)) / mid, 4)}
    if truth is not None:
        errors = [abs(v / truth - 1) for v in values]
        out |= {"mean_abs_err_pct": round(100 * statistics.fmean(errors), 2),
                "max_abs_err_pct": round(100 * max(errors), 2)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=24, help="interleaved rounds per trial")
    parser.add_argument("--repeats", type=int, default=1, help="samples per network per round")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/interleaving_cpu"),
                        help="output path without extension")
    args = parser.parse_args(argv)

    nets = networks(args.input_size)
    shape = (1, 3, args.input_size, args.input_size)
    per_round = TimingProtocol(warmup=1, repeats=args.repeats, min_repeats=args.repeats, num_threads=args.threads)
    whole = TimingProtocol(warmup=1, repeats=args.rounds * args.repeats, min_repeats=args.rounds * args.repeats,
                           num_threads=args.threads)
    speedups: dict[str, dict[str, list[float]]] = {m: {"twin": [], "pruned": []} for m in ("sequential", "interleaved")}
    start = time.time()
    for _ in range(args.trials):
        backend = get_backend("cpu", whole)
        seq = {name: measure_model(None, backend, net, name=name, input_shape=shape).median_ms
               for name, net in nets.items()}
        timed = measure_models_interleaved(None, get_backend("cpu", per_round), nets, name="resnet18",
                                           rounds=args.rounds, input_shape=shape)
        for name in ("twin", "pruned"):
            speedups["sequential"][name].append(seq["dense"] / seq[name])
            speedups["interleaved"][name].append(paired_speedup(timed["dense"], timed[name]))
    elapsed = time.time() - start

    rows = []
    for method, by_net in speedups.items():
        twin, pruned = _summary(by_net["twin"], 1.0), _summary(by_net["pruned"], None)
        rows.append({"method": method, "twin_mean_abs_err_pct": twin["mean_abs_err_pct"],
                     "twin_max_abs_err_pct": twin["max_abs_err_pct"], "pruned_speedup_median": pruned["median"],
                     "pruned_speedup_spread_pct": round(100 * pruned["spread"], 2)})
    result = {
        **result_header("interleaving", argv),
        "trials": args.trials, "rounds": args.rounds, "repeats": args.repeats, "threads": args.threads,
        "elapsed_s": round(elapsed, 1), "rows": rows,
        "speedups": {m: {k: [round(x, 4) for x in v] for k, v in d.items()} for m, d in speedups.items()},
    }
    md = [
        "# Whole-network speed-ups: one after the other vs interleaved", "",
        f"Command: `{result['command']}`  ",
        f"{machine_line(result['machine'])}, "
        f"{args.threads} thread(s), batch 1, {args.input_size}px  ",
        f"{args.trials} trials; each times dense ResNet-18, an independently initialised twin (true speed-up 1) "
        f"and a copy with every block's inner width halved, {args.rounds * args.repeats} forward passes per network: "
        f"once one network after the other and once in {args.rounds} interleaved rounds of {args.repeats}; "
        f"{elapsed:.0f} s in all.", "",
        render(rows, "markdown"),
        "Speed-ups per trial (dense / network):", "",
        render([{"method": m, "network": k, "speedups": ", ".join(f"{x:.3f}" for x in v)}
                for m, d in speedups.items() for k, v in d.items()], "markdown"),
    ]
    write_result(args.out, result, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
