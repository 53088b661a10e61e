"""A deterministic synthetic GPU: an analytical latency surface with seeded measurement noise.

The model (all times in seconds, ``e`` = bytes per element, ``P`` = peak FLOP/s of the dtype):

* a GEMM-like conv (implicit GEMM, ``M = N*Ho*Wo``, ``K = cin/g*kh*kw``) runs as CTAs of
  ``128 x tile_n`` outputs; ``cin/g`` is padded to 8 (fp16/bf16) or 4 (fp32) and ``cout/g`` to
  ``tile_n``; CTAs run in whole waves of ``sm_count``:
  ``compute = ceil(ctas / sm_count) * 2*128*tile_n*K_pad/split / (eff * P / sm_count)``;
* "cuDNN" picks the cheapest algorithm over ``tile_n in {32, 64, 128}`` (efficiency 0.6/0.85/1)
  and split-K ``split in {1, 2, 4, 8, 16}`` (partial sums cost ``8*split*M*cout_pad`` bytes + a launch);
* ``memory = e*(N*cin*H*W + cout*cin/g*kh*kw + N*cout*Ho*Wo) / BW``;
  ``t = max(compute, memory) * layout_factor + launch`` (fp16/bf16 NCHW pays 8% for transposes);
* ``conv_bn_relu`` adds a memory-bound pass ``2*e*N*cout*Ho*Wo / BW`` and one more launch.

Samples are ``t * exp(normal(0, noise))`` from an RNG seeded by SHA-256 of (seed, config), so a
configuration gives the same samples in any order, in any process (resumed sweeps reproduce).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from db.keys import ConvConfig, ConvFamily
from profiler.backends._modules import ELEMENT_BYTES, enough_samples
from profiler.backends.base import Backend, MeasurementFailed, TimingResult
from profiler.protocol import TimingProtocol

if TYPE_CHECKING:
    import numpy as np
    import torch

logger = logging.getLogger(__name__)

DEFAULT_PEAK_TFLOPS = 14.0  # fp32 (a TITAN V: 13.8 TFLOP/s, 653 GB/s, 80 SMs)
DEFAULT_BANDWIDTH_GBS = 650.0
DEFAULT_SM_COUNT = 80
DEFAULT_LAUNCH_US = 5.0
HALF_SPEEDUP = 8.0  # fp16/bf16 tensor-core peak relative to fp32

_TILE_M = 128
_TILES_N: tuple[tuple[int, float], ...] = ((32, 0.6), (64, 0.85), (128, 1.0))  # (tile_n, efficiency)
_SPLITS = (1, 2, 4, 8, 16)
_NCHW_HALF_FACTOR = 1.08  # fp16/bf16 in NCHW: cuDNN transposes to NHWC around tensor-core kernels
_DEPTHWISE_CHANNELS_PER_CTA = 32


def _ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _config_token(config: ConvConfig) -> str:
    """Stable text identity of a config for seeding (independent of dataclass repr changes)."""
    return (
        f"{config.family.key}|cin={config.cin}|cout={config.cout}|bs={config.batch}"
        f"|{config.dtype}|{config.layout}|{config.op}"
    )


def _rng(seed: int, token: str) -> np.random.Generator:
    import numpy as np

    digest = hashlib.sha256(f"latlab-fake|{seed}|{token}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


_INJECTED = {"oom": "CUDA out of memory", "error": "cuDNN error CUDNN_STATUS_EXECUTION_FAILED"}


def failure_injector(spec: str, seed: int = 0) -> Callable[[ConvConfig], str | None]:
    """``fail_on`` from ``"oom=P,error=Q"``: a share P (Q) of configurations fails with ``oom`` (``error``).

    Which configurations fail depends only on (seed, configuration), so every worker and every re-run
    agrees; re-measure them without injection (``--retry-failed``) to get their latencies.
    """
    from db.errors import LatlabError

    shares: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        status, _, value = part.partition("=")
        try:
            share = float(value)
        except ValueError:
            share = -1.0
        if status.strip() not in _INJECTED or not 0.0 <= share <= 1.0:
            raise LatlabError(f"bad failure injection {part!r}: use oom=SHARE,error=SHARE with shares in [0, 1]")
        shares[status.strip()] = share
    if sum(shares.values()) > 1.0:
        raise LatlabError(f"failure injection {spec!r}: the shares add up to more than 1")

    def fail_on(config: ConvConfig) -> str | None:
        digest = hashlib.sha256(f"latlab-fake-fail|{seed}|{_config_token(config)}".encode()).digest()
        u = int.from_bytes(digest[:8], "little") / 2**64
        for status, share in shares.items():
            if u < share:
                return status
            u -= share
        return None

    return fail_on


class FakeBackend(Backend):
    """Synthetic GPU for tests, demos and CI: realistic staircase latencies, no device needed.

    ``fail_on(config)`` returning ``"oom"``/``"error"`` makes :meth:`measure` raise
    :class:`MeasurementFailed` with that status; ``inject="oom=0.02,error=0.01"`` does the same for a
    hash-chosen share of configurations (see :func:`failure_injector`); ``delay_s`` sleeps in every
    measurement (a stand-in for real timing work, e.g. to benchmark a fleet of workers).
    """

    name: ClassVar[str] = "fake"
    default_timer: ClassVar[str] = "model"

    def __init__(
        self, protocol: TimingProtocol | None = None, *, seed: int | None = None,
        peak_tflops: float = DEFAULT_PEAK_TFLOPS, bandwidth_gbs: float = DEFAULT_BANDWIDTH_GBS,
        sm_count: int = DEFAULT_SM_COUNT, launch_us: float = DEFAULT_LAUNCH_US, noise: float = 0.02,
        fail_on: Callable[[ConvConfig], str | None] | None = None, delay_s: float = 0.0,
        inject: str | None = None,
    ) -> None:
        super().__init__(protocol)
        from db.errors import LatlabError

        if peak_tflops <= 0 or bandwidth_gbs <= 0 or sm_count < 1 or launch_us < 0:
            raise LatlabError(
                "fake backend needs peak_tflops > 0, bandwidth_gbs > 0, sm_count >= 1, launch_us >= 0"
            )
        if noise < 0 or delay_s < 0:
            raise LatlabError("fake backend needs noise >= 0 and delay_s >= 0")
        if self.timer != "model":
            raise LatlabError(f"the fake backend's timer is its analytical model ('model'), not {self.timer!r}")
        self.seed = self.protocol.seed if seed is None else int(seed)
        self.peak_tflops = float(peak_tflops)
        self.bandwidth_gbs = float(bandwidth_gbs)
        self.sm_count = int(sm_count)
        self.launch_us = float(launch_us)
        self.noise = float(noise)
        if inject and fail_on is not None:
            raise LatlabError("fake backend: pass fail_on or inject, not both")
        self.fail_on = failure_injector(inject, self.seed) if inject else fail_on
        self.delay_s = float(delay_s)

    # ---------------------------------------------------------------------------- the model

    @property
    def _bw(self) -> float:
        return self.bandwidth_gbs * 1e9

    @property
    def _launch_s(self) -> float:
        return self.launch_us * 1e-6

    def _peak(self, dtype: str) -> float:
        return self.peak_tflops * 1e12 * (HALF_SPEEDUP if dtype in ("fp16", "bf16") else 1.0)

    def _compute_s(self, config: ConvConfig) -> float:
        """Cheapest tiled, wave-quantised compute time over the modelled algorithms (+ split-K)."""
        f = config.family
        half = config.dtype in ("fp16", "bf16")
        m = config.batch * f.out_h * f.out_w
        m_tiles = -(-m // _TILE_M)
        khw = f.kernel_h * f.kernel_w
        per_sm = self.peak_tflops * 1e12 / self.sm_count
        if f.depthwise:  # CUDA cores (half2 doubles throughput), channels padded to the vector width
            channels = _ceil_to(config.cin, 8 if half else 4)
            ctas = m_tiles * -(-channels // _DEPTHWISE_CHANNELS_PER_CTA)
            flops_per_cta = 2 * _TILE_M * _DEPTHWISE_CHANNELS_PER_CTA * khw
            waves = -(-ctas // self.sm_count)
            return waves * flops_per_cta / (per_sm * (2.0 if half else 1.0))
        per_sm *= HALF_SPEEDUP if half else 1.0
        groups = f.conv_groups(config.cin)
        cin_g, cout_g = config.cin // groups, config.cout // groups
        k_pad = _ceil_to(cin_g, 8 if half else 4) * khw
        best = math.inf
        for tile_n, eff in _TILES_N:
            cout_pad = _ceil_to(cout_g, tile_n)
            base_ctas = m_tiles * (cout_pad // tile_n) * groups
            for split in _SPLITS:
                if split > 1 and k_pad < 32 * split:
                    break
                waves = -(-(base_ctas * split) // self.sm_count)
                t = waves * 2 * _TILE_M * tile_n * (k_pad / split) / (eff * per_sm)
                if split > 1:  # fp32 partial sums written and read back, plus the reduction kernel
                    t += 8 * split * m * cout_pad * groups / self._bw + self._launch_s
                best = min(best, t)
        return best

    def _memory_s(self, config: ConvConfig) -> float:
        f = config.family
        e = ELEMENT_BYTES[config.dtype]
        groups = f.conv_groups(config.cin)
        elems = (
            config.batch * config.cin * f.in_h * f.in_w
            + config.cout * (config.cin // groups) * f.kernel_h * f.kernel_w
            + config.batch * config.cout * f.out_h * f.out_w
        )
        return e * elems / self._bw

    def _true_latency_s(self, config: ConvConfig) -> float:
        t = max(self._compute_s(config), self._memory_s(config))
        if config.dtype in ("fp16", "bf16") and config.layout == "nchw":
            t *= _NCHW_HALF_FACTOR
        t += self._launch_s
        if config.op == "conv_bn_relu":
            f = config.family
            out_bytes = ELEMENT_BYTES[config.dtype] * config.batch * config.cout * f.out_h * f.out_w
            t += 2 * out_bytes / self._bw + self._launch_s
        return t

    def true_latency_ms(self, config: ConvConfig) -> float:
        """Noise-free modelled latency of ``config`` in milliseconds."""
        return self._true_latency_s(config) * 1e3

    # ---------------------------------------------------------------------------- sampling

    def _samples(self, true_ms: float, token: str) -> list[float]:
        """Noisy samples: the first k of a fixed per-token sequence, k set by the stop rule."""
        proto = self.protocol
        if self.noise > 0:
            factors = _rng(self.seed, token).lognormal(0.0, self.noise, size=proto.repeats)
        else:
            factors = [1.0] * proto.repeats
        samples: list[float] = []
        for factor in factors:
            samples.append(float(true_ms * factor))
            if enough_samples(samples, proto):
                break
        return samples

    def measure(self, config: ConvConfig) -> TimingResult:
        """Model ``config``; honours ``fail_on`` and ``delay_s``."""
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_on is not None:
            status = self.fail_on(config)
            if status:
                what = _INJECTED.get(status, status)
                raise MeasurementFailed(f"fake backend: injected {what} for {config.describe()}", status)
        true_ms = self.true_latency_ms(config)
        return TimingResult(self._samples(true_ms, _config_token(config)), telemetry={"true_ms": true_ms})

    # ---------------------------------------------------------------------------- whole models

    def model_latency_ms(
        self, model: torch.nn.Module, input_shape: tuple[int, ...], dtype: str = "fp32",
        layout: str = "nchw",
    ) -> float:
        """Noise-free modelled latency of one forward pass of ``model`` (see :meth:`measure_model`)."""
        return self._model_cost(model, input_shape, dtype, layout)[0] * 1e3

    def measure_model(
        self, model: torch.nn.Module, input_shape: tuple[int, ...], dtype: str = "fp32",
        layout: str = "nchw",
    ) -> TimingResult:
        """Sum of modelled conv latencies + memory-bound costs of other layers + launches, with noise.

        The model is traced once at batch 1 on its own device (eval, inference mode) to learn
        every ``nn.Conv2d``'s input size; the convs are then priced at batch ``input_shape[0]``, every other
        leaf module and every tensor op outside them (``x + y``; views are free) as a memory-bound pass. A
        torch.export graph (``pruned.pt2``) is read from its aten calls instead, priced exactly like its
        nn.Module.
        """
        if self.delay_s:
            time.sleep(self.delay_s)
        cost_s, token = self._model_cost(model, input_shape, dtype, layout)
        samples = self._samples(cost_s * 1e3, token)
        return TimingResult(samples, telemetry={"true_ms": cost_s * 1e3})

    def _model_cost(
        self, model: torch.nn.Module, input_shape: tuple[int, ...], dtype: str, layout: str,
    ) -> tuple[float, str]:
        from db.errors import InvalidKeyError

        if len(input_shape) < 2:
            raise InvalidKeyError(f"input_shape must be (batch, channels, ...), got {tuple(input_shape)}")
        if dtype not in ELEMENT_BYTES:
            raise InvalidKeyError(f"unknown dtype {dtype!r}; choose from {', '.join(ELEMENT_BYTES)}")
        batch = int(input_shape[0])
        e = ELEMENT_BYTES[dtype]
        total = 0.0
        parts: list[str] = []
        for op in _priced_ops(model, input_shape):
            if op.conv is not None:
                family, cin, cout = op.conv
                config = ConvConfig(family, cin, cout, batch=batch, dtype=dtype, layout=layout)
                total += self._true_latency_s(config)
                parts.append(_config_token(config))
                continue
            # elements per image: the trace runs at batch 1, but an operand held at the full batch (an op timed
            # alone by profiler.other_ops) broadcasts its output to it
            in_n = math.prod(op.in_shape[1:]) if op.in_shape else 0
            out_n = math.prod(op.out_shape[1:]) if op.out_shape else 0
            t = e * batch * (in_n + out_n) / self._bw
            if op.linear is not None:
                fin, fout = op.linear
                rows = batch * (in_n // max(fin, 1))
                t = max(2 * rows * fin * fout / self._peak(dtype), t + e * fin * fout / self._bw)
            total += t + self._launch_s
            parts.append(f"{op.name}:{op.in_shape}->{op.out_shape}")
        token = "model|" + hashlib.sha256(
            json.dumps([list(input_shape), dtype, layout, parts]).encode()
        ).hexdigest()
        return total, token

    # ---------------------------------------------------------------------------- metadata

    def settings(self) -> dict[str, Any]:
        """The synthetic GPU's parameters and the noise seed."""
        return {
            "timer": self.timer,
            "seed": self.seed,
            "peak_tflops": self.peak_tflops,
            "peak_tflops_half": self.peak_tflops * HALF_SPEEDUP,
            "bandwidth_gbs": self.bandwidth_gbs,
            "sm_count": self.sm_count,
            "launch_us": self.launch_us,
            "noise": self.noise,
        }

    def hardware(self) -> dict[str, Any]:
        """The synthetic GPU (name carries this instance's model parameters) and the host."""
        from profiler.hardware import fake_hardware

        return fake_hardware(self.peak_tflops, self.bandwidth_gbs, self.sm_count, self.launch_us).to_dict()


