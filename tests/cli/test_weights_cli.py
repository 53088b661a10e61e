"""`--weights` files on the command line: prune's --trust-checkpoint."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

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
