"""Writing and querying LUT rows: idempotent inserts, failures as rows, LUT misses that name the key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import update

from db import ConvConfig, ConvFamily, LatlabError, LUTMissError, MeasurementValues, open_database
from db.lut import (
    family_summaries,
    find_hardware,
    find_sweep,
    get_or_create_hardware,
    get_or_create_sweep,
    load_lut,
    lookup,
    measured_keys,
    record_measurement,
    sweep_caption,
    sweep_summaries,
)
from db.models import Hardware, Measurement, Sweep, as_utc, utcnow

HW = {"fingerprint": "f00dfeed", "name": "Test GPU", "kind": "fake", "torch_version": "2.x", "extra": 1}
CFG = ConvConfig(ConvFamily.square(56, 3, 1), 64, 64, batch=256)


@pytest.fixture
def database(db_url: str):  # type: ignore[no-untyped-def]
    d = open_database(db_url)
    yield d
    d.dispose()


def _sweep(database, name: str = ""):  # type: ignore[no-untyped-def]
    with database.session() as s:
        hw = get_or_create_hardware(s, HW)
        return get_or_create_sweep(s, hw, backend="fake", protocol={"timer": "model", "warmup": 2},
                                   protocol_hash="abc", name=name).id


def test_hardware_and_sweep_are_reused(database) -> None:  # type: ignore[no-untyped-def]
    a, b = _sweep(database), _sweep(database)
    assert a == b
    assert _sweep(database, name="other") != a
    with database.session() as s:
        hw = find_hardware(s, "Test GPU")
        assert hw.details == {"extra": 1}
        assert find_hardware(s, "f00d").id == hw.id == find_hardware(s, "F00D").id  # on SQLite and PostgreSQL
        for selector in ("TITAN X", "f0_d", "f%ed"):  # no LIKE wildcards
            with pytest.raises(LatlabError, match="no hardware profile"):
                find_hardware(s, selector)


def test_lut_rows_come_back_in_key_order(database) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from latency_models.features import lut_frame

    sid = _sweep(database)
    with database.session() as s:  # one (family, cin, cout) at three batch sizes, stored out of order
        for batch in (256, 8, 64):
            record_measurement(s, sid, replace(CFG, batch=batch), MeasurementValues(median_ms=float(batch), n=5))
    with database.session() as s:
        X, y = lut_frame(s, sid)
    assert list(X["batch"]) == [8, 64, 256] and list(y) == [8.0, 64.0, 256.0]  # a fit sees one order everywhere


def test_timestamps_read_back_in_utc() -> None:
    # PostgreSQL hands them back in the server's zone, SQLite without one: both list the same UTC time
    india = datetime(2026, 12, 4, 1, 30, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    assert as_utc(india) == as_utc(datetime(2026, 12, 3, 20, 0)) == datetime(2026, 12, 3, 20, 0, tzinfo=UTC)
    assert as_utc(india).utcoffset() == timedelta(0)


def test_insert_is_idempotent_and_lookup_works(database) -> None:  # type: ignore[no-untyped-def]
    sid = _sweep(database)
    with database.session() as s:
        assert record_measurement(s, sid, CFG, MeasurementValues(median_ms=1.25, iqr_ms=0.01, n=50))
        assert not record_measurement(s, sid, CFG, MeasurementValues(median_ms=9.0, n=50))
    with database.session() as s:
        assert lookup(s, sid, CFG) == 1.25
        assert load_lut(s, sid) == {CFG: 1.25}
        assert measured_keys(s, sid) == {("f56x56_k3x3_s1x1_p1x1_d1x1_g1", 64, 64, 256, "fp32", "nchw", "conv")}


def test_miss_names_the_configuration(database) -> None:  # type: ignore[no-untyped-def]
    sid = _sweep(database)
    other = CFG.with_channels(64, 128)
    with database.session() as s, pytest.raises(LUTMissError) as info:
        lookup(s, sid, other)
    msg = str(info.value)
    assert "f56x56_k3x3_s1x1_p1x1_d1x1_g1" in msg and "cin=64" in msg and "cout=128" in msg and "batch=256" in msg


def test_a_running_sweep_that_stored_nothing_for_long_is_shown_stalled(database) -> None:  # type: ignore[no-untyped-def]
    """A sweep killed with SIGKILL never writes "interrupted": `lut list` says it stalled instead of running."""
    sid = _sweep(database)
    with database.session() as s:
        record_measurement(s, sid, CFG, MeasurementValues(median_ms=1.0, n=5))
    with database.session() as s:
        assert sweep_summaries(s)[0]["status"] == "running"
        s.get(Sweep, sid).updated_at = utcnow() - timedelta(hours=3)
        s.execute(update(Measurement).values(created_at=utcnow() - timedelta(hours=2, minutes=5)))
    with database.session() as s:
        assert sweep_summaries(s)[0]["status"] == "stalled: no row for 2 h 5 min (killed? rerun to resume)"
        s.get(Sweep, sid).status = "interrupted"
    with database.session() as s:
        assert sweep_summaries(s)[0]["status"] == "interrupted"


def test_failed_rows_are_stored_and_are_misses(database) -> None:  # type: ignore[no-untyped-def]
    sid = _sweep(database)
    with database.session() as s:
        record_measurement(s, sid, CFG, MeasurementValues(status="oom", message="CUDA out of memory"))
    with database.session() as s:
        with pytest.raises(LUTMissError, match="oom: CUDA out of memory"):
            lookup(s, sid, CFG)
        assert sweep_summaries(s)[0]["oom"] == 1
        assert measured_keys(s, sid, ("ok",)) == set()
    with database.session() as s:  # a retry replaces the failed row
        record_measurement(s, sid, CFG, MeasurementValues(median_ms=2.0, n=5), replace=True)
    with database.session() as s:
        assert lookup(s, sid, CFG) == 2.0


def test_invalid_values_are_rejected() -> None:
    with pytest.raises(LatlabError):
        MeasurementValues(status="ok", median_ms=float("nan"))
    with pytest.raises(LatlabError):
        MeasurementValues(status="weird")


def test_session_rolls_back_on_error(database) -> None:  # type: ignore[no-untyped-def]
    sid = _sweep(database)
    with pytest.raises(RuntimeError), database.session() as s:
        record_measurement(s, sid, CFG, MeasurementValues(median_ms=1.0, n=1))
        raise RuntimeError("boom")
    with database.session() as s:
        assert load_lut(s, sid) == {}


def test_a_rolled_back_session_leaves_no_new_hardware_or_sweep(database) -> None:  # type: ignore[no-untyped-def]
    """No SAVEPOINT, which pysqlite would commit on its own: what the session created goes with it."""
    from sqlalchemy import func, select

    from db.models import Hardware, Sweep

    with pytest.raises(RuntimeError), database.session() as s:
        hw = get_or_create_hardware(s, HW)
        get_or_create_sweep(s, hw, backend="fake", protocol={"timer": "model"}, protocol_hash="abc")
        raise RuntimeError("boom")
    with database.session() as s:
        assert s.scalar(select(func.count()).select_from(Hardware)) == 0
        assert s.scalar(select(func.count()).select_from(Sweep)) == 0


def test_find_sweep_choices(database) -> None:  # type: ignore[no-untyped-def]
    with database.session() as s, pytest.raises(LatlabError, match="no sweeps"):
        find_sweep(s)
    a = _sweep(database)
    with database.session() as s:
        assert find_sweep(s).id == a
    _sweep(database, "second")
    with database.session() as s:
        with pytest.raises(LatlabError, match="several sweeps match: .*; choose one with --sweep ID$"):
            find_sweep(s)
        with pytest.raises(LatlabError, match="choose one with --set prune.sweep=ID$"):  # what the trainer says
            find_sweep(s, choose="--set prune.sweep=ID")
        assert find_sweep(s, sweep=a).id == a
        with pytest.raises(LatlabError, match="no sweep with id 999"):
            find_sweep(s, sweep=999)


def test_find_sweep_narrows_to_the_sweep_holding_the_settings(database) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    a, b = _sweep(database), _sweep(database, "fp16")
    with database.session() as s:
        record_measurement(s, a, CFG, MeasurementValues(median_ms=1.0, n=5))
        record_measurement(s, b, replace(CFG, dtype="fp16"), MeasurementValues(median_ms=0.5, n=5))
        record_measurement(s, b, replace(CFG, batch=8), MeasurementValues(status="oom", message="out of memory"))
    with database.session() as s:
        assert find_sweep(s, holding={"dtype": "fp16", "batch": None}).id == b
        assert find_sweep(s, holding={"dtype": "fp32", "batch": 256}).id == a
        with pytest.raises(LatlabError, match="several sweeps match"):
            find_sweep(s, holding={"batch": 256, "dtype": None})
        with pytest.raises(LatlabError, match="none of sweeps .* holds measurements with batch=8"):  # failed rows
            find_sweep(s, holding={"batch": 8})
        rows = family_summaries(s, b)  # two settings: one row each, labelled
        assert [(r["setting"], r["ok"], r["failed"]) for r in rows] == [("b8 fp32 nchw", 0, 1),
                                                                        ("b256 fp16 nchw", 1, 0)]
        assert "setting" not in family_summaries(s, a)[0]


def test_caption_names_the_cudnn_flags_of_a_cuda_sweep_only() -> None:
    hw = Hardware(name="NVIDIA H200", torch_version="2.9", cuda_version="13.0", cudnn_version="91000")
    cuda = Sweep(id=2, hardware=hw, backend="cuda", timer="cuda_events", warmup=10, repeats=50, l2_flush=True,
                 cudnn_benchmark=True, cudnn_deterministic=False, allow_tf32=False, git_sha="abc")
    assert sweep_caption(cuda) == (
        "sweep 2 on NVIDIA H200 (torch 2.9, CUDA 13.0, cuDNN 91000); cuda: timer cuda_events, 10 warm-up, up to 50 "
        "samples, L2 flushed, cuDNN autotune on, cuDNN deterministic off, TF32 off; latlab abc")
    cpu = Sweep(id=3, hardware=Hardware(name="cpu", torch_version="2.9"), backend="cpu", timer="torch_benchmark",
                warmup=3, repeats=20, num_threads=1)
    assert sweep_caption(cpu).endswith("up to 20 samples, warm cache, 1 thread; latlab ?")
