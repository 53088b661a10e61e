"""From a network to a sweep plan: which (family, cin, cout) points a LUT sweep must measure.

1. :func:`resolve_model` builds a torchvision (or ``timm:``) model by name, without weights, your own network
   (``FILE.py:NAME``), or takes a module.
2. :func:`trace_convs` traces it with ``torch.fx`` and shape propagation at batch 1 and lists every
   ``nn.Conv2d`` as a :class:`ConvLayer` (geometry, dense widths, producer convs).
3. :func:`parse_grid` reads a grid spec (CLI syntax) into a :class:`GridSpec`.
4. :func:`build_plan` expands the grid per shape family into a deduplicated :class:`SweepPlan`.

Grid kinds: ``full[:STEP]`` (channel multiples of STEP up to each layer's dense widths), ``lattice``
(the pruner's channel-group lattice with auto group sizes: what ``latlab prune`` will ask for),
``reference`` (the HALP/MDP channel-group lattice of ResNet50, halp_mdp_spec.md §2-3),
``explicit:cin=A:B:S,cout=A:B:S``, ``random:N[:STEP]`` and ``lhs:N[:STEP]`` (N points per family
sampled from the full grid). Importing this module does not initialise CUDA.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from torch import nn

from db.errors import LatlabError
from db.keys import ConvConfig, ConvFamily
from profiler import _grids
from profiler._trace import (
    ConvLayer,
    TraceResult,
    normalise_size,
    register_leaf_module,
    register_sliceable_conv,
    trace_model,
)
from profiler.custom_model import build_custom_model, is_custom_reference

__all__ = [
    "GRID_KINDS", "GRID_SYNTAX", "TIMM_PREFIX", "ConvLayer", "GridSpec", "SweepPlan", "TraceResult", "build_plan",
    "parse_grid", "plan_from_layers", "register_leaf_module", "register_sliceable_conv", "resolve_model",
    "shape_families", "trace_convs", "trace_network",
]

log = logging.getLogger(__name__)

GRID_KINDS = ("full", "lattice", "reference", "explicit", "random", "lhs")
GRID_SYNTAX = (
    "full[:STEP] | lattice | reference | explicit:cin=START:STOP:STEP,cout=START:STOP:STEP | "
    "random:N[:STEP][:seed=S] | lhs:N[:STEP][:seed=S]"
)


# ------------------------------------------------------------------------------------------------ models

def _display_name(model: nn.Module) -> str:
    return type(model).__name__


TIMM_PREFIX = "timm:"


def resolve_model(model: str | nn.Module, num_classes: int | None = None) -> tuple[str, nn.Module]:
    """``(display name, module in eval mode)`` for a model name or a module.

    A torchvision name is built with ``torchvision.models.get_model(name, weights=None)`` (and
    ``weights_backbone=None`` where the builder has it); ``num_classes`` is passed only when given and not
    1000 (None: the builder's own). A name ``timm:NAME`` (e.g. ``timm:resnet50d``,
    ``timm:efficientnet_b0.ra_in1k``) is built with ``timm.create_model(NAME, pretrained=False)`` when the
    optional ``timm`` package is installed. Your own network is ``FILE.py:NAME`` or ``package.module:NAME``
    (:mod:`profiler.custom_model`). Nothing is downloaded: weights come from a local file
    (``profiler.measure.load_model``). An unknown name raises :class:`LatlabError` listing close matches. A
    module is put in eval mode in place.
    """
    if isinstance(model, nn.Module):
        return _display_name(model), model.eval()
    if not isinstance(model, str) or not model.strip():
        raise LatlabError(f"model must be a torchvision model name, timm:NAME, FILE.py:NAME or an nn.Module, got "
                          f"{model!r}")
    name = model.strip()
    if name.lower().startswith(TIMM_PREFIX):
        return _timm_model(name[len(TIMM_PREFIX):].strip(), num_classes)
    if is_custom_reference(name):
        return name, build_custom_model(name, num_classes).eval()
    import torchvision

    name = name.lower()
    known = torchvision.models.list_models()
    if name not in known:
        raise LatlabError(f"unknown torchvision model {model.strip()!r}; "
                          f"{_close_matches(name, known, 'torchvision.models.list_models()')} (your own network: "
                          "FILE.py:NAME or package.module:NAME)")
    kwargs: dict[str, Any] = {"weights": None}
    if num_classes not in (None, 1000):  # 1000 keeps each builder's own default (detection: 91, segmentation: 21)
        kwargs["num_classes"] = num_classes
    if "weights_backbone" in inspect.signature(torchvision.models.get_model_builder(name)).parameters:
        kwargs["weights_backbone"] = None  # detection/segmentation: never download a backbone
    try:
        module = torchvision.models.get_model(name, **kwargs)
    except Exception as exc:  # torchvision raises several types for bad kwargs
        raise LatlabError(f"cannot build torchvision model {name!r}: {type(exc).__name__}: {exc}") from None
    return name, module.eval()


def _close_matches(name: str, known: list[str], where: str) -> str:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    return f"did you mean {', '.join(close)}?" if close else f"see {where}"


def _timm_model(name: str, num_classes: int | None) -> tuple[str, nn.Module]:
    try:
        import timm
    except ImportError:
        raise LatlabError(f"model {TIMM_PREFIX}{name} needs the timm package: pip install timm") from None
    arch = name.split(".")[0].lower()
    if not timm.is_model(arch):
        hint = _close_matches(arch, timm.list_models(), "timm.list_models()")
        raise LatlabError(f"unknown timm model {name!r}; {hint}")
    try:
        classes = {} if num_classes is None else {"num_classes": num_classes}
        module = timm.create_model(name, pretrained=False, **classes)
    except Exception as exc:  # timm raises several types for bad names and kwargs
        raise LatlabError(f"cannot build timm model {name!r}: {type(exc).__name__}: {exc}") from None
    return f"{TIMM_PREFIX}{name}", module.eval()


def trace_network(model: str | nn.Module, input_size: int | tuple[int, int] = 224) -> TraceResult:
    """Trace ``model`` and return its convs together with the channel-coupled conv groups.

    A module passed in keeps its train/eval mode (it is traced in eval mode).
    """
    was_training = model.training if isinstance(model, nn.Module) else False
    name, module = resolve_model(model)
    try:
        return trace_model(name, module, input_size)
    finally:
        module.train(was_training)


def trace_convs(model: str | nn.Module, input_size: int | tuple[int, int] = 224) -> list[ConvLayer]:
    """Every ``nn.Conv2d`` of ``model`` in forward order, with its input fmap from shape propagation.

    Depthwise convs (groups == cin == cout > 1) get ``ConvFamily(depthwise=True, groups=1)``; other
    grouped convs keep their group count. Raises :class:`LatlabError` when fx cannot trace the model.
    """
    return trace_network(model, input_size).layers


def shape_families(layers: Iterable[ConvLayer]) -> dict[ConvFamily, list[ConvLayer]]:
    """Layers grouped by :class:`ConvFamily`, families ordered by first appearance."""
    out: dict[ConvFamily, list[ConvLayer]] = {}
    for layer in layers:
        out.setdefault(layer.family, []).append(layer)
    return out


# ------------------------------------------------------------------------------------------------ grids

def _bad_grid(text: str, why: str) -> LatlabError:
    return LatlabError(f"bad grid {text!r}: {why}; valid: {GRID_SYNTAX}")


@dataclass(frozen=True)
class GridSpec:
    """How to choose (cin, cout) points per family. Build from CLI text with :func:`parse_grid`.

    Attributes:
        kind: ``full``, ``lattice``, ``reference``, ``explicit``, ``random`` or ``lhs``.
        step: channel step of the full grid (full/random/lhs).
        n: points per family (random/lhs).
        cin / cout: ``(start, stop, step)`` with inclusive stop (explicit).
        seed: RNG seed (random/lhs).
    """

    kind: str
    step: int = 8
    n: int | None = None
    cin: tuple[int, int, int] | None = None
    cout: tuple[int, int, int] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        text = self.text if self.kind in GRID_KINDS else self.kind
        if self.kind not in GRID_KINDS:
            raise _bad_grid(text, f"unknown kind {self.kind!r}")
        if not isinstance(self.step, int) or self.step < 1:
            raise _bad_grid(text, f"step must be an integer >= 1, got {self.step!r}")
        if self.kind in ("random", "lhs") and (not isinstance(self.n, int) or self.n < 1):
            raise _bad_grid(text, f"{self.kind} needs N >= 1 points per family, got {self.n!r}")
        if self.kind == "explicit":
            for axis_name in ("cin", "cout"):
                r = getattr(self, axis_name)
                if r is None or len(r) != 3:
                    raise _bad_grid(text, f"explicit needs {axis_name}=START:STOP:STEP")
                start, stop, step = r
                if start < 1 or stop < start or step < 1:
                    raise _bad_grid(text, f"{axis_name} range needs 1 <= START <= STOP and STEP >= 1")

    @property
    def text(self) -> str:
        """Canonical CLI form, e.g. ``full:8`` or ``lhs:200:8:seed=0``."""
        if self.kind in ("reference", "lattice"):
            return self.kind
        if self.kind == "full":
            return f"full:{self.step}"
        if self.kind == "explicit":
            return "explicit:" + ",".join(
                f"{a}={':'.join(map(str, r))}" for a, r in (("cin", self.cin), ("cout", self.cout)) if r
            )
        return f"{self.kind}:{self.n}:{self.step}:seed={self.seed}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (tuples become lists) plus the canonical ``text``."""
        d = asdict(self)
        d.update(cin=list(self.cin) if self.cin else None, cout=list(self.cout) if self.cout else None,
                 text=self.text)
        return d


