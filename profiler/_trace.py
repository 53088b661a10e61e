"""Private: trace a network with torch.fx and list its 2-D convolutions with shapes and producers.

Used by :mod:`profiler.plan`; import from there. Everything runs on the module's own device at batch 1
(CPU for a freshly built model), so importing or tracing never initialises CUDA by itself.
"""

from __future__ import annotations

import logging
import math
import operator
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata, _extract_tensor_metadata
from torch.nn import functional as F  # noqa: N812
from torch.nn.utils import parametrize

from db.errors import LatlabError
from db.keys import ConvFamily
from profiler._zeros import PRODUCTS, Dirty, blame_at_consumer, nonzero_after

log = logging.getLogger(__name__)

# Leaf modules that change the meaning of the channel axis: walking back stops there without a producer.
_OPAQUE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
    nn.ConvTranspose3d, nn.MultiheadAttention, nn.RNNBase, nn.Embedding, nn.EmbeddingBag,
)
# Leaf modules without per-channel state: they pass any channel count through unchanged.
STATELESS_OK: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid,
    nn.Tanh, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout2d, nn.Flatten, nn.MaxPool2d, nn.AvgPool2d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Softmax, nn.Upsample, nn.ZeroPad2d,
)


_LAYER_LEAVES = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)


def has_own_state(module: nn.Module) -> bool:
    """True when ``module`` holds parameters or buffers of its own (its submodules' do not count)."""
    return next(module.parameters(recurse=False), None) is not None or any(
        b is not None for b in module._buffers.values()
    )


_LEAF_MODULES: set[type[nn.Module]] = set()  # registered with register_leaf_module


def register_leaf_module(cls: type[nn.Module]) -> type[nn.Module]:
    """Declare module class ``cls`` a leaf that tracing does not enter (usable as a class decorator), e.g. one
    whose forward branches on its input. Its input channels stay whole and its output channels are its own."""
    _LEAF_MODULES.add(cls)
    return cls


def _timm_fx_registrations() -> tuple[tuple[type[nn.Module], ...], tuple[Any, ...]]:
    """timm's fx leaf modules and functions not to trace into, when timm is loaded (its models need them)."""
    timm_fx = sys.modules.get("timm.layers._fx")
    if timm_fx is None:
        return (), ()
    return tuple(timm_fx.get_notrace_modules()), tuple(f for f in timm_fx.get_notrace_functions() if callable(f))


def _hides_layers(mod: nn.Module) -> bool:
    """A module with stateful layers inside (as a leaf, fx does not trace into it)."""
    return any(has_own_state(m) for m in mod.modules() if m is not mod)


def opaque_module(mod: nn.Module | None) -> bool:
    """A leaf whose output channels are its own, where channel tracking stops: a channel mixer (Linear, Conv1d,
    attention, ...), a leaf with layers inside (timm's VGG ``ConvMlp``, ``nn.TransformerEncoderLayer``), a
    stateful leaf timm registers (``CondConv2d``) and any :func:`register_leaf_module` class."""
    if mod is None or isinstance(mod, (nn.Conv2d, nn.BatchNorm2d, *STATELESS_OK)):
        return False
    if isinstance(mod, (*_OPAQUE_MODULES, *_LEAF_MODULES)):
        return True
    return _hides_layers(mod) or (isinstance(mod, _timm_fx_registrations()[0]) and has_own_state(mod))


def has_channel_state(mod: nn.Module | None) -> bool:
    """A module whose channels export cannot resize (not a conv, BN or Linear): one with parameters or buffers
    of its own, or an opaque leaf that is not a channel mixer of known kind (:func:`opaque_module`)."""
    if mod is None or isinstance(mod, (nn.Conv2d, nn.BatchNorm2d, *STATELESS_OK, *_OPAQUE_MODULES)):
        return False
    return has_own_state(mod) or opaque_module(mod)


# ops that rearrange channels: export cannot follow a pruned mask through them
CHANNEL_MOVERS = {torch.permute, torch.transpose, torch.chunk, torch.split, torch.channel_shuffle, torch.narrow,
                  "permute", "transpose", "chunk", "split", "narrow", "unbind", "movedim", "swapaxes"}
# ops that join tensors along an axis: export follows them, but a conv reading a concat would be priced by
# several channel groups at once, which the pruning problem cannot express
CONCATS = {torch.cat, torch.concat, torch.concatenate, torch.stack, torch.hstack, torch.vstack, torch.dstack}


# Element-wise ops that force their operands to share one channel mask (a residual add joins groups).
_JOIN_FUNCTIONS = {
    operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
    torch.add, torch.sub, torch.mul,
}
_JOIN_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_"}

