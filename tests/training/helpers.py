"""Shared set-up for the training tests: the digits ImageFolder and a fake-backend LUT database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from training.config import TrainConfig, load_config
from training.pruner import TrainingPruner

ROOT = Path(__file__).resolve().parents[2]
SIZE, BATCH, Q = 32, 8, 32


def make_lut_db(path: Path) -> str:
    """A SQLite LUT of resnet18 at 32×32, batch 8, on the noiseless fake backend (grid step = group size)."""
    from db import open_database
    from profiler.backends.fake import FakeBackend
    from profiler.plan import build_plan
    from profiler.protocol import TimingProtocol
    from profiler.runner import run_sweep

    database = open_database(path)
    plan = build_plan("resnet18", f"full:{Q}", input_size=SIZE, batch=BATCH)
    run_sweep(database, plan, FakeBackend(TimingProtocol(repeats=3), noise=0.0), progress=False)
    database.dispose()
    return str(path)


def tiny_config(data: Path, out: Path, db: str | None, method: str = "halp", config: str | Path | None = None,
                **extra: Any) -> TrainConfig:
    """A few iterations of resnet18 on the digits at 32×32, pruning twice (global steps 1 and 3)."""
    overrides: dict[str, Any] = {
        "data.path": str(data), "data.input_size": SIZE, "data.batch_size": 8, "data.workers": 0,
        "model.name": "resnet18", "model.weights": None, "model.num_classes": 10,
        "optim.epochs": 2, "optim.warmup_epochs": 1, "run.out": str(out), "run.max_iters_per_epoch": 3,
        "run.max_val_iters": 1, "run.export": False, "run.amp": False, "run.device": "cpu", "run.seed": 0,
        "prune.method": method, "prune.db": db, "prune.group_sizes": Q, "prune.steps": 2, "prune.every": 2,
        "prune.ratio": 0.25, "prune.hardware": None, "prune.sweep": None, "prune.latency_model": None,
    }
    overrides.update(extra)
    return load_config(config, overrides)


def make_pruner(lut_db: str, method: str, ratio: float, dtype: torch.dtype = torch.float32,
                ) -> tuple[torch.nn.Module, TrainingPruner]:
    """resnet18 (10 classes, 32×32, seed 0) with a one-step pruner (importance at global step 0, pruning at 1)."""
    from torchvision.models import resnet18

    from db import open_database
    from latency_models.resolve import resolve_latency_model
    from pruning.cost import spec_latency
    from pruning.graph import build_network_spec
    from pruning.schedule import LatencySchedule

    torch.manual_seed(0)
    model = resnet18(num_classes=10).to(dtype)
    spec = build_network_spec(model, SIZE, group_sizes=Q)
    lat, settings, _ = resolve_latency_model(open_database(lut_db, create=False), latency_model=None, sweep=None,
                                             hardware=None, kind="mdlm")
    schedule = LatencySchedule(spec_latency(lat, spec, settings), ratio, steps=1, every=2)
    return model, TrainingPruner(model, spec, method=method, schedule=schedule, latency_model=lat, settings=settings)


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, pruner: TrainingPruner | None, g: int,
               batch: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict | None:
    """One SGD step in the trainer's order (a random batch of 4 unless given); returns the pruning record."""
    p = next(model.parameters())
    x, y = batch if batch is not None else (torch.randn(4, 3, SIZE, SIZE, dtype=p.dtype), torch.randint(0, 10, (4,)))
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    if pruner is not None:
        pruner.after_backward(g)
    opt.step()
    return pruner.after_step(g, opt) if pruner is not None else None
