"""Import and export the HALP/MDP pickle LUT format, loading pickles safely.

The format is a ``dict`` from ``"{bs}_{cin}_{cout}_{fmap}_{k}_{stride}"`` (MDP, 6 tokens) or
``"..._{groups}"`` (HALP, 7 tokens) to milliseconds per batch. It carries no padding, dilation, dtype,
layout or timing protocol: on import, padding is taken as ``k // 2`` and dilation 1 (true for every
ResNet/MobileNet conv), and dtype/layout/op are what the user declares; the sweep row records these
assumptions and the file's SHA-256.

Pickles are untrusted input. :func:`safe_load_pickle` refuses every global except the numpy scalar
constructors (a LUT written from numpy timings contains ``numpy.float64`` values) and ``_codecs.encode`` for
latin-1 text (how protocols 0-2 store their bytes), so a crafted file cannot run code; one nested deep enough
to crash the unpickler is refused before it is read (:func:`db.safe_pickle.check_nesting`). Python 2 pickles
are read with ``encoding="latin1"``, as numpy asks.
"""

from __future__ import annotations

import hashlib
import io
import math
import numbers
import pickle
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from db.engine import Database
from db.errors import InvalidKeyError, LatlabError, LegacyFormatError
from db.files import write_atomically
from db.keys import ConvConfig, ConvFamily, parse_legacy_key
from db.lut import (
    MeasurementValues,
    find_hardware,
    get_or_create_hardware,
    get_or_create_sweep,
    matching_hardware,
    record_measurements,
    row_config,
    sweep_rows,
)
from db.models import Measurement, Sweep
from db.safe_pickle import check_nesting, latin1_bytes

FORMATS = ("halp", "mdp")
MAX_PICKLE_BYTES = 512 * 1024 * 1024

# (module, name) pairs a legacy LUT may reference: numpy scalars only, rebuilt then cast to float.
_NUMPY_SCALAR_GLOBALS = {
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "dtype"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return latin1_bytes
        if (module, name) in _NUMPY_SCALAR_GLOBALS:
            import numpy  # noqa: F401  (only numpy's scalar constructors are admitted)

            return super().find_class(module, name)
        raise LegacyFormatError(
            f"refusing to load: the pickle references {module}.{name}; a legacy LUT may contain only "
            "dict, str, int and float values (a pickle that names other globals can execute code)"
        )


def safe_load_pickle(data: bytes, source: str = "pickle") -> Any:
    """Unpickle ``data`` admitting only builtin containers/scalars and numpy scalars."""
    try:
        check_nesting(data, source)
        return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except LegacyFormatError:
        raise
    except LatlabError as exc:
        raise LegacyFormatError(str(exc)) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, AttributeError,
            UnicodeDecodeError, MemoryError, OverflowError, RecursionError) as exc:
        raise LegacyFormatError(f"{source} is not a readable pickle (truncated or corrupt: {_short(exc)})") from None


