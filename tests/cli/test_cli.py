"""The `latlab` command line: the issue's acceptance paths and one-line errors on bad input."""

from __future__ import annotations

import json
import os
import pickle
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from db.engine import head_revision
from latlab.cli import app

ROOT = Path(__file__).resolve().parents[2]




def _name(info) -> str:  # type: ignore[no-untyped-def]
    return info.name or info.callback.__name__.replace("_", "-")


def _commands() -> list[list[str]]:
    cmds = [[_name(info)] for info in app.registered_commands]
    for group in app.registered_groups:
        cmds.append([group.name])
        cmds += [[group.name, _name(c)] for c in group.typer_instance.registered_commands]
    return cmds


@pytest.mark.parametrize("argv", _commands(), ids=" ".join)
def test_every_command_has_help_and_is_in_the_readme(argv: list[str], cli) -> None:
    code, out, _ = cli([*argv, "--help"])
    assert code == 0 and "Usage" in out
    readme = (ROOT / "README.md").read_text()
    assert f"latlab {' '.join(argv)}" in readme, f"README.md does not document `latlab {' '.join(argv)}`"


def test_help_examples_stay_as_written_at_80_columns(monkeypatch: pytest.MonkeyPatch, cli) -> None:
    """Docstring prose reflows to the terminal, but each example line is printed whole, on a line of its own."""
    import inspect

    import typer

    monkeypatch.setenv("COLUMNS", "80")
    checked = 0
    for argv in _commands():
        command = typer.main.get_command(app)
        for name in argv:
            command = command.commands[name]  # type: ignore[attr-defined]
        doc = inspect.cleandoc(command.help or "")
        examples = [line.strip() for line in doc.splitlines() if line.startswith("    ")]
        if not examples:
            continue
        code, out, _ = cli([*argv, "--help"])
        shown = {line.strip() for line in out.splitlines()}
        assert code == 0 and all(line in shown for line in examples), f"latlab {' '.join(argv)}"
        assert all(len(line) <= 80 for line in out.splitlines())
        checked += 1
    assert checked >= 15


