"""HALP/MDP network tables (halp_mdp_spec.md §2.1-2.3) written from, and read back into, plain dicts.

Three files per architecture ``arch`` in one folder:

* ``{arch}_structure.json`` — ``{"reg_groups": [...]}``, one entry per channel group:
  ``{"reg_type": "GS_SPARSE" | "CL_GROUP", "layers": [conv, ...], "bn_name": [bn | null, ...],
  "pre_conv": [conv | null, ...], "aft_conv": [[conv, ...], ...]}`` (lists aligned with ``layers``).
  ``pre_conv`` names the conv feeding each layer: its only producer, or for a coupled producer group
  that group's head (the member outside every removable block's branch, e.g. ResNet50's
  ``downsample.0``); ``null`` for an input-fed conv. ``aft_conv`` lists each layer's consumers.
* ``{arch}_fmap.json`` — ``{conv: input feature-map size}``.
* ``{arch}_group_size.json`` — ``{conv: q}`` (the group's q for every member).

Names are plain module names; ``prefix="module."`` writes the DDP names the original code expects.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from db.errors import LatlabError

if TYPE_CHECKING:
    from pruning.graph import NetworkSpec

__all__ = ["REG_TYPES", "mdp_table_paths", "read_mdp_tables", "write_mdp_tables"]

REG_TYPES = ("GS_SPARSE", "CL_GROUP")
_KEYS = ("reg_type", "layers", "bn_name", "pre_conv", "aft_conv")


def mdp_table_paths(outdir: str | Path, arch_name: str) -> dict[str, Path]:
    """``{"structure" | "fmap" | "group_size": path}`` of an architecture's tables in ``outdir``."""
    d = Path(outdir)
    return {kind: d / f"{arch_name}_{kind}.json" for kind in ("structure", "fmap", "group_size")}


def _group_head(spec: NetworkSpec, gid: str) -> str:
    in_blocks = {c for b in spec.blocks for c in b.convs}
    members = spec.groups[gid].convs
    return next((c for c in members if c not in in_blocks), members[0])


def write_mdp_tables(spec: NetworkSpec, outdir: str | Path, arch_name: str, *, prefix: str = "") -> dict[str, Path]:
    """Write the three HALP/MDP json tables of ``spec``; return their paths (see the module docstring)."""
    if not arch_name or any(ch in arch_name for ch in "/\\"):
        raise LatlabError(f"arch name must be a plain file-name part, got {arch_name!r}")
    if spec.input_size[0] != spec.input_size[1]:  # their fmap table holds one number per conv
        raise LatlabError(f"HALP/MDP's tables describe square feature maps; {spec.model_name} is traced at "
                          f"{spec.input_size[0]}x{spec.input_size[1]}: use a square --input-size")
    paths = mdp_table_paths(outdir, arch_name)
    Path(outdir).mkdir(parents=True, exist_ok=True)

    def p(name: str | None) -> str | None:
        return None if name is None else prefix + name

    consumers: dict[str, list[str]] = {c.name: [] for c in spec.convs}
    for c in spec.convs:
        module = c.name.split("#", 1)[0]
        for prod in c.producers:
            if module not in consumers[prod]:
                consumers[prod].append(module)
    reg_groups = []
    for g in spec.groups.values():
        pre = []
        for name in g.modules:  # the tables name modules: a later call (conv#2) is its module
            conv = spec.conv(name)
            if conv.producer_group is None:
                pre.append(None)
            elif len(conv.producers) == 1:
                pre.append(p(conv.producers[0].split("#", 1)[0]))
            else:
                pre.append(p(_group_head(spec, conv.producer_group)))
        reg_groups.append({
            "reg_type": "CL_GROUP" if g.coupled else "GS_SPARSE",
            "layers": [p(n) for n in g.modules],
            "bn_name": [p(spec.conv(n).bn) for n in g.modules],
            "pre_conv": pre,
            "aft_conv": [[p(a) for a in consumers[n]] for n in g.modules],
        })
    modules = [c for c in spec.convs if "#" not in c.name]
    fmap = {p(c.name): c.fmap_in for c in modules}
    sizes = {p(c.name): spec.groups[c.group].q for c in modules}
    for kind, data in (("structure", {"reg_groups": reg_groups}), ("fmap", fmap), ("group_size", sizes)):
        paths[kind].write_text(json.dumps(data, indent=2) + "\n")
    return paths


