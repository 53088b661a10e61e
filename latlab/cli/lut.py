"""``latlab lut``: list, inspect, query, export and import latency lookup tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from db.errors import LatlabError
from latlab.cli._options import (
    DbOption,
    FormatOption,
    HardwareOption,
    SweepOption,
    command_group,
    echo_rows,
    stored_name,
)
from latlab.tables import render

app = command_group("Inspect, query, export and import latency lookup tables.")

_ROW_COLUMNS = ("family", "cin", "cout", "batch", "dtype", "layout", "op", "median_ms", "iqr_ms", "mean_ms",
                "n", "status", "message", "sm_clock_mhz", "temperature_c", "power_w")


@app.command("list")
def list_(hardware: HardwareOption = None, fmt: FormatOption = "table", db: DbOption = None) -> None:
    """List the sweeps in the database with their hardware, backend and row counts.

    A sweep's id is what --sweep takes in every other command.

    Example:

        latlab lut list --db rn50.db
    """
    from db.engine import open_database
    from db.lut import sweep_summaries
    database = open_database(db, create=False)
    with database.session() as session:
        rows = sweep_summaries(session, hardware)
    echo_rows(rows, fmt, title="sweeps", empty="no sweeps yet: run `latlab profile` or `latlab lut import`")


@app.command()
def show(
    sweep: SweepOption = None, hardware: HardwareOption = None,
    family: Annotated[str | None, typer.Option(help="Rows of one family, e.g. f56x56_k3x3_s1x1_p1x1_d1x1_g1")] = None,
    rows: Annotated[bool, typer.Option("--rows", help="Print rows instead of the per-family summary.")] = False,
    status: Annotated[str | None, typer.Option(help="Only rows with this status (ok | oom | error).")] = None,
    limit: Annotated[int, typer.Option(help="At most this many rows with --rows (0: all).")] = 50,
    fmt: FormatOption = "table", db: DbOption = None,
) -> None:
    r"""Summarize a sweep per shape family, or print its rows.

    Per family: configurations stored, failed (OOM, cuDNN errors) and the latency range. With --rows:
    each measurement with its spread, status and telemetry (clock, temperature, power).

    Examples:

        latlab lut show --sweep 1
        latlab lut show --hardware "TITAN V" --rows \
            --family f7x7_k3x3_s1x1_p1x1_d1x1_g1 -f csv
    """
    from sqlalchemy import select

    from db.engine import open_database
    from db.keys import ConvFamily
    from db.lut import family_summaries, find_sweep, sweep_caption
    from db.models import Measurement
    database = open_database(db, create=False)
    with database.session() as session:
        found = find_sweep(session, sweep, hardware)
        sweep_id, caption = found.id, sweep_caption(found)
        if not rows and family is None and status is None:
            echo_rows(family_summaries(session, sweep_id), fmt, title=caption)
            return
    query = select(Measurement).where(Measurement.sweep_id == sweep_id)
    if family:
        query = query.where(Measurement.family == ConvFamily.from_key(family).key)
    if status:
        query = query.where(Measurement.status == status)
    query = query.order_by(Measurement.family, Measurement.cin, Measurement.cout, Measurement.batch, Measurement.dtype,
                           Measurement.layout, Measurement.op)  # the same order on SQLite and PostgreSQL
    with database.session() as session:
        rows_found = session.scalars(query.limit(limit + 1 if limit else None))
        out = [{c: getattr(m, c) for c in _ROW_COLUMNS} for m in rows_found]
    echo_rows(out[:limit or None], fmt, title=caption, empty="no matching rows")
    if limit and len(out) > limit:  # on stderr, so that a CSV on stdout stays a CSV
        typer.echo(f"first {limit} rows shown; --limit 0 shows all", err=True)


@app.command()
def query(
    cin: Annotated[int, typer.Option(help="Input channels.")],
    cout: Annotated[int, typer.Option(help="Output channels.")],
    family: Annotated[str | None, typer.Option(help="Family key (see `lut show`).")] = None,
    fmap: Annotated[int | None, typer.Option(help="Square input size (instead of --family).")] = None,
    k: Annotated[int | None, typer.Option(help="Square kernel size (with --fmap).")] = None,
    stride: Annotated[int, typer.Option(help="Stride (with --fmap).")] = 1,
    groups: Annotated[int, typer.Option(help="Conv groups (with --fmap); use --depthwise for dw.")] = 1,
    depthwise: Annotated[bool, typer.Option(help="Depthwise conv (with --fmap).")] = False,
    batch: Annotated[int, typer.Option(help="Batch size.")] = 256,
    dtype: Annotated[str, typer.Option(help="fp32 | fp16 | bf16")] = "fp32",
    layout: Annotated[str, typer.Option(help="nchw | nhwc")] = "nchw",
    op: Annotated[str, typer.Option(help="conv | conv_bn_relu")] = "conv",
    sweep: SweepOption = None, hardware: HardwareOption = None, db: DbOption = None,
) -> None:
    r"""Print the stored median latency (ms per batch) of one configuration; a miss names it.

    Give the shape family by --family, or by --fmap and --k (stride 1, padding k//2 by default).

    Examples:

        latlab lut query --fmap 56 --k 3 --cin 64 --cout 64 --batch 256
        latlab lut query --family f14x14_k3x3_s1x1_p1x1_d1x1_g1 \
            --cin 256 --cout 256 --sweep 2
    """
    from db.engine import open_database
    from db.keys import ConvConfig, ConvFamily
    from db.lut import find_sweep, lookup
    if family is not None:
        fam = ConvFamily.from_key(family)
    elif fmap is not None and k is not None:
        fam = ConvFamily.square(fmap, k, stride, groups=groups, depthwise=depthwise)
    else:
        raise LatlabError("give --family KEY, or --fmap and --k (with --stride/--groups)")
    config = ConvConfig(fam, cin, cout, batch, dtype, layout, op)
    database = open_database(db, create=False)
    with database.session() as session:
        settings = {"batch": batch, "dtype": dtype, "layout": layout, "op": op}
        sweep_row = find_sweep(session, sweep, hardware, holding=settings)
        ms = lookup(session, sweep_row.id, config)
    typer.echo(f"{ms:.6g} ms  ({config.describe()}; sweep {sweep_row.id})")


@app.command("export")
def export(
    out: Annotated[Path, typer.Argument(help="Output file (.pkl for halp/mdp, .csv, .json); `-` writes a CSV or JSON "
                                             "to stdout.")],
    fmt: Annotated[str | None, typer.Option(
        "--format", "-f", help="halp (7-token keys) | mdp (6) | csv | json [default: from the file's extension, "
                               "halp for .pkl]", show_default=False)] = None,
    sweep: SweepOption = None, hardware: HardwareOption = None,
    dtype: Annotated[str | None, typer.Option(help="Only rows of this dtype.")] = None,
    batch: Annotated[int | None, typer.Option(help="Only rows of this batch size.")] = None,
    op: Annotated[str | None, typer.Option(help="Only rows of this op.")] = None,
    layout: Annotated[str | None, typer.Option(help="Only rows of this layout.")] = None,
    db: DbOption = None,
) -> None:
    r"""Export a sweep: a HALP/MDP pickle (keys like 256_64_64_56_3_1[_1] -> ms) or a CSV/JSON table.

    The pickle is what HALP/MDP's released training code loads as its LUT. CSV and JSON have one row per
    measurement: shape family, channels, batch, dtype, layout, median/IQR/mean ms, status, telemetry and when
    it was measured, then where and how (sweep, hardware, backend, timer, cache, cuDNN flags, torch/CUDA/cuDNN/
    driver versions, latlab commit), so that files from several machines can be concatenated.

    Examples:

        latlab lut export rn50_h100.pkl --format halp \
            --hardware "NVIDIA H100 80GB HBM3"
        latlab lut export rn50.csv --sweep 1
        latlab lut export - -f json --sweep 1 | jq length
    """

    from db.engine import open_database
    from db.legacy import export_legacy
    from db.lut import find_sweep, sweep_provenance, sweep_rows
    from db.models import Measurement, as_utc
    fmt = _export_format(out, fmt)
    database = open_database(db, create=False)
    with database.session() as session:
        where = {k: v for k, v in {"dtype": dtype, "batch": batch, "op": op, "layout": layout}.items() if v is not None}
        found = find_sweep(session, sweep, hardware, holding=where)
        sweep_id, provenance = found.id, sweep_provenance(found)
    to_stdout = str(out) == "-"
    if not to_stdout and not out.parent.is_dir():
        raise LatlabError(f"folder {out.parent} does not exist; create it first")
    if fmt in ("halp", "mdp"):
        written = export_legacy(database, sweep_id, out, fmt, where=where)
        typer.echo(f"wrote {len(written)} keys ({fmt} format, e.g. {next(iter(written))}) to {out}")
        return
    query = sweep_rows(sweep_id, *(getattr(Measurement, c) for c in _ROW_COLUMNS), Measurement.created_at, **where)
    with database.session() as session:  # plain rows, not ORM objects
        table = [{**dict(zip(_ROW_COLUMNS, row[:-1], strict=True)), "measured_at": as_utc(row[-1]).isoformat(),
                  **provenance} for row in session.execute(query.order_by(Measurement.id))]
    if not table:
        raise LatlabError(f"sweep {sweep_id} has no rows{' with ' + str(where) if where else ''}; nothing written")
    if to_stdout:
        typer.echo(render(table, fmt), nl=False)
        return
    from db.files import write_atomically

    write_atomically(out, render(table, fmt).encode())
    typer.echo(f"wrote {len(table)} rows to {out}")


_EXPORT_FORMATS = ("halp", "mdp", "csv", "json")
_TABLE_SUFFIXES = {".csv": "csv", ".json": "json"}
_PICKLE_SUFFIXES = (".pkl", ".pickle")


def _export_format(out: Path, fmt: str | None) -> str:
    """The export format: ``fmt`` if given (and consistent with a .csv/.json name), else the extension's."""
    suffix = out.suffix.lower()
    if fmt is None:
        if str(out) == "-":
            raise LatlabError("`-` (stdout) needs --format csv or json")
        if suffix not in (*_TABLE_SUFFIXES, *_PICKLE_SUFFIXES):
            raise LatlabError(f"cannot tell the format from {out.name!r}; give --format halp, mdp, csv or json")
        return _TABLE_SUFFIXES.get(suffix, "halp")
    fmt = fmt.lower()
    if fmt not in _EXPORT_FORMATS:
        raise LatlabError(f"unknown export format {fmt!r}; choose {', '.join(_EXPORT_FORMATS)}")
    if str(out) == "-" and fmt not in _TABLE_SUFFIXES.values():
        raise LatlabError(f"--format {fmt} writes a pickle; give a file name instead of `-`")
    pickled = fmt in ("halp", "mdp")
    if (suffix in _TABLE_SUFFIXES and _TABLE_SUFFIXES[suffix] != fmt) or (suffix in _PICKLE_SUFFIXES and not pickled):
        raise LatlabError(f"--format {fmt} does not match the file name {out.name!r}")
    return fmt


@app.command("import")
def import_(
    path: Annotated[Path, typer.Argument(help="HALP/MDP LUT pickle: dict key -> ms per batch.")],
    hardware: Annotated[str, typer.Option(help="The hardware profile the LUT was measured on: an existing one (id, "
                                               "name or fingerprint) or the name of a new one.", callback=stored_name)],
    dtype: Annotated[str, typer.Option(help="Precision the LUT was measured in (not in the file).")] = "fp32",
    layout: Annotated[str, typer.Option(help="nchw | nhwc (not in the file).")] = "nchw",
    op: Annotated[str, typer.Option(help="conv | conv_bn_relu (not in the file).")] = "conv",
    db: DbOption = None,
) -> None:
    r"""Import a HALP/MDP LUT pickle, loaded with a restricted unpickler (refuses code).

    Padding is taken as k//2 and dilation 1 (the legacy keys have neither). Re-importing adds nothing.

    Example:

        latlab lut import rn50_titanv_cudnn_batch256.pkl --hardware "TITAN V" \
            --dtype fp32
    """
    from db.engine import open_database
    from db.keys import check_exec_settings
    from db.legacy import import_legacy, read_legacy
    check_exec_settings(dtype, layout, op)
    read = read_legacy(path)  # validated before a database is created or touched
    database = open_database(db)
    report = import_legacy(database, path, hardware=hardware, dtype=dtype, layout=layout, op=op, read=read)
    typer.echo(
        f"imported {path.name} into sweep {report.sweep_id} ({report.hardware}): {report.keys} keys, "
        f"{report.inserted} new, {report.already_present} already present, "
        f"{report.skipped_zero_channels} zero-channel keys skipped"
    )