# Conv2d subclasses that override forward but compute a plain conv of their weight (timm: dynamic 'same' padding)
_SLICEABLE_CONVS = {"timm.layers.conv2d_same.Conv2dSame", "timm.layers.conv2d_same.Conv2dSameExport"}
# ops that mix the channels they are given (whatever dims they are called with) or do so over a dim argument
_CHANNEL_MIXING_FUNCTIONS = {torch.conv2d, F.conv2d, F.local_response_norm, F.group_norm, torch.group_norm}
_CHANNEL_MIXING_MODULES: tuple[type[nn.Module], ...] = (nn.LocalResponseNorm, nn.Softmax2d, nn.ChannelShuffle)
_CHANNEL_AXIS_FUNCTIONS = {torch.softmax, F.softmax, "softmax", torch.log_softmax, F.log_softmax, "log_softmax",
                           F.normalize, torch.cumsum, "cumsum", torch.cumprod, "cumprod", torch.cummax, "cummax",
                           torch.cummin, "cummin", torch.logcumsumexp, "logcumsumexp"}
# methods that take their second operand's shape (or type) only
_SHAPED_LIKE = {"expand_as", "view_as", "reshape_as", "type_as"}
# ops that may take a tensor's channel count as a size (``x.view(b, c, -1)``): the slim network's count is right
_SIZE_TAKERS = {"view", "reshape", torch.reshape, "expand", "unflatten", torch.unflatten, "new_zeros", "new_ones",
                "new_empty", "new_full", torch.zeros, torch.ones, torch.empty, torch.full, torch.rand, torch.randn}
# ops that reorder or pick entries along their ``dim`` argument (at this position), the channels when it is 1
_REORDERING_FUNCTIONS = {torch.sort: 1, "sort": 1, torch.argsort: 1, "argsort": 1, torch.gather: 1, "gather": 1,
                         torch.index_select: 1, "index_select": 1, torch.scatter: 1, "scatter": 1,
                         torch.scatter_add: 1, "scatter_add": 1, torch.topk: 2, "topk": 2,
                         torch.take_along_dim: 2, "take_along_dim": 2}


@dataclass(frozen=True)
class ConvLayer:
    """One 2-D convolution of a traced network.

    Attributes:
        name: qualified module name, e.g. ``layer1.0.conv2`` (``name#2`` for a module's 2nd call).
        family: fixed geometry (input feature map from shape propagation, kernel, stride, ...).
        cin / cout: dense channel counts.
        producers: convs whose output channels feed this conv's input (walking back through
            BN/activations/pooling/adds/concats), in network order; ``()`` when only the network
            input (or a non-conv channel mixer such as a Linear) feeds it.
    """

    name: str
    family: ConvFamily
    cin: int
    cout: int
    producers: tuple[str, ...] = ()

    @property
    def fixed_cin(self) -> bool:
        """True when no conv produces this conv's input (e.g. the stem on the RGB image): cin stays fixed."""
        return not self.producers


@dataclass
class TraceResult:
    """Output of :func:`trace_model`: the convs, the channel-coupled groups among them, and the convs whose
    output width a pruner must keep (``fixed``: conv -> why; their channels reach the network output, a concat,
    an op that rearranges channels or a module with per-channel state other than BN, e.g. a LayerNorm).
    ``nonzero`` (also in ``fixed``) are those whose pruned channels an op would make non-zero before a conv or
    Linear reads them: pruning them, export would change what the network computes (:mod:`profiler._zeros`)."""

    model_name: str
    input_size: tuple[int, int]
    layers: list[ConvLayer]
    groups: list[tuple[str, ...]] = field(default_factory=list)
    fixed: dict[str, str] = field(default_factory=dict)
    nonzero: dict[str, str] = field(default_factory=dict)

    def group_of(self) -> dict[str, int]:
        """Conv name -> index into :attr:`groups`."""
        return {name: i for i, g in enumerate(self.groups) for name in g}

    def mask_groups(self) -> list[list[str]]:
        """Convs (call names) whose output channels share one pruning mask, in network order.

        The coupled :attr:`groups`, plus the calls of one module, plus a depthwise conv with its producers
        (its output channels are its input channels) when they share one mask; a depthwise conv on a concat of
        several groups, or on a split or slice of one, keeps a group of its own.
        """
        uf = _UnionFind()
        for layer in self.layers:
            uf.add(layer.name)
        for g in self.groups:
            for name in g[1:]:
                uf.union(g[0], name)
        first_call: dict[str, str] = {}
        for layer in self.layers:
            uf.union(first_call.setdefault(layer.name.split("#", 1)[0], layer.name), layer.name)
        cout = {layer.name: layer.cout for layer in self.layers}
        for layer in self.layers:  # a depthwise conv on a split or slice of its producer keeps a group of its own
            if layer.family.depthwise and len({uf.find(p) for p in layer.producers}) == 1 and all(
                    cout[p] == layer.cin for p in layer.producers):
                uf.union(layer.producers[0], layer.name)
        members: dict[str, list[str]] = {}
        for layer in self.layers:
            members.setdefault(uf.find(layer.name), []).append(layer.name)
        return list(members.values())

    def fixed_groups(self, groups: Sequence[Sequence[str]]) -> dict[int, str]:
        """``{index: why}`` of the :meth:`mask_groups` ``groups`` whose width a pruner must keep: a member is
        :attr:`fixed`, or a depthwise member reads the network input or a concat (its cin is not its own)."""
        index = {name: i for i, g in enumerate(groups) for name in g}
        out: dict[int, str] = {}
        for layer in self.layers:
            if layer.name in self.fixed:
                out.setdefault(index[layer.name], self.fixed[layer.name])
            elif layer.family.depthwise and index[layer.name] not in {index[p] for p in layer.producers}:
                on = "a concat or split" if layer.producers else "the input"
                out.setdefault(index[layer.name], f"depthwise on {on}")
        return out

    def input_groups(self, groups: Sequence[Sequence[str]], names: Sequence[str] | None = None
                     ) -> dict[str, int | None]:
        """Per conv, the index of the :meth:`mask_groups` group whose channels are its input, one to one; ``None``
        when its cin stays fixed: it reads the network input, or a concat or split of groups a pruner keeps
        (:meth:`fixed_groups`). :class:`LatlabError` for a conv fed by several groups that are not concatenated
        or by part of a pruned group; ``names`` name the groups there (default: their first conv)."""
        index = {name: i for i, g in enumerate(groups) for name in g}
        fixed = self.fixed_groups(groups)
        cout = {layer.name: layer.cout for layer in self.layers}
        label = list(names) if names is not None else [g[0] for g in groups]
        out: dict[str, int | None] = {}
        for layer in self.layers:
            read = sorted({index[p] for p in layer.producers})
            if len(read) == 1 and cout[groups[read[0]][0]] == layer.cin:
                out[layer.name] = read[0]
            elif fixed.keys() >= set(read):
                out[layer.name] = None
            elif len(read) > 1:
                raise LatlabError(f"model {self.model_name!r}: conv {layer.name} is fed by several channel groups "
                                  f"({', '.join(label[i] for i in read)}) that are not joined by a concat; "
                                  "unsupported structure")
            else:
                raise LatlabError(f"model {self.model_name!r}: conv {layer.name} has cin={layer.cin} but its "
                                  f"producer group {label[read[0]]} has {cout[groups[read[0]][0]]} channels; "
                                  "unsupported structure")
        return out


