"""Private: channel grids for sweep plans (full, solver lattice, explicit, random, Latin hypercube, ResNet50 reference).

Every function returns the set of (cin, cout) points to measure for one family. Used by
:mod:`profiler.plan`; import from there.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable, Sequence

import numpy as np

from db.errors import LatlabError
from profiler._trace import ConvLayer, TraceResult

Point = tuple[int, int]


def axis(dense: int, step: int, multiple: int = 1) -> list[int]:
    """``{m, 2m, ...} <= dense`` with ``m = lcm(step, multiple)``, plus ``dense`` itself."""
    m = math.lcm(step, multiple)
    values = set(range(m, dense + 1, m))
    values.add(dense)
    return sorted(values)


def layer_full_grid(layer: ConvLayer, step: int) -> set[Point]:
    """The 'full' grid of one conv: channel multiples of ``step`` up to the dense widths.

    Depthwise convs get the diagonal cin == cout; grouped convs use multiples of lcm(step, groups);
    a conv fed only by the network input keeps its dense cin.
    """
    return layer_lattice_grid(layer, step, step)


def auto_group_size(width: int) -> int:
    """Hardware-friendly channel group size q: 8 for width <= 64, 16 for <= 256, else 32 (a divisor of ``width``).

    The pruner's default (``group_sizes="auto"``) keeps channels in multiples of q; the ``lattice`` grid
    measures exactly those widths.
    """
    target = 8 if width <= 64 else 16 if width <= 256 else 32
    return math.gcd(width, target)


def striped_q(q: int, width: int, stripes: int) -> int:
    """``q`` in whole positions across ``stripes`` equal stripes of ``width`` channels (a position = one channel
    of each stripe): the most positions that divide a stripe and fit in ``q`` channels, at least one.

    ``lcm(q, stripes)`` when ``stripes`` does not divide ``width`` (coupled convs of unequal widths).
    """
    if stripes == 1:
        return q
    if width % stripes:
        return math.lcm(q, stripes)
    positions = width // stripes
    return stripes * max(d for d in range(1, positions + 1) if positions % d == 0 and d * stripes <= max(q, stripes))


def group_stripes(trace: TraceResult, groups: Sequence[Sequence[str]]) -> list[int]:
    """Per mask group: the lcm of the group counts of the grouped (non-depthwise) convs that write or read it."""
    index = {name: i for i, g in enumerate(groups) for name in g}
    out = [1] * len(groups)
    for layer in trace.layers:
        if layer.family.groups > 1 and not layer.family.depthwise:
            read = {index[p] for p in layer.producers}
            for i in {index[layer.name], *(read if len(read) == 1 else ())}:
                out[i] = math.lcm(out[i], layer.family.groups)
    return out


def lattice_steps(trace: TraceResult) -> dict[str, tuple[int, int]]:
    """Per conv: the channel steps (q of its own mask group, q of its producer's) the pruner uses with auto sizes.

    A group the pruner keeps (:meth:`TraceResult.fixed_groups`) steps by its whole width, and so does a cin that
    is not one group's width (the RGB input, a concat or split of fixed groups).
    """
    groups = trace.mask_groups()
    stripes = group_stripes(trace, groups)
    fixed = trace.fixed_groups(groups)
    index = {name: i for i, g in enumerate(groups) for name in g}
    cout = {layer.name: layer.cout for layer in trace.layers}
    q = [cout[g[0]] if i in fixed else striped_q(auto_group_size(cout[g[0]]), cout[g[0]], s)
         for i, (g, s) in enumerate(zip(groups, stripes, strict=True))]
    inputs = trace.input_groups(groups)
    return {layer.name: (q[index[layer.name]], layer.cin if inputs[layer.name] is None else q[inputs[layer.name]])
            for layer in trace.layers}


def layer_lattice_grid(layer: ConvLayer, q_out: int, q_in: int) -> set[Point]:
    """The pruner's lattice of one conv: cout in steps of ``q_out`` (its group's q), cin in steps of ``q_in``.

    A conv's cin is its producer group's width, so its steps are the producer's q (:func:`lattice_steps`;
    ``q_in = cin`` keeps it fixed).
    Depthwise convs get the diagonal; grouped convs multiples of their groups too; a conv fed by the
    network input keeps its cin.
    """
    fam = layer.family
    if fam.depthwise:
        return {(c, c) for c in axis(layer.cout, q_out)}
    couts = axis(layer.cout, q_out, fam.groups)
    cins = [layer.cin] if layer.fixed_cin else axis(layer.cin, q_in, fam.groups)
    return {(ci, co) for ci in cins for co in couts}


def dense_points(layers: Iterable[ConvLayer]) -> set[Point]:
    """The dense (cin, cout) of each layer."""
    return {(layer.cin, layer.cout) for layer in layers}


def family_full_grid(layers: Sequence[ConvLayer], step: int) -> set[Point]:
    """Union of :func:`layer_full_grid` over the layers of one family."""
    out: set[Point] = set()
    for layer in layers:
        out |= layer_full_grid(layer, step)
    return out


def family_explicit_grid(layers: Sequence[ConvLayer], cin: range, cout: range) -> set[Point]:
    """Exactly the given ranges (input-fed layers keep their cin; depthwise: diagonal of ``cout``).

    Channel counts that are not multiples of a grouped family's group count are dropped.
    """
    out: set[Point] = set()
    for layer in layers:
        fam = layer.family
        if fam.depthwise:
            out |= {(c, c) for c in cout}
            continue
        cins = [layer.cin] if layer.fixed_cin else [c for c in cin if c % fam.groups == 0]
        couts = [c for c in cout if c % fam.groups == 0]
        out |= {(ci, co) for ci in cins for co in couts}
    return out


def family_random_grid(
    layers: Sequence[ConvLayer], step: int, n: int, rng: np.random.Generator
) -> set[Point]:
    """``n`` points drawn without replacement from the family's full grid, dense points always kept."""
    full = sorted(family_full_grid(layers, step))
    keep = dense_points(layers)
    rest = [p for p in full if p not in keep]
    k = max(0, min(n - len(keep), len(rest)))
    picked = rng.choice(len(rest), size=k, replace=False) if k else []
    return keep | {rest[i] for i in picked}