def test_reference_sweep_is_idempotent_and_exports_halp_keys(tmp_path: Path,
                                                              cli) -> None:
    db = str(tmp_path / "rn50.db")
    code, out, err = cli(["profile", "--model", "resnet50", "--backend", "fake", "--grid", "reference", "-q",
                          "--db", db])
    assert code == 0, err
    assert "1423 planned, 0 already stored, 1423 measured" in out
    code, out, _ = cli(["profile", "--model", "resnet50", "--backend", "fake", "--grid", "reference", "-q",
                        "--db", db])
    assert "1423 already stored, 0 measured" in out
    code, out, _ = cli(["lut", "list", "--db", db])
    assert code == 0 and "1423" in out
    code, out, _ = cli(["lut", "show", "--sweep", "1", "--db", db, "-f", "csv"])
    assert code == 0 and len(out.splitlines()) == 16  # header + the 15 ResNet50 families, no blank line after
    code, out, _ = cli(["lut", "show", "--sweep", "1", "--db", db, "-f", "json"])
    assert code == 0 and len(json.loads(out)) == 15 and out.endswith("]\n")
    code, out, _ = cli(["lut", "show", "--sweep", "1", "--db", db, "-f", "markdown"])
    assert re.match(r"\*\*sweep 1 on latlab-fake-gpu .*\(torch [^)]+\); fake: timer model, .* samples, warm cache; "
                    r"latlab \S+\*\*\n", out), out.splitlines()[0]  # where and how, above the table
    code, out, _ = cli(["lut", "query", "--fmap", "56", "--k", "3", "--cin", "64", "--cout", "64", "--db", db])
    assert code == 0 and re.match(r"^\d+(\.\d+)? ms", out)
    code, _, err = cli(["lut", "query", "--fmap", "56", "--k", "3", "--cin", "65", "--cout", "64", "--db", db])
    assert code == 1 and "LUT miss" in err and "cin=65" in err and "f56x56_k3x3" in err and "it holds" not in err
    code, _, err = cli(["lut", "query", "--fmap", "56", "--k", "3", "--cin", "64", "--cout", "64", "--batch", "8",
                        "--db", db])
    assert code == 1 and "batch=8" in err and "it holds batch dtype layout op 256 fp32 nchw conv (choose" in err
    pkl = tmp_path / "rn50.pkl"
    code, out, err = cli(["lut", "export", str(pkl), "--format", "halp", "--db", db])
    assert code == 0, err
    lut = pickle.loads(pkl.read_bytes())
    assert len(lut) == 1423 and "256_64_64_56_3_1_1" in lut
    assert all(re.fullmatch(r"256_\d+_\d+_\d+_\d_\d_1", k) for k in lut)
    (tmp_path / "a_folder.csv").mkdir()  # a file system error is one line naming the path, not a traceback
    code, _, err = cli(["lut", "export", str(tmp_path / "a_folder.csv"), "--db", db])
    assert code == 1 and err == f"latlab: error: Is a directory: {tmp_path / 'a_folder.csv'}\n"
    # import -> export round-trips exactly
    db2 = str(tmp_path / "titan.db")
    code, out, err = cli(["lut", "import", str(pkl), "--hardware", "TITAN V", "--db", db2])
    assert code == 0 and "1423 new" in out, err
    code, out, _ = cli(["lut", "import", str(pkl), "--hardware", "TITAN V", "--db", db2])
    assert "0 new, 1423 already present" in out
    back = tmp_path / "back.pkl"
    assert cli(["lut", "export", str(back), "--hardware", "TITAN V", "--db", db2])[0] == 0
    assert pickle.loads(back.read_bytes()) == lut
    code, out, _ = cli(["lut", "export", str(tmp_path / "x.csv"), "--format", "csv", "--db", db2])
    assert code == 0 and (tmp_path / "x.csv").read_text().count("\n") == 1424
    code, _, err = cli(["lut", "export", str(tmp_path / "no" / "x.csv"), "--format", "csv", "--db", db2])
    assert code == 1 and "does not exist" in err
    code, _, err = cli(["lut", "export", str(tmp_path / "y.csv"), "--format", "csv", "--dtype", "fp16", "--db", db2])
    assert code == 1 and "nothing written" in err and not (tmp_path / "y.csv").exists()
    code, out, _ = cli(["lut", "export", str(tmp_path / "z.csv"), "--db", db2])  # the format from the extension
    assert code == 0 and (tmp_path / "z.csv").read_text().startswith("family,cin,cout,")
    code, out, _ = cli(["lut", "export", "-", "-f", "json", "--db", db2])  # to stdout, nothing else there
    assert code == 0 and len(json.loads(out)) == 1423
    row = json.loads(out)[0]  # each row says where and how it was measured
    assert row["hardware"] == "TITAN V" and row["backend"] == "legacy" and row["measured_at"].endswith("+00:00")
    assert row["cache"] == "unknown"  # a legacy pickle does not say how it was timed
    assert {"sweep", "fingerprint", "timer", "torch", "cuda", "cudnn", "driver", "latlab", "cudnn_deterministic"} \
        <= set(row)
    for argv, why in ((["z.csv", "-f", "halp"], "does not match"), (["z.pkl", "-f", "csv"], "does not match"),
                      (["z.txt"], "cannot tell the format"), (["-"], "needs --format csv or json"),
                      (["-", "-f", "mdp"], "writes a pickle")):
        code, _, err = cli(["lut", "export", *(str(tmp_path / a) if a.startswith("z.") else a for a in argv),
                            "--db", db2])
        assert code == 1 and why in err, (argv, err)


def test_output_formats_for_pipes(tmp_path: Path, cli) -> None:
    """A format typo stops before any work; no rows give `[]` / nothing on stdout; prose goes to stderr."""
    db = str(tmp_path / "empty.db")
    assert cli(["db", "upgrade", "--db", db])[0] == 0
    code, out, err = cli(["models", "list", "-f", "xml", "--db", db])
    assert code == 2 and "'xml' is not one of" in err and "Traceback" not in err
    code, out, err = cli(["models", "list", "-f", "JSON", "--db", db])
    assert code == 0 and json.loads(out) == [] and "no stored latency models" in err
    code, out, err = cli(["lut", "list", "-f", "csv", "--db", db])
    assert code == 0 and out == "" and "no sweeps yet" in err
    code, out, _ = cli(["lut", "list", "--db", db])
    assert code == 0 and "no sweeps yet" in out  # the terminal table says it where the table would be
    code, _, err = cli(["fit", "--models", "mdlm", "--name", "typo", "-f", "xml", "--db", db])
    assert code == 2 and "'xml' is not one of" in err


