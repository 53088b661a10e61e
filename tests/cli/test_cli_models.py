"""`latlab fit`, `latlab models list`, `latlab evaluate` and `latlab profile --adaptive` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture
def lut_db(tmp_path: Path, cli) -> str:
    db = str(tmp_path / "fake.db")
    code, _, err = cli(["profile", "--model", "resnet18", "--backend", "fake", "--grid", "full:64", "--batch", "32",
                        "--input-size", "64", "-q", "--db", db])
    assert code == 0, err
    return db


def test_fit_and_list(lut_db: str, cli) -> None:
    code, out, err = cli(["fit", "--models", "mdlm,llm", "--holdout", "0.5", "--db", lut_db, "-f", "csv"])
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("name,kind,n_train,n_test,missing,within_5") and len(lines) == 3
    code, out, _ = cli(["models", "list", "--db", lut_db, "-f", "csv"])
    assert code == 0 and "sweep1-mdlm" in out and "sweep1-llm" in out
    code, _, err = cli(["fit", "--models", "mdlm", "--db", lut_db])
    assert code == 1 and "already exists" in err
    code, _, err = cli(["fit", "--models", "magic", "--db", lut_db])
    assert code == 1 and "unknown latency model" in err
    assert cli(["fit", "--models", "lut,llm", "--name", "ho", "--db", lut_db])[0] == 0
    code, out, _ = cli(["models", "list", "--db", lut_db, "-f", "csv"])
    assert "\nho-lut," in out and "\nho-llm," in out


def test_fit_params(lut_db: str, cli) -> None:
    code, _, err = cli(["fit", "--models", "rf,lut", "--param", "rf.n_estimators=7", "--param", "max_samples=50",
                        "--param", "lut.missing=nearest", "--param", "strict=true", "--name", "p", "--db", lut_db])
    assert code == 0, err
    code, out, _ = cli(["models", "list", "--db", lut_db, "-f", "json"])
    listed = {m["name"]: m["params"] for m in json.loads(out)}
    assert listed == {"p-rf": "max_samples=50, n_estimators=7, strict=True", "p-lut": "missing=nearest, strict=True"}
    from db import open_database
    from latency_models.store import load_model

    forest = load_model(open_database(lut_db), "p-rf").forest_
    assert len(forest.estimators_) == 7 and forest.max_samples == 50
    for params, message in ((["rf.trees=3"], "rf has no parameter 'trees' (rf: max_depth, max_features"),
                            (["gbdt.max_iter=3"], "'gbdt' is not among --models (rf, lut)"),
                            (["depth=3"], "none of rf, lut has a parameter 'depth'"),
                            (["rf.n_estimators"], "expected KIND.NAME=VALUE"),
                            (["rf.n_estimators=[1, 2]"], "one number, word"),
                            (["rf.n_estimators=-1"], "cannot fit rf (n_estimators=-1): The 'n_estimators' parameter"),
                            (["strict=maybe"], "rf: strict must be true or false, got 'maybe'"),
                            (["mdlm.random_state=-5"], "cannot fit mdlm (random_state=-5): The 'random_state'")):
        kinds = "lut,mdlm" if params[0].startswith("mdlm") else "rf,lut"  # mdlm checks it on its first surface
        code, _, err = cli(["fit", "--models", kinds, "--name", "bad", "--db", lut_db]
                           + [a for p in params for a in ("--param", p)])
        assert code == 1 and message in err, err
    code, out, _ = cli(["models", "list", "--db", lut_db, "-f", "csv"])
    assert "bad-" not in out  # nothing stored by a failed fit
    code, _, err = cli(["fit", "--models", "llm,lut", "--name", "p", "--db", lut_db])
    assert code == 1 and "'p-lut' already exists" in err  # checked before fitting llm


def test_evaluate_writes_report_and_plots(lut_db: str, tmp_path: Path, cli) -> None:
    out_dir = tmp_path / "eval"
    code, out, err = cli(["evaluate", "--models", "lut,llm,mdlm,rf", "--db", lut_db, "--train-fraction", "0.5",
                          "--network", "resnet18", "--pruned", "3", "--measure-backend",
                          "fake", "--param", "rf.n_estimators=20", "--out", str(out_dir)])
    assert code == 0, err
    config = json.loads((out_dir / "config.json").read_text())
    assert config["models"]["rf"]["n_estimators"] == 20 and config["models"]["lut"]["missing"] == "bilinear"
    assert config["network"] == "resnet18" and config["train_fraction"] == 0.5
    assert config["input_size"] == 64  # the size the sweep profiled resnet18 at
    report = (out_dir / "report.md").read_text()
    assert "Held-out accuracy" in report and "Whole-network latency" in report
    for png in ("pred_vs_measured.png", "error_cdf.png", "whole_network.png"):
        assert (out_dir / png).read_bytes()[:4] == b"\x89PNG"
    assert "mdlm" in out


def test_fit_and_evaluate_say_what_they_fit(lut_db: str, tmp_path: Path, cli) -> None:
    """On a large LUT a fit takes minutes: `fit` and `evaluate` name each step as it starts (on stdout, or on
    stderr when stdout is a CSV or JSON table), and the budget curve reuses the held-out split it contains (25% of
    keys, the same seed) instead of fitting it again."""
    import pandas as pd

    code, out, err = cli(["fit", "--models", "llm,lut", "--holdout", "0.5", "--name", "said", "--db", lut_db,
                          "-f", "csv"])
    assert code == 0, err
    assert "fitting llm on " in err and " held-out rows" in err and "fitted lut in " in err
    assert "fitting" not in out  # stdout is the table only
    code, out, err = cli(["fit", "--models", "lut", "--name", "said-table", "--db", lut_db])
    assert code == 0 and err == "" and "fitting lut on " in out and "fitted lut in " in out
    code, out, err = cli(["evaluate", "--models", "bilinear,llm", "--budget-curve", "--db", lut_db,
                          "--out", str(tmp_path / "eval")])
    assert code == 0 and err == "", err
    said = [line for line in out.splitlines() if "fitting on" in line]
    assert said[:2] == [line for line in said if line.startswith("held-out random split: ")]
    shares = [line.split(":")[0] for line in said[2:]]
    assert shares == [f"training share {p}% (seed 0)" for p in (5, 5, 10, 10, 50, 50)]  # 25% is the held-out split
    curve = pd.read_csv(tmp_path / "eval" / "accuracy_vs_training_share.csv")
    held = pd.read_csv(tmp_path / "eval" / next(p.name for p in (tmp_path / "eval").glob("held_out*.csv")))
    point = curve[curve["train_fraction"] == 0.25].set_index("model")
    assert list(point["mape"]) == list(held.set_index("model").loc[point.index, "mape"])


@pytest.mark.parametrize("keep", [[], ["--keep", "stem"]])
def test_evaluate_prunes_on_a_lattice_sweep_s_own_lattice(tmp_path: Path, cli, keep: list[str]) -> None:
    """Random prunings of a `--grid lattice` sweep use the pruner's group sizes (and its --keep), so every one
    is compared with the exact sum of measured LUT entries."""
    import pandas as pd

    db = str(tmp_path / "lattice.db")
    code, _, err = cli(["profile", "--model", "resnet18", "--backend", "fake", "--grid", "lattice", "--batch", "4",
                        "--input-size", "32", *keep, "-q", "--db", db])
    assert code == 0, err
    code, _, err = cli(["evaluate", "--models", "lut,mdlm", "--db", db, "--network", "resnet18", "--input-size", "32",
                        "--pruned", "4", "--out", str(tmp_path / "eval")])
    assert code == 0, err
    whole = pd.read_csv(tmp_path / "eval" / "whole_network.csv")
    assert len(whole) == 2 * 5 and whole["lattice_ms"].notna().all()


def test_evaluate_bad_input(lut_db: str, tmp_path: Path, cli) -> None:
    empty = str(tmp_path / "empty.db")
    cli(["db", "upgrade", "--db", empty])
    cases = [
        (["evaluate", "--db", empty], "no sweeps"),
        (["evaluate", "--db", lut_db, "--network", "resnet5O"], "unknown torchvision model"),
        (["evaluate", "--db", lut_db, "--split", "diagonal"], "unknown split"),
        (["evaluate", "--db", lut_db, "--models", "lut", "--strict", "--train-fraction", "0.3"], "--strict"),
        (["evaluate", "--db", lut_db, "--batch", "7"], "no successful measurements with batch=7"),
        (["fit", "--db", str(tmp_path / "missing.db")], "no LUT database"),
    ]
    for argv, expected in cases:
        code, _, err = cli(argv)
        assert code == 1 and expected in err, (argv, err)
        assert len(err.strip().splitlines()) == 1


def test_profile_adaptive(tmp_path: Path, cli) -> None:
    db = str(tmp_path / "ad.db")
    argv = ["profile", "--model", "resnet18", "--backend", "fake", "--grid", "full:32", "--batch", "8",
            "--input-size", "64", "--adaptive", "--budget", "120", "-q", "--db", db]
    code, out, err = cli(argv)
    assert code == 0, err
    assert "adaptive sweep 1: measured 120 new" in out or "stopped by target accuracy" in out
    code, out, _ = cli(["sweep", "status", "--db", db])
    assert code == 0 and "(sampled): 678 planned, 120 stored" in out  # the lattice planned, a sample of it stored
    code, out, err = cli(["sweep", "status", "-f", "csv", "--db", db])
    assert code == 0 and out == "" and "(sampled): 678 planned" in err  # stdout holds the (empty) table only
    no_budget = [a for a in argv if a not in ("--budget", "120")]
    code, _, err = cli(no_budget)
    assert code == 1 and "--budget" in err


def test_adaptive_sweep_stopped_between_rounds_is_not_complete(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Each round measures a few points as a sweep of its own; a Ctrl-C between rounds leaves the sweep
    interrupted, not complete as the round before had left it, and the same call resumes it."""
    from sqlalchemy import select

    import latency_models.adaptive as adaptive
    from db import open_database
    from db.models import Sweep
    from profiler.backends.fake import FakeBackend
    from profiler.plan import build_plan

    database = open_database(tmp_path / "ad.db")
    plan = build_plan("resnet18", "full:32", input_size=64, batch=8)
    rounds, real = [], adaptive.run_sweep

    def second_round_interrupted(*args, **kwargs):  # type: ignore[no-untyped-def]
        rounds.append(kwargs.get("done_status"))
        if len(rounds) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(adaptive, "run_sweep", second_round_interrupted)
    with pytest.raises(KeyboardInterrupt):
        adaptive.adaptive_sweep(database, plan, FakeBackend(), budget=120, progress=False)
    with database.session() as s:
        assert [sweep.status for sweep in s.scalars(select(Sweep))] == ["interrupted"] and rounds[0] == "running"
    monkeypatch.setattr(adaptive, "run_sweep", real)
    adaptive.adaptive_sweep(database, plan, FakeBackend(), budget=120, progress=False)
    with database.session() as s:
        assert [sweep.status for sweep in s.scalars(select(Sweep))] == ["sampled"]


