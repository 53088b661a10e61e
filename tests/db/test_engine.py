"""Opening databases: paths, URLs, corrupt files, schema revisions and migrations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from db import DatabaseError, SchemaError, head_revision, open_database, resolve_url
from db.engine import Database, hide_password, hide_passwords


def test_default_path_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LATLAB_DB", raising=False)
    assert resolve_url().database == str(tmp_path / "latlab.db")
    monkeypatch.setenv("LATLAB_DB", str(tmp_path / "x.db"))
    assert resolve_url().database == str(tmp_path / "x.db")
    assert resolve_url("postgresql+psycopg://u@h/db").get_backend_name() == "postgresql"
    assert resolve_url(tmp_path / "a?b.db").database == str(tmp_path / "a?b.db")  # a path is a path
    assert resolve_url(f"sqlite:///{tmp_path}/x.db?timeout=5").query == {"timeout": "5"}
    with pytest.raises(DatabaseError, match=r"'\?' starts options .* give its path without sqlite://"):
        resolve_url(f"sqlite:///{tmp_path}/a?b.db")  # SQLAlchemy would open a.db


def test_creates_and_migrates_to_head(db_url: str) -> None:
    database = open_database(db_url)
    assert database.revision() == head_revision()
    with database.engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
    assert {"hardware", "sweeps", "measurements", "model_measurements"} <= tables
    open_database(db_url).dispose()  # re-opening is a no-op
    database.dispose()


def test_sqlite_uses_wal_and_busy_timeout(sqlite_path: Path) -> None:
    database = open_database(sqlite_path)
    with database.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30000


def test_missing_file_is_not_created_by_readers(tmp_path: Path) -> None:
    path = tmp_path / "nope.db"
    with pytest.raises(DatabaseError, match="no LUT database"):
        open_database(path, create=False)
    assert not path.exists()


@pytest.mark.parametrize("content", [b"this is not a database at all" * 10, b"\x00\xff" * 500])
def test_corrupt_file_is_refused_and_untouched(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "corrupt.db"
    path.write_bytes(content)
    with pytest.raises(DatabaseError, match="not a SQLite database"):
        open_database(path)
    assert path.read_bytes() == content
    assert not Path(str(path) + "-wal").exists()


def test_unknown_dialect_and_bad_url() -> None:
    with pytest.raises(DatabaseError, match="cannot use database URL"):
        open_database("nosuchdb://x/y")
    with pytest.raises(DatabaseError, match=r"postgres://x/y: .*PostgreSQL: postgresql\+psycopg://USER@HOST/DB"):
        open_database("postgres://x/y")  # the libpq spelling, which SQLAlchemy does not take
    with pytest.raises(DatabaseError, match=r"its driver is not installed \(MySQLdb\); .*other databases are untested"):
        open_database("mysql://me@host/lut")
    with pytest.raises(DatabaseError, match="invalid database URL"):
        open_database("postgresql+psycopg://::::")


def test_unreachable_server_is_a_database_error() -> None:
    with pytest.raises(DatabaseError, match="database error"):
        open_database("postgresql+psycopg://latlab@127.0.0.1:1/latlab")


def test_foreign_sqlite_database_is_rejected_by_readers(sqlite_path: Path) -> None:
    engine = create_engine(f"sqlite:///{sqlite_path}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE other (x INTEGER)"))
    with pytest.raises(SchemaError, match="not a latlab database"):
        open_database(sqlite_path, create=False)


def test_writers_leave_a_foreign_or_newer_database_alone(sqlite_path: Path) -> None:
    """A database of other tables is not given latlab's; one of a newer latlab says to upgrade latlab."""
    engine = create_engine(f"sqlite:///{sqlite_path}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE customers (id INTEGER)"))
    with pytest.raises(SchemaError, match="not a latlab database .*nothing was written"):
        open_database(sqlite_path, create=True, upgrade=True)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM sqlite_master")).scalars().all() == ["customers"]
    newer = sqlite_path.with_name("newer.db")
    open_database(newer).dispose()
    with create_engine(f"sqlite:///{newer}").begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    for kwargs in ({"upgrade": True}, {"create": False}):
        with pytest.raises(SchemaError, match="revision 0099, newer than this latlab knows.*upgrade latlab"):
            open_database(newer, **kwargs)