def family_lhs_grid(
    layers: Sequence[ConvLayer], step: int, n: int, rng: np.random.Generator
) -> set[Point]:
    """``n`` Latin-hypercube samples over (cin, cout), snapped to the nearest full-grid point.

    The hypercube spans the bounding box of the family's full grid; distances are measured in
    box-normalised coordinates. Depthwise families use a 1-D hypercube along the diagonal.
    Duplicates after snapping are merged, and the dense points are always included.
    """
    from scipy.spatial import cKDTree
    from scipy.stats import qmc

    full = np.array(sorted(family_full_grid(layers, step)), dtype=float)
    keep = dense_points(layers)
    if layers[0].family.depthwise:
        diag = full[:, 0]
        lo, hi = diag.min(), diag.max()
        u = qmc.LatinHypercube(d=1, rng=rng).random(n)[:, 0]
        target = lo + u * (hi - lo)
        idx = np.abs(diag[None, :] - target[:, None]).argmin(axis=1)
        return keep | {(int(full[i, 0]), int(full[i, 1])) for i in idx}
    lo, hi = full.min(axis=0), full.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    tree = cKDTree((full - lo) / span)
    u = qmc.LatinHypercube(d=2, rng=rng).random(n)
    _, idx = tree.query(u * ((hi - lo) / span))
    return keep | {(int(full[i, 0]), int(full[i, 1])) for i in np.atleast_1d(idx)}


# --------------------------------------------------------------------------------------------------
# ResNet50 reference lattice (HALP/MDP), /work/shared/reference/halp_mdp_spec.md sections 2.2 and 2.3.
# --------------------------------------------------------------------------------------------------

RN50_BLOCKS = (3, 4, 6, 3)
"""Bottleneck blocks per stage (layer1..layer4)."""

RN50_GROUP_Q: dict[str, int] = {
    # spec §2.3 table, from [H] rn50_prune_groups.json; first matching pattern wins.
    "conv1": 2,
    "layer1.*.conv[12]": 32,
    "layer2.*.conv[12]": 32,
    "layer3.0.conv[12]": 64,
    "layer3.*.conv1": 128,
    "layer3.*.conv2": 32,
    "layer4.0.conv[12]": 64,
    "layer4.*.conv[12]": 32,
    # coupled residual groups {downsample.0, conv3 of every block}; q = max over their layers (§2.3)
    "stage1": 64,
    "stage2": 128,
    "stage3": 128,
    "stage4": 128,
}
"""Channel-group size q of every ResNet50 prune group (singletons by conv-name pattern, coupled by stage)."""

_BLOCK_RE = re.compile(r"^layer(?P<s>[1-4])\.(?P<b>\d+)\.(?P<conv>conv[123]|downsample\.0)$")


