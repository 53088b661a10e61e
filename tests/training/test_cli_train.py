"""`latlab train`: bad input stops before any work with one line; a tiny run trains, checkpoints and resumes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "demo_resnet18_digits.yaml")


def test_train_cli_rejects_bad_input_before_work(cli, tmp_path: Path, digits: Path) -> None:
    out = tmp_path / "run"
    cases = (
        (["--data", str(tmp_path / "missing")], "does not exist"),
        (["--data", str(digits / "train")], "train"),  # a class folder root, not ROOT/train + ROOT/val
        (["--data", str(digits), "--set", "optim.lr_typo=1"], "unknown key 'optim.lr_typo'"),
        (["--data", str(digits), "--weights", str(tmp_path / "none.pth")], "does not exist"),
    )
    for extra, expected in cases:
        code, stdout, err = cli(["train", "--config", CONFIG, "--out", str(out), "--set", "prune.method=none", *extra])
        assert code != 0 and expected in stdout + err, (extra, stdout + err)
    assert not (out / "checkpoint_last.pt").exists()
    (tmp_path / "afile").write_text("x")
    pruned = tmp_path / "pruned"
    pruned.mkdir()
    (pruned / ".latlab-command").write_text("prune\n")
    for where, expected in ((tmp_path / "afile" / "run", f"{tmp_path / 'afile'} is a file"),
                            (pruned, f"{pruned} holds the results of `latlab prune`")):
        code, stdout, err = cli(["train", "--config", CONFIG, "--data", str(digits), "--out", str(where), "-q",
                                 "--set", "prune.method=none"])
        assert code == 1 and expected in err and err.count("\n") == 1 and "(run.out)" in err, err
    assert sorted(p.name for p in pruned.iterdir()) == [".latlab-command"]


def test_train_cli_runs_and_resumes(cli, tmp_path: Path, digits: Path) -> None:
    out = tmp_path / "run"
    argv = ["train", "--config", CONFIG, "--data", str(digits), "--out", str(out), "-q", "--set", "prune.method=none",
            "--set", "optim.epochs=2", "--set", "run.max_iters_per_epoch=2", "--set", "run.stop_after_epochs=1",
            "--tensorboard"]
    code, stdout, err = cli(argv)
    assert code == 0, err
    assert (out / "config.resolved.yaml").exists() and (out / "checkpoint_last.pt").exists()
    assert (out / ".latlab-command").read_text() == "train\n"  # `latlab prune --out` it is refused
    assert len((out / "metrics.csv").read_text().splitlines()) == 2  # header + epoch 1
    code, stdout, err = cli(argv)  # the same command continues from the checkpoint
    assert code == 0, err
    assert len((out / "metrics.csv").read_text().splitlines()) == 3 and (out / "final_state.pt").exists()
    assert "tensorboard: true" in (out / "config.resolved.yaml").read_text()
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one per invocation
    # two processes resuming a one-process run: the workers' error and one line, not torchrun's tracebacks
    two = subprocess.run([sys.executable, "-m", "latlab", *argv[:-1], "--nproc-per-node", "2"], capture_output=True,
                         text=True, timeout=600)
    assert two.returncode != 0 and "written by 1 process, this run has 2" in two.stderr, two.stderr
    assert "Traceback" not in two.stderr and "latlab: error: training stopped: process" in two.stderr, two.stderr


def test_print_config_shows_every_key_and_loads_back(cli, tmp_path: Path) -> None:
    """`--print-config` prints the resolved config with each key's meaning; saved, it is a valid --config."""
    import yaml

    from training.config import load_config

    code, stdout, err = cli(["train", "--config", CONFIG, "--set", "prune.ratio=0.5", "--print-config"])
    assert code == 0, err
    assert "  slim: true" in stdout and "# after the last pruning step" in stdout and "ratio: 0.5" in stdout
    saved = tmp_path / "printed.yaml"
    saved.write_text(stdout)
    assert load_config(saved, []).to_dict() == load_config(CONFIG, ["prune.ratio=0.5"]).to_dict()
    assert yaml.safe_load(stdout)["prune"]["ratio"] == 0.5
    assert "run directory:" not in stdout  # nothing ran (a run ends by naming its directory)
