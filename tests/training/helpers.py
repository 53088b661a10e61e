"""Shared set-up for the training tests: the digits ImageFolder and a fake-backend LUT database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.config import TrainConfig, load_config

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
