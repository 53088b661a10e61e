"""`--weights` and `--module` files on the command line: prune's --trust-checkpoint, and one clean line per error
(no library warning printed before it)."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TINYNET = textwrap.dedent("""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, num_classes: int = 10):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(32)
            self.conv2 = nn.Conv2d(32, 16, 3, padding=1)
            self.fc = nn.Linear(16, num_classes)

        def forward(self, x):
            x = self.conv2(self.bn1(self.conv1(x)).relu())
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
""")


@pytest.fixture
def whole_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A whole-model pickle (``torch.save(net)``) of an importable tiny network, ``latlab_tinynet:Net``."""
    (tmp_path / "latlab_tinynet.py").write_text(TINYNET)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "latlab_tinynet", raising=False)
    import latlab_tinynet  # type: ignore[import-not-found]

    path = tmp_path / "whole.pth"
    torch.save(latlab_tinynet.Net(), path)
    return path


def test_prune_loads_a_whole_model_pickle_only_with_trust_checkpoint(tmp_path: Path, whole_model: Path,
                                                                     cli) -> None:
    db, model = str(tmp_path / "lut.db"), ["--model", "latlab_tinynet:Net", "--input-size", "16"]
    code, _, err = cli(["profile", *model, "--backend", "fake", "--grid", "lattice", "--batch", "8", "-q",
                        "--db", db])
    assert code == 0, err
    argv = ["prune", *model, "--weights", str(whole_model), "--method", "halp", "--target", "1",
            "--out", str(tmp_path / "pruned"), "--db", db]
    code, out, err = cli(argv)
    assert code == 1 and not out and err.count("\n") == 1, err
    assert err.startswith(f"latlab: error: cannot load weights {whole_model} safely") and "--trust-checkpoint" in err
    assert not (tmp_path / "pruned").exists()
    code, out, err = cli([*argv, "--trust-checkpoint"])
    assert code == 0, err
    assert (tmp_path / "pruned" / "pruned.pt2").is_file()


def test_prune_help_describes_weights_as_measure_does(monkeypatch: pytest.MonkeyPatch, cli) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # each option's help on one line
    code, out, _ = cli(["prune", "--help"])
    assert code == 0 and "Local state dict or checkpoint for --model" in out
    assert "--trust-checkpoint" in out and "Allow --weights to be a whole-model pickle" in out


def _latlab(*argv: str) -> subprocess.CompletedProcess[str]:
    """``latlab ARGV`` in a fresh interpreter: a warning torch prints reaches its stderr (pytest catches it in
    process)."""
    return subprocess.run([sys.executable, "-m", "latlab", *argv], capture_output=True, text=True, cwd=ROOT)


def _protocol_4_pickle(path: Path) -> Path:
    """A plain pickle of tensors at protocol 4 (torch.save writes 2): torch warns before it refuses it."""
    path.write_bytes(pickle.dumps({"conv1.weight": torch.zeros(2)}, protocol=4))
    return path


def test_a_module_that_is_no_zip_archive_gives_one_line_and_no_torch_warning(tmp_path: Path) -> None:
    masks = _protocol_4_pickle(tmp_path / "layer_masks.pkl")
    run = _latlab("measure", "--module", str(masks), "--no-store")
    assert run.returncode == 1 and not run.stdout
    assert run.stderr.startswith(f"latlab: error: cannot load {masks} as TorchScript"), run.stderr
    assert run.stderr.count("\n") == 1, run.stderr


def test_a_protocol_4_pickle_as_weights_gives_one_line_and_no_torch_warning(tmp_path: Path) -> None:
    weights = _protocol_4_pickle(tmp_path / "p4.pkl")
    run = _latlab("measure", "--model", "resnet18", "--weights", str(weights), "--no-store")
    assert run.returncode == 1 and not run.stdout
    assert run.stderr.startswith(f"latlab: error: cannot load weights {weights} safely"), run.stderr
    assert run.stderr.count("\n") == 1, run.stderr


def test_the_probing_loads_hide_only_their_own_warning(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    from db.errors import LatlabError
    from profiler.measure import load_model, load_state_dict

    p4 = _protocol_4_pickle(tmp_path / "p4.pkl")
    with pytest.raises(LatlabError):
        load_state_dict(p4)
    with pytest.raises(LatlabError):
        load_model(module_file=p4)
    assert not [str(w.message) for w in recwarn], "a probing load let a torch warning through"
    with pytest.warns(UserWarning, match="Detected pickle protocol 4"), pytest.raises(pickle.UnpicklingError):
        torch.load(p4, weights_only=True)  # outside the probes torch still warns: no global filter
