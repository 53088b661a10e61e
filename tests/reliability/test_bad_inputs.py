"""Corrupt or hostile inputs: a clear one-line error, nothing executed, stored rows intact."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest

from db.engine import open_database
from profiler.backends.fake import FakeBackend
from profiler.plan import build_plan
from profiler.runner import run_sweep


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LUT database with 20 stored rows (copied per test)."""
    path = tmp_path_factory.mktemp("pop") / "lut.db"
    database = open_database(path)
    run_sweep(database, build_plan("resnet18", "lhs:4:16", input_size=64, batch=8), FakeBackend(),
              max_configs=20, progress=False)
    database.dispose()
    return path


def _copy(populated: Path, tmp_path: Path) -> str:
    dest = tmp_path / "lut.db"
    shutil.copy(populated, dest)
    return str(dest)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_corrupt_sqlite_file(tmp_path: Path, cli, figure) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "corrupt.db"
    content = b"SQLite format 2 garbage" + os.urandom(4000)
    path.write_bytes(content)
    code, _, err = cli(["profile", "--model", "resnet18", "--backend", "fake", "--grid", "lhs:2:16", "--worker",
                        "--input-size", "64", "--batch", "8", "--quiet", "--db", str(path)])
    figure(f"corrupt SQLite file -> exit {code}: {err.strip()}")
    assert code == 1 and err.startswith("latlab: error:") and "not a SQLite database" in err
    assert "Traceback" not in err and path.read_bytes() == content


def test_damaged_sqlite_pages(populated: Path, tmp_path: Path, cli, figure, h) -> None:  # type: ignore[no-untyped-def]
    db = _copy(populated, tmp_path)
    data = bytearray(Path(db).read_bytes())
    page = 4096
    data[page:] = b"\xff" * (len(data) - page)  # keep the header page, destroy every table page
    Path(db).write_bytes(bytes(data))
    code, _, err = cli(["lut", "list", "--db", db])
    figure(f"SQLite file with damaged pages -> exit {code}: {err.strip()[:160]}")
    assert code == 1 and err.startswith("latlab: error:") and "Traceback" not in err


def test_truncated_legacy_pickle(populated: Path, tmp_path: Path, cli, figure, h) -> None:  # type: ignore[no-untyped-def]
    db = _copy(populated, tmp_path)
    before = h.counts(open_database(db))
    full = pickle.dumps({"256_64_64_56_3_1": 1.5, "256_64_128_56_3_1": 2.5})
    bad = tmp_path / "lut.pkl"
    bad.write_bytes(full[: len(full) // 2])
    code, _, err = cli(["lut", "import", str(bad), "--hardware", "TITAN V", "--db", db])
    figure(f"truncated legacy pickle -> exit {code}: {err.strip()}; rows {before['rows']} -> "
           f"{h.counts(open_database(db))['rows']}")
    assert code == 1 and "truncated or corrupt" in err
    assert h.counts(open_database(db)) == before


def test_malicious_pickle_runs_nothing(populated: Path, tmp_path: Path, cli, figure, h) -> None:  # type: ignore[no-untyped-def]
    db = _copy(populated, tmp_path)
    before = h.counts(open_database(db))
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"256_64_64_56_3_1": _Exploit(marker)}))
    code, _, err = cli(["lut", "import", str(evil), "--hardware", "TITAN V", "--db", db])
    figure(f"pickle whose __reduce__ calls os.system -> exit {code}, marker file created: {marker.exists()}; "
           f"{err.strip()}")
    assert code == 1 and "refusing to load" in err and ("os.system" in err or "posix.system" in err)
    assert not marker.exists()
    assert h.counts(open_database(db)) == before


def test_bad_yaml_config(tmp_path: Path, figure) -> None:  # type: ignore[no-untyped-def]
    config = pytest.importorskip("training.config")
    from db.errors import LatlabError

    marker = tmp_path / "pwned"
    for text in ("train: [unclosed\n  epochs: 3", f"train: !!python/object/apply:os.system ['touch {marker}']\n"):
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(LatlabError, match="YAML") as info:
            config.load_config(path)
        figure(f"bad YAML config -> {info.value}".splitlines()[0][:200])
    assert not marker.exists()


def test_unknown_model_name(populated: Path, tmp_path: Path, cli, figure, h) -> None:  # type: ignore[no-untyped-def]
    db = _copy(populated, tmp_path)
    before = h.counts(open_database(db))
    code, _, err = cli(["profile", "--model", "resnet5O", "--backend", "fake", "--worker", "--db", db])
    figure(f"unknown model name -> exit {code}: {err.strip()}")
    assert code == 1 and err.startswith("latlab: error:") and "resnet5O" in err and "Traceback" not in err
    assert h.counts(open_database(db)) == before
