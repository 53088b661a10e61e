"""Whole-network latency (the successor of MDP's est_inference.py), stored in ``model_measurements``.

A model is a torchvision or ``timm:`` name (optionally with a local state-dict file, loaded with
``weights_only=True``) or a saved module that cannot execute arbitrary Python on load: a TorchScript
archive (``torch.jit.save``) or an exported program (``torch.export.save``, ``.pt2``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from db.engine import Database
from db.errors import LatlabError
from db.files import write_atomically
from db.lut import get_or_create_hardware, record_model_measurement
from profiler._trace import shapes_only
from profiler.backends._modules import eval_mode
from profiler.backends.base import Backend, TimingResult
from profiler.hardware import named
from profiler.plan import resolve_model

log = logging.getLogger(__name__)


@dataclass
class ModelLatency:
    """One whole-network timing, as stored."""

    model: str
    variant: str
    backend: str
    hardware: str
    input_shape: tuple[int, ...]
    dtype: str
    layout: str
    status: str
    median_ms: float | None = None
    iqr_ms: float | None = None
    mean_ms: float | None = None
    n: int | None = None
    message: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    row_id: int | None = None
    round_ms: list[float] = field(default_factory=list)  # median of each interleaved round

    @property
    def images_per_s(self) -> float | None:
        if not self.median_ms:
            return None
        return self.input_shape[0] * 1000.0 / self.median_ms


_STATE_KEYS = ("state_dict", "model", "model_state_dict", "net")


@contextlib.contextmanager
def _without_warning(category: type[Warning], message: str) -> Iterator[None]:
    """Silence one library warning (``message``: a regex matched at its start) inside the block, no other: a
    probing load must not print torch's notes before latlab's one-line answer."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=message, category=category)
        yield


