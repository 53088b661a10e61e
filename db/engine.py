"""Open a LUT database by path or URL, keep its schema current, and hand out sessions.

``--db PATH`` (or ``LATLAB_DB``) is a SQLite file; anything containing ``://`` is an SQLAlchemy URL
(e.g. ``postgresql+psycopg://user@host/latlab``). SQLite runs in WAL mode with a busy timeout so that
several processes can share one file.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db.defaults import DEFAULT_DB, ENV_VAR
from db.errors import DatabaseError, LatlabError, SchemaError

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
_SQLITE_MAGIC = b"SQLite format 3\x00"
_MIGRATIONS = Path(__file__).with_name("migrations")


def resolve_url(db: str | os.PathLike[str] | None = None) -> URL:
    """Turn ``--db`` / ``LATLAB_DB`` / the default ``./latlab.db`` into a validated URL."""
    raw = str(db) if db is not None else os.environ.get(ENV_VAR) or DEFAULT_DB
    if "://" not in raw:
        return URL.create("sqlite", database=str(Path(raw).expanduser().resolve()))
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError) as exc:
        raise DatabaseError(f"invalid database URL {hide_password(raw)!r}: {hide_password(str(exc))}") from None
    if url.get_backend_name() == "sqlite" and "?" in raw and not url.query:  # SQLAlchemy drops a bare "?b.db"
        raise DatabaseError(f"{raw!r}: in a URL, '?' starts options (key=value) and none were given; for a file "
                            "whose name holds '?', give its path without sqlite://")
    return url


def describe_url(url: URL) -> str:
    """The URL with any password hidden, for messages."""
    return url.render_as_string(hide_password=True)


_URL_PASSWORD = re.compile(r"(\w[\w+.-]*://[^\s:/'\"]+:)[^\s@'\"]+@")
_ONE_URL_PASSWORD = re.compile(r"([\w+]+://[^:/]*:)[^@]*@")  # SQLAlchemy's user:password@ (make_url's pattern)


def hide_passwords(text: str) -> str:
    """``text`` (a command line, a config) with the password of every ``scheme://user:password@`` URL as ``***``,
    for what is stored or written: a sweep's command, a run's resolved config, a benchmark's command."""
    return _URL_PASSWORD.sub(r"\1***@", text)


def hide_password(value: str) -> str:
    """One value (a command-line argument, a URL) with its URL's password as ``***``: what SQLAlchemy reads as
    the password (between ``user:`` and the next ``@``; the user may hold an ``@``), quotes and spaces too."""
    return _ONE_URL_PASSWORD.sub(r"\1***@", value)


def in_memory(url: URL) -> bool:
    """An in-memory SQLite URL (``sqlite://``, ``sqlite:///:memory:``): gone when the process ends."""
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def _sqlite_path(url: URL) -> Path | None:
    if url.get_backend_name() != "sqlite" or in_memory(url):
        return None
    return Path(url.database)


def _check_sqlite_file(path: Path, create: bool) -> None:
    if not path.exists():
        if not create:
            raise DatabaseError(f"no LUT database at {path} (pass --db PATH or set {ENV_VAR})")
        if not path.parent.exists():
            raise DatabaseError(f"cannot create {path}: directory {path.parent} does not exist")
        return
    if path.is_dir():
        raise DatabaseError(f"{path} is a directory, not a SQLite database file")
    try:
        with path.open("rb") as fh:
            head = fh.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise DatabaseError(f"cannot read {path}: {exc.strerror}") from None
    if head and head != _SQLITE_MAGIC:
        raise DatabaseError(f"{path} is not a SQLite database (corrupt, or another kind of file)")


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    _sqlite_reader_pragmas(dbapi_connection, _record)
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.close()


def _sqlite_reader_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    """What a reader sets: nothing stored in the file (WAL mode is, so only writers switch to it)."""
    cur = dbapi_connection.cursor()
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    return cfg


