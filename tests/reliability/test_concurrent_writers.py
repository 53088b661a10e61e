"""Four worker processes on one database (SQLite WAL and PostgreSQL): no errors, every configuration once."""

from __future__ import annotations

import time

from db.claims import fleet_status
from db.engine import open_database


def test_four_concurrent_workers(db_url: str, h, reference_plan, figure) -> None:  # type: ignore[no-untyped-def]
    kind = "PostgreSQL" if "://" in db_url else "SQLite (WAL)"
    open_database(db_url).dispose()  # schema first, so the four workers race only on the sweep itself
    start = time.monotonic()
    reports = h.fork_workers(db_url, reference_plan, 4, delay_s=0.002)
    elapsed = time.monotonic() - start
    measured = [r["measured"] for r in reports]
    database = open_database(db_url)
    c = h.counts(database)
    info = fleet_status(database, 1)
    figure(f"4 concurrent worker processes on {kind}: {c['rows']} rows, {c['duplicates']} duplicates, per worker "
           f"{'+'.join(map(str, measured))} = {sum(measured)} measurements for {h.N_REFERENCE} configurations "
           f"in {elapsed:.1f}s")
    assert all(r["complete"] and r["lost"] == 0 for r in reports)  # nobody was declared dead
    assert c["rows"] == c["distinct"] == c.get("ok") == h.N_REFERENCE
    assert sum(measured) == h.N_REFERENCE  # nothing measured twice
    assert all(m > 0 for m in measured)  # all four took part
    assert h.claim_attempts(database) == {1: h.N_REFERENCE}
    assert info["claims"]["done"] == h.N_REFERENCE and info["status"] == "complete"
    assert sorted(w["worker"] for w in info["workers"]) == ["w0", "w1", "w2", "w3"]
    database.dispose()
