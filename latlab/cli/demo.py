"""``latlab demo``: the main job on this machine, CPU + SQLite, in a few minutes."""

from __future__ import annotations

from typing import Annotated

import typer

from latlab.cli._options import command_line, echo_rows


def demo(
    out: Annotated[str, typer.Option(help="Directory for the database, report and plots.")] = "latlab-demo",
    model: Annotated[str, typer.Option(help="torchvision model to profile.")] = "resnet18",
    input_size: Annotated[int, typer.Option(help="Input resolution.")] = 224,
    grid: Annotated[str, typer.Option(
        help="Channel grid (see `latlab profile --help`); lattice = what the pruner will ask for.")] = "lattice",
    batch: Annotated[int, typer.Option(help="Batch size.")] = 1,
    backend: Annotated[str | None, typer.Option(help="LUT and timing backend: cpu | cuda | fake (default: --device)")
                       ] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda: where networks are trained (and timed, by default)")
                      ] = "cpu",
    finetune: Annotated[bool, typer.Option(help="Stage 5: train on the digits, prune while fine-tuning, measure.")
                        ] = True,
    dense_epochs: Annotated[int, typer.Option(help="Stage 5: epochs that train the dense network on the digits.")
                            ] = 3,
    finetune_epochs: Annotated[int, typer.Option(help="Stage 5: epochs of each prune-while-fine-tuning run.")] = 1,
    max_iters: Annotated[int | None, typer.Option(
        help="Stage 5: at most this many iterations per epoch (a quicker, rougher demo).")] = None,
    threads: Annotated[int, typer.Option(
        help="CPU threads (1 gives repeatable numbers; more threads make tiny convs erratic on small VMs).")] = 1,
    repeats: Annotated[int, typer.Option(help="Timed samples per configuration.")] = 15,
    llc_flush: Annotated[bool, typer.Option(
        help="CPU: time the LUT's convs and the other ops with the cache flushed and the input re-read "
             "(all but the input cold, as inside a network too big for the cache; about 20 s longer on a 2-core VM).")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    db: Annotated[str | None, typer.Option(
        "--db", help="SQLite file or SQLAlchemy URL for the LUT and models [default: OUT/latlab.db] (LATLAB_DB is "
        "not read: the demo keeps its database with its report)", show_default=False)] = None,
) -> None:
    """The whole chain on this machine: LUT → latency models → prune → fine-tune → export → measure → report.

    Profiles a real network's conv shapes into SQLite, compares the latency models, prunes one-shot with
    HALP and MDP, trains on scikit-learn's bundled digits and prunes while fine-tuning at two latency
    targets, times every exported network and writes OUT/report.md with PNG plots. Re-running resumes the
    LUT sweep: stored configurations are not measured again.

    Examples:

        latlab demo --out latlab-demo        # then open latlab-demo/report.md
        latlab demo --llc-flush --out cold   # CPU: better pruned predictions
        latlab demo --device cuda --batch 64 --out latlab-demo-gpu
        latlab demo --max-iters 5 --out quick   # fine-tunes on 5 batches per epoch
    """
    from latlab.demo import DemoConfig, run_demo
    if device not in ("cpu", "cuda"):
        raise typer.BadParameter(f"--device must be cpu or cuda, got {device!r}")
    for flag, value in (("--dense-epochs", dense_epochs), ("--finetune-epochs", finetune_epochs),
                        ("--max-iters", max_iters)):
        if value is not None and value < 1:
            raise typer.BadParameter(f"{flag} must be >= 1, got {value}")
    if "cuda" in (device, backend):
        import torch

        from db.errors import LatlabError
        if not torch.cuda.is_available():  # before the demo writes anything
            raise LatlabError(f"no CUDA GPU here (torch {torch.__version__}): run the demo without --device cuda")
    cfg = DemoConfig(out_dir=out, db=db, model=model, input_size=input_size, grid=grid, batch=batch,
                     backend=backend or device, device=device, finetune=finetune, threads=threads, repeats=repeats,
                     llc_flush=llc_flush, dense_epochs=dense_epochs, finetune_epochs=finetune_epochs,
                     max_iters_per_epoch=max_iters, progress=not quiet,
                     command=command_line())
    result = run_demo(cfg)

    echo_rows(result.lut_rows, "table", title=f"LUT summary (sweep {result.sweep.sweep_id})")
    if result.model_ms is not None and result.conv_sum_ms is not None:
        typer.echo(f"whole {model}: {result.model_ms:.3f} ms measured; its convs sum to "
                   f"{result.conv_sum_ms:.3f} ms in the LUT ({100 * result.conv_sum_ms / result.model_ms:.1f}%)")
    typer.echo(f"report: {result.report_path}")