class _PathTracer(fx.Tracer):
    """An fx tracer that remembers which module it is inside, for error messages.

    Subclasses of Conv2d, BatchNorm2d and Linear are leaves like the torch.nn classes themselves (timm's
    ``BatchNormAct2d`` is a BN followed by its activation; ``Conv2dSame`` pads on its own), so the rest of
    latlab sees them as the layers they are, and so are :func:`register_leaf_module` classes and ``leaves``.
    ``functions`` are called, not traced into.
    """

    def __init__(self, leaves: tuple[type[nn.Module], ...] = (), functions: tuple[Any, ...] = ()) -> None:
        super().__init__(autowrap_functions=functions)
        self.leaves = (*_LAYER_LEAVES, *_LEAF_MODULES, *leaves)
        self.stack: list[str] = []
        self.failed_at: str | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        try:
            path = self.path_of_module(m)
        except Exception:
            path = type(m).__name__
        self.stack.append(path)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_at is None:
                self.failed_at = self.stack[-1] or "<root>"
            raise
        finally:
            self.stack.pop()


class _NamedShapeProp(ShapeProp):
    """ShapeProp (real tensors) that remembers the node it failed on and prints no traceback.

    ``ShapeProp.run_node`` prints a traceback to stderr before re-raising; this runs the node with
    the plain interpreter and records ``tensor_meta``/``type`` exactly as ShapeProp does.
    """

    failed_node: str | None = None

    def run_node(self, n: fx.Node) -> Any:
        try:
            result = fx.Interpreter.run_node(self, n)
        except Exception:
            if self.failed_node is None:
                self.failed_node = f"{n.name} ({n.op} {getattr(n.target, '__name__', n.target)})"
            raise
        found = False

        def extract(obj: Any) -> Any:
            nonlocal found
            if isinstance(obj, torch.Tensor):
                found = True
                return _extract_tensor_metadata(obj)
            return obj

        meta = map_aggregate(result, extract)
        if found:
            n.meta["tensor_meta"] = meta
        n.meta["type"] = type(result)
        return result


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()).split(" While executing ")[0]
    return f"{type(exc).__name__}: {text[:300]}"