def test_markdown_cells_and_wide_tables() -> None:
    from latlab.tables import render

    md = render([{"model": "pi|pe", "ms": 1.5}], "markdown")
    assert md.splitlines()[-1] == "| pi\\|pe | 1.5 |"
    wide = render([{f"column_{i}": 123456789 for i in range(14)}] * 2, "table")
    assert all("123456789" in line for line in wide.splitlines() if "12345" in line)  # no number folded
    assert sum("123456789" in line for line in wide.splitlines()) == 2
    record = render([{f"column_{i}": 123456789 for i in range(14)}], "table", title="pruned", record=True)
    record = record.splitlines()
    assert "field" in record[2] and "value" in record[2] and len(record) == 14 + 5  # one wide row: transposed
    assert "column_13" in record[-2] and "123456789" in record[-2] and max(map(len, record)) < 40
    listing = render([{f"column_{i}": 123456789 for i in range(14)}], "table").splitlines()
    assert sum("123456789" in line for line in listing) == 1  # a listing of one stays a table
    narrow = render([{"a": 1, "b": 2}], "table", record=True).splitlines()
    assert "a" in narrow[1] and "b" in narrow[1] and len(narrow) == 5
    # a number that is not one is null in JSON (strict parsers reject NaN) and empty in CSV, as in the tables
    odd = [{"mape": float("nan"), "max": float("inf"), "big": 1e300, "ok": 1.5, "list": [float("nan")]}]
    assert json.loads(render(odd, "json"), parse_constant=lambda c: pytest.fail(c)) == [
        {"mape": None, "max": None, "big": 1e300, "ok": 1.5, "list": [None]}]
    assert render(odd, "csv").splitlines()[1] == ",,1e+300,1.5,[None]"
    assert "1e+300" in render(odd, "table") and "000000" not in render(odd, "table")


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (exec, ("open('/tmp/latlab_cli_pwned', 'w').write('x')",))


