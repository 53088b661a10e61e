"""Your own network by reference (FILE.py:NAME, package.module:NAME) through resolve_model and the CLI."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from torch import nn

from db.errors import LatlabError
from profiler.custom_model import is_custom_reference
from profiler.plan import build_plan, resolve_model

NETS = textwrap.dedent("""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, num_classes: int = 10):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(64)
            self.conv2 = nn.Conv2d(64, 16, 3, padding=1)
            self.fc = nn.Linear(16, num_classes)

        def forward(self, x):
            x = self.conv2(self.bn1(self.conv1(x)).relu())
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    def small():
        return Net(num_classes=3)

    class Zoo:
        tiny = Net

    broken = 3
""")


@pytest.fixture
def nets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "nets.py").write_text(NETS)
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "models.py").write_text(NETS)
    (tmp_path / "bad.py").write_text("raise RuntimeError('no GPU here')\n")
    (tmp_path / "my nets").mkdir()  # a file importing a module beside it, at import time and when called
    (tmp_path / "my nets" / "blocks.py").write_text(NETS)
    (tmp_path / "my nets" / "edge.py").write_text(
        "from blocks import Net\n\ndef lazy():\n    import blocks\n    return blocks.small()\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_reference_syntax() -> None:
    assert is_custom_reference("nets.py:Net") and is_custom_reference("a/b/nets.py:zoo.tiny")
    assert is_custom_reference("mypkg.models:Net")
    assert not is_custom_reference("timm:resnet50d") and not is_custom_reference("resnet50")
    assert not is_custom_reference("nets.py:") and not is_custom_reference("not a module:Net")


def test_files_and_modules_build_networks(nets: Path) -> None:
    name, net = resolve_model("nets.py:Net")
    assert name == "nets.py:Net" and isinstance(net, nn.Module) and not net.training and net.fc.out_features == 10
    assert resolve_model("nets.py:small")[1].fc.out_features == 3  # a function that builds one
    assert resolve_model("nets.py:Zoo.tiny", num_classes=7)[1].fc.out_features == 7
    assert resolve_model(str(nets / "nets.py") + ":Net")[1].fc.out_features == 10  # an absolute path
    assert resolve_model("mypkg.models:Net")[1].fc.out_features == 10  # imported from the working directory
    assert resolve_model("my nets/edge.py:Net")[1].fc.out_features == 10  # from the file's own folder
    assert resolve_model("my nets/edge.py:lazy")[1].fc.out_features == 3
    assert resolve_model("nets.py:Net", num_classes=1000)[1].fc.out_features == 1000  # asked for: passed
    assert resolve_model("nets.py:small", num_classes=1000)[1].fc.out_features == 3  # takes none: 1000 tolerated
    plan = build_plan("nets.py:Net", "full:8", input_size=32, batch=2)
    assert len(plan.configs) == 8 + 8 * 2  # conv1: cout 8..64; conv2: cin 8..64 × cout 8, 16


@pytest.mark.parametrize(("reference", "num_classes", "message"), [
    ("nets.py:Nope", 1000, "nets.py has no 'Nope'; its nn.Module classes: Net"),
    ("missing.py:Net", 1000, "no Python file missing.py"),
    ("mypkg.nothing:Net", 1000, "no module 'mypkg.nothing'"),
    ("bad.py:Net", 1000, "running bad.py failed: RuntimeError: no GPU here"),
    ("nets.py:broken", 1000, "is not an nn.Module class or a function (its type: int)"),
    ("nets.py:small", 5, "takes no num_classes argument"),
    ("resnet5O", 1000, "your own network: FILE.py:NAME"),
])
def test_bad_references_say_what_is_wrong(nets: Path, reference: str, num_classes: int, message: str) -> None:
    with pytest.raises(LatlabError, match=re.escape(message)):
        resolve_model(reference, num_classes=num_classes)


def test_the_cli_profiles_and_prunes_your_network_at_a_non_square_size(nets: Path, cli) -> None:  # type: ignore[no-untyped-def]
    db = str(nets / "own.db")
    code, out, err = cli(["profile", "--model", "nets.py:Net", "--backend", "fake", "--grid", "lattice",
                          "--input-size", "64x96", "--batch", "256", "-q", "--db", db])
    assert code == 0, err
    code, out, err = cli(["prune", "--model", "nets.py:Net", "--input-size", "64x96", "--method", "halp", "--target",
                          "0.99", "--db", db, "--out", str(nets / "pruned")])
    assert code == 0, err
    assert (nets / "pruned" / "pruned.pt2").is_file() and "nets.py:Net at 64x96" in out
    code, out, err = cli(["predict", "--module", str(nets / "pruned" / "pruned.pt2"), "-f", "json", "--db", db])
    assert code == 0 and json.loads(out)[0]["conv_ms"] > 0, err  # at the 64×96 it was exported at
    code, out, err = cli(["predict", "--model", "nets.py:Net", "--input-size", "64X96", "-f", "json", "--db", db])
    assert code == 0 and json.loads(out)[0]["conv_ms"] > 0, err
    code, _, err = cli(["graph", "--model", "nets.py:Net", "--input-size", "64y96"])
    assert code == 1 and "--input-size must be N or HxW" in err
