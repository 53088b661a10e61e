"""The ``latlab`` command line (Typer). Every error latlab raises on purpose prints as one line.

Command modules import torch, SQLAlchemy, scikit-learn … inside the command functions, so ``latlab --help``
and ``latlab CMD --help`` answer in about a second (a test checks nothing heavy loads at start-up)."""

from __future__ import annotations

import logging
import sys

import typer

from db.errors import LatlabError
from latlab.cli import (
    db_cmd,
    demo,
    evaluate,
    export,
    graph,
    hw,
    lut,
    measure,
    models,
    predict,
    profile,
    prune,
    sweep,
    train,
)
from latlab.cli._options import MARKUP_MODE

app = typer.Typer(
    name="latlab",
    rich_markup_mode=MARKUP_MODE,
    help="Latency LUTs for your GPU or CPU, latency models on them, and latency-constrained pruning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from latlab import __version__

        typer.echo(f"latlab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print latlab's version and exit.")) -> None:
    """Options of ``latlab`` itself (``--version``); the group's help is the ``Typer(help=...)`` above."""


app.command("hw")(hw.hw)
app.command("profile")(profile.profile)
app.command("measure")(measure.measure)
app.command("predict")(predict.predict)
app.command("fit")(models.fit)
app.command("evaluate")(evaluate.evaluate)
app.command("graph")(graph.graph)
app.command("prune")(prune.prune)
app.command("train")(train.train)
app.command("export")(export.export)
app.command("demo")(demo.demo)
app.add_typer(lut.app, name="lut")
app.add_typer(models.app, name="models")
app.add_typer(db_cmd.app, name="db")
app.add_typer(sweep.app, name="sweep")


def _usage_error(exc: Exception) -> None:
    """A usage error (missing or unknown option, bad value) as one line like every other latlab error, instead of
    Typer's boxed panel; exit status 2 as click gives it."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # the help was printed already
        return
    ctx = getattr(exc, "ctx", None)
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    typer.echo(f"latlab: error: {exc.format_message()}{hint}", err=True)  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``latlab`` script."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from typer import rich_utils

    rich_utils.rich_format_error = _usage_error  # Typer looks it up when a usage error happens
    try:
        app(args=argv, prog_name="latlab")
    except LatlabError as exc:
        typer.echo(f"latlab: error: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:  # a file the command reads or writes: one line naming it, not a traceback
        where = f": {exc.filename}" if exc.filename else ""
        typer.echo(f"latlab: error: {exc.strerror or exc}{where}", err=True)
        sys.exit(1)
    except SystemExit as exc:  # typer turns Ctrl-C into exit status 130
        if exc.code == 130:
            typer.echo(_INTERRUPTED, err=True)
        raise
    except KeyboardInterrupt:
        typer.echo(_INTERRUPTED, err=True)
        sys.exit(130)


_INTERRUPTED = ("latlab: interrupted; finished work is kept (stored rows, whole output files, the last checkpoint), "
                "nothing half-written: re-run the same command to go on")
