"""A throw-away PostgreSQL server for tests and benchmarks: ``initdb`` + ``pg_ctl`` in a temporary directory.

Used by the ``postgres_server`` test fixture and by ``benchmarks/fleet.py``. Needs the PostgreSQL server
binaries (``scripts/install-system-deps.sh``) and psycopg (``pip install -e '.[postgres]'``).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from db.errors import LatlabError


def find_pg_bin() -> Path | None:
    """Directory of ``initdb``/``pg_ctl`` (newest /usr/lib/postgresql/*/bin, else PATH), or None."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """A throw-away PostgreSQL cluster in a temporary directory, on a loopback port (trust auth, fsync off)."""

    def __init__(self, bindir: Path | None = None) -> None:
        bindir = bindir or find_pg_bin()
        if bindir is None:
            raise LatlabError("PostgreSQL server binaries (initdb, pg_ctl) not found; "
                              "run scripts/install-system-deps.sh")
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="latlab-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres/nobody account
            for name in ("postgres", "nobody"):
                try:
                    self.user = pwd.getpwnam(name)
                    break
                except KeyError:
                    continue
            if self.user is None:
                raise LatlabError("running as root and no 'postgres' or 'nobody' account to run PostgreSQL")
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
            os.chmod(self.root, 0o700)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.user is not None:
            cmd = ["runuser", "-u", self.user.pw_name, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120)

    def _pg_start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "start")

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "latlab", "--auth=trust", "-E", "UTF8", "--no-sync")
        self._pg_start()

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def restart(self, down_s: float = 0.0) -> None:
        """Stop (fast: clients are disconnected) and start the same cluster, ``down_s`` seconds apart."""
        import time

        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        time.sleep(down_s)
        self._pg_start()

    def create_database(self, name: str) -> str:
        """Create database ``name``; returns its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="latlab", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://latlab@127.0.0.1:{self.port}/{name}"

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
