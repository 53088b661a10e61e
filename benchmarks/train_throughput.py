"""Training-step throughput: latlab's prune-while-training step against torchvision's reference recipe.

Both loops run the same network, batch, optimizer (SGD momentum 0.875, label smoothing 0.1) and AMP
setting on synthetic tensors already on the device, so the data loader is out of the picture and the
difference is what pruning adds per iteration: the soft-mask parametrizations on every conv/BN (and the
block gates of MGP/MDP) in forward and backward, and BN-Taylor importance accumulated in fp32 after
unscaling. The reference step is torchvision's ``references/classification/train.py`` step (autocast,
GradScaler, ``optimizer.zero_grad(); scaler.scale(loss).backward(); scaler.step(); scaler.update()``).

    python -m benchmarks.train_throughput --device cuda --model resnet50 --batch 256 --amp \
        --out benchmarks/results/train_throughput_h200
    python -m benchmarks.train_throughput --device cpu --model resnet18 --batch 32 --input-size 64 --iters 10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

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


def run(variant: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Images/s of ``args.iters`` timed steps of ``variant`` (reference | latlab-halp | latlab-mdp)."""
    torch.manual_seed(0)
    _, model = resolve_model(args.model)
    model = model.to(device).train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    pruner = None
    if variant != "reference":  # built on the device, as the trainer does
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

    for i in range(args.warmup):
        step(i)
    _sync(device)
    t0 = time.perf_counter()
    for i in range(args.iters):
        step(args.warmup + i)
    _sync(device)
    seconds = time.perf_counter() - t0
    return {"variant": variant, "images_per_s": args.batch * args.iters / seconds,
            "ms_per_iter": 1e3 * seconds / args.iters, **_op_counts(step, args.warmup + args.iters, device)}


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
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda needs a GPU; torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rows = [run(v, args, device) for v in ("reference", "latlab-halp", "latlab-mdp")]
    base = rows[0]["images_per_s"]
    for r in rows:
        r["relative"] = r["images_per_s"] / base
    hw = detect_hardware(args.device)
    command = "python -m benchmarks.train_throughput " + " ".join(argv if argv is not None else sys.argv[1:])
    md = ["# Training-step throughput: prune-while-training vs torchvision's reference step", "",
          f"Command: `{command}`  ", f"Machine: {hw.name}, torch {hw.torch_version}; {args.model}, batch {args.batch}, "
          f"{args.input_size}×{args.input_size}, AMP {'on' if args.amp else 'off'}, channels_last "
          f"{'on' if args.channels_last else 'off'}; synthetic data on the device; {args.iters} timed iterations "
          f"after {args.warmup} warm-up.", "",
          "| variant | images/s | ms / iteration | relative to reference | ATen ops / step | GPU kernels / step |",
          "|---|---:|---:|---:|---:|---:|",
          *[f"| {r['variant']} | {r['images_per_s']:.1f} | {r['ms_per_iter']:.2f} | {r['relative']:.3f} | "
            f"{r['aten_ops']} | {r.get('gpu_kernels', '–')} |" for r in rows], "",
          "`latlab-halp`: soft masks on every conv/BN + BN-Taylor importance each iteration; `latlab-mdp`: the "
          "same plus block gates. Ops and kernels: one more step under `torch.profiler` (ATen ops that only make "
          "views or no-op casts left out).", ""]
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
