"""Typed training configuration: dataclasses ← YAML file ← ``a.b=c`` overrides, validated before any work.

Unknown keys, wrong types and out-of-range values raise :class:`LatlabError` naming the key and the file.
Defaults follow the HALP/MDP ImageNet recipe (halp_mdp_spec.md §9.1).
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from db.engine import hide_passwords
from db.errors import LatlabError
from pruning.methods import METHODS as PRUNE_METHODS

__all__ = [
    "DataConfig", "ModelConfig", "OptimConfig", "PruneConfig", "RunConfig", "TrainConfig", "describe_config",
    "load_config", "save_config",
]

METHODS = ("none", *PRUNE_METHODS)


@dataclass
class DataConfig:
    """ImageFolder dataset: ``path/train_dir/CLASS/img`` and ``path/val_dir/CLASS/img``."""

    path: str | None = None  # ImageFolder root (or --data)
    train_dir: str = "train"  # sub-folder with the training images, one folder per class
    val_dir: str = "val"  # sub-folder with the validation images
    input_size: int = 224  # training crop / validation centre crop (pixels)
    workers: int = 5  # data-loader processes per training process
    batch_size: int = 128  # per process; the global batch is batch_size × world size
    val_batch_size: int | None = None  # default: batch_size


@dataclass
class ModelConfig:
    """A torchvision, timm:NAME or FILE.py:NAME model built with random init, optionally loaded from a local state-dict
    file."""

    name: str = "resnet50"  # torchvision model name, timm:NAME, or FILE.py:NAME / package.module:NAME
    weights: str | None = None  # local state dict to start from (no downloads; `module.` prefixes are fine)
    num_classes: int | None = None  # classifier width (default: the network's own; the dataset may have fewer)


@dataclass
class OptimConfig:
    """SGD + label smoothing + warm-up and cosine/linear decay (spec §9.1)."""

    lr: float = 1.024  # per 1024 images; scaled linearly to the global batch
    momentum: float = 0.875  # SGD momentum
    nesterov: bool = False  # Nesterov momentum
    weight_decay: float = 2.0**-15  # BatchNorm parameters get 0 (chosen by module type, not by name)
    label_smoothing: float = 0.1  # of the cross-entropy loss
    aux_loss_weight: float = 0.3  # of each auxiliary head's loss (GoogLeNet, Inception-v3 train with them)
    warmup_epochs: int = 8  # linear warm-up of the LR
    schedule: str = "cosine"  # cosine | linear
    epochs: int = 90  # pruning and fine-tuning together


@dataclass
class PruneConfig:
    """Latency-constrained pruning while training (spec §5.4, §6-§8)."""

    method: str = "none"  # none | halp | mgp | mdlm | mdp
    ratio: float = 0.7  # final target L0·(1 − ratio)
    schedule: str | None = None  # preset name (halp | mgp | mdlm | mdp); default: the method's own
    steps: int | None = None  # explicit schedule: overrides the preset's steps / every
    every: int | None = None  # iterations between pruning steps
    start: int = 0  # first global step of importance accumulation
    db: str | None = None  # SQLite path or SQLAlchemy URL of the LUT database (default: LATLAB_DB / ./latlab.db)
    hardware: str | None = None  # hardware profile whose LUT prices latency (or `sweep` / `latency_model`)
    sweep: int | None = None  # LUT sweep id (default: the only sweep of `hardware`, or the only one)
    latency_model: str | None = None  # a stored model's name; else `kind` is fitted on the sweep's LUT
    kind: str | None = None  # default: llm for halp/mgp, mdlm for mdlm/mdp
    group_sizes: str | int = "auto"  # auto | reference | N channels per item
    input_size: int | None = None  # resolution latency is predicted at (default data.input_size; e.g. deploy at 224)
    solver: str = "lagrange"  # dp | lagrange | milp-highs | milp-cbc | scip | mindtpy (dp: halp only)
    time_limit: float = 60.0  # seconds per solve
    slim: bool = True  # after the last pruning step, fine-tune the exported (physically smaller) network
    keep: list[str] = field(default_factory=list)  # convs kept whole: stem (as HALP/MDP) or globs, e.g. layer4.*
    min_keep_share: float = 0.0  # each pruned group keeps at least this share of its channels (and 1 item)
    max_kept_blocks: int | None = None  # mgp/mdp: keep at most this many removable blocks (MGP's --blocks_num)
    max_kept_blocks_from: int = 1  # first pruning step (1-based) that bound applies to (the MGP code: 26 of 30)


@dataclass
class RunConfig:
    """Where and how the run executes."""

    out: str = "runs/train"  # run directory (or --out): config, metrics, checkpoints, exports
    seed: int = 0  # model init, data order and augmentation
    amp: bool = False  # torch.amp mixed precision
    amp_dtype: str = "auto"  # auto (fp16 on CUDA, bf16 on CPU) | fp16 | bf16
    channels_last: bool = False  # NHWC weights and batches (faster convs under AMP on tensor-core GPUs)
    device: str = "auto"  # auto | cpu | cuda
    checkpoint_every: int = 0  # also keep checkpoint_epoch{e}.pt every N epochs (0: only checkpoint_last.pt)
    max_iters_per_epoch: int | None = None  # cap (tests, demo, smoke runs)
    max_val_iters: int | None = None  # cap on validation batches per epoch
    log_every: int = 50  # iterations between progress-bar (and TensorBoard) loss/LR updates
    tensorboard: bool = False  # also TensorBoard scalars in out/tensorboard (pip install -e '.[tensorboard]')
    resume: str = "auto"  # auto (resume from out/checkpoint_last.pt if present) | never | required
    stop_after_epochs: int | None = None  # run at most this many epochs in this invocation (time-sliced jobs)
    export: bool = True  # at the end: slim network (pruned.pt2), masks.pt, final_state.pt, result.json


@dataclass
class TrainConfig:
    """The whole run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-serialisable)."""
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Range and choice checks (types are checked while loading)."""
        _check_values(self)


