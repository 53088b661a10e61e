"""Read pruning masks written by HALP/MDP (pickles) or by latlab (``masks.pt``) and map them onto a model.

HALP and MDP save masks with plain :mod:`pickle` (spec §5.5, §8.5): ``group_mask.pkl`` maps a tuple of
layer names (one coupled group) to a 0/1 float tensor; MDP's ``layer_masks.pkl`` (MGP, MDP) maps one
layer name to its mask. Names may carry DDP's ``module.`` prefix. A torch tensor pickled that way is
rebuilt through ``torch.storage._load_from_bytes``, which calls ``torch.load(weights_only=False)``, so
these files are read with a restricted unpickler that admits only tensor/array rebuilding and routes the
storage bytes through ``torch.load(weights_only=True)``. Nothing else in the file can run.

A residual block whose convs all keep no channel is removed (MDP's block removal). A conv that keeps no
channel in a block that keeps other convs (HALP's layer removal, whose branch then adds a constant) keeps
one dead channel instead, zeroed in the model, so the slim network computes exactly what the masked one does.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from db.errors import LatlabError
from db.safe_pickle import check_nesting, latin1_bytes
from pruning.export import zero_channels
from pruning.graph import NetworkSpec, build_network_spec

__all__ = ["MaskFile", "apply_mask_file", "load_masks", "masks_for_model", "read_mask_file"]

MAX_MASK_FILE_BYTES = 64 * 2**20


def _storage_from_bytes(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _numpy_global(module: str, name: str) -> Any:
    import numpy

    core = getattr(numpy, "_core", None) or numpy.core
    table = {"_reconstruct": core.multiarray._reconstruct, "ndarray": numpy.ndarray, "dtype": numpy.dtype,
             "scalar": core.multiarray.scalar}
    return table[name]


_ALLOWED: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): latin1_bytes,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("collections", "OrderedDict"): OrderedDict,
}
_NUMPY = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
          ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
          ("numpy._core.multiarray", "scalar")}


class _MaskUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if (module, name) in _NUMPY:
            return _numpy_global(module, name)
        raise LatlabError(f"refusing to load the mask file: it references {module}.{name}; a mask pickle may "
                          "hold only dicts of tensors/arrays (a pickle naming other globals can execute code)")


@dataclass
class MaskFile:
    """Masks keyed by layer-name tuples (one name per layer mask), and blocks the file names as removed."""

    masks: dict[tuple[str, ...], np.ndarray]
    removed_blocks: list[str] = field(default_factory=list)


def read_mask_file(path: str | Path) -> MaskFile:
    """Masks from a HALP/MDP pickle or a latlab ``masks.pt`` (``{"masks": …, "removed_blocks": …}``).

    Keys become tuples of layer names with any ``module.`` prefix stripped; values 0/1 float vectors.
    """
    path = Path(path)
    if not path.is_file():
        raise LatlabError(f"mask file {path} does not exist")
    if path.suffix.lower() in (".pt2", ".onnx"):
        raise LatlabError(f"{path} is an exported network, not masks: give it to --module, or give --mask the "
                          "masks.pt beside it")
    data = path.read_bytes()
    if len(data) > MAX_MASK_FILE_BYTES:
        raise LatlabError(f"mask file {path} is {len(data) / 2**20:.0f} MiB; masks are far smaller — wrong file?")
    try:
        if data[:2] == b"PK":  # torch.save's zip container
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        else:
            check_nesting(data, str(path))
            obj = _MaskUnpickler(io.BytesIO(data)).load()
    except LatlabError:
        raise
    except Exception as exc:
        raise LatlabError(f"{path} is not a readable mask file (truncated or corrupt: "
                          f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})"
                          ) from None
    removed: list[str] = []
    if isinstance(obj, Mapping) and isinstance(obj.get("masks"), Mapping):  # latlab's prune / train output
        removed = [str(b).removeprefix("module.") for b in obj.get("removed_blocks") or ()]
        obj = obj["masks"]
    if not isinstance(obj, Mapping) or not obj:
        raise LatlabError(f"{path} holds {type(obj).__name__}, not a non-empty dict of layer name -> mask")
    out: dict[tuple[str, ...], np.ndarray] = {}
    for key, value in obj.items():
        names = (key,) if isinstance(key, str) else tuple(key) if isinstance(key, tuple | list) else None
        if not names or not all(isinstance(n, str) for n in names):
            raise LatlabError(f"{path}: key {key!r} is neither a layer name nor a tuple of layer names")
        try:
            vec = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value, dtype=float).ravel()
        except (TypeError, ValueError):
            raise LatlabError(f"{path}: the mask of {key!r} is {type(value).__name__}, not a 0/1 vector") from None
        if not np.isin(vec, (0.0, 1.0)).all():
            odd = vec[~np.isin(vec, (0.0, 1.0))][0]
            raise LatlabError(f"{path}: the mask of {key!r} holds {odd:g}; a mask keeps (1) or drops (0) channels")
        out[tuple(n.removeprefix("module.") for n in names)] = vec
    return MaskFile(out, removed)


def masks_for_model(
    mask_file: MaskFile, model: nn.Module, spec: NetworkSpec, *, per_layer: bool = False,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``({conv: bool keep-vector}, removed blocks)`` for :func:`pruning.export.export_pruned`.

    Keys may name convs or their BNs. ``per_layer`` (MDP's ``--mgp``) requires one layer per key. Unknown
    layers, wrong lengths, and an empty conv outside any removable block are errors that name the layer. An
    empty conv in a block that is not removed keeps a dead channel, zeroed in ``model`` (module docstring).
    """
    mods = dict(model.named_modules())
    conv_of_bn = {c.bn: c.name for c in spec.convs if c.bn}
    masks: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for names, vec in mask_file.masks.items():
        if per_layer and len(names) != 1:
            raise LatlabError(f"--mgp expects one layer per mask, got the group {names!r} (a group_mask.pkl? "
                              "drop --mgp)")
        for name in names:
            conv = name if isinstance(mods.get(name), nn.Conv2d) else conv_of_bn.get(name)
            if conv is None:
                unknown.append(name)
                continue
            width = mods[conv].out_channels
            if vec.shape != (width,):
                raise LatlabError(f"the mask of {name} has {vec.size} entries; {conv} has {width} output channels")
            masks[conv] = torch.as_tensor(vec > 0.5)
    if unknown:
        raise LatlabError(f"mask layers not in the model ({len(unknown)}): {', '.join(unknown[:5])}"
                          f"{' …' if len(unknown) > 5 else ''}; is it the same architecture?")
    known = {b.name for b in spec.blocks}
    if bad := [b for b in mask_file.removed_blocks if b not in known]:
        raise LatlabError(f"the mask file removes {', '.join(bad)}, not a removable block of this model")
    removed = [b.name for b in spec.blocks if b.name in mask_file.removed_blocks
               or all(c in masks and not masks[c].any() for c in b.convs)]
    in_removed = {c for b in spec.blocks if b.name in removed for c in b.convs}
    in_blocks = {c for b in spec.blocks for c in b.convs}
    for conv, keep in masks.items():
        if not keep.any() and conv not in in_removed:
            if conv not in in_blocks:
                raise LatlabError(f"the mask of {conv} keeps no channel and {conv} is not inside a removable block")
            masks[conv] = _dead_channels(model, spec, conv)
    masks = {c: k for c, k in masks.items() if c not in in_removed}
    for gid, g in spec.groups.items():  # a coupled group is given whole, or not at all
        given = [c for c in g.modules if c in masks]
        live = [c for c in g.modules if c not in in_removed]
        if given and len(given) < len(live) and not all(bool(masks[c].all()) for c in given):
            lacking = next(c for c in live if c not in masks)
            raise LatlabError(f"the mask file prunes {given[0]} but has no mask for {lacking}, which shares its "
                              f"channels (group {gid}); is it the same architecture?")
    return masks, removed