def test_readers_do_not_switch_a_file_to_wal(sqlite_path: Path) -> None:
    """Read-only commands change nothing in the file, not even its journal mode."""
    open_database(sqlite_path).dispose()
    with create_engine(f"sqlite:///{sqlite_path}").connect() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=DELETE")
    before = sqlite_path.read_bytes()
    reader = open_database(sqlite_path, create=False)
    assert reader.revision() == head_revision()
    reader.dispose()
    assert sqlite_path.read_bytes() == before


def test_upgrade_from_first_revision_keeps_data(db_url: str) -> None:
    """A database created at revision 0001 with rows upgrades to head with the rows intact."""
    database = open_database(db_url, create=True, upgrade=False, check_schema=False)
    database.upgrade("0001")
    assert database.revision() == "0001"
    with database.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO hardware (id, fingerprint, name, kind, details, created_at) "
            "VALUES (1, 'fp1', 'TITAN V', 'imported', '{}', CURRENT_TIMESTAMP)"))
        conn.execute(text(
            "INSERT INTO sweeps (id, hardware_id, name, backend, protocol_hash, timer, settings, plan, status, "
            "created_at, updated_at) VALUES (1, 1, '', 'legacy', 'h', 'unknown', '{}', '{}', 'imported', "
            "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        conn.execute(text(
            "INSERT INTO measurements (sweep_id, family, in_h, in_w, kernel_h, kernel_w, stride_h, stride_w, "
            "pad_h, pad_w, dil_h, dil_w, groups, depthwise, cin, cout, batch, dtype, layout, op, median_ms, "
            "status, created_at) VALUES (1, 'f56x56_k3x3_s1x1_p1x1_d1x1_g1', 56, 56, 3, 3, 1, 1, 1, 1, 1, 1, 1, "
            "false, 64, 64, 256, 'fp32', 'nchw', 'conv', 4.25, 'ok', CURRENT_TIMESTAMP)"))
    with pytest.raises(SchemaError, match="latlab db upgrade"):
        Database(database.engine).check_schema()
    database.upgrade()
    assert database.revision() == head_revision()
    with database.engine.connect() as conn:
        row = conn.execute(text("SELECT cin, cout, median_ms, sm_clock_mhz FROM measurements")).one()
        assert tuple(row) == (64, 64, 4.25, None)
        assert conn.execute(text("SELECT name FROM hardware")).scalar() == "TITAN V"
        assert conn.execute(text("SELECT count(*) FROM model_measurements")).scalar() == 0
    database.dispose()


def _counts(database: Database) -> dict[str, int]:
    with database.engine.connect() as conn:
        return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in ("hardware", "sweeps",
                                                                                     "measurements")}


def _swept(path: Path) -> Database:
    """A head-revision SQLite database holding a small fake sweep."""
    from profiler.backends.fake import FakeBackend
    from profiler.plan import build_plan
    from profiler.protocol import TimingProtocol
    from profiler.runner import run_sweep

    database = open_database(path)
    run_sweep(database, build_plan("resnet18", "random:3", input_size=32, batch=2),
              FakeBackend(TimingProtocol(repeats=3)), progress=False)
    return database


def test_a_database_of_the_first_revision_0005_gets_its_column_renamed(sqlite_path: Path) -> None:
    """Revision 0005 first added ``cold_weights``, then was edited to add ``llc_flush``: 0006 renames it, keeping
    every row (SQLite rebuilds ``sweeps``: with foreign keys on, that deleted every measurement)."""
    database = _swept(sqlite_path)
    before = _counts(database)
    assert before["measurements"] > 0
    database.downgrade("0004")
    with database.engine.begin() as conn:  # what the first 0005 did
        conn.execute(text("ALTER TABLE sweeps ADD COLUMN cold_weights BOOLEAN"))
        conn.execute(text("UPDATE alembic_version SET version_num = '0005'"))
    database.upgrade()
    assert database.revision() == head_revision()
    with database.engine.connect() as conn:
        columns = {row[1] for row in conn.execute(text("PRAGMA table_info(sweeps)"))}
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1  # back on for what follows
    assert "llc_flush" in columns and "cold_weights" not in columns
    assert _counts(database) == before
    database.dispose()


def test_downgrade_and_upgrade_roundtrip_keeps_the_rows(sqlite_path: Path) -> None:
    database = _swept(sqlite_path)
    before = _counts(database)
    database.downgrade("0001")
    assert database.revision() == "0001" and _counts(database) == before
    database.upgrade()
    assert database.revision() == head_revision() and _counts(database) == before
    database.dispose()


