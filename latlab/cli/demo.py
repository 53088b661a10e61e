"""``latlab demo``: the main job on this machine, CPU + SQLite, in a few minutes."""

from __future__ import annotations

from typing import Annotated

import typer

from latlab.cli._options import DbOption
from latlab.demo import DemoConfig, run_demo


def demo(
    out: Annotated[str, typer.Option(help="Directory for the database, report and plots.")] = "latlab-demo",
    model: Annotated[str, typer.Option(help="torchvision model to profile.")] = "resnet18",
    input_size: Annotated[int, typer.Option(help="Input resolution.")] = 224,
    grid: Annotated[str, typer.Option(help="Channel grid (see `latlab profile --help`).")] = "lhs:12:16",
    batch: Annotated[int, typer.Option(help="Batch size.")] = 1,
    backend: Annotated[str, typer.Option(help="cpu | cuda | fake")] = "cpu",
    threads: Annotated[int, typer.Option(
        help="CPU threads (1 gives repeatable numbers; more threads make tiny convs erratic on small VMs).")] = 1,
    repeats: Annotated[int, typer.Option(help="Timed samples per configuration.")] = 15,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    db: DbOption = None,
) -> None:
    """Profile a real network's conv shapes into SQLite, summarise the LUT, time the whole network, report.

    Re-running resumes: stored configurations are not measured again.

    Example: latlab demo --out latlab-demo   (then open latlab-demo/report.md)
    """
    cfg = DemoConfig(out_dir=out, db=db, model=model, input_size=input_size, grid=grid, batch=batch,
                     backend=backend, threads=threads, repeats=repeats, progress=not quiet)
    result = run_demo(cfg)
    from latlab.tables import render

    typer.echo(render(result.lut_rows, "table", title=f"LUT summary (sweep {result.sweep.sweep_id})"))
    if result.model_ms is not None and result.conv_sum_ms is not None:
        typer.echo(f"whole {model}: {result.model_ms:.3f} ms measured; its convs sum to "
                   f"{result.conv_sum_ms:.3f} ms in the LUT ({100 * result.conv_sum_ms / result.model_ms:.1f}%)")
    typer.echo(f"report: {result.report_path}")