def rn50_group(name: str) -> str:
    """Prune group of a ResNet50 conv: ``conv1``, ``layerS.B.convK`` (singleton) or ``stageS`` (coupled)."""
    if name == "conv1":
        return "conv1"
    m = _BLOCK_RE.match(name)
    if m is None:
        raise LatlabError(f"{name!r} is not a torchvision ResNet50 conv name")
    if m["conv"] in ("conv3", "downsample.0"):
        return f"stage{m['s']}"
    return name


def rn50_group_q(group: str) -> int:
    """q of a prune group (:data:`RN50_GROUP_Q`)."""
    for pattern, q in RN50_GROUP_Q.items():
        if fnmatch.fnmatchcase(group, pattern):
            return q
    raise LatlabError(f"no HALP/MDP group size for ResNet50 group {group!r}")


def rn50_group_width(group: str) -> int:
    """Dense width n of a prune group (spec §2.3): stem 64, bottleneck 64·2^(S-1), coupled 256·2^(S-1)."""
    if group == "conv1":
        return 64
    if group.startswith("stage"):
        return 256 << (int(group[5]) - 1)
    return 64 << (int(group[5]) - 1)


def rn50_spec_producer(name: str) -> str | None:
    """Producer group of a ResNet50 conv by the rules of spec §2.2 (``pre_conv`` mapped to groups)."""
    if name == "conv1":
        return None
    m = _BLOCK_RE.match(name)
    if m is None:
        raise LatlabError(f"{name!r} is not a torchvision ResNet50 conv name")
    s, b, conv = int(m["s"]), int(m["b"]), m["conv"]
    previous_stream = "conv1" if s == 1 else f"stage{s - 1}"
    if conv == "downsample.0" or (conv == "conv1" and b == 0):
        return previous_stream
    if conv == "conv1":
        return f"stage{s}"
    return f"layer{s}.{b}.conv{int(conv[-1]) - 1}"


def rn50_conv_names() -> list[str]:
    """The 53 conv names of torchvision's ResNet50, in forward order."""
    names = ["conv1"]
    for s, blocks in enumerate(RN50_BLOCKS, start=1):
        for b in range(blocks):
            names += [f"layer{s}.{b}.conv{k}" for k in (1, 2, 3)]
            if b == 0:
                names.append(f"layer{s}.0.downsample.0")
    return names


def _reference_error(trace: TraceResult, why: str) -> LatlabError:
    return LatlabError(
        f"the 'reference' grid exists only for resnet50 (HALP/MDP channel groups); model "
        f"{trace.model_name!r} {why}; use --grid lattice (the widths the pruner asks for) instead"
    )


def check_resnet50(trace: TraceResult) -> dict[str, str]:
    """Verify that ``trace`` is torchvision's ResNet50 and matches spec §2.2/§2.3; return name -> group.

    Checks the conv names, the dense widths of every group, the coupled groups found by fx (an add
    joins groups) and each conv's producer group against :func:`rn50_spec_producer`.
    """
    names = [layer.name for layer in trace.layers]
    if sorted(names) != sorted(rn50_conv_names()):
        raise _reference_error(trace, f"has {len(names)} convs not named like torchvision's resnet50")
    group_of = {name: rn50_group(name) for name in names}
    for layer in trace.layers:
        group = group_of[layer.name]
        if layer.cout != rn50_group_width(group):
            raise _reference_error(trace, f"has {layer.name} with {layer.cout} output channels, "
                                          f"not the {rn50_group_width(group)} of resnet50")
    spec_groups = {}
    for name in names:
        spec_groups.setdefault(group_of[name], set()).add(name)
    fx_groups = {frozenset(g) for g in trace.groups}
    if fx_groups != {frozenset(g) for g in spec_groups.values()}:
        raise _reference_error(trace, "has residual groups that differ from resnet50's")
    for layer in trace.layers:
        found = {group_of[p] for p in layer.producers}
        expected = rn50_spec_producer(layer.name)
        if found != ({expected} if expected else set()):
            raise _reference_error(trace, f"feeds {layer.name} from {sorted(found)}, not from {expected}")
    return group_of


def reference_grids(trace: TraceResult) -> dict[str, set[Point]]:
    """Per conv name, the HALP/MDP lattice: cout in {q, 2q, ..., n}, cin on its producer group's lattice."""
    group_of = check_resnet50(trace)
    out: dict[str, set[Point]] = {}
    for layer in trace.layers:
        g = group_of[layer.name]
        q = rn50_group_q(g)
        couts = range(q, layer.cout + 1, q)
        producer = rn50_spec_producer(layer.name)
        if producer is None:
            cins: Iterable[int] = [layer.cin]
        else:
            qp = rn50_group_q(producer)
            cins = range(qp, layer.cin + 1, qp)
        out[layer.name] = {(ci, co) for ci in cins for co in couts}
    return out