@torch.no_grad()
def _dead_channels(model: nn.Module, spec: NetworkSpec, conv: str) -> torch.Tensor:
    """Keep one channel per stripe of ``conv``'s group, zeroed in ``model`` (conv row and bias, its BN).

    An empty layer inside a block that keeps other layers (HALP's layer removal) leaves a branch that adds
    a constant, which HALP's own export only approximates (spec §9.6). A dead channel reproduces the masked
    network exactly, at any input size, for the cost of a one-channel conv.
    """
    layer, group = spec.conv(conv), spec.groups[spec.conv(conv).group]
    keep = torch.zeros(group.width, dtype=torch.bool)
    keep[torch.arange(group.stripes) * (group.width // group.stripes)] = True
    mods = dict(model.named_modules())
    zero_channels(mods[conv], mods.get(layer.bn or ""), keep)
    return keep


def load_masks(path: str | Path, model: nn.Module, input_size: int | tuple[int, int], *, per_layer: bool = False,
               ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The masks and removed blocks that the mask file at ``path`` describes for ``model`` (see
    :func:`masks_for_model`), ready for :func:`pruning.export.export_checked`."""
    return masks_for_model(read_mask_file(path), model, build_network_spec(model, input_size), per_layer=per_layer)


def apply_mask_file(path: str | Path, model: nn.Module, input_size: int | tuple[int, int], *,
                    per_layer: bool = False) -> nn.Module:
    """The physically pruned network (eval mode) that the mask file at ``path`` describes for ``model``."""
    from profiler.plan import trace_network
    from pruning.export import export_pruned

    masks, removed = load_masks(path, model, input_size, per_layer=per_layer)
    return export_pruned(model, trace_network(model, input_size), masks, removed).eval()
