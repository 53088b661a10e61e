"""Run a sweep plan on a backend into the database: resumable, one small transaction per row.

Every configuration is written as soon as it is measured, so a killed sweep loses at most the one in
flight. Re-running the same plan with the same protocol on the same hardware skips what is stored
(failed rows too, unless ``retry_failed``). OOM and library errors become rows with status ``oom`` /
``error`` and the sweep goes on. Writes are retried when the database connection drops (server restart).

Several processes or machines share one sweep with :func:`profiler.worker.run_worker` (``--worker``).
"""

from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from db.claims import close_stored
from db.engine import Database
from db.keys import ConvConfig
from db.lut import (
    MeasurementValues,
    config_key,
    get_or_create_hardware,
    get_or_create_sweep,
    measured_keys,
    record_measurement,
)
from db.models import Sweep
from db.retry import with_retry
from profiler.backends.base import Backend, MeasurementFailed
from profiler.hardware import named
from profiler.plan import SweepPlan

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    """What one ``run_sweep`` call did."""

    sweep_id: int
    hardware: str
    planned: int
    already_done: int
    measured: int = 0
    failed: dict[str, int] = field(default_factory=lambda: {"oom": 0, "error": 0})
    remaining: int = 0
    elapsed_s: float = 0.0
    stopped_by: str | None = None  # "time budget" | "max configs" | None (ran to the end)

    @property
    def complete(self) -> bool:
        return self.remaining == 0


def git_sha(root: Path | None = None) -> str | None:
    """What latlab code ran: the commit of the latlab checkout it runs from (``-dirty`` when tracked files differ
    from it), else ``latlab==VERSION``.

    git is trusted only when ``root`` (where latlab's packages are) is the top of a work tree holding latlab: an
    installed latlab inside a user's own repository (``project/.venv/…``) must not record that repository's commit.
    """
    root = (root or Path(__file__).resolve().parents[1]).resolve()
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5, check=False)
        top, sha = out.stdout.split() if out.returncode == 0 else ("", "")
    except (OSError, subprocess.SubprocessError, ValueError):
        top, sha = "", ""
    if top and Path(top).resolve() == root and (root / "latlab" / "cli").is_dir():
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5, check=False).stdout.strip()
        return f"{sha}-dirty" if dirty else sha
    try:
        return f"latlab=={version('latlab')}"
    except PackageNotFoundError:
        return None


def provenance() -> dict[str, Any]:
    """What produced a result, saved with every run's outputs: latlab's code (:func:`git_sha`) and the versions of
    Python, torch, torchvision, CUDA and cuDNN."""
    import platform

    import torch
    import torchvision

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"latlab": git_sha(), "python": platform.python_version(), "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__), "cuda": torch.version.cuda,
            "cudnn": str(cudnn) if cudnn is not None else None}


def _merge_plan(existing: dict[str, Any], plan: SweepPlan, stored: set[tuple]) -> dict[str, Any]:
    """The sweep's plan after adding ``plan``: its runs, and the size of the union of their configurations.

    A run seen before (same description, e.g. a resume or an adaptive round) changes nothing. A new one
    adds its configurations not stored yet; exact when the earlier runs finished, at most an overcount
    of what an unfinished earlier run and this one share.
    """
    runs = list(existing.get("runs", []))
    if plan.description in runs and existing.get("n_configs") is not None:
        return {**existing, "runs": runs}
    if plan.description not in runs:
        runs.append(plan.description)
    base = max(existing.get("n_configs") or 0, len(stored))
    return {**existing, "n_configs": base + len({config_key(c) for c in plan.configs} - stored), "runs": runs}


def start_sweep(
    db: Database, plan: SweepPlan, backend: Backend, *, name: str = "", hardware_name: str | None = None,
    command: str | None = None,
) -> tuple[int, str]:
    """Create or reopen the sweep row for (hardware, protocol, name); returns (sweep id, hardware name)."""
    info = backend.hardware()
    if hardware_name:
        info = named(info, hardware_name)
    protocol = backend.recorded_protocol()
    with db.session() as session:
        hw = get_or_create_hardware(session, info)
        sweep = get_or_create_sweep(
            session, hw, backend=backend.name, protocol=protocol,
            protocol_hash=backend.protocol.fingerprint(backend.name), name=name, settings=backend.settings(),
            command=command, git_sha=git_sha(),
        )
        sweep.plan = _merge_plan(sweep.plan or {}, plan, measured_keys(session, sweep.id))
        return sweep.id, hw.name


