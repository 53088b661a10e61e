"""Fleet sweeps: N `latlab profile --worker` processes on one PostgreSQL database, and one of them SIGKILLed.

Starts its own throw-away PostgreSQL server (``db.testing_pg``, as the test fixture does), then on the
fake backend's ResNet-50 reference lattice (1,423 configurations), with a simulated per-measurement
delay standing in for GPU timing work (the fake backend itself takes microseconds, so without it there
is nothing to parallelise):

1. one worker;
2. ``--workers`` workers: speed-up over one, every configuration measured exactly once;
3. ``--workers`` workers, one SIGKILLed half-way: its claims go to the others after the heartbeat
   timeout; counts of what it stored, what was re-issued, what the survivors measured.

The sweep time is taken from the database (first claim to last finished claim), so process start-up
(importing torch, tracing ResNet-50) is excluded; wall time including start-up is reported too.

    .venv/bin/python -m benchmarks.fleet                    # writes benchmarks/results/fleet.{json,md}
    .venv/bin/python -m benchmarks.fleet --delay-ms 20 --workers 4 --heartbeat-timeout 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from datetime import UTC
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from benchmarks._report import command_line
from db.claims import fleet_status
from db.engine import open_database
from db.lut import KEY_COLUMNS
from db.models import Measurement, SweepClaim
from db.testing_pg import PostgresServer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
_MEASURED = re.compile(r"(\d+) measured")


def _worker_cmd(url: str, worker_id: str, delay_ms: float, timeout_s: float) -> list[str]:
    return [sys.executable, "-m", "latlab", "profile", "--model", "resnet50", "--backend", "fake", "--grid",
            "reference", "--worker", "--worker-id", worker_id, "--fake-delay-ms", str(delay_ms),
            "--heartbeat-timeout", str(timeout_s), "--quiet", "--db", url]


def _rows(database: Any) -> int:
    with database.session() as s:
        return int(s.scalar(select(func.count()).select_from(Measurement)) or 0)


def run_fleet(server: PostgresServer, label: str, workers: int, delay_ms: float, timeout_s: float,
              kill_at: int | None = None) -> dict[str, Any]:
    """One sweep by ``workers`` processes on a fresh database; SIGKILL worker w0 once ``kill_at`` rows exist."""
    url = server.create_database(label)
    database = open_database(url)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.monotonic()
    procs = {f"w{i}": subprocess.Popen(_worker_cmd(url, f"w{i}", delay_ms, timeout_s), cwd=ROOT, env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(workers)}
    killed: dict[str, Any] = {}
    if kill_at is not None:
        while _rows(database) < kill_at:
            time.sleep(0.05)
        procs["w0"].send_signal(signal.SIGKILL)
        killed = {"worker": "w0", "rows_when_killed": _rows(database), "t_kill": time.monotonic()}
    outs = {w: p.communicate() for w, p in procs.items()}
    wall = time.monotonic() - start
    with database.session() as s:
        keys = [getattr(Measurement, c) for c in ("sweep_id", *KEY_COLUMNS)]
        rows = int(s.scalar(select(func.count()).select_from(Measurement)))
        distinct = int(s.scalar(select(func.count()).select_from(select(*keys).distinct().subquery())))
        first, last = s.execute(select(func.min(SweepClaim.claimed_at), func.max(SweepClaim.finished_at))).one()
        attempts = {int(a): int(n) for a, n in s.execute(
            select(SweepClaim.attempts, func.count()).group_by(SweepClaim.attempts)).all()}
    info = fleet_status(database, 1)
    measured = {}
    for w, (out, err) in outs.items():
        m = _MEASURED.search(out)
        if procs[w].returncode == 0 and m is None:
            raise RuntimeError(f"worker {w} printed no report: {out} {err}")
        measured[w] = int(m.group(1)) if m else None
    result: dict[str, Any] = {
        "label": label, "workers": workers, "rows": rows, "distinct_keys": distinct, "duplicates": rows - distinct,
        "claims_by_attempts": attempts, "sweep_s": round((last - first).total_seconds(), 2),
        "wall_s_with_startup": round(wall, 2), "return_codes": {w: p.returncode for w, p in procs.items()},
        "measured_per_worker": measured,
        "stored_per_worker": {w["worker"]: w["done"] + w["failed"] for w in info["workers"]},
        "worker_states": {w["worker"]: w["state"] for w in info["workers"]}, "sweep_status": info["status"],
    }
    if killed:
        stored_by_victim = result["stored_per_worker"].get("w0", 0)
        result["killed"] = {
            "worker": "w0", "rows_when_killed": killed["rows_when_killed"], "stored_by_killed_worker": stored_by_victim,
            "claims_reissued": attempts.get(2, 0),
            "measured_by_survivors": sum(v for w, v in measured.items() if w != "w0" and v is not None),
        }
    database.dispose()
    return result


def _machine(server: PostgresServer) -> dict[str, Any]:
    import psycopg

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    with psycopg.connect(host="127.0.0.1", port=server.port, user="latlab", dbname="postgres") as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0]
    return {"host": platform.node(), "cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "os": platform.platform(), "postgresql": pg}


def _markdown(res: dict[str, Any]) -> str:
    one, many, kill = res["one_worker"], res["fleet"], res["fleet_with_kill"]
    n, k = res["configs"], many["workers"]
    lines = [
        "# Fleet sweeps on one PostgreSQL database",
        "",
        f"Command: `{res['command']}`  ",
        f"Machine: {res['machine']['cpu']} ({res['machine']['cpu_count']} CPUs), Python {res['machine']['python']}, "
        f"PostgreSQL {res['machine']['postgresql']} (local, started by the script), {res['date']}",
        "",
        f"Fake backend, ResNet-50 reference lattice ({n} configurations), **simulated {res['delay_ms']:g} ms per "
        "measurement** (a stand-in for GPU timing work; the speed-up is that of the claim protocol, not of a "
        "GPU). Sweep time = first claim to last stored measurement (database timestamps, start-up excluded).",
        "",
        "| run | workers | sweep s | wall s (with start-up) | rows | duplicates | measured per worker |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in (one, many, kill):
        per = ", ".join(f"{w}: {v if v is not None else 'killed'}" for w, v in r["measured_per_worker"].items())
        lines.append(f"| {r['label']} | {r['workers']} | {r['sweep_s']} | {r['wall_s_with_startup']} | {r['rows']} | "
                     f"{r['duplicates']} | {per} |")
    kd = kill["killed"]
    lines += [
        "",
        f"**Speed-up, {k} workers over 1: {res['speedup']:.2f}x** (ideal {k}x); every configuration measured "
        f"exactly once (claims taken once each: {many['claims_by_attempts']}).",
        "",
        f"**One worker SIGKILLed half-way** (heartbeat timeout {res['heartbeat_timeout_s']:g} s): killed at "
        f"{kd['rows_when_killed']}/{n} rows; it had stored {kd['stored_by_killed_worker']}; "
        f"{kd['claims_reissued']} of its claims were released after the timeout and re-issued; the survivors measured "
        f"{kd['measured_by_survivors']}; {kd['stored_by_killed_worker']} + {kd['measured_by_survivors']} = "
        f"{kd['stored_by_killed_worker'] + kd['measured_by_survivors']} = {kill['rows']} rows, "
        f"{kill['duplicates']} duplicates; the dead worker's state: {kill['worker_states'].get('w0')}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--delay-ms", type=float, default=20.0, help="simulated timing work per measurement")
    ap.add_argument("--heartbeat-timeout", type=float, default=5.0)
    ap.add_argument("--out", type=Path, default=RESULTS / "fleet")
    args = ap.parse_args(argv)
    from datetime import datetime

    with PostgresServer() as server:
        one = run_fleet(server, "one_worker", 1, args.delay_ms, args.heartbeat_timeout)
        many = run_fleet(server, "fleet", args.workers, args.delay_ms, args.heartbeat_timeout)
        n = one["rows"]
        kill = run_fleet(server, "fleet_with_kill", args.workers, args.delay_ms, args.heartbeat_timeout,
                         kill_at=n // 2)
        machine = _machine(server)
    res = {
        "command": command_line("fleet", argv),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine, "configs": n,
        "delay_ms": args.delay_ms, "heartbeat_timeout_s": args.heartbeat_timeout,
        "one_worker": one, "fleet": many, "fleet_with_kill": kill,
        "speedup": round(one["sweep_s"] / many["sweep_s"], 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    args.out.with_suffix(".md").write_text(_markdown(res))
    print(_markdown(res))
    return res


if __name__ == "__main__":
    main()