def _load(path: Path) -> Any:
    if not path.is_file():
        raise LatlabError(f"{path}: no such file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LatlabError(f"{path}: not valid JSON ({exc})") from None


def _strip(name: Any, prefix: str, path: Path, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise LatlabError(f"{path}: {what} must be a non-empty string, got {name!r}")
    if prefix:
        if not name.startswith(prefix):
            raise LatlabError(f"{path}: {what} {name!r} lacks the prefix {prefix!r}")
        name = name[len(prefix):]
    return name


def _int_table(path: Path, prefix: str, what: str) -> dict[str, int]:
    data = _load(path)
    if not isinstance(data, dict):
        raise LatlabError(f"{path}: expected an object {{conv: {what}}}, got {type(data).__name__}")
    out: dict[str, int] = {}
    for k, v in data.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise LatlabError(f"{path}: {what} of {k!r} must be an integer >= 1, got {v!r}")
        out[_strip(k, prefix, path, "conv name")] = v
    return out


def _detect_prefix(path: Path) -> str:
    data = _load(path)
    names = list(data) if isinstance(data, dict) else []
    return "module." if names and all(isinstance(n, str) and n.startswith("module.") for n in names) else ""


def read_mdp_tables(outdir: str | Path, arch_name: str, *, prefix: str | None = None) -> dict[str, Any]:
    """Parse and validate the three tables of ``arch_name`` in ``outdir``.

    ``prefix=None`` strips ``module.`` when every name carries it. Returns ``{"groups": [(conv, ...)],
    "coupled": [bool], "group_q": [int], "bn": {conv: bn | None}, "pre_conv": {conv: conv | None},
    "aft_conv": {conv: [conv]}, "fmap": {conv: int}, "group_size": {conv: int}}``; a ``GS_SPARSE``
    entry with several layers yields one singleton group per layer (as the original code reads it).
    Malformed files raise :class:`LatlabError` naming the file and the problem.
    """
    paths = mdp_table_paths(outdir, arch_name)
    pre = _detect_prefix(paths["fmap"]) if prefix is None else prefix
    structure = _load(paths["structure"])
    spath = paths["structure"]
    if not isinstance(structure, dict) or not isinstance(structure.get("reg_groups"), list):
        raise LatlabError(f"{spath}: expected an object with a 'reg_groups' list")
    groups: list[tuple[str, ...]] = []
    coupled: list[bool] = []
    bn: dict[str, str | None] = {}
    pre_conv: dict[str, str | None] = {}
    aft_conv: dict[str, list[str]] = {}
    for i, entry in enumerate(structure["reg_groups"]):
        where = f"reg_groups[{i}]"
        if not isinstance(entry, dict):
            raise LatlabError(f"{spath}: {where} must be an object")
        missing = [k for k in _KEYS if k not in entry]
        if missing:
            raise LatlabError(f"{spath}: {where} lacks {', '.join(missing)}")
        if entry["reg_type"] not in REG_TYPES:
            raise LatlabError(f"{spath}: {where}.reg_type must be one of {', '.join(REG_TYPES)}, "
                              f"got {entry['reg_type']!r}")
        layers = entry["layers"]
        if not isinstance(layers, list) or not layers:
            raise LatlabError(f"{spath}: {where}.layers must be a non-empty list")
        for key in ("bn_name", "pre_conv", "aft_conv"):
            if not isinstance(entry[key], list) or len(entry[key]) != len(layers):
                raise LatlabError(f"{spath}: {where}.{key} must be a list as long as layers ({len(layers)})")
        names = [_strip(n, pre, spath, f"{where}.layers entry") for n in layers]
        for j, name in enumerate(names):
            if name in bn:
                raise LatlabError(f"{spath}: conv {name!r} is listed in more than one group")
            b, pc, ac = entry["bn_name"][j], entry["pre_conv"][j], entry["aft_conv"][j]
            bn[name] = None if b in (None, "", "None") else _strip(b, pre, spath, f"{where}.bn_name entry")
            pre_conv[name] = None if pc in (None, "", "None") else _strip(pc, pre, spath, f"{where}.pre_conv entry")
            if not isinstance(ac, list):
                raise LatlabError(f"{spath}: {where}.aft_conv[{j}] must be a list of conv names")
            aft_conv[name] = [_strip(a, pre, spath, f"{where}.aft_conv entry") for a in ac]
        if entry["reg_type"] == "CL_GROUP":
            groups.append(tuple(names))
            coupled.append(True)
        else:
            groups.extend((n,) for n in names)
            coupled.extend(False for _ in names)
    fmap = _int_table(paths["fmap"], pre, "input fmap")
    sizes = _int_table(paths["group_size"], pre, "group size")
    for kind, table in (("fmap", fmap), ("group_size", sizes)):
        if set(table) != set(bn):
            extra, lacking = sorted(set(table) - set(bn)), sorted(set(bn) - set(table))
            raise LatlabError(f"{paths[kind]}: convs differ from {spath.name}: "
                              f"extra {extra[:3]}, missing {lacking[:3]}")
    for name, pc in pre_conv.items():
        if pc is not None and pc not in bn:
            raise LatlabError(f"{spath}: pre_conv {pc!r} of {name!r} is not a listed conv")
    return {
        "groups": groups,
        "coupled": coupled,
        "group_q": [max(sizes[n] for n in g) for g in groups],
        "bn": bn,
        "pre_conv": pre_conv,
        "aft_conv": aft_conv,
        "fmap": fmap,
        "group_size": sizes,
    }
