"""Injected OOM / cuDNN errors are stored as failed rows, the sweep goes on, --retry-failed re-measures them."""

from __future__ import annotations

from pathlib import Path

from db.engine import open_database
from profiler.backends.fake import FakeBackend, failure_injector
from profiler.worker import run_worker

INJECT = "oom=0.03,error=0.02"


def test_injected_failures_are_rows_and_retry_failed_remeasures(tmp_path: Path, h, reference_plan, figure, cli) -> None:  # type: ignore[no-untyped-def]
    db = str(tmp_path / "fail.db")
    fail_on = failure_injector(INJECT)
    expected = {"oom": 0, "error": 0}
    for config in reference_plan.configs:
        status = fail_on(config)
        if status:
            expected[status] += 1
    assert expected["oom"] > 10 and expected["error"] > 10
    database = open_database(db)
    first = run_worker(database, reference_plan, FakeBackend(inject=INJECT), progress=False)
    c = h.counts(database)
    assert first.complete and first.failed == expected
    assert first.measured == h.N_REFERENCE - sum(expected.values())
    assert (c["rows"], c.get("oom"), c.get("error")) == (h.N_REFERENCE, expected["oom"], expected["error"])
    # a plain re-run measures nothing; --retry-failed (through the CLI) re-measures exactly the failed rows
    again = run_worker(database, reference_plan, FakeBackend(inject=INJECT), progress=False)
    assert again.measured == 0 and sum(again.failed.values()) == 0
    code, out, err = cli(["profile", "--model", "resnet50", "--backend", "fake", "--grid", "reference", "--worker",
                          "--retry-failed", "--quiet", "--db", db])
    assert code == 0, err
    after = h.counts(database)
    retried = sum(expected.values())
    figure(f"injected {expected['oom']} OOM + {expected['error']} cuDNN errors in {h.N_REFERENCE} configs -> "
           f"stored as failed rows, sweep completed; --retry-failed re-measured {retried}: "
           f"{after.get('ok')} ok rows, {after['duplicates']} duplicates")
    assert f"{retried} measured" in out
    assert after["rows"] == after.get("ok") == h.N_REFERENCE and after["duplicates"] == 0