def _short(thing: object, limit: int = 80) -> str:
    """``repr``-free text of ``thing`` cut to ``limit`` characters, for messages about untrusted input."""
    text = str(thing)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _latency(value: object) -> float | None:
    """``value`` as milliseconds when it is a real number (int, float, numpy integer/floating, not bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        return float(value)
    except OverflowError:  # an int beyond float's range
        return math.inf
    except (TypeError, ValueError):
        return None


def read_legacy_lut(path: str | Path) -> dict[str, float]:
    """Read and validate a HALP/MDP LUT pickle into ``{key: ms}``."""
    return read_legacy(path)[0]


def read_legacy(path: str | Path) -> tuple[dict[str, float], bytes]:
    """``(validated {key: ms}, the file's bytes)``, reading the file once (what :func:`import_legacy` takes as
    ``read``, so that a file checked before a database is opened is not read again)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_PICKLE_BYTES:
            raise LegacyFormatError(f"{path} is {size} bytes; refusing pickles over {MAX_PICKLE_BYTES} bytes")
        data = path.read_bytes()
    except OSError as exc:
        raise LegacyFormatError(f"cannot read {path}: {exc.strerror or exc}") from None
    obj = safe_load_pickle(data, str(path))
    if not isinstance(obj, dict):
        raise LegacyFormatError(f"{path} holds a {type(obj).__name__}, expected a dict of key -> latency")
    if not obj:
        raise LegacyFormatError(f"{path} holds an empty dict")
    out: dict[str, float] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise LegacyFormatError(f"{path}: a key is a {type(key).__name__}, expected str")
        try:
            parse_legacy_key(key)
        except InvalidKeyError as exc:
            raise LegacyFormatError(f"{path}: {_short(exc, 200)}") from None
        ms = _latency(value)
        if ms is None:
            raise LegacyFormatError(f"{path}: value of {key!r} is of type {type(value).__name__}, expected a "
                                    "number (int or float, numpy's too)")
        if not math.isfinite(ms) or ms < 0:
            raise LegacyFormatError(f"{path}: value of {key!r} is {_short(value)}, expected a finite latency >= 0")
        out[key] = ms
    return out, data


def legacy_key_to_config(key: str, dtype: str = "fp32", layout: str = "nchw", op: str = "conv", *,
                         grouped: frozenset[tuple[int, ...]] = frozenset()) -> ConvConfig:
    """A legacy key as a :class:`ConvConfig` (padding k//2, dilation 1; g == cin == cout > 1 is depthwise, unless
    ``(fmap, k, stride, g)`` is in ``grouped``: :func:`grouped_families` of the whole LUT)."""
    bs, cin, cout, fmap, k, stride, groups = parse_legacy_key(key)
    depthwise = (groups is not None and groups > 1 and groups == cin == cout
                 and (fmap, k, stride, groups) not in grouped)
    family = ConvFamily.square(fmap, k, stride, groups=1 if depthwise or groups is None else groups,
                               depthwise=depthwise)
    return ConvConfig(family, cin, cout, bs, dtype, layout, op)


def grouped_families(keys: Iterable[str]) -> frozenset[tuple[int, ...]]:
    """``(fmap, k, stride, g)`` of the grouped convs among legacy ``keys``: a fixed g > 1 with some width other
    than g. Their g == cin == cout keys (ResNeXt's narrowest width) are grouped, not depthwise."""
    out = set()
    for key in keys:
        _, cin, cout, fmap, k, stride, groups = parse_legacy_key(key)
        if groups is not None and groups > 1 and not groups == cin == cout and cin and cout:
            out.add((fmap, k, stride, groups))
    return frozenset(out)


@dataclass
class ImportReport:
    sweep_id: int
    hardware: str
    keys: int
    inserted: int
    already_present: int
    skipped_zero_channels: int


