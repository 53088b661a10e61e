"""HALP/MDP pickle LUTs: safe loading, import, export and exact round trips."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from db import LegacyFormatError, open_database
from db.legacy import export_legacy, import_legacy, read_legacy_lut, safe_load_pickle
from db.lut import load_lut

RN50_KEYS = {
    "256_3_64_224_7_2_1": 8.301,
    "256_64_64_56_1_1_1": 1.35,
    "256_64_64_56_3_1_1": 4.1234567890123,
    "256_256_256_14_3_1_1": 9.65,
    "256_512_512_7_3_1_1": 16.18,
    "256_1024_2048_14_1_2_1": 6.5,
    "256_96_96_14_3_1_96": 0.42,  # depthwise (groups == cin == cout)
    "256_128_128_7_3_1_32": 0.9,  # grouped (ResNeXt-style)
    "256_0_64_56_3_1_1": 0.0,  # "layer removed": no measurement
}


class _RunsCode:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("touch /tmp/latlab_pwned",))


def _write(path: Path, obj: object, protocol: int = 4) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = Path("/tmp/latlab_pwned")
    marker.unlink(missing_ok=True)
    evil = _write(tmp_path / "evil.pkl", {"256_64_64_56_3_1": _RunsCode()})
    with pytest.raises(LegacyFormatError, match=r"references posix\.system|references os\.system"):
        read_legacy_lut(evil)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_builtin_globals_are_refused_in_every_protocol(tmp_path: Path, protocol: int) -> None:
    with pytest.raises(LegacyFormatError, match="refusing to load"):
        read_legacy_lut(_write(tmp_path / "x.pkl", {"256_1_1_7_1_1": complex(1, 2)}, protocol))


def test_truncated_and_garbage_files(tmp_path: Path) -> None:
    data = pickle.dumps(RN50_KEYS)
    (tmp_path / "trunc.pkl").write_bytes(data[: len(data) // 2])
    with pytest.raises(LegacyFormatError, match="truncated or corrupt"):
        read_legacy_lut(tmp_path / "trunc.pkl")
    (tmp_path / "junk.pkl").write_bytes(b"hello world")
    with pytest.raises(LegacyFormatError):
        read_legacy_lut(tmp_path / "junk.pkl")
    with pytest.raises(LegacyFormatError, match="cannot read"):
        read_legacy_lut(tmp_path / "missing.pkl")


@pytest.mark.parametrize("obj, match", [
    ([1, 2], "expected a dict"), ({}, "empty"), ({1: 2.0}, "expected str"),
    ({"256_1_1": 1.0}, "6 or 7"), ({"256_1_1_7_1_1": "fast"}, "of type str, expected a number"),
    ({"256_1_1_7_1_1": float("nan")}, "finite"), ({"256_1_1_7_1_1": -1.0}, "finite"),
    ({"256_1_1_7_1_1": "1.5"}, "of type str, expected a number"), ({"256_1_1_7_1_1": True}, "of type bool"),
    ({"256_1_1_7_1_1": np.True_}, "of type bool, expected a number"),
    ({"256_1_1_7_1_1": np.complex128(1 + 2j)}, "complex128"),
    ({"256_1_1_7_1_1": 10**400}, "expected a finite latency"),  # too large for a float: no OverflowError
    ({"256_1_1_7_1_1" + "_1" * 300: 1.0}, r"\(\d+ characters\)$"),  # a huge bad key is cut in the message
])
def test_malformed_content(tmp_path: Path, obj: object, match: str) -> None:
    with pytest.raises(LegacyFormatError, match=match):
        read_legacy_lut(_write(tmp_path / "bad.pkl", obj))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_numpy_scalars_are_admitted_as_floats(protocol: int) -> None:
    """Protocols 0-2 store the scalars' bytes through _codecs.encode (latin-1), which is admitted for that."""
    lut = {"256_64_64_56_3_1": np.float64(1.5), "256_64_32_56_3_1": np.float32(0.75)}
    out = safe_load_pickle(pickle.dumps(lut, protocol=protocol))
    assert {k: float(v) for k, v in out.items()} == {"256_64_64_56_3_1": 1.5, "256_64_32_56_3_1": 0.75}


def test_a_python2_pickle_of_numpy_values_loads() -> None:
    """Python 2 wrote a numpy scalar's bytes as a str (SHORT_BINSTRING); read as latin-1, as numpy asks."""
    raw = np.float64(1.5).tobytes()
    body = pickle.dumps({"256_64_64_56_3_1": np.float64(1.5)}, protocol=3)
    py2 = b"\x80\x02" + body[2:].replace(b"C\x08" + raw, b"U\x08" + raw)  # bytes as a Python 2 str
    assert py2 != b"\x80\x02" + body[2:]
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(py2)  # Python 3's default: ASCII
    assert float(safe_load_pickle(py2)["256_64_64_56_3_1"]) == 1.5


def test_deep_nesting_is_refused_before_it_crashes_the_unpickler() -> None:
    """A key nested 200,000 tuples deep segfaults pickle.loads itself (hashing it); it is refused unread."""
    deep = b"\x80\x04}\x94" + b")" + b"\x85" * 200_000 + b"G?\xf8\x00\x00\x00\x00\x00\x00s."
    with pytest.raises(LegacyFormatError, match="nest more than 32 levels deep"):
        safe_load_pickle(deep, "deep.pkl")
    nested: object = 1.0
    for _ in range(40):
        nested = [nested]
    with pytest.raises(LegacyFormatError, match="nest more than 32 levels deep"):
        safe_load_pickle(pickle.dumps({"256_1_1_7_1_1": nested}))
    many = {f"256_{c}_{c}_7_1_1": np.float64(c) for c in range(1, 3000)}  # SETITEMS batches add no depth
    assert len(safe_load_pickle(pickle.dumps(many, protocol=2))) == 2999