def test_evaluate_times_under_the_sweeps_protocol_or_given_threads(tmp_path: Path, cli,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import profiler.backends.cpu
    import profiler.other_ops

    monkeypatch.setattr(profiler.backends.cpu, "last_level_cache_bytes", lambda: 2**20)  # a quick flush will do
    db = str(tmp_path / "cold.db")
    code, _, err = cli(["profile", "--model", "resnet18", "--backend", "cpu", "--input-size", "32", "--batch", "1",
                        "--grid", "lhs:3:8", "--threads", "1", "--warmup", "1", "--repeats", "2", "--min-repeats", "2",
                        "--llc-flush", "-q", "--db", db])
    assert code == 0, err
    seen: list[tuple[bool, int | None]] = []
    real = profiler.other_ops.measure_other_ops

    def spy(backend, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append((backend.protocol.llc_flush, backend.protocol.num_threads))
        return real(backend, *args, **kwargs)

    monkeypatch.setattr(profiler.other_ops, "measure_other_ops", spy)
    evaluate = ["evaluate", "--models", "mdlm", "--db", db, "--network", "resnet18", "--input-size", "32",
                "--pruned", "1", "--out", str(tmp_path / "eval")]
    code, _, err = cli([*evaluate, "--measure-backend", "cpu"])
    assert code == 0, err
    assert seen == [(True, 1)]  # the LUT was swept on 1 thread with the LLC flushed, so the other ops are timed so
    code, _, err = cli([*evaluate, "--measure-backend", "cpu", "--threads", "2"])
    assert code == 0, err
    assert seen[-1] == (True, 2)
    code, _, err = cli([*evaluate, "--threads", "2"])
    assert code == 1 and "--threads 2" in err and "--measure-backend" in err


def test_fit_picks_one_layout_of_a_sweep_holding_two(lut_db: str, cli) -> None:
    """A sweep with NCHW and NHWC rows: `fit --layout` makes a model `predict` can use; a model of both is refused."""
    code, _, err = cli(["profile", "--model", "resnet18", "--backend", "fake", "--grid", "full:64", "--batch", "32",
                        "--input-size", "64", "--layout", "nhwc", "-q", "--db", lut_db])
    assert code == 0, err
    assert cli(["fit", "--models", "mdlm", "--name", "both", "--db", lut_db])[0] == 0
    code, _, err = cli(["predict", "--model", "resnet18", "--input-size", "64", "--latency-model", "both",
                        "--db", lut_db])
    assert code == 1 and "covers 2 settings" in err and "--layout L" in err
    assert cli(["fit", "--models", "mdlm", "--name", "nhwc", "--layout", "nhwc", "--db", lut_db])[0] == 0
    code, out, err = cli(["predict", "--model", "resnet18", "--input-size", "64", "--latency-model", "nhwc",
                          "--db", lut_db])
    assert code == 0, err


PRUNE_ARGV = ["prune", "--model", "resnet18", "--method", "halp", "--target", "0.5", "--out", "p"]


@pytest.mark.parametrize("argv", [["evaluate", "--out", "eval"], PRUNE_ARGV])
def test_reading_commands_leave_an_old_database_as_it_is(tmp_path: Path, cli, argv: list[str]) -> None:
    from db.engine import open_database

    path = tmp_path / "old.db"
    old = open_database(path, create=True, upgrade=False, check_schema=False)
    old.upgrade("0004")
    old.dispose()
    code, _, err = cli([*argv[:-1], str(tmp_path / argv[-1]), "--db", str(path)])
    assert code == 1 and "latlab db upgrade" in err
    again = open_database(path, create=False, upgrade=False, check_schema=False)
    assert again.revision() == "0004"
    again.dispose()


def test_evaluate_network_on_a_sweep_of_two_settings_stops_before_fitting(lut_db: str, cli) -> None:
    code, _, err = cli(["profile", "--model", "resnet18", "--backend", "fake", "--grid", "full:64", "--batch", "8",
                        "--input-size", "64", "-q", "--db", lut_db])
    assert code == 0, err
    code, _, err = cli(["evaluate", "--models", "rf", "--param", "rf.n_estimators=100000", "--db", lut_db,
                        "--network", "resnet18", "--out", "never"])  # 100,000 trees: would take hours if fitted
    assert code == 1, err
    assert "the sweep holds 2 settings (batch dtype layout op: 8 fp32 nchw conv; 32 fp32 nchw conv)" in err
    assert "choose one with --batch/--dtype/--layout/--op for --network" in err