def _bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    corrupt = tmp / "corrupt.db"
    corrupt.write_bytes(b"definitely not sqlite" * 100)
    evil = tmp / "evil.pkl"
    evil.write_bytes(pickle.dumps({"256_64_64_56_3_1": _Evil()}))
    fresh = str(tmp / "never.db")
    return [
        (["profile", "--model", "resnet5O", "--backend", "fake", "--db", fresh], "unknown torchvision model"),
        (["profile", "--model", "resnet18", "--backend", "fake", "--grid", "full:0", "--db", fresh], "bad grid"),
        (["profile", "--model", "resnet18", "--backend", "fake", "--grid", "bogus", "--db", fresh], "bad grid"),
        (["profile", "--model", "resnet18", "--backend", "fake", "--grid", "reference", "--db", fresh],
         "resnet50"),
        (["profile", "--model", "resnet18", "--backend", "warp", "--db", fresh], "unknown profiler backend"),
        (["profile", "--model", "resnet18", "--backend", "fake", "--db", "sqlite://"],
         "Invalid value for '--db' (env var: 'LATLAB_DB'): 'sqlite://' is an in-memory database"),
        (["lut", "list", "--db", "sqlite:///:memory:"], "Invalid value for '--db'"),
        (["profile", "--model", "resnet18", "--backend", "cuda", "--db", fresh], "torch.cuda.is_available"),
        (["profile", "--model", "resnet18", "--backend", "fake", "--dtype", "fp8", "--db", fresh], "unknown dtype"),
        (["profile", "--model", "resnet18", "--backend", "fake", "--llc-flush", "--db", fresh],
         "does not implement llc_flush"),
        (["profile", "--model", "resnet18", "--backend", "cpu", "--llc-flush", "--l2-flush", "--db", fresh],
         "choose one"),
        (["profile", "--model", "resnet18", "--backend", "fake", "--db", str(corrupt)], "not a SQLite database"),
        (["profile", "--model", "resnet18", "--backend", "fake", "--db", "nosuch://x"], "cannot use database URL"),
        (["profile", "--model", "resnet18", "--backend", "fake", "--db", "postgresql+psycopg://u@127.0.0.1:1/x"],
         "database error"),
        (["lut", "list", "--db", fresh], "no LUT database"),
        (["lut", "show", "--db", str(corrupt)], "not a SQLite database"),
        (["lut", "import", str(evil), "--hardware", "X", "--db", fresh], "refusing to load"),
        (["lut", "import", str(tmp / "missing.pkl"), "--hardware", "X", "--db", fresh], "cannot read"),
        (["lut", "import", str(evil), "--hardware", "X", "--dtype", "fp64", "--db", fresh], "unknown dtype"),
        (["measure", "--model", "nope", "--db", fresh], "unknown torchvision model"),
        (["measure", "--model", "resnet18", "--weights", str(evil), "--db", fresh], "cannot load weights"),
        (["hw", "--backend", "cuda"], "torch.cuda.is_available"),
        # names and numbers PostgreSQL would refuse after the work (SQLite takes them): before it, on both
        (["profile", "--model", "resnet18", "--backend", "fake", "--name", "n" * 256, "--db", fresh],
         "Invalid value for '--name': it is 256 characters long; the database keeps names of at most 255"),
        (["profile", "--model", "resnet18", "--backend", "fake", "--seed", str(2**31), "--db", fresh],
         "Invalid value for '--seed'"),
        (["lut", "import", str(evil), "--hardware", "h" * 256, "--db", fresh], "at most 255"),
        (["measure", "--model", "resnet18", "--variant", "v" * 256, "--db", fresh],
         "--variant is 256 characters long"),
        (["prune", "--model", "resnet18", "--method", "halp", "--target", "0.5", "--out", str(tmp / "o"),
          "--db", fresh], "no LUT database"),
        (["prune", "--model", "resnet18", "--method", "mdp", "--target", "0.5", "--group-sizes", "big", "--out",
          str(tmp / "o"), "--db", fresh], "--group-sizes must be auto, reference or an integer"),
    ]


def test_bad_input_gives_one_line_and_writes_nothing(tmp_path: Path, cli) -> None:
    corrupt_bytes = b"definitely not sqlite" * 100
    marker = Path("/tmp/latlab_cli_pwned")
    marker.unlink(missing_ok=True)
    for argv, expected in _bad_inputs(tmp_path):
        code, out, err = cli(argv)
        assert code == (2 if "Invalid value for" in expected or "at most 255" in expected else 1), (argv, out, err)
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("latlab: error:"), (argv, err)
        assert expected in lines[0], (argv, lines[0])
        assert "Traceback" not in out + err
        assert argv[0] != "prune" or not out, out  # the database is checked before the network is traced
    assert not (tmp_path / "never.db").exists()
    assert (tmp_path / "corrupt.db").read_bytes() == corrupt_bytes
    assert not marker.exists()


