"""Options shared by several commands."""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, overload

import typer

from db.defaults import ENV_VAR
from db.errors import LatlabError
from latlab.tables import FORMATS, render

MODEL_HELP = "torchvision name (resnet50), timm:NAME (timm:resnet50d) or your own network as FILE.py:NAME"

#: Docstrings and option help are Markdown: paragraphs reflow to the terminal, indented examples stay as written.
MARKUP_MODE = "markdown"


def command_group(help: str) -> typer.Typer:
    """A ``latlab`` sub-command group (``lut``, ``models`` …) rendered like the top-level app."""
    return typer.Typer(help=help, no_args_is_help=True, rich_markup_mode=MARKUP_MODE)


def command_line() -> str:
    """This invocation as a shell command line (``latlab profile --model …``; database passwords as ``***``), for
    the records and files that keep it."""
    from db.engine import hide_password

    return "latlab " + " ".join(shlex.quote(hide_password(a)) for a in sys.argv[1:])  # each before it is quoted


NumClassesOption = Annotated[int | None, typer.Option(
    help="Classifier width for --model [default: the network's own: 1000 for torchvision and timm].",
    show_default=False)]
INPUT_SIZE_HELP = "Input resolution: N (square) or HxW (e.g. 96x160)."


@overload
def parse_input_size(text: str) -> tuple[int, int]: ...
@overload
def parse_input_size(text: None) -> None: ...
def parse_input_size(text: str | None) -> tuple[int, int] | None:
    """``--input-size``: ``224`` (square) or ``HxW`` (``96x160``) as ``(height, width)``; not given: None."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX×]\s*(\d+))?\s*", str(text))
    if match is None or int(match[1]) < 1 or (match[2] is not None and int(match[2]) < 1):
        raise LatlabError(f"--input-size must be N or HxW with positive integers (224, 96x160), got {text!r}")
    return int(match[1]), int(match[2] or match[1])


def size_text(hw: tuple[int, int]) -> str:
    """``224`` for a square input size, ``96×160`` otherwise (as messages and tables print it)."""
    return str(hw[0]) if hw[0] == hw[1] else f"{hw[0]}×{hw[1]}"


def size_value(hw: tuple[int, int]) -> int | list[int]:
    """An input size as result and config files store it: ``224``, or ``[96, 160]`` when not square."""
    return hw[0] if hw[0] == hw[1] else list(hw)


def parse_group_sizes(text: str) -> str | int:
    """``--group-sizes``: ``auto``, ``reference`` or an integer q >= 1 (case and spaces ignored)."""
    value = text.strip().lower()
    if value in ("auto", "reference"):
        return value
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise LatlabError(f"--group-sizes must be auto, reference or an integer >= 1, got {text!r}")


def unseen_shape_error(exc: Exception, input_size: int | tuple[int, int], command: str) -> Exception:
    """A latency model's "never trained on family …" with the way out (another input size); other errors as they are."""
    if "never trained on family" not in str(exc):
        return exc
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    flag = str(h) if h == w else f"{h}x{w}"
    return LatlabError(f"{exc} — the LUT has no conv of this shape: sweep this network at {size_text((h, w))} px "
                       f"(`latlab profile --model … --input-size {flag}`), or {command} at the sweep's input "
                       "size (--input-size)")


def echo_rows(rows: Sequence[dict[str, Any]], fmt: str = "table", title: str | None = None, err: bool = False,
              empty: str = "no rows", record: bool = False) -> None:
    """Print rows in ``fmt`` (see :func:`latlab.tables.render`) with no blank line after them.

    No rows: ``[]`` in JSON, nothing in CSV or Markdown; the ``empty`` message goes to stderr then (on stdout
    only for the terminal table), so a pipe never reads prose as data.
    """
    if not rows:
        if fmt == "json":
            typer.echo("[]", err=err)
        typer.echo(empty, err=err or fmt != "table")
        return
    typer.echo(render(rows, fmt, title=title, record=record), nl=False, err=err)


