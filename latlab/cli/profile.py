"""``latlab profile``: sweep a network's conv shapes over a channel grid into the LUT database."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Any

import typer

from db.errors import LatlabError
from latlab.cli._options import (
    INPUT_SIZE_HELP,
    MODEL_HELP,
    DbOption,
    GpuOption,
    command_line,
    gpu_options,
    parse_input_size,
    size_text,
    stored_name,
)

if TYPE_CHECKING:
    from db.engine import Database
    from latency_models.adaptive import AdaptiveResult
    from profiler.backends import Backend
    from profiler.plan import SweepPlan


def profile(
    model: Annotated[str, typer.Option(help=f"{MODEL_HELP}.")],
    backend: Annotated[str, typer.Option(help="cuda | cpu | fake (seeded synthetic GPU, for CI)")] = "cpu",
    gpu: GpuOption = None,
    grid: Annotated[str, typer.Option(
        help="full[:STEP] | lattice (what `latlab prune` asks for, auto group sizes) | reference (ResNet50 "
             "HALP/MDP lattice) | explicit:cin=A:B:S,cout=A:B:S | random:N[:STEP] | lhs:N[:STEP]")] = "full:8",
    keep: Annotated[list[str] | None, typer.Option(
        "--keep", help="With --grid lattice: what `latlab prune --keep` will keep (stem, or a glob over conv names "
        "and group ids); those groups are swept at their whole width only. Repeatable.", show_default=False)
    ] = None,
    input_size: Annotated[str, typer.Option(help=INPUT_SIZE_HELP)] = "224",
    batch: Annotated[int, typer.Option(help="Batch size of every timed call (HALP/MDP LUTs use 256).")] = 256,
    dtype: Annotated[str, typer.Option(help="fp32 | fp16 | bf16")] = "fp32",
    layout: Annotated[str, typer.Option(help="nchw | nhwc (channels_last)")] = "nchw",
    op: Annotated[str, typer.Option(help="conv | conv_bn_relu (the deployment unit)")] = "conv",
    warmup: Annotated[int, typer.Option(help="Untimed calls per configuration.")] = 10,
    repeats: Annotated[int, typer.Option(help="Timed samples per configuration (max).")] = 50,
    min_repeats: Annotated[int, typer.Option(help="Samples always taken before the stop rule.")] = 10,
    max_rel_iqr: Annotated[float, typer.Option(help="Stop sampling once IQR/median < this (0: off).")] = 0.0,
    timer: Annotated[str, typer.Option(help="auto | cuda_events | cuda_graph (cuda backend)")] = "auto",
    cudnn_benchmark: Annotated[bool, typer.Option(help="cuDNN autotuning per shape.")] = True,
    cudnn_deterministic: Annotated[bool, typer.Option(help="Deterministic cuDNN algorithms only.")] = False,
    tf32: Annotated[bool, typer.Option(help="Allow TF32 math for fp32 convs (Ampere+).")] = True,
    l2_flush: Annotated[bool, typer.Option(help="Flush L2 before each timed call (cold cache).")] = False,
    llc_flush: Annotated[bool, typer.Option(
        help="CPU: flush the last-level cache and read the input back before each timed call (all but the "
             "input cold, as in a network too big for the cache).")] = False,
    threads: Annotated[int | None, typer.Option(help="CPU threads for --backend cpu.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for inputs, random grids and the fake backend.", min=0,
                                      max=2**31 - 1)] = 0,
    name: Annotated[str, typer.Option(help="Label of the sweep (separate sweeps with equal protocol).",
                                      callback=stored_name)] = "",
    hardware_name: Annotated[str | None, typer.Option(help="Name the hardware profile yourself.",
                                                      callback=stored_name)] = None,
    time_budget: Annotated[float | None, typer.Option(help="Stop after this many seconds (resume later).")] = None,
    max_configs: Annotated[int | None, typer.Option(help="Measure at most this many new configurations.")] = None,
    retry_failed: Annotated[bool, typer.Option(help="Measure again configurations stored as oom/error.")] = False,
    adaptive: Annotated[bool, typer.Option(
        help="Measure only where the MDLM surface is least certain, until --budget or --target-accuracy.")] = False,
    budget: Annotated[int | None, typer.Option(help="With --adaptive: at most this many new measurements.")] = None,
    target_accuracy: Annotated[float, typer.Option(
        help="With --adaptive: stop once the surface expects this share of unmeasured points within ±5%.")] = 0.95,
    worker: Annotated[bool, typer.Option(
        "--worker", help="Join a fleet: workers on one --db URL share the sweep, each configuration measured once.",
    )] = False,
    worker_id: Annotated[str | None, typer.Option(help="With --worker: this worker's name [host-pid].")] = None,
    claim_batch: Annotated[int, typer.Option(help="With --worker: configurations claimed per transaction.")] = 8,
    heartbeat_timeout: Annotated[float, typer.Option(
        help="With --worker: seconds without a heartbeat before a worker's claims go to the others.")] = 60.0,
    fake_delay_ms: Annotated[float, typer.Option(
        help="With --backend fake: sleep this long per measurement (simulated timing work).")] = 0.0,
    fake_fail: Annotated[str | None, typer.Option(
        help="With --backend fake: inject failures, e.g. oom=0.02,error=0.01 (share of configurations).")] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the plan and exit; nothing is measured or written.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    db: DbOption = None,
) -> None:
    r"""Measure every conv shape family of MODEL over a channel grid and store it in the LUT database.

    Resumable: re-running the same command skips what is stored, so a killed sweep loses at most
    the configuration in flight. OOM and cuDNN errors are stored as failed rows and the sweep goes on.

    Examples:

        latlab profile --model resnet50 --backend fake --grid reference
        latlab profile --model resnet18 --backend cpu --grid lhs:12:16 \
            --batch 1 --threads 2
        latlab profile --model resnet50 --backend cuda --grid lattice --keep stem
        latlab profile --model resnet50 --backend cuda --grid reference \
            --dtype fp16 --layout nhwc
        latlab profile --model resnet50 --backend cuda --grid reference \
            --adaptive --budget 300
        latlab profile --model resnet50 --backend cuda --grid reference \
            --worker --gpu 1 --db postgresql+psycopg://host/lut

    With --worker, start the same command on every GPU box (or one process per GPU of a box: --gpu 0,
    --gpu 1, …): they claim configurations in batches, send heartbeats, and take over the claims of a
    worker that died.
    `latlab sweep status` shows the fleet's progress.
    """
    from db.engine import describe_url, open_database
    from profiler.backends import get_backend
    from profiler.plan import build_plan, parse_grid
    from profiler.protocol import TimingProtocol
    from profiler.runner import run_sweep
    device = gpu_options(backend, gpu)
    spec = parse_grid(grid)
    if "seed=" not in grid.lower():  # a seed in the grid itself wins over --seed
        spec = replace(spec, seed=seed)
    if keep and spec.kind != "lattice":
        raise LatlabError(f"--keep narrows the lattice grid (what `latlab prune --keep` asks for), not {spec.kind!r}")
    hw = parse_input_size(input_size)
    network = model
    if keep:
        from pruning.graph import trace_keeping

        network = trace_keeping(model, hw, keep)
    plan = build_plan(network, spec, input_size=hw, batch=batch, dtype=dtype, layout=layout, op=op)
    if keep:
        plan.description["keep"] = list(keep)
    if dry_run:
        typer.echo(f"{model} @ {size_text(hw)}: {len(plan.families())} shape families, {len(plan)} configurations")
        for fam in plan.families():
            n = sum(1 for c in plan.configs if c.family == fam)
            typer.echo(f"  {fam.key}: {n}")
        return
    protocol = TimingProtocol(
        warmup=warmup, repeats=repeats, min_repeats=min_repeats, max_rel_iqr=max_rel_iqr, timer=timer,
        cudnn_benchmark=cudnn_benchmark, cudnn_deterministic=cudnn_deterministic, allow_tf32=tf32,
        l2_flush=l2_flush, llc_flush=llc_flush, num_threads=threads, seed=seed,
    )
    if adaptive and budget is None:
        raise LatlabError("--adaptive needs --budget N (the most new configurations to measure)")
    if (fake_delay_ms or fake_fail) and backend != "fake":
        raise LatlabError("--fake-delay-ms and --fake-fail only apply to --backend fake")
    if fake_delay_ms < 0:
        raise LatlabError(f"--fake-delay-ms must be >= 0, got {fake_delay_ms}")
    if worker and adaptive:
        raise LatlabError("--worker and --adaptive cannot be combined (an adaptive sweep picks points one at a time)")
    options = {"delay_s": fake_delay_ms / 1000, "inject": fake_fail} if backend == "fake" else device
    timing_backend = get_backend(backend, protocol, **options)
    database = open_database(db)
    command = command_line()
    if adaptive:
        from latency_models.adaptive import adaptive_sweep  # scikit-learn and pandas: only for this mode

        assert budget is not None
        result, sweep_id = adaptive_sweep(
            database, plan, timing_backend, budget=budget, target_within_5=target_accuracy, name=name,
            hardware_name=hardware_name, progress=not quiet, command=command, seed=seed,
        )
        _report_adaptive(result, sweep_id, plan, describe_url(database.url))
        return
    if worker:
        _run_worker(database, plan, timing_backend, name=name, hardware_name=hardware_name, worker_id=worker_id,
                    claim_batch=claim_batch, heartbeat_timeout_s=heartbeat_timeout, time_budget_s=time_budget,
                    max_configs=max_configs, retry_failed=retry_failed, progress=not quiet, command=command)
        return
    report = run_sweep(
        database, plan, timing_backend, name=name, hardware_name=hardware_name, time_budget_s=time_budget,
        max_configs=max_configs, retry_failed=retry_failed, progress=not quiet, command=command,
    )
    failed = ", ".join(f"{k} {v}" for k, v in report.failed.items() if v) or "none failed"
    state = "complete" if report.complete else f"stopped by {report.stopped_by}; {report.remaining} left"
    typer.echo(
        f"sweep {report.sweep_id} on {report.hardware!r} -> {describe_url(database.url)}: "
        f"{report.planned} planned, {report.already_done} already stored, {report.measured} measured "
        f"({failed}) in {report.elapsed_s:.1f}s; {state}"
    )


def _run_worker(database: Database, plan: SweepPlan, backend: Backend, **options: Any) -> None:
    from db.engine import describe_url
    from profiler.worker import run_worker
    report = run_worker(database, plan, backend, **options)
    failed = ", ".join(f"{k} {v}" for k, v in report.failed.items() if v) or "none failed"
    state = "sweep complete" if report.complete else f"{report.remaining} configurations left to the fleet"
    if report.stopped_by:
        state += f" (this worker stopped by {report.stopped_by})"
    typer.echo(
        f"worker {report.worker_id} on sweep {report.sweep_id} ({report.hardware!r}) -> {describe_url(database.url)}: "
        f"{report.measured} measured ({failed}), {report.lost} lost to other workers (a missed heartbeat), "
        f"in {report.elapsed_s:.1f}s; {state}"
    )


def _report_adaptive(result: AdaptiveResult, sweep_id: int, plan: SweepPlan, url: str) -> None:
    last = result.rounds[-1] if result.rounds else None
    est = f"; surface expects {100 * last.estimated_within_5:.1f}% of unmeasured points within ±5%" if last else ""
    typer.echo(
        f"adaptive sweep {sweep_id}: measured {len(result.measured)} new of {len(plan)} lattice points "
        f"(stopped by {result.stopped_by}){est} -> {url}"
    )