def _fail(msg: str, source: str) -> typing.NoReturn:
    raise LatlabError(f"{source}: {msg}")


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """``value`` as type ``hint`` (int, float, bool, str, lists, Optional / unions of those)."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, a, key, source)
            except LatlabError as exc:
                errors.append(str(exc))
        names = " or ".join(getattr(a, "__name__", str(a)) for a in args)
        _fail(f"{key} must be {names}, got {value!r}", source)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        _fail(f"{key} must be true or false, got {value!r}", source)
    if hint is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            _fail(f"{key} must be an integer, got {value!r}", source)
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            _fail(f"{key} must be a number, got {value!r}", source)
        return float(value)
    if typing.get_origin(hint) is list:  # a list, or one value for a list of one
        return [_coerce(v, typing.get_args(hint)[0], f"{key}[{i}]", source)
                for i, v in enumerate(value if isinstance(value, list) else [value])]
    if hint is str:
        if isinstance(value, bool) or value is None or isinstance(value, dict | list):
            _fail(f"{key} must be a string, got {value!r}", source)
        return str(value)
    raise AssertionError(f"unsupported config type {hint!r}")  # pragma: no cover


def _fill(obj: Any, values: dict[str, Any], prefix: str, source: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    if not isinstance(values, dict):
        _fail(f"{prefix or 'the config'} must be a mapping, got {values!r}", source)
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            _fail(f"unknown key {full!r} (known: {', '.join(sorted(prefix + n for n in names))})", source)
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _fill(current, value or {}, f"{full}.", source)
        else:
            setattr(obj, key, _coerce(value, hints[key], full, source))


def _parse_overrides(overrides: dict[str, Any] | list[str] | None) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    items: list[tuple[str, Any]] = []
    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        for text in overrides or []:
            if "=" not in text:
                raise LatlabError(f"override {text!r} must look like section.key=value")
            key, raw = text.split("=", 1)
            items.append((key.strip(), yaml.safe_load(raw) if raw.strip() else None))
    for key, value in items:
        parts = key.split(".")
        node = nested
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise LatlabError(f"override {key!r} conflicts with another override")
        node[parts[-1]] = value
    return nested


def _choice(value: Any, allowed: tuple[Any, ...], key: str, source: str) -> None:
    if value not in allowed:
        _fail(f"{key} must be one of {', '.join(map(str, allowed))}, got {value!r}", source)


def _check_values(cfg: TrainConfig, source: str = "config") -> None:
    classes = 1 if cfg.model.num_classes is None else cfg.model.num_classes  # None: the network's own
    positive = {"data.input_size": cfg.data.input_size, "data.batch_size": cfg.data.batch_size,
                "model.num_classes": classes, "optim.epochs": cfg.optim.epochs, "optim.lr": cfg.optim.lr,
                "run.log_every": cfg.run.log_every, "prune.time_limit": cfg.prune.time_limit}
    for key, v in positive.items():
        if not (v > 0 and math.isfinite(v)):
            _fail(f"{key} must be a finite number > 0, got {v!r}", source)
    for key, v in {"data.workers": cfg.data.workers, "optim.warmup_epochs": cfg.optim.warmup_epochs,
                   "optim.weight_decay": cfg.optim.weight_decay, "optim.momentum": cfg.optim.momentum,
                   "run.checkpoint_every": cfg.run.checkpoint_every, "prune.start": cfg.prune.start,
                   "prune.max_kept_blocks": cfg.prune.max_kept_blocks or 0}.items():
        if not (v >= 0 and math.isfinite(v)):
            _fail(f"{key} must be a finite number >= 0, got {v!r}", source)
    if not cfg.optim.momentum < 1:
        _fail(f"optim.momentum must be in [0, 1), got {cfg.optim.momentum!r}", source)
    for key, v in {"run.max_iters_per_epoch": cfg.run.max_iters_per_epoch, "run.max_val_iters": cfg.run.max_val_iters,
                   "run.stop_after_epochs": cfg.run.stop_after_epochs, "prune.steps": cfg.prune.steps,
                   "prune.every": cfg.prune.every, "data.val_batch_size": cfg.data.val_batch_size,
                   "prune.max_kept_blocks_from": cfg.prune.max_kept_blocks_from,
                   "prune.input_size": cfg.prune.input_size}.items():
        if v is not None and v < 1:
            _fail(f"{key} must be >= 1 when given, got {v!r}", source)
    if not 0 <= cfg.optim.label_smoothing < 1:
        _fail(f"optim.label_smoothing must be in [0, 1), got {cfg.optim.label_smoothing}", source)
    if not cfg.optim.aux_loss_weight >= 0:
        _fail(f"optim.aux_loss_weight must be >= 0, got {cfg.optim.aux_loss_weight}", source)
    if cfg.optim.warmup_epochs > cfg.optim.epochs:
        _fail(f"optim.warmup_epochs ({cfg.optim.warmup_epochs}) exceeds optim.epochs ({cfg.optim.epochs})", source)
    _choice(cfg.optim.schedule, ("cosine", "linear"), "optim.schedule", source)
    _choice(cfg.prune.method, METHODS, "prune.method", source)
    _choice(cfg.run.amp_dtype, ("auto", "fp16", "bf16"), "run.amp_dtype", source)
    _choice(cfg.run.device, ("auto", "cpu", "cuda"), "run.device", source)
    _choice(cfg.run.resume, ("auto", "never", "required"), "run.resume", source)
    if cfg.prune.schedule is not None:
        _choice(cfg.prune.schedule, ("halp", "mgp", "mdlm", "mdp"), "prune.schedule", source)
    if not 0 <= cfg.prune.ratio < 1:
        _fail(f"prune.ratio must be in [0, 1), got {cfg.prune.ratio}", source)
    if not 0 <= cfg.prune.min_keep_share <= 1:
        _fail(f"prune.min_keep_share must be in [0, 1], got {cfg.prune.min_keep_share}", source)
    gs = cfg.prune.group_sizes
    if isinstance(gs, str) and gs.isdigit():
        cfg.prune.group_sizes = gs = int(gs)
    if not (gs in ("auto", "reference") or (isinstance(gs, int) and gs >= 1)):
        _fail(f"prune.group_sizes must be auto, reference or a positive integer, got {gs!r}", source)
    if cfg.prune.method != "none":
        from pruning.solvers import list_solvers

        _choice(cfg.prune.solver, tuple(list_solvers()), "prune.solver", source)
        if cfg.prune.solver == "dp" and cfg.prune.method != "halp":
            _fail(f"prune.solver dp handles halp (OCP+LLM) only; use lagrange for {cfg.prune.method}", source)
        if cfg.prune.max_kept_blocks is not None and cfg.prune.method not in ("mgp", "mdp"):
            _fail(f"prune.max_kept_blocks: {cfg.prune.method} removes no blocks (mgp and mdp do)", source)


def _preset_dirs() -> list[Path]:
    """Where the bundled presets are: ``latlab/configs`` beside this package in an installed wheel, ``configs/`` in
    a checkout."""
    root = Path(__file__).resolve().parents[1]
    return [root / "latlab" / "configs", root / "configs"]


def list_presets() -> list[str]:
    """Names of the bundled training presets (``mdp_resnet50``, ...)."""
    return sorted({p.stem for folder in _preset_dirs() if folder.is_dir() for p in folder.glob("*.yaml")})


def config_path(path: str | Path) -> Path:
    """``path`` when it is a file; else the bundled preset it names (``mdp_resnet50``, ``mdp_resnet50.yaml`` or
    ``configs/mdp_resnet50.yaml``, as the docs write it), so the presets work from any directory."""
    p = Path(path)
    if p.is_file():
        return p
    if p.parent in (Path("."), Path("configs")):
        stem = p.name.removesuffix(".yaml").removesuffix(".yml")
        for folder in _preset_dirs():
            if (folder / f"{stem}.yaml").is_file():
                return folder / f"{stem}.yaml"
    raise LatlabError(f"config file {p} does not exist (bundled presets: {', '.join(list_presets()) or 'none'})")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | list[str] | None = None) -> TrainConfig:
    """Defaults ← YAML file ``path`` (or a bundled preset's name, :func:`config_path`) ← ``overrides``
    (``{"a.b": v}`` or ``["a.b=v", ...]``, values parsed as YAML)."""
    cfg = TrainConfig()
    source = "config"
    if path is not None:
        p = config_path(path)
        source = str(path)
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise LatlabError(f"{p}: not valid YAML: {exc}") from None
        _fill(cfg, data, "", source)
    if overrides:
        _fill(cfg, _parse_overrides(overrides), "", f"{source} (overrides)" if path else "overrides")
    _expand_home(cfg)
    _check_values(cfg, source)
    return cfg


def _expand_home(cfg: TrainConfig) -> None:
    """``~`` at the start of a file path means the home folder, as in a shell (YAML does not expand it; a folder
    named ``~`` in the working directory is a trap)."""
    for section, key in (("data", "path"), ("model", "weights"), ("run", "out"), ("prune", "db")):
        part = getattr(cfg, section)
        value = getattr(part, key)
        if isinstance(value, str) and value.startswith("~"):
            setattr(part, key, os.path.expanduser(value))


def _field_comments(section: type) -> dict[str, str]:
    """``{field: its end-of-line comment}`` from the dataclass source (what each key means)."""
    import inspect
    import re

    try:
        source = inspect.getsource(section)
    except (OSError, TypeError):  # installed without sources: keys without comments
        return {}
    found = (re.match(r"\s+(\w+):[^#]*#\s*(.*)$", line) for line in source.splitlines())
    return {m.group(1): m.group(2) for m in found if m}


def describe_config(cfg: TrainConfig) -> str:
    """``cfg`` as YAML with every key's meaning as a comment (``latlab train --print-config``); loadable as is."""
    lines: list[str] = []
    for section in dataclasses.fields(cfg):
        lines.append(f"{section.name}:  # {type(getattr(cfg, section.name)).__doc__.splitlines()[0]}")
        part = getattr(cfg, section.name)
        notes = _field_comments(type(part))
        for f in dataclasses.fields(part):
            value = yaml.safe_dump(getattr(part, f.name), default_flow_style=True).removesuffix("\n...\n").strip()
            text = f"  {f.name}: {value}"
            lines.append(f"{text:<40}# {notes[f.name]}" if f.name in notes else text)
    return "\n".join(lines) + "\n"


def save_config(cfg: TrainConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (e.g. ``out/config.resolved.yaml``)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(hide_passwords(yaml.safe_dump(cfg.to_dict(), sort_keys=False)))
    return p
