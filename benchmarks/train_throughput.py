"""Training-step throughput: latlab's prune-while-training step against torchvision's reference recipe.

Both loops run the same network, batch, optimizer (SGD momentum 0.875, label smoothing 0.1) and AMP
setting on synthetic tensors already on the device, so the data loader is out of the picture and the
difference is what pruning adds per iteration: the soft-mask parametrizations on every conv/BN (and the
block gates of MGP/MDP) in forward and backward, and BN-Taylor importance accumulated in fp32 after
unscaling. The reference step is torchvision's ``references/classification/train.py`` step (autocast,
GradScaler, ``optimizer.zero_grad(); scaler.scale(loss).backward(); scaler.step(); scaler.update()``).

With ``--db`` (a LUT of the model), two more rows time what a run trains after its last pruning step
(``prune.slim``): the exported networks HALP and MDP leave at ``--target`` of the dense conv latency
(one-shot, seeded random importance), trained with the reference step.

    python -m benchmarks.train_throughput --device cuda --model resnet50 --batch 256 --amp \
        --out benchmarks/results/train_throughput_h200
    python -m benchmarks.train_throughput --device cpu --model resnet18 --batch 32 --input-size 64 --iters 10
    python -m benchmarks.train_throughput --device cpu --model resnet50 --batch 8 --input-size 64 \
        --db benchmarks/data/cpu_luts.db --sweep 1 --target 0.5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks._report import command_line
from db.errors import LatlabError
from profiler.hardware import detect_hardware
from profiler.plan import resolve_model
from pruning.cost import Settings
from pruning.graph import build_network_spec
from pruning.schedule import LatencySchedule
from training.optim import build_optimizer, loss_fn
from training.pruner import TrainingPruner


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def slim_networks(args: argparse.Namespace) -> dict[str, nn.Module]:
    """``{"slim-halp": net, "slim-mdp": net}``: one-shot HALP and MDP at ``args.target`` on the LUT in ``args.db``."""
    from db.engine import open_database
    from latency_models.resolve import resolve_latency_model
    from pruning.cost import DEFAULT_KIND
    from pruning.oneshot import prune_once

    database = open_database(args.db, create=False, upgrade=True)
    torch.manual_seed(0)
    _, net = resolve_model(args.model)
    spec = build_network_spec(net, args.lut_size, group_sizes="auto")
    rng = np.random.default_rng(0)
    importances = {g.id: rng.lognormal(0.0, 1.0, g.width) for g in spec.groups.values()}
    out = {}
    for method in ("halp", "mdp"):
        lat, settings, _ = resolve_latency_model(database, latency_model=None, sweep=args.sweep, hardware=None,
                                                 kind=DEFAULT_KIND[method])
        try:
            res = prune_once(net, spec, lat, importances, method=method, target=args.target, settings=settings)
        except LatlabError as exc:  # e.g. HALP cannot reach a low target with channels alone
            print(f"slim-{method} left out: {exc}", file=sys.stderr)
            continue
        out[f"slim-{method}"] = res.slim
    return out


def prepare(variant: str, args: argparse.Namespace, device: torch.device,
            model: nn.Module | None = None) -> tuple[Callable[[int], None], dict]:
    """``(step, row)``: one training step of ``variant`` (reference | latlab-halp | latlab-mdp), or the reference
    step on ``model`` (a slim network) when given, and the row to fill."""
    torch.manual_seed(0)
    if model is None:
        _, model = resolve_model(args.model)
    model = model.to(device).train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    pruner = None
    if variant.startswith("latlab-"):  # built on the device, as the trainer does
        spec = build_network_spec(model, args.input_size, group_sizes="auto")
        never = LatencySchedule(1.0, 0.5, steps=1, every=10**9)  # accumulate importance, never solve
        pruner = TrainingPruner(model, spec, method=variant.split("-")[1], schedule=never, latency_model=None,
                                settings=Settings(args.batch))
    opt = build_optimizer(model, lr=0.1, momentum=0.875, weight_decay=2**-15)
    criterion = loss_fn(0.1)
    use_amp = args.amp
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and dtype == torch.float16)
    x = torch.randn(args.batch, 3, args.input_size, args.input_size, device=device)
    if args.channels_last:
        x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch,), device=device)

    def step(i: int) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=use_amp):
            loss = criterion(model(x), y)
        scaler.scale(loss).backward()
        if pruner is not None:
            scaler.unscale_(opt)
            pruner.after_backward(i)
        scaler.step(opt)
        scaler.update()

    return step, {"variant": variant, "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}


def measure(steps: dict[str, Callable[[int], None]], args: argparse.Namespace,
            device: torch.device) -> dict[str, list[float]]:
    """ms per iteration of every variant in each of ``args.rounds`` interleaved rounds (after a warm-up of each),
    so that drift of the machine (clocks, the allocator warming up, neighbours) hits all variants alike."""
    per_round = max(1, args.iters // args.rounds)
    for step in steps.values():
        for i in range(args.warmup):
            step(i)
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(args.rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            for i in range(per_round):
                step(args.warmup + r * per_round + i)
            _sync(device)
            times[name].append(1e3 * (time.perf_counter() - t0) / per_round)
    return times


# ATen ops that only make views or read metadata: no kernel of their own
_NO_KERNEL = {"aten::empty", "aten::empty_strided", "aten::empty_like", "aten::detach", "aten::view", "aten::t",
              "aten::as_strided", "aten::expand", "aten::reshape", "aten::_reshape_alias", "aten::transpose",
              "aten::permute", "aten::unsqueeze", "aten::squeeze", "aten::select", "aten::slice", "aten::narrow",
              "aten::alias", "aten::lift_fresh", "aten::result_type", "aten::to", "aten::resize_",
              "aten::_has_compatible_shallow_copy_type"}


def _op_counts(step: Callable[[int], None], i: int, device: torch.device) -> dict[str, int]:
    """ATen ops of one more step that do work (views and no-op casts left out) and, on a GPU, the kernels
    (and memcpy/memset) it launched: the per-iteration cost of pruning that a fast host has to keep ahead of."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step(i)
        _sync(device)
    events = prof.events()
    out = {"aten_ops": sum(1 for e in events if e.name.startswith("aten::") and e.name not in _NO_KERNEL)}
    if device.type == "cuda":
        out["gpu_kernels"] = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--amp", action="store_true", help="torch.amp (fp16 + GradScaler on CUDA, bf16 on CPU)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=30, help="timed iterations per variant, split over the rounds")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median ms per iteration reported)")
    parser.add_argument("--db", default=None, help="LUT database: also time the slim networks at --target")
    parser.add_argument("--sweep", type=int, default=None, help="sweep id in --db (default: the latest)")
    parser.add_argument("--target", type=float, default=0.5, help="fraction of the dense conv latency")
    parser.add_argument("--lut-size", type=int, default=224, help="input resolution the LUT's convs were swept at")
    parser.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda needs a GPU; torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    prepared = {v: prepare(v, args, device) for v in ("reference", "latlab-halp", "latlab-mdp")}
    slim = slim_networks(args) if args.db else {}
    prepared |= {name: prepare(name, args, device, net) for name, net in slim.items()}
    times = measure({name: step for name, (step, _) in prepared.items()}, args, device)
    rows = []
    for name, (step, row) in prepared.items():
        ms = float(np.median(times[name]))
        rows.append({**row, "ms_per_iter": ms, "images_per_s": 1e3 * args.batch / ms, "ms_per_round": times[name],
                     **_op_counts(step, 10**6, device)})
    for r in rows:
        r["relative"] = r["images_per_s"] / rows[0]["images_per_s"]
    hw = detect_hardware(args.device)
    command = command_line("train_throughput", argv)
    md = ["# Training-step throughput: prune-while-training vs torchvision's reference step", "",
          f"Command: `{command}`  ", f"Machine: {hw.name}, torch {hw.torch_version}; {args.model}, batch {args.batch}, "
          f"{args.input_size}×{args.input_size}, AMP {'on' if args.amp else 'off'}, channels_last "
          f"{'on' if args.channels_last else 'off'}; synthetic data on the device; after {args.warmup} warm-up "
          f"iterations each, {args.rounds} interleaved rounds of {max(1, args.iters // args.rounds)} iterations per "
          "variant; median ms per iteration over the rounds.", "",
          "| variant | params (M) | images/s | ms / iteration | relative to reference | ATen ops / step | "
          "GPU kernels / step |", "|---|---:|---:|---:|---:|---:|---:|",
          *[f"| {r['variant']} | {r['params_m']} | {r['images_per_s']:.1f} | {r['ms_per_iter']:.2f} | "
            f"{r['relative']:.3f} | {r['aten_ops']} | {r.get('gpu_kernels', '–')} |" for r in rows], "",
          "`latlab-halp`: soft masks on every conv/BN + BN-Taylor importance each iteration; `latlab-mdp`: the "
          "same plus block gates. Ops and kernels: one more step under `torch.profiler` (ATen ops that only make "
          "views or no-op casts left out)."
          + (f" `slim-halp` / `slim-mdp`: the exported network HALP / MDP leave at {args.target:.0%} of the dense conv "
             f"latency (one-shot on the LUT in `{args.db}`), trained with the reference step: what a run trains after "
             "its last pruning step (`prune.slim`)." if args.db else ""), ""]
    print("\n".join(md))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text("\n".join(md))
        args.out.with_suffix(".json").write_text(json.dumps({"command": command, "hardware": hw.to_dict(),
                                                             "args": vars(args) | {"out": str(args.out)},
                                                             "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