def load_state_dict(path: str | Path, *, trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """Load a state dict safely (``weights_only=True``; ``.safetensors`` files with safetensors), unwrapping
    checkpoint dicts and ``module.``.

    Checkpoints of HALP/MDP/latlab runs (``{"state_dict": …, "epoch": …}``) load as they are. A whole-model
    pickle is unpickled unrestricted only with ``trust_checkpoint`` (it can run code: trusted files only).
    """
    path = Path(path)
    if not path.is_file():
        raise LatlabError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    try:
        with _without_warning(UserWarning, "Detected pickle protocol"):  # an old pickle: still loads, or is refused
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for bad files
        lines = [line.strip() for line in str(exc).strip().splitlines()] or [type(exc).__name__]
        why = next((line.split("error: ", 1)[-1].split(" was not")[0] for line in lines if "Unsupported " in line),
                   lines[0])  # the unpickler's own words: "Unsupported global: GLOBAL …" or "Unsupported operand …"
        pickled = "Unsupported global" in why  # a pickled object (e.g. a whole model), not a broken file
        if not trust_checkpoint:
            hint = (". If it is a whole-model pickle you trust, `latlab measure`, `latlab export` and `latlab prune` "
                    "load it with --trust-checkpoint; for other commands save its state dict once: "
                    "torch.save(torch.load(FILE, weights_only=False).state_dict(), 'weights.pth')") if pickled else ""
            raise LatlabError(f"cannot load weights {path} safely (weights_only=True): {why}{hint}") from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:
            raise LatlabError(f"cannot load weights {path}: {type(exc2).__name__}: {exc2}") from None
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        inner = next((obj[k] for k in _STATE_KEYS if isinstance(obj.get(k), dict | nn.Module)), None)
        if inner is not None:
            obj = inner.state_dict() if isinstance(inner, nn.Module) else inner
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise LatlabError(f"{path} is not a state dict of tensors (nor a checkpoint holding one under "
                          f"{', '.join(_STATE_KEYS)})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise LatlabError(f"cannot load weights {path} as safetensors: {exc}") from None
    if not state:
        raise LatlabError(f"{path} holds no tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_model(
    model: str | None = None, *, weights: str | Path | None = None, module_file: str | Path | None = None,
    num_classes: int | None = None, trust_checkpoint: bool = False,
) -> tuple[str, nn.Module]:
    """Build the network to time; returns (display name, module in eval mode)."""
    if (model is None) == (module_file is None):
        raise LatlabError("give either a model name (torchvision or timm:NAME) or a saved module file, not both")
    if module_file is not None:
        return _load_module_file(Path(module_file))
    assert model is not None
    name, net = resolve_model(model, num_classes=num_classes)
    if weights is not None:
        state = load_state_dict(weights, trust_checkpoint=trust_checkpoint)
        try:
            missing, unexpected = net.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shapes that differ (another num_classes, another width)
            sizes = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
            raise LatlabError(f"weights {weights} do not match {name}: {len(sizes)} tensors of another shape "
                              f"({sizes[0] if sizes else str(exc).splitlines()[0]})") from None
        if missing or unexpected:
            raise LatlabError(
                f"weights {weights} do not match {name}: {len(missing)} missing keys (e.g. "
                f"{', '.join(missing[:3]) or '-'}), {len(unexpected)} unexpected "
                f"(e.g. {', '.join(unexpected[:3]) or '-'})"
            )
    return name, net.eval()


def check_archive(path: Path) -> None:
    """Refuse a truncated or corrupted zip archive (.pt2, TorchScript .pt) in one line naming it: torch's loaders
    do not check the archive's CRCs, and a flipped weight byte would load and run."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise LatlabError(f"{path} is truncated or corrupt (not a complete zip archive: {exc})") from None
    if bad is not None:
        raise LatlabError(f"{path} is corrupt: its entry {bad} fails the archive's CRC check")


def load_program(path: Path) -> tuple[torch.export.ExportedProgram, tuple[int, int]]:
    """A saved torch.export program (.pt2) and the (height, width) its image input is fixed to."""
    if path.suffix != ".pt2":
        raise LatlabError(f"--module takes a torch.export program (.pt2), got {path}")
    if not path.is_file():
        raise LatlabError(f"module file {path} does not exist")
    check_archive(path)
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise LatlabError(f"cannot load {path} as a torch.export program: {str(exc).splitlines()[0]}") from None
    names = set(program.graph_signature.user_inputs)
    image = next((node for node in program.graph.nodes if node.op == "placeholder" and node.name in names), None)
    size = _fixed_hw(image)
    if size is not None:
        return program, size
    raise LatlabError(f"{path} does not take one N×C×H×W image batch with a fixed H and W")


def _fixed_hw(node: torch.fx.Node | None) -> tuple[int, int] | None:
    """(H, W) of a placeholder recorded as an N×C×H×W tensor with fixed H and W, else None."""
    shape = getattr(node.meta.get("val"), "shape", None) if node is not None else None
    if shape is not None and len(shape) == 4 and all(isinstance(d, int) for d in shape[2:]):
        return int(shape[2]), int(shape[3])
    return None


def fixed_input_size(module: nn.Module) -> tuple[int, int] | None:
    """The (height, width) a loaded torch.export module's image input is fixed to; None for other modules."""
    if not isinstance(module, torch.fx.GraphModule):
        return None
    return _fixed_hw(next((node for node in module.graph.nodes if node.op == "placeholder"), None))


def network_input_size(net: nn.Module, input_size: tuple[int, int] | None, module: Path | None,
                       command: str) -> tuple[int, int]:
    """``(height, width)``: the size an exported ``net`` is fixed to (also a non-square one), else ``input_size``
    (224 × 224 by default); an ``input_size`` that clashes with the fixed size is an error."""
    fixed = fixed_input_size(net)
    if fixed is not None and input_size not in (None, tuple(fixed)):
        raise LatlabError(f"{module} takes {fixed[0]}×{fixed[1]} images (fixed when it was exported); run latlab "
                          f"{command} without --input-size")
    return tuple(fixed) if fixed is not None else input_size or (224, 224)


PROGRAM_LABELS = "latlab.json"  # extra file of a .pt2 latlab wrote: {"model": source network, "variant": label}


def save_program(program: torch.export.ExportedProgram, path: str | Path, *, model: str, variant: str) -> Path:
    """``torch.export.save`` with the source network's name and a variant label (e.g. ``halp50``) inside, so
    ``latlab measure --module`` stores the row under the network it came from (:func:`program_labels`)."""
    labels = json.dumps({"model": model, "variant": variant})
    return write_atomically(Path(path), partial(torch.export.save, program, extra_files={PROGRAM_LABELS: labels}))


def program_labels(path: str | Path) -> dict[str, str]:
    """``{"model", "variant"}`` that :func:`save_program` put in a .pt2; ``{}`` for other files (read from the zip
    archive, without loading the program)."""
    try:
        with zipfile.ZipFile(path) as archive:
            entry = next((n for n in archive.namelist() if n.endswith(f"/extra/{PROGRAM_LABELS}")), None)
            labels = json.loads(archive.read(entry)) if entry else {}
    except (OSError, zipfile.BadZipFile, ValueError):
        return {}
    return {k: v for k, v in labels.items() if k in ("model", "variant") and isinstance(v, str) and v} \
        if isinstance(labels, dict) else {}


def module_labels(path: Path) -> dict[str, str]:
    """``{"model", "variant"}`` a saved module is stored under: :func:`program_labels`, else its file's stem and
    ``module:FILE``."""
    return {"model": path.stem, "variant": f"module:{path.name}", **program_labels(path)}


def _load_module_file(path: Path) -> tuple[str, nn.Module]:
    if not path.is_file():
        raise LatlabError(f"module file {path} does not exist")
    if path.suffix.lower() == ".onnx":
        raise LatlabError(f"{path} is ONNX: --module takes TorchScript (.pt) or torch.export (.pt2), e.g. the "
                          "pruned.pt2 beside it (time an .onnx with ONNX Runtime or trtexec)")
    if zipfile.is_zipfile(path) or path.suffix == ".pt2":  # TorchScript and torch.export files are zip archives
        check_archive(path)
    try:
        if path.suffix == ".pt2":
            return module_labels(path)["model"], torch.export.load(str(path)).module()
        with _without_warning(FutureWarning, "`torch.jit.load` is deprecated"):  # TorchScript is still ours to load
            return path.stem, torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:
        raise LatlabError(
            f"cannot load {path} as TorchScript (.pt) or torch.export (.pt2): {str(exc).splitlines()[0]}; "
            "whole-model pickles are not loaded (they can run code)"
        ) from None


def count_params_and_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Parameters and multiply-accumulates of one image's forward pass at ``input_shape``.

    MACs are half the FLOPs of :class:`torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix
    products), so torch.export (``.pt2``) and TorchScript modules are counted too. Train/eval mode is kept.
    """
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(p.numel() for p in model.parameters())
    first = next(model.parameters(), None)

    def flops() -> int:
        example = torch.zeros((1, *input_shape[1:]), device=first.device if first is not None else "cpu",
                              dtype=first.dtype if first is not None and first.is_floating_point() else torch.float32)
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            eval_mode(model)(example)
        return counter.get_total_flops()

    was_training = model.training
    try:
        total = shapes_only(flops)  # counted on fake tensors: ResNet-152 in 0.4 s instead of 5 s
    finally:
        if was_training:
            with contextlib.suppress(NotImplementedError):  # a torch.export module refuses train()
                model.train()
    return {"params": params, "macs_per_image": total // 2}


def measure_model(
    db: Database | None, backend: Backend, model: nn.Module, *, name: str, variant: str = "dense",
    input_shape: tuple[int, ...] = (1, 3, 224, 224), dtype: str = "fp32", layout: str = "nchw",
    hardware_name: str | None = None, extra_details: dict[str, Any] | None = None,
) -> ModelLatency:
    """Time ``model`` on ``backend`` and store the result (also a failure) when ``db`` is given.

    ``extra_details`` (e.g. the latencies latency models predicted for this network) are stored beside
    the parameter and MAC counts in the row's ``details``.
    """
    return measure_models_interleaved(
        db, backend, {variant: model}, name=name, rounds=1, input_shape=input_shape, dtype=dtype, layout=layout,
        hardware_name=hardware_name, extra_details={variant: extra_details or {}})[variant]


def measure_models_interleaved(
    db: Database | None, backend: Backend, models: Mapping[str, nn.Module], *, name: str, rounds: int = 8,
    input_shape: tuple[int, ...] = (1, 3, 224, 224), dtype: str = "fp32", layout: str = "nchw",
    hardware_name: str | None = None, extra_details: Mapping[str, dict[str, Any]] | None = None,
) -> dict[str, ModelLatency]:
    """Time several variants of a network in turns and store one row per variant (keys of ``models``).

    Each round times every variant once under the backend's protocol (order A B C, then C B A, ...), so
    slow drift of the host (other tenants, clocks, heat) hits every variant alike instead of whichever
    was timed during a slow minute. Use :func:`paired_speedup` for speed-ups: it compares the variants
    round by round. A variant that fails (e.g. out of memory) is recorded as failed and skipped after.
    """
    if len(input_shape) != 4 or min(input_shape) < 1:
        raise LatlabError(f"input shape must be (batch, channels, height, width), got {input_shape}")
    if rounds < 1:
        raise LatlabError(f"rounds must be >= 1, got {rounds}")
    if not models:
        raise LatlabError("no models to measure")
    details = {v: {**count_params_and_macs(m, input_shape), **dict((extra_details or {}).get(v, {}))}
               for v, m in models.items()}
    order = list(models)
    per_round, failures = backend.measure_rounds([models[v] for v in order], tuple(input_shape), rounds,
                                                 dtype=dtype, layout=layout)
    samples = {v: [t.samples_ms for t in per_round[i]] for i, v in enumerate(order)}
    telemetry = {v: dict(per_round[i][-1].telemetry) if per_round[i] else {} for i, v in enumerate(order)}
    failed = {order[i]: exc for i, exc in failures.items()}
    info = backend.hardware()
    if hardware_name:
        info = named(info, hardware_name)
    protocol = backend.recorded_protocol()
    if rounds > 1:
        protocol["interleaved"] = {"rounds": rounds, "variants": order}
    out: dict[str, ModelLatency] = {}
    for variant in order:
        result = ModelLatency(name, variant, backend.name, info["name"], tuple(input_shape), dtype, layout, "ok",
                              details=details[variant])
        timing = TimingResult([x for chunk in samples[variant] for x in chunk]) if samples[variant] else None
        if variant in failed:
            result.status, result.message = failed[variant].status, str(failed[variant])
        if timing is not None:
            result.median_ms, result.iqr_ms, result.mean_ms, result.n = (
                timing.median_ms, timing.iqr_ms, timing.mean_ms, timing.n)
            result.round_ms = [statistics.median(chunk) for chunk in samples[variant]]
            if rounds > 1:
                result.details["round_median_ms"] = [round(x, 4) for x in result.round_ms]
        if db is not None:
            with db.session() as session:
                hw = get_or_create_hardware(session, info)
                row = record_model_measurement(
                    session, hw, model_name=name, variant=variant, backend=backend.name,
                    input_h=input_shape[2], input_w=input_shape[3], batch=input_shape[0], dtype=dtype,
                    layout=layout, protocol=protocol, median_ms=result.median_ms, iqr_ms=result.iqr_ms,
                    mean_ms=result.mean_ms, min_ms=timing.min_ms if timing is not None else None, n=result.n,
                    status=result.status, message=result.message, details=result.details,
                    telemetry=telemetry[variant],
                )
                result.row_id = row.id
        out[variant] = result
    return out


def paired_speedup(reference: ModelLatency, other: ModelLatency) -> float | None:
    """Speed-up of ``other`` over ``reference`` timed by :func:`measure_models_interleaved` in the same rounds:
    the median over rounds of (reference's round median / other's round median). None if either failed."""
    if not reference.round_ms or len(reference.round_ms) != len(other.round_ms):
        return None
    return float(statistics.median(a / b for a, b in zip(reference.round_ms, other.round_ms, strict=True)))