def normalise_size(input_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``224`` -> ``(224, 224)``; ``(h, w)`` stays; anything else is a :class:`LatlabError`."""
    if isinstance(input_size, bool):
        raise LatlabError(f"input size must be an int or (height, width), got {input_size!r}")
    if isinstance(input_size, int):
        hw = (input_size, input_size)
    elif isinstance(input_size, (tuple, list)) and len(input_size) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in input_size
    ):
        hw = (int(input_size[0]), int(input_size[1]))
    else:
        raise LatlabError(f"input size must be an int or (height, width), got {input_size!r}")
    if min(hw) < 1:
        raise LatlabError(f"input size must be positive, got {input_size!r}")
    return hw


def _padding(conv: nn.Conv2d, name: str) -> tuple[int, int]:
    pad = conv.padding
    if isinstance(pad, str):
        if pad == "valid":
            return 0, 0
        out: list[int] = []
        for k, d in zip(conv.kernel_size, conv.dilation, strict=True):
            total = d * (k - 1)
            if total % 2:
                raise LatlabError(f"conv {name}: padding='same' with an even kernel pads asymmetrically; "
                                  "latlab families describe symmetric padding only")
            out.append(total // 2)
        return out[0], out[1]
    return int(pad[0]), int(pad[1])


def _out_size(n: int, pad: int, k: int, s: int, d: int) -> int:
    return (n + 2 * pad - d * (k - 1) - 1) // s + 1


def _effective_padding(conv: nn.Conv2d, name: str, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> tuple[int, int]:
    """The conv's padding, or, when a subclass pads on its own (timm's ``Conv2dSame``: asymmetric 'same'
    padding), the symmetric padding that gives the output size it produced."""
    pads = []
    for p, n, o, k, s, d in zip(_padding(conv, name), in_hw, out_hw, conv.kernel_size, conv.stride, conv.dilation,
                                strict=True):
        if _out_size(n, p, k, s, d) != o:
            p = next((q for q in range(d * (k - 1) + s + 1) if _out_size(n, q, k, s, d) == o), -1)
            if p < 0:
                raise LatlabError(f"conv {name} ({type(conv).__name__}) maps {in_hw} to {out_hw}, which no "
                                  "symmetric zero padding reproduces")
            log.info("conv %s (%s) pads on its own; its family is recorded with padding %d", name,
                     type(conv).__name__, p)
        pads.append(p)
    return pads[0], pads[1]


def conv_family(conv: nn.Conv2d, name: str, in_h: int, in_w: int,
                out_hw: tuple[int, int] | None = None) -> ConvFamily:
    """The :class:`ConvFamily` of ``conv`` applied to an ``in_h x in_w`` input (``out_hw``: the output size it
    produced there, for convs that pad on their own)."""
    if conv.padding_mode != "zeros":
        log.warning("conv %s uses padding_mode=%r; its family is recorded as zero-padded", name,
                    conv.padding_mode)
    ph, pw = _padding(conv, name) if out_hw is None else _effective_padding(conv, name, (in_h, in_w), out_hw)
    g, cin, cout = conv.groups, conv.in_channels, conv.out_channels
    depthwise = g > 1 and g == cin == cout
    return ConvFamily(
        in_h, in_w, conv.kernel_size[0], conv.kernel_size[1], conv.stride[0], conv.stride[1], ph, pw,
        conv.dilation[0], conv.dilation[1], 1 if depthwise else g, depthwise,
    )


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def add(self, x: str) -> None:
        self.parent.setdefault(x, x)

    def find(self, x: str) -> str:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def _is_join(node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _JOIN_FUNCTIONS
    return node.op == "call_method" and node.target in _JOIN_METHODS


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


def _dim_arg(node: fx.Node) -> Any:
    return node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)


def changes_channel_axis(node: fx.Node, mod: nn.Module | None) -> bool:
    """True when ``node`` (of a :func:`shaped_graph`) does not carry its tensor inputs' channels one to one:
    its output's dim 1 is not theirs (a reshape such as ECA's ``view(B, 1, C)``, a slice ``x[:, :C]``, a mean
    over channels) or it mixes channels (softmax or normalisation over dim 1, a functional conv). A flatten
    of the channels with the dims after them (before a Linear) keeps them; convs, BN and Linear modules,
    concats and channel movers are handled by their own rules."""
    if node.op == "call_module":
        if mod is None or isinstance(mod, (nn.Conv2d, nn.BatchNorm2d)) or opaque_module(mod):
            return False
    elif node.op not in ("call_function", "call_method") or node.target in CHANNEL_MOVERS or node.target in CONCATS:
        return False
    elif _reorders_channels(node):
        return True
    out = _shape(node)
    if out is None or len(out) < 2:
        return False
    if isinstance(mod, _CHANNEL_MIXING_MODULES) or node.target in _CHANNEL_MIXING_FUNCTIONS:
        return True
    if node.target in _CHANNEL_AXIS_FUNCTIONS and isinstance(_dim_arg(node), int) and _dim_arg(node) % len(out) == 1:
        return True
    if _hard_coded_channels(node, out):
        return True
    for a in node.all_input_nodes:
        shape = _shape(a)
        if shape is None or len(shape) < 2 or shape[1] == 1 or a.op == "get_attr" or out[1] == shape[1]:
            continue
        flattened = len(out) < len(shape) and out[1] % shape[1] == 0 and math.prod(out[1:]) == math.prod(shape[1:])
        if not flattened:
            return True
    return False


def _hard_coded_channels(node: fx.Node, out: tuple[int, ...]) -> bool:
    """True for a ``view``/``reshape`` whose size for the dim holding the channels is a number in the code
    (``x.view(-1, 64 * 7 * 7)``): a pruned network has fewer channels there."""
    if node.target not in ("view", "reshape", torch.reshape) or not node.args:
        return False
    shape = _shape(node.args[0])
    sizes = node.kwargs.get("shape", node.args[1:])
    if len(sizes) == 1 and isinstance(sizes[0], list | tuple):
        sizes = sizes[0]
    if shape is None or len(shape) < 2 or len(sizes) != len(out):
        return False
    for j in range(1, len(out)):  # the first dim after those that hold the batch holds the channels
        if math.prod(out[:j]) == shape[0]:
            return isinstance(sizes[j], int) and sizes[j] != -1
    return False


def _channel_count_of(node: fx.Node) -> fx.Node | None:
    """The tensor whose channel count ``node`` reads as a number (``x.shape[1]``, ``x.size(1)``, ``c`` of
    ``b, c, h, w = x.shape``, ``x.numel()``), or ``None``."""
    if node.op not in ("call_method", "call_function") or not node.args or not isinstance(node.args[0], fx.Node):
        return None
    src, dims = node.args[0], None
    if node.target in ("numel", torch.numel):
        return src
    if node.target == "size":
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    elif node.target is operator.getitem and len(node.args) > 1:  # x.shape[1], x.size()[1], x.shape[1:]
        base = src
        whole_size = base.op == "call_method" and base.target == "size" and len(base.args) == 1 and not base.kwargs
        if not (whole_size or base.op == "call_function" and base.target is getattr and base.args[1:] == ("shape",)):
            return None
        src, dims = base.args[0], node.args[1]
    if not isinstance(src, fx.Node) or dims is None:
        return None
    shape = _shape(src)
    if shape is None or len(shape) < 2:
        return None
    picked = range(len(shape))[dims] if isinstance(dims, slice) else [dims] if isinstance(dims, int) else []
    return src if any(d % len(shape) == 1 for d in picked) else None


def _reorders_channels(node: fx.Node) -> bool:
    """True when ``node`` keeps the channel count but not the channels' order (flip, roll, sort, gather, an
    index such as ``x[:, order]`` or ``x[:, ::-1]``)."""
    target, args = node.target, node.args
    shape = _shape(args[0]) if args else None
    if shape is None or len(shape) < 2:
        return False
    ndim = len(shape)

    def on_channels(dims: Any) -> bool:
        dims = dims if isinstance(dims, list | tuple) else (dims,)
        return any(isinstance(d, int) and d % ndim == 1 for d in dims)

    if target in _REORDERING_FUNCTIONS:
        i = _REORDERING_FUNCTIONS[target]
        dim = node.kwargs.get("dim", args[i] if len(args) > i else None)
        return dim is None and target in (torch.take_along_dim, "take_along_dim") or on_channels(dim)
    if target in (torch.flip, "flip"):
        return on_channels(node.kwargs.get("dims", args[1:] if len(args) > 2 else args[1] if len(args) > 1 else ()))
    if target in (torch.fliplr, "fliplr"):
        return True
    if target in (torch.roll, "roll"):
        dims = node.kwargs.get("dims", args[2] if len(args) > 2 else None)
        return dims is None or on_channels(dims)
    if target in (torch.rot90, "rot90"):
        return on_channels(node.kwargs.get("dims", args[2] if len(args) > 2 else (0, 1)))
    if target is operator.getitem:  # a tensor's subscript (not a tuple's: those have no shape)
        return not _index_keeps_channels(args[1], ndim)
    return False


def _index_keeps_channels(index: Any, ndim: int) -> bool:
    """True when the subscript ``index`` of a tensor with ``ndim`` dims takes every channel in order."""
    index = index if isinstance(index, tuple) else (index,)
    whole = slice(None, None, None)
    dim = 0
    for i, item in enumerate(index):
        if item is Ellipsis:
            after = [x for x in index[i + 1:] if x is not None]
            start = ndim - len(after)
            return start > 1 or after[1 - start] == whole
        if item is None:
            continue
        if dim == 1:
            return item == whole
        if dim == 0 and item != whole:
            return False  # the batch dim is picked: dim 1 is no longer the channels
        dim += 1
    return True


def moves_channels(node: fx.Node, mod: nn.Module | None) -> bool:
    """True when ``node`` (of a :func:`shaped_graph`) does not hand its input's channels on one to one: a
    channel mover (permute, chunk, ...) or an op for which :func:`changes_channel_axis` holds. Channel tracking
    stops there (the trace keeps such channels whole)."""
    return node.op in ("call_function", "call_method") and node.target in CHANNEL_MOVERS or changes_channel_axis(
        node, mod)


def _carries_channels(operand: fx.Node, node: fx.Node) -> bool:
    """True when ``operand`` of the element-wise ``node`` has the output's channels (not broadcast over them)."""
    shape, out = _shape(operand), _shape(node)
    if shape is None or out is None or len(out) < 2:
        return False
    axis = 1 - (len(out) - len(shape))  # broadcasting aligns the trailing dims: a (C, 1, 1) layer scale has C at 0
    return axis >= 0 and shape[axis] == out[1] > 1