def head_revision() -> str:
    """Newest schema revision this version of latlab knows."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def schema_history() -> list[tuple[str, str]]:
    """``(revision, first line of its docstring)`` for every schema revision, oldest first."""
    script = ScriptDirectory.from_config(_alembic_config())
    return [(r.revision, (r.doc or "").strip().splitlines()[0] if r.doc else "")
            for r in reversed(list(script.walk_revisions()))]


def _release_interrupted(exc: BaseException) -> None:
    """After a Ctrl-C (or another exit exception) inside a statement, free what holds that statement open.

    SQLAlchemy discards the interrupted connection, but sqlite3 closes it only once the half-run cursor is gone,
    and the exception's traceback keeps it: until then the file's write lock stays taken, so the next write (the
    sweep's "interrupted" status) would wait on this very process. Clearing the finished frames of the traceback
    (and collecting their cycles) finalises the cursor and releases the lock."""
    if isinstance(exc, Exception):
        return
    traceback.clear_frames(exc.__traceback__)
    gc.collect()


class Database:
    """A LUT database: an engine, its schema revision and a session helper.

    Use :func:`open_database` rather than the constructor.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.url = engine.url
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def revision(self) -> str | None:
        """Current schema revision, or None for an empty database."""
        with self._wrap_errors(), self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def upgrade(self, revision: str = "head") -> None:
        """Apply migrations up to ``revision`` (idempotent). :class:`SchemaError`, with nothing written, for a
        database of other tables or of a newer latlab."""
        with self._migrating() as (conn, cfg):
            if self.dialect == "postgresql":  # fleet workers starting together on a new database migrate one by one
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
            current = MigrationContext.configure(conn).get_current_revision()
            if current is None and inspect(conn).get_table_names():
                raise SchemaError(f"{describe_url(self.url)} is not a latlab database (it holds other tables); "
                                  "nothing was written to it")
            self._check_known(current)
            command.upgrade(cfg, revision)

    def downgrade(self, revision: str) -> None:
        """Migrate back to ``revision``: what later revisions added (columns, tables) is dropped; the rest stays."""
        known = [r for r, _ in schema_history()]
        with self._migrating() as (conn, cfg):
            current = MigrationContext.configure(conn).get_current_revision()
            self._check_known(current)
            older = known[:known.index(current) + 1] if current else []
            if revision not in older:
                raise SchemaError(f"cannot downgrade {describe_url(self.url)} from revision {current or 'none'} to "
                                  f"{revision!r}: give one of {', '.join(older) or '(none)'} (`latlab db history`)")
            command.downgrade(cfg, revision)

    @contextmanager
    def _migrating(self) -> Iterator[tuple[Connection, Config]]:
        """One transaction for alembic (DDL included: a killed migration leaves the old schema). On SQLite, foreign
        keys are off meanwhile: a batch migration rebuilds a table (copy, drop, rename), and with them on, dropping
        ``sweeps`` would delete every measurement that points to it. A migration that leaves rows without the row
        they refer to is rolled back."""
        cfg = _alembic_config()
        sqlite = self.dialect == "sqlite"
        with self._wrap_errors(), self.engine.connect() as conn:
            if sqlite:  # a no-op inside a transaction: set it before
                conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
                conn.commit()
            try:
                with conn.begin():
                    if sqlite:  # pysqlite would begin only before DML, leaving CREATE/DROP TABLE outside
                        conn.exec_driver_sql("BEGIN IMMEDIATE")
                    orphans = self._orphans(conn)
                    cfg.attributes["connection"] = conn
                    yield conn, cfg
                    if self._orphans(conn) > orphans:
                        raise SchemaError(f"migrating {describe_url(self.url)} would leave rows without the row they "
                                          "refer to; nothing was changed")
            finally:
                if sqlite:
                    conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                    conn.commit()

    def _orphans(self, conn: Connection) -> int:
        """Rows whose foreign key points nowhere (SQLite only; PostgreSQL enforces them in every statement)."""
        return len(conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()) if self.dialect == "sqlite" else 0

    def _tables(self) -> list[str]:
        with self._wrap_errors(), self.engine.connect() as conn:
            return inspect(conn).get_table_names()

    def _check_known(self, current: str | None) -> None:
        if current is None:
            return
        try:
            known = ScriptDirectory.from_config(_alembic_config()).get_revision(current) is not None
        except Exception:  # alembic: "Can't locate revision"
            known = False
        if not known:
            raise SchemaError(f"{describe_url(self.url)} is at schema revision {current}, newer than this latlab "
                              f"knows (newest {head_revision()}): upgrade latlab")

    def check_schema(self) -> None:
        """Raise :class:`SchemaError` unless the schema is at this latlab's head revision."""
        current = self.revision()
        if current == head_revision():
            return
        if current is None:
            what = "an empty database" if not self._tables() else "not a latlab database"
            fix = ": create its tables with `latlab db upgrade`" if what == "an empty database" else ""
            raise SchemaError(f"{describe_url(self.url)} is {what} (no latlab schema revision){fix}")
        self._check_known(current)
        raise SchemaError(
            f"{describe_url(self.url)} is at schema revision {current}, this latlab needs "
            f"{head_revision()}: run `latlab db upgrade`"
        )

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on any error.

        Driver errors come out as :class:`DatabaseError`; latlab's own errors pass through.
        """
        session = self._sessions()
        try:
            with self._wrap_errors():
                yield session
                session.commit()
        except BaseException as exc:
            _release_interrupted(exc)
            session.rollback()
            raise
        finally:
            session.close()

    @contextmanager
    def transaction(self, *, immediate: bool = False) -> Iterator[Connection]:
        """A Core connection in one transaction: committed on success, rolled back on any error.

        ``immediate=True`` takes SQLite's write lock up front (``BEGIN IMMEDIATE``), so a
        read-then-write transaction cannot fail half-way on a concurrent writer (WAL snapshot upgrade);
        on PostgreSQL it changes nothing (use row locks there).
        """
        with self._wrap_errors(), self.engine.connect() as conn:
            if immediate and self.dialect == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.commit()
            except BaseException as exc:
                _release_interrupted(exc)
                conn.rollback()
                raise

    @contextmanager
    def _wrap_errors(self) -> Iterator[None]:
        try:
            yield
        except LatlabError:
            raise
        except SQLAlchemyError as exc:
            raise DatabaseError(f"database error on {describe_url(self.url)}: {_short(exc)}") from exc

    def dispose(self) -> None:
        """Close the engine's pooled connections (a PostgreSQL server sees them go)."""
        self.engine.dispose()


#: PostgreSQL advisory lock key held while migrating (any constant of latlab's own)
_MIGRATION_LOCK = 0x6C61746C6162  # "latlab"


def _short(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def open_database(
    db: str | os.PathLike[str] | None = None, *, create: bool = True, upgrade: bool | None = None,
    check_schema: bool = True, echo: bool = False,
) -> Database:
    """Open (and by default create and migrate) the LUT database at ``db``.

    Args:
        db: SQLite path or SQLAlchemy URL; None uses ``LATLAB_DB`` then ``./latlab.db``.
        create: create a missing SQLite file. Read-only commands pass False so a typo writes nothing.
        upgrade: migrate to the newest schema (default: same as ``create``). Without it the schema
            must already be current, else :class:`SchemaError` (unless ``check_schema`` is False).
    """
    url = resolve_url(db)
    path = _sqlite_path(url)
    if path is not None:
        _check_sqlite_file(path, create)
    kwargs: dict[str, object] = {"echo": echo, "future": True}
    if url.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    else:
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(url, **kwargs)
    except (NoSuchModuleError, ArgumentError, ImportError) as exc:
        postgres = url.get_backend_name() in ("postgres", "postgresql")
        hint = ("latlab stores LUTs in SQLite (a file path) or PostgreSQL: postgresql+psycopg://USER@HOST/DB, with "
                "pip install 'psycopg[binary]'" + ("" if postgres else "; other databases are untested"))
        what = f"its driver is not installed ({exc.name})" if isinstance(exc, ImportError) else str(exc)
        raise DatabaseError(f"cannot use database URL {describe_url(url)}: {what}; {hint}") from None
    if url.get_backend_name() == "sqlite":
        writer = create if upgrade is None else upgrade
        event.listen(engine, "connect", _sqlite_pragmas if writer else _sqlite_reader_pragmas)
    database = Database(engine)
    try:
        if (create if upgrade is None else upgrade):
            database.upgrade()
        elif check_schema:
            database.check_schema()
    except BaseException:
        engine.dispose()
        raise
    return database
