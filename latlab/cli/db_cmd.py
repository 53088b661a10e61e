"""``latlab db``: schema migrations."""

from __future__ import annotations

from typing import Annotated

import typer

from latlab.cli._options import DbOption, command_group

app = command_group("Database schema: show the revision and the revisions there are, upgrade, downgrade.")


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


@app.command()
def history(db: DbOption = None) -> None:
    """List the schema revisions this latlab knows, oldest first, marking the database's own.

    Example:

        latlab db history --db rn50.db
    """
    from db.engine import open_database, schema_history
    current = open_database(db, create=False, upgrade=False, check_schema=False).revision()
    for revision, what in schema_history():
        typer.echo(f"{'*' if revision == current else ' '} {revision}  {what}")


@app.command()
def downgrade(
    revision: Annotated[str, typer.Argument(help="Revision to go back to (`latlab db history`).")],
    db: DbOption = None,
) -> None:
    """Migrate back to REVISION, e.g. to use the database with an older latlab.

    What later revisions added (columns, tables) is dropped; every other row stays. Back the database up
    first (docs/database.md). The migration is one transaction: if it fails, nothing has changed.

    Example:

        latlab db downgrade 0004 --db rn50.db
    """
    from db.engine import describe_url, open_database
    database = open_database(db, create=False, upgrade=False, check_schema=False)
    database.downgrade(revision)
    typer.echo(f"{describe_url(database.url)}: schema at revision {database.revision()}")