def _is_gate(operand: fx.Node, node: fx.Node) -> bool:
    """True when ``operand`` of the product ``node`` is broadcast over its channels (CBAM's spatial attention
    ``x * sigmoid(conv(x))`` with a 1-channel map): it scales every channel alike."""
    out = _shape(node)
    return (node.op in ("call_function", "call_method") and node.target in PRODUCTS and out is not None
            and len(out) >= 2 and out[1] > 1 and not _carries_channels(operand, node))


def _base_class(mod: nn.Module) -> type[nn.Module]:
    """``mod``'s own class: the original one of a parametrized module (parametrize injects a subclass)."""
    return type(mod).__bases__[0] if parametrize.is_parametrized(mod) else type(mod)


def register_sliceable_conv(cls: type[nn.Conv2d]) -> type[nn.Conv2d]:
    """Declare that slicing the weight of Conv2d subclass ``cls`` slices what its own forward computes (it pads or
    casts, say); usable as a class decorator. Other subclasses that override forward keep all their channels."""
    _SLICEABLE_CONVS.add(f"{cls.__module__}.{cls.__qualname__}")
    return cls


def sliceable_conv(conv: nn.Conv2d) -> bool:
    """True when slicing ``conv``'s weight slices what it computes: ``nn.Conv2d`` itself, a subclass that keeps its
    forward and holds only a weight and a bias, timm's ``Conv2dSame`` (it only pads) or one registered with
    :func:`register_sliceable_conv`. Weight-standardised convs (timm's ``StdConv2d``) are not: their weights are
    normalised over the input channels."""
    cls = _base_class(conv)
    if f"{cls.__module__}.{cls.__qualname__}" in _SLICEABLE_CONVS:
        return True
    own = set(conv._parameters) | set(conv._buffers)
    same_forward = all(getattr(cls, m) is getattr(nn.Conv2d, m) for m in ("forward", "_conv_forward"))
    return same_forward and own <= {"weight", "bias"}