def test_import_then_export_roundtrips_exactly(db_url: str, tmp_path: Path) -> None:
    src = _write(tmp_path / "rn50_titanv.pkl", RN50_KEYS)
    database = open_database(db_url)
    report = import_legacy(database, src, hardware="TITAN V", dtype="fp32")
    assert (report.keys, report.inserted, report.skipped_zero_channels) == (9, 8, 1)
    again = import_legacy(database, src, hardware="TITAN V", dtype="fp32")
    assert (again.inserted, again.already_present, again.sweep_id) == (0, 8, report.sweep_id)
    out = export_legacy(database, report.sweep_id, tmp_path / "out.pkl", "halp")
    expected = {k: v for k, v in RN50_KEYS.items() if "_0_" not in k}
    assert out == expected
    assert pickle.loads((tmp_path / "out.pkl").read_bytes()) == expected  # exact float equality
    with database.session() as s:
        lut = load_lut(s, report.sweep_id)
    families = {c.family.key for c in lut}
    assert "f14x14_k3x3_s1x1_p1x1_d1x1_gdw" in families and "f7x7_k3x3_s1x1_p1x1_d1x1_g32" in families
    database.dispose()


def test_grouped_key_at_the_group_width_stays_grouped(tmp_path: Path) -> None:
    """ResNeXt's narrowest width has g == cin == cout, like a depthwise key: the rest of its family tells."""
    lut = {"256_32_32_7_3_1_32": 1.0, "256_64_64_7_3_1_32": 2.0, "256_96_96_14_3_1_96": 3.0}
    database = open_database(tmp_path / "g.db")
    sid = import_legacy(database, _write(tmp_path / "g.pkl", lut), hardware="H").sweep_id
    with database.session() as session:
        families = {(c.family.key, c.cin) for c in load_lut(session, sid)}
    assert families == {("f7x7_k3x3_s1x1_p1x1_d1x1_g32", 32), ("f7x7_k3x3_s1x1_p1x1_d1x1_g32", 64),
                        ("f14x14_k3x3_s1x1_p1x1_d1x1_gdw", 96)}
    assert export_legacy(database, sid, tmp_path / "back.pkl", "halp") == lut
    twins = {"256_64_64_56_3_1": 1.0, "256_64_64_56_3_1_1": 2.0}  # one configuration, two latencies
    with pytest.raises(LegacyFormatError, match="same configuration with different latencies"):
        import_legacy(database, _write(tmp_path / "twins.pkl", twins), hardware="H")
    database.dispose()


def test_import_joins_the_profile_it_names(tmp_path: Path) -> None:
    """--hardware naming an existing profile (name or id) adds the LUT to it instead of a same-named twin;
    a sweep asked for with another profile is refused."""
    from db.errors import LatlabError
    from db.lut import find_sweep

    database = open_database(tmp_path / "join.db")
    src = _write(tmp_path / "rn50_titanv.pkl", RN50_KEYS)
    first = import_legacy(database, src, hardware="TITAN V")
    other = import_legacy(database, _write(tmp_path / "b.pkl", {"256_64_64_56_3_1": 1.0}), hardware="1")
    assert other.hardware == first.hardware == "TITAN V"
    with database.session() as session:
        assert find_sweep(session, other.sweep_id, "TITAN V").id == other.sweep_id
    import_legacy(database, _write(tmp_path / "c.pkl", {"256_64_64_56_3_1": 1.0}), hardware="H100")
    with database.session() as session, pytest.raises(LatlabError, match="is of hardware 'TITAN V', not 'H100'"):
        find_sweep(session, first.sweep_id, "H100")
    with pytest.raises(LatlabError, match="must name the profile"):
        import_legacy(database, src, hardware=" ")
    database.dispose()


def test_mdp_format_six_tokens_and_grouped_refusal(tmp_path: Path) -> None:
    database = open_database(tmp_path / "l.db")
    six = {"256_64_64_56_3_1": 4.0, "256_64_32_56_3_1": 2.5, "256_1024_1024_14_1_2": 3.25}
    sid = import_legacy(database, _write(tmp_path / "mdp.pkl", six), hardware="TITAN V").sweep_id
    assert export_legacy(database, sid, None, "mdp") == six
    assert export_legacy(database, sid, None, "halp") == {k + "_1": v for k, v in six.items()}
    sid2 = import_legacy(database, _write(tmp_path / "g.pkl", RN50_KEYS), hardware="TITAN V").sweep_id
    with pytest.raises(LegacyFormatError, match="cannot express grouped"):
        export_legacy(database, sid2, None, "mdp")
    with pytest.raises(LegacyFormatError, match="unknown legacy format"):
        export_legacy(database, sid, None, "onnx")


key_strategy = st.builds(
    lambda bs, cin, cout, f, k, s: f"{bs}_{cin}_{cout}_{f}_{k}_{s}",
    st.sampled_from([1, 64, 256]), st.integers(1, 2048), st.integers(1, 2048),
    st.sampled_from([7, 14, 28, 56, 224]), st.sampled_from([1, 3, 7]), st.sampled_from([1, 2]),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lut=st.dictionaries(key_strategy, st.floats(0, 1e4, allow_nan=False), min_size=1, max_size=30))
def test_roundtrip_property(tmp_path_factory: pytest.TempPathFactory, lut: dict[str, float]) -> None:
    tmp = tmp_path_factory.mktemp("rt")
    database = open_database(tmp / "p.db")
    sid = import_legacy(database, _write(tmp / "l.pkl", lut), hardware="H").sweep_id
    assert export_legacy(database, sid, None, "mdp") == lut
    database.dispose()
