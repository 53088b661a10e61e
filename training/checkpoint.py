"""Atomic, ``torch.load(weights_only=True)``-loadable training checkpoints.

A checkpoint holds only tensors, numbers, strings, lists, tuples and dicts: the model state (unwrapped from
DDP, with the mask/gate buffers), the pruner state (masks, removed blocks, importance, schedule), optimizer,
GradScaler, epoch, global step, best top-1, every rank's RNG states (torch CPU/CUDA, ``random``, numpy as
tensors) and the resolved config, which resume compares with the current one. A checkpoint written between an
epoch's training and its evaluation holds that epoch's row as ``pending``: a resume evaluates it first.
"""

from __future__ import annotations

import random
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from db.errors import LatlabError
from db.files import write_atomically
from training.config import TrainConfig

__all__ = ["FORMAT", "check_compatible", "gather_rng_states", "load_checkpoint", "save_checkpoint", "set_rng_state"]

FORMAT = 1
# config keys that must match between a checkpoint and the run resuming it
IDENTITY_KEYS = ("model.name", "model.num_classes", "data.input_size", "prune.method", "prune.ratio",
                 "prune.schedule", "prune.steps", "prune.every", "prune.start", "prune.group_sizes", "prune.input_size",
                 "prune.keep", "prune.min_keep_share", "prune.max_kept_blocks", "prune.max_kept_blocks_from",
                 "optim.epochs", "optim.warmup_epochs", "optim.schedule", "optim.lr", "optim.momentum",
                 "optim.nesterov", "optim.weight_decay", "optim.label_smoothing", "data.batch_size",
                 "run.max_iters_per_epoch", "run.seed", "prune.hardware", "prune.sweep", "prune.latency_model",
                 "prune.kind", "run.amp", "run.amp_dtype")
_MISSING = object()


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors/ints/lists."""
    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu())
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda"]])


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's :func:`rng_state` (index = rank); a collective under torch.distributed."""
    mine = rng_state()
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return out


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` atomically (temporary file in the same folder, then ``os.replace``)."""
    return save_atomically(dict(state, format=FORMAT), path)


def save_atomically(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through :func:`db.files.write_atomically`: a kill or a full disk leaves the old file or the
    new one, never a torn one, and a failure is one :class:`LatlabError` naming the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(path, partial(torch.save, obj))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (never unrestricted pickle)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LatlabError(f"cannot load checkpoint {path} safely (weights_only=True): {first}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise LatlabError(f"{path} is not a latlab training checkpoint (format {FORMAT})")
    return state


def _get(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part, _MISSING) if isinstance(d, dict) else _MISSING
    return d


def check_compatible(saved: dict[str, Any], current: dict[str, Any], path: str | Path) -> None:
    """Raise naming every differing identity key (model, input size, pruning, schedule) of ``saved`` vs ``current``.

    A key the checkpoint lacks (written before the key existed) counts as its default.
    """
    defaults = TrainConfig().to_dict()
    old = {k: _get(saved, k) for k in IDENTITY_KEYS}
    old = {k: _get(defaults, k) if v is _MISSING else v for k, v in old.items()}
    amp_off = not old["run.amp"] and not _get(current, "run.amp")  # then the AMP dtype is never used
    diffs = [f"{k}: checkpoint {old[k]!r} vs config {_get(current, k)!r}" for k in IDENTITY_KEYS
             if old[k] != _get(current, k) and not (amp_off and k == "run.amp_dtype")]
    if diffs:
        raise LatlabError(f"checkpoint {path} was written by a different run ({'; '.join(diffs)}); use another "
                          "run.out or run.resume=never to start over")