def _op_where(node: fx.Node) -> str:
    op = getattr(node.target, "__name__", str(node.target))
    where = next(reversed(node.meta.get("nn_module_stack") or {}), "")
    return f"{op} in {where}" if where else op


def _fixes_channels(node: fx.Node, mod: nn.Module | None) -> str | None:
    """Why the channels that reach ``node`` must keep their width (``None``: they need not)."""
    if node.op == "output":
        return "network output"
    if has_channel_state(mod) or isinstance(mod, _OPAQUE_MODULES) and not isinstance(mod, nn.Linear):
        return f"{type(mod).__name__} {node.target}"  # export slices the Linear after the convs, no other mixer
    if node.op in ("call_function", "call_method") and node.target in CONCATS or moves_channels(node, mod):
        return _op_where(node) if node.op != "call_module" else f"{type(mod).__name__} {node.target}"
    if node.op in ("call_function", "call_method") and not _is_join(node):  # e.g. F.group_norm(x, g, self.weight)
        param = next((a for a in node.all_input_nodes if a.op == "get_attr" and math.prod(_shape(a) or (1,)) > 1), None)
        if param is not None:
            return f"{_op_where(node)} with parameter {param.target}"
    return None


def shaped_graph(model_name: str, module: nn.Module, hw: tuple[int, int]) -> fx.GraphModule:
    """``module`` fx-traced with every node's ``tensor_meta`` from one batch-1 forward pass in eval mode (the
    module's train/eval mode is restored)."""
    was_training = module.training
    module.eval()
    try:
        return _trace_graph(model_name, module, hw)
    finally:
        module.train(was_training)


def fx_trace(module: nn.Module, what: str) -> tuple[fx.Graph, fx.Tracer]:
    """``module``'s fx graph (and the tracer, whose ``root`` builds a GraphModule) by :class:`_PathTracer`.

    Should that fail with timm loaded, the modules and functions timm registers as not traceable are leaves in
    a second try, as in timm's own feature extraction (VGG's ``ConvMlp`` and EfficientViT's ``LiteMLA`` branch
    on their input); their convs then stay unseen. Otherwise :class:`LatlabError` names ``what`` and the module
    that failed.
    """
    tracer = _PathTracer()
    try:
        return tracer.trace(module), tracer
    except Exception as exc:
        first = exc
    timm_leaves, functions = _timm_fx_registrations()
    if timm_leaves or functions:
        retry = _PathTracer(timm_leaves, functions)
        try:
            return retry.trace(module), retry
        except Exception:
            pass
    where = tracer.failed_at or "<root>"
    hint = ("; if that module can stay whole, declare its class with profiler.plan.register_leaf_module"
            if tracer.failed_at else "")
    raise LatlabError(f"torch.fx cannot trace {what} (inside module {where!r}): {_one_line(first)}{hint}")


def _trace_graph(model_name: str, module: nn.Module, hw: tuple[int, int]) -> fx.GraphModule:
    graph, tracer = fx_trace(module, f"model {model_name!r}")
    gm = fx.GraphModule(tracer.root, graph, type(module).__name__)
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    sp = _NamedShapeProp(gm)
    try:
        with torch.no_grad():
            _propagate_shapes(sp, (1, 3, hw[0], hw[1]), device, dtype)
    except Exception as exc:
        raise LatlabError(
            f"shape propagation of model {model_name!r} at input {hw[0]}x{hw[1]} failed at node "
            f"{sp.failed_node or '?'}: {_one_line(exc)}"
        ) from None
    return gm