def _lasting_database(value: str | None) -> str | None:
    """Refuse an in-memory SQLite URL (``sqlite://``, ``sqlite:///:memory:``): what a command stores there is gone
    when it ends, though it would say "stored"."""
    if value and value.strip().lower().startswith("sqlite:"):
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        from db.engine import in_memory

        try:
            url = make_url(value.strip())
        except ArgumentError:
            return value  # open_database names what is wrong with it
        if in_memory(url):
            raise typer.BadParameter(f"{value!r} is an in-memory database, gone when the command ends; give a file")
    return value


DbOption = Annotated[
    str | None,
    typer.Option("--db", envvar=ENV_VAR, help="SQLite file or SQLAlchemy URL [default: ./latlab.db]",
                 show_default=False, callback=_lasting_database),
]
SweepOption = Annotated[int | None, typer.Option("--sweep", help="Sweep id (see `latlab lut list`).")]
HardwareOption = Annotated[
    str | None, typer.Option("--hardware", help="Hardware profile: id, exact name or fingerprint prefix.")
]
GpuOption = Annotated[int | None, typer.Option(
    "--gpu", min=0, show_default=False,
    help="GPU to time on, for --backend cuda: its index among the GPUs this process sees (CUDA_VISIBLE_DEVICES "
         "renumbers them) [default: 0, the first visible GPU].")]


def gpu_options(backend: str, gpu: int | None) -> dict[str, int]:
    """The backend's constructor options for ``--gpu`` (``device_index`` with --backend cuda; none without
    --gpu); --gpu with another backend is refused. Call it before any work."""
    if gpu is None:
        return {}
    if backend != "cuda":
        raise LatlabError(f"--gpu only applies to --backend cuda, not --backend {backend}")
    return {"device_index": gpu}


def _output_format(value: str) -> str:
    """Check ``-f`` before any work starts (a typo must not cost a sweep's or a fit's result)."""
    fmt = value.lower()
    if fmt not in FORMATS:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(FORMATS)}")
    return fmt


FormatOption = Annotated[str, typer.Option("--format", "-f", help=" | ".join(FORMATS), callback=_output_format)]


def check_stored_name(value: str | None, what: str) -> None:
    """Refuse a name the database would refuse, before any work starts: PostgreSQL refuses one longer than its
    column (SQLite would take it), after the sweep, fit or measurement it labels."""
    from db.models import NAME_LENGTH

    if value is not None and len(value) > NAME_LENGTH:
        raise LatlabError(f"{what} is {len(value)} characters long; the database keeps names of at most "
                          f"{NAME_LENGTH}")


def stored_name(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> str | None:
    """Option callback: :func:`check_stored_name` at parse time."""
    try:
        check_stored_name(value, "it")
    except LatlabError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


KeepOption = Annotated[
    list[str] | None,
    typer.Option("--keep", help="Keep these convs' channels (and their blocks) whole: `stem` (the first convs, "
                 "which no other conv feeds; the papers' HALP and MDP never prune it, latlab does unless kept) or a "
                 "glob over conv names and group ids, e.g. 'layer4.*'. Repeatable.", show_default=False),
]
WeightsOption = Annotated[Path | None, typer.Option(
    help="Local state dict or checkpoint for --model (weights_only load; `module.` prefixes are fine).")]
TrustCheckpointOption = Annotated[bool, typer.Option(
    help="Allow --weights to be a whole-model pickle (unrestricted unpickling: trusted files only).")]
MaskOption = Annotated[Path | None, typer.Option(
    help="Prune --model by a mask file first: HALP/MDP group_mask.pkl / layer_masks.pkl or latlab masks.pt.")]
MgpOption = Annotated[bool, typer.Option(help="--mask holds per-layer masks (MDP's layer_masks.pkl, as its --mgp).")]