def test_a_migration_that_orphans_rows_changes_nothing(sqlite_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole migration, DDL included, is one transaction: a failing check leaves the old schema."""
    database = _swept(sqlite_path)
    database.downgrade("0004")
    real = Database._orphans
    calls = iter((0, 1))
    monkeypatch.setattr(Database, "_orphans", lambda self, conn: next(calls))
    with pytest.raises(SchemaError, match="rows without the row they refer to; nothing was changed"):
        database.upgrade()
    monkeypatch.setattr(Database, "_orphans", real)
    assert database.revision() == "0004"
    with database.engine.connect() as conn:
        assert "llc_flush" not in {row[1] for row in conn.execute(text("PRAGMA table_info(sweeps)"))}
    database.upgrade()
    assert database.revision() == head_revision()
    database.dispose()


@pytest.mark.postgres
def test_workers_starting_together_on_a_new_postgres_database_migrate_one_by_one(postgres_server) -> None:
    """Fleet workers all open (and so migrate) a fresh database at once; none may fail on the others' DDL."""
    import subprocess
    import sys

    url = postgres_server.create_database(f"race{os.getpid()}")
    code = f"from db.engine import open_database; open_database({url!r}).dispose()"
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    assert open_database(url, create=False, upgrade=False).revision() == head_revision()


def test_passwords_are_not_stored(sqlite_path: Path) -> None:
    """A sweep's stored command (in every dump and shared copy of the database) hides the --db password."""
    from profiler.backends.fake import FakeBackend
    from profiler.plan import build_plan
    from profiler.protocol import TimingProtocol
    from profiler.runner import run_sweep

    assert hide_passwords("--db 'postgresql+psycopg://me:hunter2@host:5432/lut' -q") == \
        "--db 'postgresql+psycopg://me:***@host:5432/lut' -q"
    assert hide_passwords("postgresql://me@host/lut sqlite:////tmp/a:b.db") == "postgresql://me@host/lut sqlite:////tmp/a:b.db"
    for password in ("it's", 'x"y', "a b"):  # one argument: what SQLAlchemy reads as the password
        assert hide_password(f"--db=postgresql+psycopg://me:{password}@host/lut") == \
            "--db=postgresql+psycopg://me:***@host/lut"
    assert hide_password("postgresql://alice@srv:pw@srv.example.com/lut") == "postgresql://alice@srv:***@srv.example.com/lut"
    cert = "postgresql://me:pw@host:5432/lut?sslcert=/home/me/me@corp.crt"  # an @ after the host stays
    assert hide_password(cert) == "postgresql://me:***@host:5432/lut?sslcert=/home/me/me@corp.crt"
    assert hide_password("postgresql://me@host:5432/lut") == "postgresql://me@host:5432/lut"
    assert hide_passwords("--db postgresql://alice@srv:pw@srv.example.com/lut -q") == \
        "--db postgresql://alice@srv:***@srv.example.com/lut -q"
    with pytest.raises(DatabaseError, match=r"invalid database URL 'postgresql\+psycopg://me:\*\*\*@host:x") as err:
        open_database("postgresql+psycopg://me:hunter2@host:x/lut")
    assert "hunter2" not in str(err.value)
    database = open_database(sqlite_path)
    run_sweep(database, build_plan("resnet18", "random:1", input_size=32, batch=2),
              FakeBackend(TimingProtocol(repeats=3)), progress=False,
              command="latlab profile --db postgresql+psycopg://me:hunter2@host/lut")
    with database.engine.connect() as conn:
        assert conn.execute(text("SELECT command FROM sweeps")).scalar() == \
            "latlab profile --db postgresql+psycopg://me:***@host/lut"
    database.dispose()


def test_a_full_disk_or_read_only_database_is_not_retried() -> None:
    """Waiting does not free space: the command fails at once (and resumes once fixed), where a dropped connection
    or a locked file is retried."""
    from sqlalchemy.exc import OperationalError

    from db.retry import is_transient, with_retry

    calls = []

    def full() -> None:
        calls.append(1)
        raise OperationalError("INSERT ...", {}, Exception("database or disk is full"))

    with pytest.raises(OperationalError, match="disk is full"):
        with_retry(full, retry_s=30)
    assert len(calls) == 1
    assert not is_transient(OperationalError("UPDATE ...", {}, Exception("attempt to write a readonly database")))
    assert is_transient(OperationalError("INSERT ...", {}, Exception("database is locked")))