def test_entry_point_exit_codes(tmp_path: Path) -> None:
    bad = subprocess.run([sys.executable, "-m", "latlab", "lut", "list", "--db", str(tmp_path / "x.db")],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1 and bad.stderr.startswith("latlab: error: no LUT database")
    usage = subprocess.run([sys.executable, "-m", "latlab", "profile"], capture_output=True, text=True, cwd=ROOT)
    assert usage.returncode == 2 and usage.stderr == ("latlab: error: Missing option '--model'. (see `latlab profile "
                                                      "--help`)\n")  # one line like every error, no boxed panel
    for package in ("db", "training"):  # a folder in the working directory named like one of latlab's packages
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("raise ImportError('shadowed')\n")
    shadowed = subprocess.run([sys.executable, "-m", "latlab", "lut", "list", "--db", str(tmp_path / "x.db")],
                              capture_output=True, text=True, cwd=tmp_path)
    assert shadowed.returncode == 1 and shadowed.stderr.startswith("latlab: error: no LUT database"), shadowed.stderr
    # under -P the working directory is not on sys.path to begin with: PYTHONPATH's first entry stays
    (tmp_path / "dep").mkdir()
    (tmp_path / "dep" / "tinynet.py").write_text("from torch import nn\n\ndef build(num_classes=10):\n"
                                                 "    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())\n")
    paths = [str(tmp_path / "dep"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    safe = subprocess.run([sys.executable, "-P", "-m", "latlab", "graph", "--model", "tinynet:build", "--input-size",
                           "16", "-f", "json"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert safe.returncode == 0 and "tinynet:build" in safe.stdout, safe.stderr


def test_measure_and_hw(tmp_path: Path, cli) -> None:
    db = str(tmp_path / "m.db")
    code, out, err = cli(["measure", "--model", "resnet18", "--num-classes", "10", "--input-size", "64",
                          "--batch", "2", "--repeats", "5", "--warmup", "2", "--backend", "cpu", "-f", "csv",
                          "--db", db])
    assert code == 0, err
    header, row = out.strip().splitlines()
    assert "median_ms" in header and ",ok," in row
    code, out, _ = cli(["hw", "-f", "json"])
    assert code == 0 and '"fingerprint"' in out
    code, out, _ = cli(["db", "current", "--db", db])
    assert code == 0 and f"revision {head_revision()}" in out
    code, out, _ = cli(["db", "downgrade", "0002", "--db", db])  # the table of 0002 keeps its row
    assert code == 0 and "schema at revision 0002" in out
    code, out, _ = cli(["db", "history", "--db", db])
    assert code == 0 and "* 0002  Whole-model measurements" in out and f"  {head_revision()}  " in out
    code, _, err = cli(["db", "downgrade", "0003", "--db", db])
    assert code == 1 and "from revision 0002 to '0003': give one of 0001, 0002" in err
    assert cli(["db", "upgrade", "--db", db])[0] == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from model_measurements").fetchone() == (1,)


def test_llc_flush_sweep_is_recorded(tmp_path: Path, cli) -> None:
    db = tmp_path / "cold.db"
    code, out, err = cli(["profile", "--model", "resnet18", "--backend", "cpu", "--grid", "random:2", "--threads", "1",
                          "--warmup", "1", "--repeats", "2", "--min-repeats", "2", "--llc-flush", "-q",
                          "--db", str(db)])
    assert code == 0, err
    with sqlite3.connect(db) as conn:
        cold, settings = conn.execute("select llc_flush, settings from sweeps").fetchone()
    assert cold == 1 and json.loads(settings)["flush_bytes"] > 0


def test_the_command_line_loads_without_torch() -> None:
    """`latlab --help` and every `latlab CMD --help` stay fast (13.6 s -> 0.65 s here): torch, scikit-learn,
    SciPy, pandas, SQLAlchemy and Alembic load inside the commands that use them."""
    import subprocess
    import sys

    code = ("import sys, latlab.cli; heavy = {'torch', 'alembic', 'sklearn', 'scipy', 'pandas', 'sqlalchemy'};"
            "heavy &= set(sys.modules);"
            "print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"imported at start-up: {out}"


def test_profile_keep_narrows_the_lattice_only(cli) -> None:
    base = ["profile", "--model", "resnet18", "--input-size", "32", "--backend", "fake", "--dry-run"]
    counts = []
    for extra in ([], ["--keep", "stem"], ["--keep", "stem", "--keep", "layer4.*"]):
        code, out, err = cli([*base, "--grid", "lattice", *extra])
        assert code == 0, err
        counts.append(int(re.search(r"(\d+) configurations", out).group(1)))
    assert counts[0] > counts[1] > counts[2]
    code, _, err = cli([*base, "--grid", "full:8", "--keep", "stem"])
    assert code == 1 and "--keep narrows the lattice grid" in err


def test_a_seed_in_the_grid_wins_over_the_default(tmp_path: Path, cli) -> None:
    from db.engine import open_database
    from db.lut import find_sweep

    db = str(tmp_path / "seeded.db")
    code, _, err = cli(["profile", "--model", "resnet18", "--input-size", "32", "--backend", "fake", "--grid",
                        "random:3:8:seed=3", "-q", "--db", db])
    assert code == 0, err
    with open_database(db, create=False).session() as session:
        assert find_sweep(session, None, None).plan["runs"][0]["grid"]["seed"] == 3
