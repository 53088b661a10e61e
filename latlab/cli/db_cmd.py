"""``latlab db``: schema migrations."""

from __future__ import annotations

import typer

from latlab.cli._options import DbOption, command_group

app = command_group("Database schema: show the revision, upgrade to the newest.")


@app.command()
def upgrade(db: DbOption = None) -> None:
    """Create the database if needed and migrate it to the newest schema (safe to repeat).

    Commands that write (profile, measure, fit …) do this themselves. Run it to migrate a shared
    PostgreSQL database once before a fleet of workers starts, or an old database after upgrading latlab.

    Example:

        latlab db upgrade --db postgresql+psycopg://me@gpu-fleet/latlab
    """
    from db.engine import describe_url, open_database
    database = open_database(db, create=True, upgrade=True)
    typer.echo(f"{describe_url(database.url)}: schema at revision {database.revision()}")


@app.command()
def current(db: DbOption = None) -> None:
    """Print the schema revision of an existing database and the newest this latlab knows.

    Example:

        latlab db current --db rn50.db
    """
    from db.engine import describe_url, head_revision, open_database
    database = open_database(db, create=False, upgrade=False, check_schema=False)
    typer.echo(
        f"{describe_url(database.url)}: revision {database.revision() or 'none'} (newest: {head_revision()})"
    )
