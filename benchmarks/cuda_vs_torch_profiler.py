"""Cross-check the CUDA backend's timers against torch.profiler (CUPTI kernel times).

For ResNet50 convolutions (fp32 and fp16, batch 256 and 1) this times each configuration four
ways: CudaBackend with CUDA events behind a queue backlog (the LUT default), the same without the
backlog (each call's host launch gap can land in its event pair), CUDA-graph replay behind the
backlog, and torch.profiler (sum of the device times of the kernels of one call, median over calls).
It writes a Markdown table and JSON with the relative differences to
``benchmarks/results/cuda_vs_torch_profiler_<device>.{md,json}``.

Behind the backlog, events should match the profiler's kernel sum within a few per cent; without it,
kernels shorter than their launch cost are inflated by the idle gap before them.

Needs an NVIDIA GPU: ``python benchmarks/cuda_vs_torch_profiler.py [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from benchmarks._report import command_line  # noqa: E402
from db.keys import ConvConfig, ConvFamily  # noqa: E402
from profiler.protocol import TimingProtocol  # noqa: E402

# (label, family, cin, cout): the distinct conv shapes of ResNet50 at 224x224
RESNET50_CONVS: list[tuple[str, ConvFamily, int, int]] = [
    ("stem 7x7/2", ConvFamily.square(224, 7, stride=2), 3, 64),
    ("layer1 1x1", ConvFamily.square(56, 1), 64, 64),
    ("layer1 3x3", ConvFamily.square(56, 3), 64, 64),
    ("layer1 1x1 up", ConvFamily.square(56, 1), 64, 256),
    ("layer2 3x3", ConvFamily.square(28, 3), 128, 128),
    ("layer3 3x3", ConvFamily.square(14, 3), 256, 256),
    ("layer4 3x3", ConvFamily.square(7, 3), 512, 512),
    ("layer4 1x1 up", ConvFamily.square(7, 1), 512, 2048),
]
CALL_GAP_S = 0.0005  # host sleep between profiled calls: separates the calls on the GPU timeline
CLUSTER_GAP_US = 200.0


def profiler_kernel_ms(fn: Callable[[], Any], calls: int, warmup: int) -> tuple[float, float, str]:
    """Median over ``calls`` of the summed kernel device time of one call, via torch.profiler.

    Returns (median ms, kernels per call, method). Calls are separated by a sync and a short sleep,
    and kernels are grouped into calls by the idle gaps between them.
    """
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    for _ in range(max(1, warmup)):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
            torch.cuda.synchronize()
            time.sleep(CALL_GAP_S)
    kernels = sorted(
        (e for e in prof.events()
         if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)),
        key=lambda e: e.time_range.start,
    )
    if not kernels:
        raise RuntimeError("torch.profiler recorded no CUDA kernels (is CUPTI available?)")
    groups: list[list[Any]] = [[kernels[0]]]
    for prev, cur in zip(kernels, kernels[1:], strict=False):
        if cur.time_range.start - prev.time_range.end > CLUSTER_GAP_US:
            groups.append([])
        groups[-1].append(cur)
    if len(groups) == calls:
        per_call = [sum(k.time_range.elapsed_us() for k in g) / 1e3 for g in groups]
        return statistics.median(per_call), len(kernels) / calls, "median"
    total = sum(k.time_range.elapsed_us() for k in kernels) / 1e3
    return total / calls, len(kernels) / calls, f"mean ({len(groups)} clusters for {calls} calls)"


def _rel(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else (a - b) / b


def _fmt(x: float | None, scale: float = 1e3, digits: int = 1) -> str:
    return "-" if x is None else f"{x * scale:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default: benchmarks/results/cuda_vs_torch_profiler_<device>.json)")
    parser.add_argument("--repeats", type=int, default=50, help="timed samples per config (default 50)")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up calls per config (default 10)")
    parser.add_argument("--profiler-calls", type=int, default=20, help="profiled calls per config (default 20)")
    parser.add_argument("--layout", choices=("nchw", "nhwc"), default="nhwc", help="memory layout (default nhwc)")
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 1], help="batch sizes (default 256 1)")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "fp16"], choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--device-index", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print(
            "cuda_vs_torch_profiler needs an NVIDIA GPU, but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}); nothing to compare.",
            file=sys.stderr,
        )
        return 2

    from profiler.backends._modules import build_conv_op, config_input_shape, make_input, prepare_module
    from profiler.backends.base import MeasurementFailed
    from profiler.backends.cuda import CudaBackend
    from profiler.hardware import detect_hardware

    proto = TimingProtocol(warmup=args.warmup, repeats=args.repeats, min_repeats=args.repeats)
    events = CudaBackend(proto, device_index=args.device_index)
    no_backlog = CudaBackend(proto, device_index=args.device_index, queue_backlog=False)
    graphs = CudaBackend(TimingProtocol(**{**proto.to_dict(), "timer": "cuda_graph"}),
                         device_index=args.device_index)
    device = torch.device("cuda", args.device_index)
    hw = detect_hardware("cuda", args.device_index)
    rows: list[dict[str, Any]] = []
    try:
        for dtype in args.dtypes:
            for batch in args.batches:
                for label, family, cin, cout in RESNET50_CONVS:
                    config = ConvConfig(family, cin, cout, batch, dtype, args.layout)
                    row: dict[str, Any] = {"layer": label, **config.as_row(), "status": "ok"}
                    try:
                        ev = events.measure(config)
                        nb = no_backlog.measure(config)
                        gr = graphs.measure(config)
                        with torch.cuda.device(device), torch.inference_mode():
                            module = prepare_module(build_conv_op(config), dtype, args.layout, device)
                            x = make_input(config_input_shape(config), dtype, args.layout, device)
                            prof_ms, kpc, method = profiler_kernel_ms(lambda m=module, x=x: m(x),
                                                                      args.profiler_calls, args.warmup)
                            del module, x
                    except MeasurementFailed as exc:
                        row.update(status=exc.status, error=str(exc))
                        rows.append(row)
                        torch.cuda.empty_cache()
                        continue
                    row.update(
                        events_ms=ev.median_ms, events_rel_iqr=ev.rel_iqr, no_backlog_ms=nb.median_ms,
                        no_backlog_vs_profiler=_rel(nb.median_ms, prof_ms), graph_ms=gr.median_ms,
                        graph_rel_iqr=gr.rel_iqr, profiler_ms=prof_ms, profiler_method=method,
                        kernels_per_call=kpc, events_vs_profiler=_rel(ev.median_ms, prof_ms),
                        graph_vs_profiler=_rel(gr.median_ms, prof_ms), telemetry=ev.telemetry,
                    )
                    rows.append(row)
        settings = events.settings()
    finally:
        events.close()
        no_backlog.close()
        graphs.close()

    lines = [
        f"# CUDA events / CUDA graph vs torch.profiler on {hw.name} "
        f"(torch {torch.__version__}, cuDNN {hw.cudnn_version}, layout {args.layout})", "",
        f"Command: `{command_line('cuda_vs_torch_profiler', argv)}`. "
        "Medians of the per-call times; *events* and *graph* are timed behind a queue backlog (the LUT "
        "default), *no backlog* is events around each call as it is launched.", "",
        "| layer | dtype | batch | events µs | no backlog µs | graph µs | profiler µs | kernels/call "
        "| events vs prof | no backlog vs prof | graph vs prof |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['layer']} | {r['dtype']} | {r['batch']} | {r['status']} | | | | | | | |")
            continue
        lines.append(
            f"| {r['layer']} | {r['dtype']} | {r['batch']} | {_fmt(r['events_ms'])} | {_fmt(r['no_backlog_ms'])} "
            f"| {_fmt(r['graph_ms'])} | {_fmt(r['profiler_ms'])} | {r['kernels_per_call']:.1f} "
            f"| {_fmt(r['events_vs_profiler'], 100)}% | {_fmt(r['no_backlog_vs_profiler'], 100)}% "
            f"| {_fmt(r['graph_vs_profiler'], 100)}% |"
        )
    print("\n".join(lines))

    slug = re.sub(r"[^A-Za-z0-9]+", "_", hw.name).strip("_").lower() or "gpu"
    out = args.out or ROOT / "benchmarks" / "results" / f"cuda_vs_torch_profiler_{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"hardware": hw.to_dict(), "protocol": proto.to_dict(), "settings": settings,
               "profiler_calls": args.profiler_calls, "rows": rows}
    out.write_text(json.dumps(payload, indent=2, default=str))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"\nwrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
