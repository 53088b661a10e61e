"""Helpers shared by the real backends: build the timed op, its input, and the stop rule.

The CPU and CUDA backends time exactly the same module for a :class:`ConvConfig`, built here:
``nn.Conv2d`` (bias-free, the family's geometry) optionally followed by ``BatchNorm2d`` + ``ReLU``
in eval mode. ``torch`` is imported lazily so importing this module never touches CUDA.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from db.keys import ConvConfig
from profiler.backends.base import iqr
from profiler.protocol import TimingProtocol

if TYPE_CHECKING:
    import torch
    from torch import nn

ELEMENT_BYTES: dict[str, int] = {"fp32": 4, "fp16": 2, "bf16": 2}


def torch_dtype(name: str) -> torch.dtype:
    """``"fp32" | "fp16" | "bf16"`` -> the torch dtype."""
    import torch

    from db.errors import InvalidKeyError

    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name not in table:
        raise InvalidKeyError(f"unknown dtype {name!r}; choose from {', '.join(table)}")
    return table[name]


def memory_format(layout: str) -> torch.memory_format:
    """``"nhwc"`` -> ``torch.channels_last``; ``"nchw"`` -> ``torch.contiguous_format``."""
    import torch

    return torch.channels_last if layout == "nhwc" else torch.contiguous_format


def build_conv_op(config: ConvConfig, seed: int = 0) -> nn.Module:
    """The module timed for ``config`` (fp32, on CPU, eval mode, weights seeded by ``seed``).

    ``op == "conv"``: ``nn.Conv2d(bias=False)``; ``op == "conv_bn_relu"``: conv + BatchNorm2d + ReLU.
    Move it with :func:`prepare_module`.
    """
    import torch
    from torch import nn

    f = config.family
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        conv = nn.Conv2d(
            config.cin, config.cout, kernel_size=(f.kernel_h, f.kernel_w),
            stride=(f.stride_h, f.stride_w), padding=(f.pad_h, f.pad_w),
            dilation=(f.dil_h, f.dil_w), groups=f.conv_groups(config.cin), bias=False,
        )
        module: nn.Module = conv
        if config.op == "conv_bn_relu":
            bn = nn.BatchNorm2d(config.cout)
            with torch.no_grad():  # non-trivial running statistics, like a trained network
                bn.running_mean.uniform_(-0.1, 0.1)
                bn.running_var.uniform_(0.5, 1.5)
            module = nn.Sequential(conv, bn, nn.ReLU(inplace=True))
    return module.eval()


def eval_mode(module: nn.Module) -> nn.Module:
    """``module.eval()``; a ``torch.export`` module (already an inference graph) refuses ``eval()``."""
    try:
        return module.eval()
    except NotImplementedError:
        return module


def prepare_module(module: nn.Module, dtype: str, layout: str, device: Any = "cpu") -> nn.Module:
    """Move ``module`` (in place) to ``device``/``dtype``/``layout`` and put it in eval mode."""
    module = module.to(device=device, dtype=torch_dtype(dtype))
    if layout == "nhwc":
        module = module.to(memory_format=memory_format(layout))
    return eval_mode(module)


def copy_model(model: nn.Module, dtype: str, layout: str, device: Any = "cpu") -> nn.Module:
    """A prepared deep copy of ``model`` (the caller's module is never changed)."""
    return prepare_module(copy.deepcopy(model), dtype, layout, device)


def make_input(
    shape: Sequence[int], dtype: str, layout: str, device: Any = "cpu", seed: int = 0,
) -> torch.Tensor:
    """Standard-normal input of ``shape`` built directly on ``device`` from a seeded generator."""
    import torch

    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    x = torch.randn(tuple(shape), generator=gen, device=dev, dtype=torch.float32)
    x = x.to(dtype=torch_dtype(dtype))
    if layout == "nhwc" and x.dim() == 4:
        x = x.contiguous(memory_format=memory_format(layout))
    return x


def config_input_shape(config: ConvConfig) -> tuple[int, int, int, int]:
    """NCHW shape of the conv input for ``config``."""
    f = config.family
    return (config.batch, config.cin, f.in_h, f.in_w)


def rel_iqr(samples: Sequence[float]) -> float:
    """IQR / median of ``samples`` (0 for fewer than two samples or a zero median)."""
    if len(samples) < 2:
        return 0.0
    ordered = sorted(samples)
    mid = len(ordered) // 2
    med = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return iqr(list(samples)) / med if med > 0 else 0.0


def enough_samples(samples: Sequence[float], protocol: TimingProtocol) -> bool:
    """The stop rule: ``repeats`` reached, or ``min_repeats`` reached and rel. IQR < ``max_rel_iqr``."""
    n = len(samples)
    if n >= protocol.repeats:
        return True
    if protocol.max_rel_iqr > 0 and n >= protocol.min_repeats:
        return rel_iqr(samples) < protocol.max_rel_iqr
    return False


def chunk_sizes(protocol: TimingProtocol) -> Iterator[int]:
    """Sample-batch sizes for devices where checking the stop rule costs a sync.

    Without the stop rule: one chunk of ``repeats``. With it: ``min_repeats`` first, then chunks of
    about a fifth of ``min_repeats`` (at least 1), never past ``repeats``.
    """
    if protocol.max_rel_iqr <= 0:
        yield protocol.repeats
        return
    taken = min(protocol.min_repeats, protocol.repeats)
    yield taken
    step = max(1, math.ceil(protocol.min_repeats / 5))
    while taken < protocol.repeats:
        size = min(step, protocol.repeats - taken)
        taken += size
        yield size


@contextlib.contextmanager
def torch_threads(num_threads: int | None) -> Iterator[int]:
    """Run the body with ``torch.set_num_threads(num_threads)`` (None: unchanged); yields the count."""
    import torch

    before = torch.get_num_threads()
    wanted = num_threads or before
    if wanted != before:
        torch.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