def import_legacy(
    db: Database, path: str | Path, *, hardware: str, dtype: str = "fp32", layout: str = "nchw",
    op: str = "conv", read: tuple[dict[str, float], bytes] | None = None,
) -> ImportReport:
    """Import a HALP/MDP LUT pickle as a sweep of hardware profile ``hardware``. Idempotent.

    Keys with a zero channel count (the repos' "layer removed", latency 0) carry no measurement and
    are skipped; the count is reported. ``read``: :func:`read_legacy`'s result for ``path``, if already read.
    """
    path = Path(path)
    lut, data = read if read is not None else read_legacy(path)
    sha = hashlib.sha256(data).hexdigest()
    configs: list[tuple[ConvConfig, float]] = []
    zero = 0
    grouped = grouped_families(lut)
    seen: dict[ConvConfig, str] = {}
    for key, ms in lut.items():
        bs, cin, cout, *_ = parse_legacy_key(key)
        if cin == 0 or cout == 0:
            zero += 1
            continue
        try:
            config = legacy_key_to_config(key, dtype, layout, op, grouped=grouped)
        except InvalidKeyError as exc:
            raise LegacyFormatError(f"{path}: {exc}") from None
        if config in seen and lut[seen[config]] != ms:
            raise LegacyFormatError(f"{path}: keys {seen[config]!r} and {key!r} are the same configuration with "
                                    f"different latencies ({lut[seen[config]]} vs {ms} ms)")
        seen.setdefault(config, key)
        configs.append((config, ms))
    n_tokens = len(next(iter(lut)).split("_"))
    info = {
        "kind": "imported", "name": hardware,
        "fingerprint": hashlib.sha256(f"imported:{hardware}".encode()).hexdigest()[:16],
    }
    protocol = {"timer": "unknown"}
    if not hardware.strip():
        raise LatlabError("--hardware must name the profile the LUT was measured on")
    with db.session() as session:  # an existing profile (id, name or fingerprint) takes the import
        known = matching_hardware(session, hardware)
        hw = find_hardware(session, hardware) if known else get_or_create_hardware(session, info)
        sweep = get_or_create_sweep(
            session, hw, backend="legacy", protocol=protocol,
            protocol_hash=f"legacy-{sha[:12]}-{dtype}-{layout}-{op}", name=path.name,
            settings={
                "source_file": path.name, "sha256": sha, "keys": len(lut), "key_tokens": n_tokens,
                "assumed": "padding = k // 2, dilation = 1; dtype/layout/op as declared at import; "
                           "timing protocol unknown (not recorded in the legacy format)",
            },
            plan={"n_configs": len(configs), "source": "legacy import"}, status="imported",
        )
        inserted = record_measurements(session, sweep.id, (
            (config, MeasurementValues(status="ok", median_ms=ms, mean_ms=ms, n=None,
                                       message="imported from legacy pickle")) for config, ms in configs))
        sweep_id, hw_name = sweep.id, hw.name
    return ImportReport(sweep_id, hw_name, len(lut), inserted, len(configs) - inserted, zero)


def export_legacy(
    db: Database, sweep_id: int, path: str | Path | None, fmt: str = "halp",
    where: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Write the ok measurements of a sweep as a HALP (7-token) or MDP (6-token) pickle.

    ``where`` filters rows by column value (e.g. ``{"dtype": "fp16", "batch": 256}``). Returns the dict
    written. Raises :class:`LegacyFormatError` if the format cannot express the
    sweep (non-square convs, grouped convs in MDP format, two families mapping to one key).
    """
    if fmt not in FORMATS:
        raise LegacyFormatError(f"unknown legacy format {fmt!r}; choose from {', '.join(FORMATS)}")
    out: dict[str, float] = {}
    origin: dict[str, str] = {}
    with db.session() as session:
        if session.get(Sweep, sweep_id) is None:
            raise LegacyFormatError(f"no sweep with id {sweep_id}")
        query = sweep_rows(sweep_id, statuses=("ok",), **(where or {}))
        rows = session.scalars(query.order_by(Measurement.family, Measurement.cin, Measurement.cout)).all()
        for row in rows:
            config = row_config(row)
            if fmt == "mdp" and config.family.conv_groups(config.cin) != 1:
                raise LegacyFormatError(
                    f"MDP's 6-token keys cannot express grouped conv {config.describe()}; use --format halp"
                )
            try:
                key = config.legacy_key(with_groups=fmt == "halp")
            except InvalidKeyError as exc:
                raise LegacyFormatError(str(exc)) from None
            if key in out and origin[key] != config.describe():
                raise LegacyFormatError(
                    f"legacy key {key} would hold two configurations ({origin[key]} and {config.describe()}); "
                    "the legacy format has no padding/dilation/dtype/layout/op fields — filter the export"
                )
            out[key] = float(row.median_ms)
            origin[key] = config.describe()
    if not out:
        raise LegacyFormatError(f"sweep {sweep_id} has no successful measurements to export")
    if path is not None:
        write_atomically(Path(path), pickle.dumps(out, protocol=4))
    return out