def run_sweep(
    db: Database, plan: SweepPlan, backend: Backend, *, name: str = "", hardware_name: str | None = None,
    time_budget_s: float | None = None, max_configs: int | None = None, retry_failed: bool = False,
    progress: bool = True, command: str | None = None, done_status: str = "complete",
) -> SweepReport:
    """Measure every configuration of ``plan`` not yet stored for this hardware and protocol.

    The sweep's status is ``done_status`` once the plan is measured (a caller measuring a sweep in parts says
    ``"running"``), ``interrupted`` when a budget or Ctrl-C stopped it."""
    sweep_id, hw_name = start_sweep(db, plan, backend, name=name, hardware_name=hardware_name, command=command)
    with db.session() as session:
        done = measured_keys(session, sweep_id, ("ok",) if retry_failed else ("ok", "oom", "error"))
        failed_before = measured_keys(session, sweep_id, ("oom", "error")) if retry_failed else set()
    todo = [c for c in plan.configs if config_key(c) not in done]
    report = SweepReport(sweep_id, hw_name, len(plan), len(plan) - len(todo))
    start = time.monotonic()
    bar = tqdm(total=len(todo), desc=f"sweep {sweep_id} ({backend.name})", unit="cfg", disable=not progress,
               dynamic_ncols=True)
    try:
        for i, config in enumerate(todo):
            if max_configs is not None and i >= max_configs:
                report.stopped_by = "max configs"
                break
            if time_budget_s is not None and time.monotonic() - start >= time_budget_s:
                report.stopped_by = "time budget"
                break
            values = _measure_one(backend, config)
            count_result(report, bar, config, values)
            _store(db, sweep_id, config, values, replace=config_key(config) in failed_before)
            bar.update(1)
    except KeyboardInterrupt:
        set_sweep_status(db, sweep_id, "interrupted")
        raise
    finally:
        bar.close()
        backend.close()
    report.elapsed_s = time.monotonic() - start
    report.remaining = len(todo) - report.measured - sum(report.failed.values())
    with_retry(lambda: close_stored(db, sweep_id, plan.configs), what="closing the fleet claims of stored rows")
    set_sweep_status(db, sweep_id, done_status if report.complete else "interrupted")
    return report


def _store(db: Database, sweep_id: int, config: ConvConfig, values: MeasurementValues, *, replace: bool) -> None:
    """Write one row in its own transaction, retried if the database connection drops (idempotent)."""
    def write() -> None:
        with db.session() as session:
            record_measurement(session, sweep_id, config, values, replace=replace)

    with_retry(write, what=f"storing {config.describe()}")


def count_result(report: Any, bar: tqdm, config: ConvConfig, values: MeasurementValues) -> None:
    """Count one measurement in ``report`` (``measured``, ``failed`` by status); a failure is said above the
    progress bar, or logged as a warning when the bar is off (a library caller with ``progress=False`` keeps
    its stdout)."""
    if values.status == "ok":
        report.measured += 1
        return
    report.failed[values.status] += 1
    text = f"{values.status}: {config.describe()}: {values.message}"
    if bar.disable:
        log.warning(text)
    else:
        bar.write(text)


def _measure_one(backend: Backend, config: ConvConfig) -> MeasurementValues:
    try:
        result = backend.measure(config)
    except MeasurementFailed as exc:
        return MeasurementValues(status=exc.status, message=str(exc))
    except (RuntimeError, ValueError, MemoryError) as exc:  # library errors we did not anticipate
        log.warning("unexpected %s measuring %s", type(exc).__name__, config.describe())
        return MeasurementValues(status="error", message=f"{type(exc).__name__}: {exc}"[:2000])
    return MeasurementValues(
        status="ok", median_ms=result.median_ms, iqr_ms=result.iqr_ms, mean_ms=result.mean_ms,
        min_ms=result.min_ms, n=result.n, telemetry=result.telemetry,
    )


def set_sweep_status(db: Database, sweep_id: int, status: str) -> None:
    """Set a sweep's status (running, complete, interrupted, sampled, ...), retried on a dropped connection."""
    def write() -> None:
        with db.session() as session:
            sweep = session.get(Sweep, sweep_id)
            if sweep is not None:
                sweep.status = status

    with_retry(write, what=f"setting sweep {sweep_id} {status}")