def _int(text: str, token: str, what: str) -> int:
    if not re.fullmatch(r"[+-]?\d+", token.strip()):
        raise _bad_grid(text, f"{what} must be an integer, got {token!r}")
    return int(token)


def _range(text: str, token: str, axis_name: str) -> tuple[int, int, int]:
    parts = token.split(":")
    if len(parts) != 3:
        raise _bad_grid(text, f"{axis_name} needs START:STOP:STEP, got {token!r}")
    return tuple(_int(text, p, f"{axis_name} START/STOP/STEP") for p in parts)  # type: ignore[return-value]


def parse_grid(text: str) -> GridSpec:
    """Parse a CLI grid spec (see :data:`GRID_SYNTAX`); invalid text is a one-line :class:`LatlabError`."""
    if not isinstance(text, str) or not text.strip():
        raise _bad_grid(str(text), "empty grid spec")
    raw = text.strip()
    kind, _, rest = raw.partition(":")
    kind = kind.strip().lower()
    if kind not in GRID_KINDS:
        close = difflib.get_close_matches(kind, GRID_KINDS, n=1)
        raise _bad_grid(raw, f"unknown kind {kind!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    if kind in ("reference", "lattice"):
        if rest:
            raise _bad_grid(raw, f"{kind} takes no arguments")
        return GridSpec(kind)
    if kind == "full":
        if not rest:
            return GridSpec("full")
        if ":" in rest:
            raise _bad_grid(raw, "full takes one optional STEP")
        return GridSpec("full", step=_int(raw, rest, "STEP"))
    if kind == "explicit":
        ranges: dict[str, tuple[int, int, int]] = {}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, val = item.partition("=")
            key = key.strip().lower()
            if not eq or key not in ("cin", "cout"):
                raise _bad_grid(raw, f"explicit takes cin=... and cout=..., got {item!r}")
            if key in ranges:
                raise _bad_grid(raw, f"{key} given twice")
            ranges[key] = _range(raw, val, key)
        for key in ("cin", "cout"):
            if key not in ranges:
                raise _bad_grid(raw, f"explicit needs {key}=START:STOP:STEP")
        return GridSpec("explicit", cin=ranges["cin"], cout=ranges["cout"])
    # random / lhs
    parts = [p.strip() for p in rest.split(":")] if rest else []
    seed = 0
    if parts and parts[-1].lower().startswith("seed="):
        seed = _int(raw, parts.pop()[5:], "seed")
    if not parts:
        raise _bad_grid(raw, f"{kind} needs N, the number of points per family")
    if len(parts) > 2:
        raise _bad_grid(raw, f"{kind} takes N and an optional STEP")
    n = _int(raw, parts[0], "N")
    step = _int(raw, parts[1], "STEP") if len(parts) == 2 else 8
    return GridSpec(kind, step=step, n=n, seed=seed)


# ------------------------------------------------------------------------------------------------ plans

@dataclass
class SweepPlan:
    """The configurations a sweep must measure, plus a JSON-serialisable description of where they came from.

    ``configs`` are unique and ordered by family (first appearance in the network), then cin, cout.
    """

    configs: list[ConvConfig]
    description: dict[str, Any]
    layers: list[ConvLayer] = field(default_factory=list, repr=False)

    def families(self) -> list[ConvFamily]:
        """Distinct families in plan order."""
        return list(dict.fromkeys(c.family for c in self.configs))

    def by_family(self) -> dict[ConvFamily, list[ConvConfig]]:
        """Configs grouped by family, in plan order."""
        out: dict[ConvFamily, list[ConvConfig]] = {}
        for c in self.configs:
            out.setdefault(c.family, []).append(c)
        return out

    def __len__(self) -> int:
        return len(self.configs)


def _family_points(spec: GridSpec, trace: TraceResult) -> dict[ConvFamily, set[_grids.Point]]:
    families = shape_families(trace.layers)
    if spec.kind == "reference":
        per_layer = _grids.reference_grids(trace)
        return {fam: set().union(*(per_layer[layer.name] for layer in layers))
                for fam, layers in families.items()}
    out: dict[ConvFamily, set[_grids.Point]] = {}
    steps = _grids.lattice_steps(trace) if spec.kind == "lattice" else {}
    for index, (fam, layers) in enumerate(families.items()):
        rng = np.random.default_rng([spec.seed, index])
        if spec.kind == "full":
            points = _grids.family_full_grid(layers, spec.step)
        elif spec.kind == "lattice":
            points = set().union(*(_grids.layer_lattice_grid(layer, *steps[layer.name]) for layer in layers))
        elif spec.kind == "explicit":
            assert spec.cin is not None and spec.cout is not None
            cin = range(spec.cin[0], spec.cin[1] + 1, spec.cin[2])
            cout = range(spec.cout[0], spec.cout[1] + 1, spec.cout[2])
            points = _grids.family_explicit_grid(layers, cin, cout)
            if not points:
                raise LatlabError(f"explicit grid {spec.text!r} has no channel counts that family {fam.key} "
                                  f"accepts (multiples of its {fam.groups} groups)")
        elif spec.kind == "random":
            assert spec.n is not None
            points = _grids.family_random_grid(layers, spec.step, spec.n, rng)
        else:
            assert spec.n is not None
            points = _grids.family_lhs_grid(layers, spec.step, spec.n, rng)
        out[fam] = points
    return out


def build_plan(
    model: str | nn.Module | TraceResult,
    grid: GridSpec | str,
    *,
    input_size: int | tuple[int, int] = 224,
    batch: int = 256,
    dtype: str = "fp32",
    layout: str = "nchw",
    op: str = "conv",
) -> SweepPlan:
    """Trace ``model``, expand ``grid`` per shape family and return the deduplicated :class:`SweepPlan`.

    ``model`` may also be a :class:`TraceResult` from :func:`trace_network` (traced once, planned many
    times); its own input size is used and ``input_size`` is ignored.
    """
    spec = parse_grid(grid) if isinstance(grid, str) else grid
    if not isinstance(spec, GridSpec):
        raise LatlabError(f"grid must be a GridSpec or a string ({GRID_SYNTAX}), got {grid!r}")
    ConvConfig(ConvFamily(1, 1, 1, 1), 1, 1, batch, dtype, layout, op)  # validate settings up front
    trace = model if isinstance(model, TraceResult) else trace_network(model, normalise_size(input_size))
    hw = trace.input_size
    if not trace.layers:
        raise LatlabError(f"model {trace.model_name!r} has no nn.Conv2d layers to plan")
    points = _family_points(spec, trace)
    configs = [
        ConvConfig(fam, cin, cout, batch, dtype, layout, op)
        for fam, pts in points.items()
        for cin, cout in sorted(pts)
    ]
    description = {
        "model": trace.model_name,
        "input_size": list(hw),
        "grid": spec.to_dict(),
        "batch": batch,
        "dtype": dtype,
        "layout": layout,
        "op": op,
        "n_layers": len(trace.layers),
        "n_families": len(points),
        "n_configs": len(configs),
        "families": [fam.key for fam in points],
    }
    log.info("plan for %s at %dx%d, grid %s: %d configs over %d families", trace.model_name, hw[0], hw[1],
             spec.text, len(configs), len(points))
    return SweepPlan(configs, description, list(trace.layers))


def plan_from_layers(
    layers: Sequence[ConvLayer], spec: GridSpec, *, batch: int = 256, dtype: str = "fp32",
    layout: str = "nchw", op: str = "conv",
) -> list[ConvConfig]:
    """Configs of a non-reference grid for already traced layers (no tracing; handy for tests and tools)."""
    if spec.kind == "reference":
        raise LatlabError("the reference grid needs the traced network; use build_plan")
    trace = TraceResult("<layers>", (0, 0), list(layers))
    return [ConvConfig(fam, ci, co, batch, dtype, layout, op)
            for fam, pts in _family_points(spec, trace).items() for ci, co in sorted(pts)]