T = TypeVar("T")


def shapes_only(run: Callable[[], T]) -> T:
    """``run()`` on fake tensors (the tensors it makes have shapes but no data, and nothing is computed: a
    ResNet-50 forward at 224 px in 0.1 s instead of 2-4 s on a CPU), or for real when an op needs values or has
    no fake kernel."""
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            return run()
    except Exception:
        return run()


def _propagate_shapes(sp: _NamedShapeProp, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> None:
    """Run ``sp`` on a zero input of ``shape`` (:func:`shapes_only`)."""
    def run() -> None:
        sp.failed_node = None
        sp.propagate(torch.zeros(shape, device=device, dtype=dtype))

    shapes_only(run)


def _track_channel_counts(node: fx.Node, sources: dict[fx.Node, frozenset[str]],
                          counted: dict[fx.Node, frozenset[str]], fixed: dict[str, str]) -> None:
    """Fix the convs whose channel count a value depends on (``x * (1 / x.shape[1])``): pruned, the count and so
    the value change. A count that only sizes a view or a new tensor (``x.view(b, c, -1)``) is harmless."""
    read = _channel_count_of(node)
    if read is not None:
        if sources.get(read):
            counted[node] = sources[read]
        return
    convs = frozenset().union(*(counted.get(a, frozenset()) for a in node.all_input_nodes))
    if not convs:
        return
    if "tensor_meta" not in node.meta and node.op != "output":  # arithmetic on the count, a tuple of sizes
        counted[node] = convs
    elif node.op == "output" or node.target not in _SIZE_TAKERS:
        for name in sorted(convs):
            fixed.setdefault(name, f"{_op_where(node)} uses the channel count as a number")


def trace_model(model_name: str, module: nn.Module, input_size: int | tuple[int, int] = 224) -> TraceResult:
    """fx-trace ``module`` (already resolved), propagate shapes at batch 1, collect its Conv2d layers.

    Producers: each node carries the set of convs whose output channels it carries; a Conv2d
    starts a new set, an opaque channel mixer (Linear, Conv1d, attention, ...) clears it, everything
    else takes the union of its tensor inputs (sizes such as ``x.shape`` carry none). Element-wise add/sub/mul
    additionally join the convs of their operands into one channel-coupled group (residual streams,
    squeeze-excitation scales), unless an operand's channels are not one group's (a concat, a slice, a
    parameter, ...): then the convs are ``fixed`` instead. So are the convs carried into the output, a concat,
    a channel mover, a stateful module, a reshape or reduction of the channel axis, a reordering of the channels,
    a BN that is not right after a conv, a conv feeding two BNs, a conv subclass with a forward of its own (see
    :func:`changes_channel_axis`, :func:`sliceable_conv`) and the convs whose pruned channels an op makes
    non-zero before a conv or Linear reads them (:mod:`profiler._zeros`).
    """
    hw = normalise_size(input_size)
    gm = shaped_graph(model_name, module, hw)
    modules = dict(gm.named_modules())
    sources: dict[fx.Node, frozenset[str]] = {}
    order: dict[str, int] = {}
    calls: dict[str, int] = {}
    uf = _UnionFind()
    layers: list[ConvLayer] = []
    fixed: dict[str, str] = {}
    inexact: set[fx.Node] = set()  # channels that are not one conv group's, one to one (concat, split, reshape)
    dirty: dict[fx.Node, Dirty] = {}  # convs whose pruned channels are not zero there (profiler._zeros)
    nonzero: dict[str, str] = {}  # convs whose pruned channels a conv or Linear would read non-zero
    counted: dict[fx.Node, frozenset[str]] = {}  # numbers computed from the channel count of these convs' channels
    for node in gm.graph.nodes:
        tensors = [a for a in node.all_input_nodes if "tensor_meta" in a.meta]  # not sizes such as x.shape[-2:]
        if node.op == "call_method" and node.target in _SHAPED_LIKE:
            tensors = tensors[:1]  # y.expand_as(x) carries y's channels; x only lends its shape
        mod = modules.get(node.target) if node.op == "call_module" else None
        why = _fixes_channels(node, mod)
        if why:
            for name in sorted(frozenset().union(*(sources.get(a, frozenset()) for a in tensors))):
                fixed.setdefault(name, why)
            if node.op != "output":
                inexact.add(node)
        _track_channel_counts(node, sources, counted, fixed)
        if isinstance(mod, nn.BatchNorm2d):
            src = node.args[0] if node.args else None
            after_conv = isinstance(src, fx.Node) and src.op == "call_module" and isinstance(
                modules.get(src.target), nn.Conv2d)
            if not after_conv:
                for name in sources.get(src, frozenset()):  # masking zeroes only the BN right after a conv
                    fixed.setdefault(name, f"{type(mod).__name__} {node.target} (not right after a conv)")
        if isinstance(mod, nn.Conv2d):
            calls[node.target] = calls.get(node.target, 0) + 1
            name = node.target if calls[node.target] == 1 else f"{node.target}#{calls[node.target]}"
            src = node.args[0] if node.args else node.kwargs.get("input")
            meta = src.meta.get("tensor_meta") if isinstance(src, fx.Node) else None
            shape = getattr(meta, "shape", None)
            if shape is None or len(shape) != 4:
                raise LatlabError(f"model {model_name!r}: conv {name} has no 4-D input shape after tracing")
            if int(shape[1]) != mod.in_channels:
                raise LatlabError(f"model {model_name!r}: conv {name} sees {int(shape[1])} input channels "
                                  f"but has in_channels={mod.in_channels}")
            prods = sorted(sources.get(src, frozenset()), key=order.__getitem__)
            if not sliceable_conv(mod):
                for conv in (*prods, name):
                    fixed.setdefault(conv, f"{_base_class(mod).__name__} {name} (its own forward)")
            # a depthwise conv shares its producer's mask: what it reads in a pruned channel, it zeroes
            if not (mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels):
                for conv, why in blame_at_consumer(f"conv {name}", [src], dirty).items():
                    nonzero.setdefault(conv, why)
            norms = [u.target for u in node.users
                     if u.op == "call_module" and isinstance(modules.get(u.target), nn.BatchNorm2d)]
            if len(norms) > 1:  # masking zeroes one BN after a conv: the other makes its pruned channels non-zero
                nonzero.setdefault(name, f"conv {name} feeds {len(norms)} BatchNorms ({', '.join(norms)})")
            out_shape = getattr(node.meta.get("tensor_meta"), "shape", None)
            out_hw = (int(out_shape[2]), int(out_shape[3])) if out_shape is not None and len(out_shape) == 4 else None
            layers.append(ConvLayer(name, conv_family(mod, name, int(shape[2]), int(shape[3]), out_hw),
                                    mod.in_channels, mod.out_channels, tuple(prods)))
            order[name] = len(order)
            uf.add(name)
            sources[node] = frozenset((name,))
            continue
        if node.op == "call_function" and node.target in (torch.conv2d, torch.nn.functional.conv2d):
            log.warning("model %s: functional conv2d at node %s is not planned (only nn.Conv2d modules are)",
                        model_name, node.name)
        elif isinstance(mod, (nn.Conv1d, nn.Conv3d, nn.modules.conv._ConvTransposeNd)):
            log.warning("model %s: %s %s is not planned (only nn.Conv2d modules are): no LUT prices it",
                        model_name, type(mod).__name__, node.target)
        if opaque_module(mod) or node.op in ("placeholder", "get_attr", "output"):
            if mod is not None:  # a Linear reads the flattened channels (other mixers fix them anyway)
                for conv, why in blame_at_consumer(f"{type(mod).__name__} {node.target}", tensors, dirty).items():
                    nonzero.setdefault(conv, why)
            sources[node] = frozenset()
            continue
        gates = [a for a in tensors if sources.get(a) and _is_gate(a, node)]
        tensors = [a for a in tensors if a not in gates]  # a spatial map scaling every channel is no channel of theirs
        merged = frozenset().union(*(sources.get(a, frozenset()) for a in tensors))
        if any(a in inexact for a in tensors):
            inexact.add(node)
        if _is_join(node) and "tensor_meta" in node.meta and merged:  # not arithmetic on sizes (H * W)
            foreign = [a for a in tensors if a in inexact or (not sources.get(a) and _carries_channels(a, node))]
            if foreign:  # a conv group cannot be pruned when it meets channels that are not its own
                a = foreign[0]
                other = f"parameter {a.target}" if a.op == "get_attr" else f"{a.name} (not one conv group's channels)"
                for name in merged:
                    fixed.setdefault(name, f"{_op_where(node)} with {other}")
                inexact.add(node)
            elif sum(1 for a in tensors if sources.get(a)) > 1:  # a residual add, a squeeze-excitation scale
                anchor = next(iter(merged))
                for name in merged:
                    uf.union(anchor, name)
        sources[node] = merged
        dirty[node] = nonzero_after(node, mod, tensors, sources, dirty)

    for layer in layers:  # one weight read by several inputs: its channels and theirs stay whole
        base = layer.name.split("#", 1)[0]
        if calls.get(base, 1) > 1:
            why = f"{base} is called {calls[base]} times (shared weights)"
            for name in (layer.name, *layer.producers):
                fixed.setdefault(name, why)
    by_root: dict[str, list[str]] = {}
    for layer in layers:
        by_root.setdefault(uf.find(layer.name), []).append(layer.name)
    groups = sorted((tuple(g) for g in by_root.values()), key=lambda g: order[g[0]])
    if not layers:
        log.warning("model %s has no nn.Conv2d layers", model_name)
    for name, why in nonzero.items():
        fixed.setdefault(name, why)
    return TraceResult(model_name, hw, layers, groups, fixed, nonzero)
