"""``latlab sweep status``: progress of a fleet sweep, per worker and in total."""

from __future__ import annotations

import json

import typer

from latlab.cli._options import DbOption, FormatOption, HardwareOption, SweepOption, command_group, echo_rows

app = command_group("Follow sweeps run by a fleet of `latlab profile --worker` processes.")


@app.callback()
def _group() -> None:
    """Follow sweeps run by a fleet of `latlab profile --worker` processes."""


@app.command()
def status(sweep: SweepOption = None, hardware: HardwareOption = None, fmt: FormatOption = "table",
           db: DbOption = None) -> None:
    """Per worker: claims held, done, failed, last heartbeat, alive or dead; and the sweep's total.

    A worker is dead when its last heartbeat is older than its --heartbeat-timeout; the next worker to
    claim work releases its claims to the others.

    Example:

        latlab sweep status --sweep 1 --db postgresql+psycopg://host/lut
    """
    from db.claims import fleet_status
    from db.engine import open_database
    from db.lut import find_sweep
    database = open_database(db, create=False)
    with database.session() as session:
        sweep_id = find_sweep(session, sweep, hardware).id
    info = fleet_status(database, sweep_id)
    if fmt == "json":
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    workers = info["workers"]
    rows = [{**w, "alive": "alive" if w["alive"] else "left" if w["state"] in ("finished", "stopped") else "dead",
             "last_heartbeat_s": f"{w['last_heartbeat_s']:.1f}s ago" if fmt == "table" else w["last_heartbeat_s"]}
            for w in workers]
    echo_rows(rows, fmt, title=f"sweep {sweep_id} workers",
              empty=f"sweep {sweep_id} has no fleet workers (it was run without --worker)")
    typer.echo(summary_line(info), err=fmt != "table")  # a CSV or Markdown table on stdout stays one table


def summary_line(info: dict) -> str:
    """One line: planned, stored, claims by state and workers alive."""
    c = info["claims"]
    alive = sum(1 for w in info["workers"] if w["alive"])
    planned = info["planned"] if info["planned"] is not None else "?"
    return (
        f"sweep {info['sweep']} ({info['status']}): {planned} planned, {info['ok'] + info['failed']} stored "
        f"({info['ok']} ok, {info['failed']} failed); claims: {c['pending']} pending, {c['claimed']} claimed, "
        f"{c['done']} done, {c['failed']} failed; workers: {alive} alive of {len(info['workers'])}"
    )