def _conv_family(conv: torch.nn.Conv2d, in_shape: tuple[int, ...]) -> ConvFamily:
    """The :class:`ConvFamily` of ``conv`` applied to an NCHW input of ``in_shape``."""
    return _family(in_shape, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups,
                   conv.in_channels, conv.out_channels)


def _family(in_shape: Sequence[int], kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int] | str,
            dilation: Sequence[int], groups: int, cin: int, cout: int) -> ConvFamily:
    """The :class:`ConvFamily` of a 2-D convolution with these arguments on an NCHW input of ``in_shape``."""
    (kh, kw), (dh, dw) = _pair(kernel), _pair(dilation)
    if isinstance(padding, str):
        ph, pw = (0, 0) if padding == "valid" else (dh * (kh - 1) // 2, dw * (kw - 1) // 2)
    else:
        ph, pw = _pair(padding)
    sh, sw = _pair(stride)
    depthwise = groups > 1 and groups == cin == cout
    return ConvFamily(int(in_shape[2]), int(in_shape[3]), kh, kw, sh, sw, ph, pw, dh, dw,
                      groups=1 if depthwise else groups, depthwise=depthwise)


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    values = [int(v) for v in value]
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


@dataclass(frozen=True)
class _Op:
    """One priced step of a forward pass: a conv (family, cin, cout), a linear layer (in, out features) or
    another layer (memory-bound), with its input and output shapes at batch 1."""

    name: str
    in_shape: tuple[int, ...] | None
    out_shape: tuple[int, ...] | None
    conv: tuple[ConvFamily, int, int] | None = None
    linear: tuple[int, int] | None = None


# aten ops of a torch.export graph priced like the leaf modules they come from (module name for the seed); an
# in-place one (``relu_``) is not priced, as an nn.Module's hook sees it as an identity
_GRAPH_LAYERS = {
    "batch_norm": "BatchNorm2d", "_native_batch_norm_legit_no_training": "BatchNorm2d", "relu": "ReLU",
    "silu": "SiLU", "sigmoid": "Sigmoid", "hardswish": "Hardswish",
    "hardsigmoid": "Hardsigmoid", "gelu": "GELU", "max_pool2d": "MaxPool2d", "avg_pool2d": "AvgPool2d",
    "adaptive_avg_pool2d": "AdaptiveAvgPool2d", "layer_norm": "LayerNorm", "linear": "Linear",
}


# functional calls that move no data (views, shape queries): free, as in profiler.other_ops
_FREE_FUNCTIONAL = {"getitem", "flatten", "reshape", "squeeze", "unsqueeze", "view", "size", "dim",
                    "contiguous", "permute", "transpose", "expand", "sym_size"}
_CONTAINERS = {"Sequential", "ModuleList", "ModuleDict"}


_OPERATORS = {"add", "sub", "mul", "truediv", "floordiv", "div", "matmul", "pow", "and", "or", "xor"}


def _functional_name(name: str) -> str:
    """One name for a tensor op however it was called: ``__iadd__``, ``__radd__``, ``add_`` (aten's in-place
    add) and ``add`` are all ``add``; in place or not, it moves the same data."""
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
        if name[:1] in ("i", "r") and name[1:] in _OPERATORS:
            name = name[1:]
    return name.rstrip("_")


def _priced_ops(model: torch.nn.Module, input_shape: tuple[int, ...]) -> list[_Op]:
    """What a forward pass runs, at batch 1: its leaf modules (hooks), or, for a graph that calls aten ops on
    its own parameters (``torch.export.load(...).module()``), its aten calls. TorchScript is refused."""
    import torch
    from torch import fx, nn

    if isinstance(model, torch.jit.ScriptModule):
        raise MeasurementFailed("the fake backend prices a network from its layers and cannot read TorchScript; "
                                "time it with --backend cpu or cuda", "error")
    if isinstance(model, fx.GraphModule) and not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return _graph_ops(model, input_shape)
    return _module_ops(model, input_shape)


def _owner(node: torch.fx.Node) -> str | None:
    """Qualified class name of the module whose ``forward`` made this call (None: a graph without records)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    owner = list(stack.values())[-1][-1]
    return f"{owner.__module__}.{owner.__qualname__}" if isinstance(owner, type) else str(owner)


def _from_layer(node: torch.fx.Node, layer: str) -> bool:
    """Whether ``node`` is the call of a ``layer`` module (a graph without module records: assume so)."""
    owner = _owner(node)
    return owner is None or owner.rsplit(".", 1)[-1] == layer


def _functional(node: torch.fx.Node) -> bool:
    """Whether ``node`` is a call in the ``forward`` of a block or network (a residual add), not inside a torch.nn
    layer: what an nn.Module's forward makes outside its leaf modules."""
    owner = _owner(node)
    return owner is not None and not (owner.startswith("torch.nn.") and owner.rsplit(".", 1)[-1] not in _CONTAINERS)


def _sample_input(model: torch.nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    import torch

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    pdtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return torch.randn((1, *tuple(input_shape)[1:]), device=device, dtype=pdtype)


def _module_ops(model: torch.nn.Module, input_shape: tuple[int, ...]) -> list[_Op]:
    """One :class:`_Op` per leaf module call (hooks on a batch-1 forward pass in eval mode), and per tensor op
    called outside every leaf module (a residual add in a block's ``forward``; views and shape queries are free)."""
    import torch
    from torch import nn
    from torch.overrides import TorchFunctionMode

    ops: list[_Op] = []
    inside = [0]  # leaf modules running now

    class Functional(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            name = _functional_name(getattr(func, "__name__", ""))
            x = next((a for a in args if isinstance(a, torch.Tensor)), None)
            if inside[0] or not isinstance(out, torch.Tensor) or x is None or name in _FREE_FUNCTIONAL:
                return out
            if name == "conv2d" and x.dim() == 4:  # F.conv2d in a forward: a conv, as in an exported graph
                ops.append(_functional_conv(x, out, *args[1:], **(kwargs or {})))
            else:
                ops.append(_Op(name, tuple(x.shape), tuple(out.shape)))
            return out

    def enter(module: nn.Module, inputs: Any) -> None:
        inside[0] += 1

    def leave(module: nn.Module, inputs: Any, output: Any) -> None:
        inside[0] -= 1

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        if x is not None and output is x:  # identity-like (Identity, Dropout in eval, in-place activations)
            return
        y = output if isinstance(output, torch.Tensor) else None
        in_shape, out_shape = tuple(x.shape) if x is not None else None, tuple(y.shape) if y is not None else None
        conv = linear = None
        if isinstance(module, nn.Conv2d) and in_shape is not None and len(in_shape) == 4:
            conv = (_conv_family(module, in_shape), module.in_channels, module.out_channels)
        elif isinstance(module, nn.Linear):
            linear = (module.in_features, module.out_features)
        ops.append(_Op(type(module).__name__, in_shape, out_shape, conv, linear))

    skip = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Flatten, nn.Unflatten)
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(hook) for m in leaves if not isinstance(m, skip)]
    handles += [m.register_forward_pre_hook(enter) for m in leaves] + [m.register_forward_hook(leave) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode(), Functional():
            model(_sample_input(model, input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return ops


def _functional_conv(x: torch.Tensor, out: torch.Tensor, weight: torch.Tensor, bias: Any = None,
                     stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1) -> _Op:
    """The :class:`_Op` of a functional ``conv2d(x, weight, ...)`` call."""
    cout, cin = int(weight.shape[0]), int(weight.shape[1]) * int(groups)
    family = _family(tuple(x.shape), tuple(weight.shape[2:]), stride, padding, dilation, int(groups), cin, cout)
    return _Op("Conv2d", tuple(x.shape), tuple(out.shape), conv=(family, cin, cout))


def _graph_ops(model: torch.fx.GraphModule, input_shape: tuple[int, ...]) -> list[_Op]:
    """One :class:`_Op` per priced aten call of an FX graph, shapes from a batch-1 shape propagation."""
    import torch
    from torch.fx.passes.shape_prop import ShapeProp

    from profiler.conv_calls import graph_convs, unpadded_family

    with torch.inference_mode():
        ShapeProp(model).propagate(_sample_input(model, input_shape))

    def shape(node: Any) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta") if isinstance(node, torch.fx.Node) else None
        return tuple(int(d) for d in meta.shape) if meta is not None and hasattr(meta, "shape") else None

    own_padding = {g.node: g.own_padding for g in graph_convs(model)}  # reflect/circular: priced as the module
    ops: list[_Op] = []
    for node in model.graph.nodes:
        if node.op != "call_function" or not hasattr(node.target, "_schema"):
            continue
        name = node.target._schema.name.split("::")[-1]
        in_shape, out_shape = shape(node.args[0]) if node.args else None, shape(node)
        args = [*node.args, *[None] * 9]
        transposed = name.startswith("conv_transpose") or name == "convolution" and args[6]
        if name in ("conv2d", "convolution") and in_shape is not None and len(in_shape) == 4 and not transposed:
            weight = shape(args[1])
            if weight is None:
                continue
            stride, padding, dilation = args[3] or 1, args[4] if args[4] is not None else 0, args[5] or 1
            groups = int(args[8] if name == "convolution" else args[6] or 1)
            cout, cin = weight[0], weight[1] * groups
            family = _family(in_shape, weight[2:], stride, padding, dilation, groups, cin, cout)
            family = unpadded_family(family, own_padding.get(node.name, (0, 0)))
            ops.append(_Op("Conv2d", in_shape, out_shape, conv=(family, cin, cout)))
        elif transposed and not _functional(node):  # not in the LUT: a memory-bound layer, as its module's hook
            ops.append(_Op(f"ConvTranspose{len(in_shape or (0, 0, 0, 0)) - 2}d", in_shape, out_shape))
        elif _functional(node):
            name = _functional_name(name)
            if name not in _FREE_FUNCTIONAL and in_shape is not None and out_shape is not None:
                ops.append(_Op(name, in_shape, out_shape))
        elif name in _GRAPH_LAYERS and _from_layer(node, _GRAPH_LAYERS[name]):
            weight = shape(node.args[1]) if name == "linear" else None
            linear = (weight[1], weight[0]) if weight is not None else None
            ops.append(_Op(_GRAPH_LAYERS[name], in_shape, out_shape, linear=linear))
    return ops
