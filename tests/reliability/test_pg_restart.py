"""PostgreSQL restarted under a running worker: it reconnects (pool_pre_ping + retried transactions) and finishes."""

from __future__ import annotations

import time

import pytest

from db.engine import open_database

pytestmark = pytest.mark.postgres


@pytest.fixture
def own_server():  # type: ignore[no-untyped-def]
    """A server of this test's own (restarting the session's shared server would disturb other tests)."""
    pytest.importorskip("psycopg")
    from db.testing_pg import PostgresServer, find_pg_bin

    if find_pg_bin() is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed; run `make system-deps`")
    with PostgresServer() as server:
        yield server


def test_worker_survives_postgres_restart(own_server, h, figure) -> None:  # type: ignore[no-untyped-def]
    url = own_server.create_database("restart")
    open_database(url).dispose()
    proc = h.spawn(h.worker_cmd(url, "--worker-id", "w0", "--heartbeat-timeout", "30", delay_ms=1))
    try:
        database = h.wait_for_rows(url, 200, proc)
        at = h.counts(database)["rows"]
        database.dispose()
        t0 = time.monotonic()
        own_server.restart(down_s=1.0)
        down = time.monotonic() - t0
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    database = open_database(url)
    c = h.counts(database)
    reconnects = err.count("retrying in")
    figure(f"PostgreSQL restarted at {at}/{h.N_REFERENCE} (down {down:.1f}s) -> worker retried {reconnects} "
           f"transaction(s), finished: {c['rows']} rows, {c['duplicates']} duplicates")
    assert "sweep complete" in out
    assert c["rows"] == c["distinct"] == c.get("ok") == h.N_REFERENCE
    assert reconnects >= 1  # the restart was felt, and ridden out
    assert h.claim_attempts(database) == {1: h.N_REFERENCE}
    database.dispose()
