"""`latlab predict`: a network's conv latency from a hardware profile's LUT, dense or pruned by a mask file."""

from __future__ import annotations

import csv
import io
import json
import pickle
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18

from db.engine import open_database
from latency_models.features import configs_from_frame, lut_frame
from latency_models.network import lattice_sum
from latlab.cli import main
from latlab.tables import render
from profiler.plan import trace_network
from profiler.widths import dense_widths
from pruning.check import random_masks
from pruning.graph import build_network_spec
from pruning.mask_files import apply_mask_file

SIZE = 32
NET = ["--model", "resnet18", "--num-classes", "10", "--input-size", str(SIZE)]


@pytest.fixture(scope="module")
def fake_lut(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fake-backend sweep of ResNet-18's conv shapes over the pruner's channel lattice (auto group sizes)."""
    db = str(tmp_path_factory.mktemp("predict") / "lut.db")
    try:
        main(["profile", "--model", "resnet18", "--input-size", str(SIZE), "--backend", "fake", "--grid", "lattice",
              "--batch", "4", "-q", "--db", db])
    except SystemExit as exc:
        assert not exc.code
    return db


def _lut_sum(db: str, net, hw: int | tuple[int, int] = SIZE) -> float:  # type: ignore[no-untyped-def]
    """Σ of the stored medians of the network's convs, looked up by hand."""
    with open_database(db, create=False).session() as session:
        X, y = lut_frame(session, 1)
    table = dict(zip(configs_from_frame(X), y, strict=True))
    trace = trace_network(net, hw)
    return lattice_sum(table, trace.layers, dense_widths(trace), batch=4)


def _mask_file(folder: Path, seed: int) -> tuple[Path, dict]:
    net = resnet18(num_classes=10)
    masks = random_masks(build_network_spec(net, SIZE), seed)
    path = folder / f"group_mask_{seed}.pkl"
    path.write_bytes(pickle.dumps({(f"module.{conv}",): keep.float() for conv, keep in masks.items()}))
    return path, masks


def test_dense_prediction_is_the_sum_of_the_lut_entries(fake_lut: str, cli) -> None:
    code, out, err = cli(["predict", *NET, "--per-layer", "-f", "csv", "--db", fake_lut])
    assert code == 0, err
    per_layer, summary = out, err  # one CSV on stdout, the totals on stderr
    layers = list(csv.DictReader(io.StringIO(per_layer)))
    assert [row["layer"] for row in layers] == [layer.name for layer in trace_network(resnet18(), SIZE).layers]
    assert sum(float(row["share[lut]_pct"]) for row in layers) == pytest.approx(100)
    (row,) = csv.DictReader(io.StringIO(summary))
    assert row["latency_model"] == "lut" and row["batch"] == "4" and row["convs"] == "20"
    assert float(row["conv_ms"]) == pytest.approx(_lut_sum(fake_lut, resnet18(num_classes=10)))
    assert float(row["images_per_s"]) == pytest.approx(4 / float(row["conv_ms"]) * 1e3)
    code, out, _ = cli(["predict", *NET, "--per-layer", "-f", "json", "--db", fake_lut])
    document = json.loads(out)  # one JSON document, not two
    assert len(document["layers"]) == 20 and document["totals"][0]["conv_ms"] == pytest.approx(float(row["conv_ms"]))


def test_masked_network_predicts_less_and_a_stored_model_agrees(tmp_path: Path, fake_lut: str, cli) -> None:
    path, _ = _mask_file(tmp_path, 0)
    code, out, err = cli(["predict", *NET, "--mask", str(path), "--kind", "lut,mdlm", "-f", "json",
                          "--db", fake_lut])
    assert code == 0, err
    lut, mdlm = json.loads(out)
    dense = _lut_sum(fake_lut, resnet18(num_classes=10))
    assert lut["conv_ms"] < dense and abs(mdlm["conv_ms"] / lut["conv_ms"] - 1) < 0.05
    assert cli(["fit", "--models", "mdlm", "--name", "r18-mdlm", "--db", fake_lut])[0] == 0
    code, out, err = cli(["predict", *NET, "--mask", str(path), "--latency-model", "r18-mdlm", "-f", "json",
                          "--db", fake_lut])
    assert code == 0, err
    assert json.loads(out)[0]["conv_ms"] == pytest.approx(mdlm["conv_ms"])
    code, out, err = cli(["predict", *NET, "--mask", str(path), "--latency-model", "r18-mdlm", "--kind", "lut",
                          "-f", "json", "--db", fake_lut])  # both, side by side
    assert code == 0, err
    assert [row["latency_model"] for row in json.loads(out)] == ["r18-mdlm", "lut"]
    # a stored model named like a kind asked for, or like a column of the per-conv table, keeps its own row
    for name in ("mdlm", "cout"):
        assert cli(["fit", "--models", "lut", "--name", name, "--db", fake_lut])[0] == 0
    code, out, err = cli(["predict", *NET, "--mask", str(path), "--latency-model", "mdlm", "--latency-model", "cout",
                          "--kind", "mdlm", "-f", "json", "--db", fake_lut])
    assert code == 0, err
    rows = {row["latency_model"]: row["conv_ms"] for row in json.loads(out)}
    assert list(rows) == ["mdlm (stored)", "cout (stored)", "mdlm"]
    assert rows["mdlm (stored)"] == rows["cout (stored)"] == pytest.approx(lut["conv_ms"])


def test_a_saved_module_predicts_like_the_masked_model(tmp_path: Path, fake_lut: str, cli) -> None:
    """A torch.export program and a TorchScript archive hold no nn.Conv2d: their convs are recorded as they run,
    named after the layers they came from."""
    path, _ = _mask_file(tmp_path, 2)
    code, out, err = cli(["predict", *NET, "--mask", str(path), "--per-layer", "-f", "json", "--db", fake_lut])
    assert code == 0, err
    masked = json.loads(out)
    assert cli(["export", *NET, "--mask", str(path), "--format", "pt2", "--out", str(tmp_path / "x")])[0] == 0
    slim = apply_mask_file(path, resnet18(num_classes=10), SIZE)
    torch.jit.save(torch.jit.trace(slim, torch.randn(1, 3, SIZE, SIZE)), str(tmp_path / "slim.pt"))
    for module in (tmp_path / "x" / "pruned.pt2", tmp_path / "slim.pt"):
        code, out, err = cli(["predict", "--module", str(module), "--input-size", str(SIZE), "--per-layer",
                              "-f", "json", "--db", fake_lut])
        assert code == 0, err
        saved = json.loads(out)
        assert saved["layers"] == masked["layers"], module
        assert saved["totals"][0]["conv_ms"] == pytest.approx(masked["totals"][0]["conv_ms"])
    pt2 = str(tmp_path / "x" / "pruned.pt2")  # a .pt2 is priced at the size it was exported at
    code, out, err = cli(["predict", "--module", pt2, "--per-layer", "-f", "json", "--db", fake_lut])
    assert code == 0 and json.loads(out)["layers"] == masked["layers"], err
    code, _, err = cli(["predict", "--module", pt2, "--input-size", str(2 * SIZE), "--db", fake_lut])
    assert code == 1 and f"takes {SIZE}×{SIZE} images" in err


def test_a_width_the_sweep_lacks_names_the_conv_and_the_way_out(tmp_path: Path, fake_lut: str, cli) -> None:
    net = resnet18(num_classes=10)
    spec = build_network_spec(net, SIZE)
    masks = random_masks(spec, 1)
    masks["layer1.0.conv1"] = masks["layer1.0.conv1"].clone()
    masks["layer1.0.conv1"][:] = False
    masks["layer1.0.conv1"][:5] = True  # 5 channels: not on the lattice
    path = tmp_path / "odd.pkl"
    path.write_bytes(pickle.dumps({(conv,): keep.float() for conv, keep in masks.items()}))
    code, _, err = cli(["predict", *NET, "--mask", str(path), "--db", fake_lut])
    assert code == 1 and "no measurement for" in err and "cout=5" in err and "--kind mdlm" in err
    masks["layer1.0.conv1"][:] = False  # HALP's layer removal: latlab keeps one zeroed channel
    path.write_bytes(pickle.dumps({(conv,): keep.float() for conv, keep in masks.items()}))
    code, _, err = cli(["predict", *NET, "--mask", str(path), "--db", fake_lut])
    assert code == 1 and "cout=1" in err and "the mask empties layer1.0.conv1" in err and "--kind llm" in err


def test_a_shape_the_sweep_lacks_says_to_sweep_at_that_input_size(fake_lut: str, cli) -> None:
    code, _, err = cli(["predict", "--model", "resnet18", "--input-size", "48", "--db", fake_lut])
    assert code == 1 and "f48x48_k7x7" in err and "--input-size 48" in err


@pytest.mark.parametrize(("args", "message"), [
    (["--module", "x.pt2", "--mask", "m.pkl"], "a saved --module is already pruned"),
    ([*NET, "--kind", "magic"], "unknown latency model(s) magic"),
    ([*NET, "--latency-model", "nope"], "nope"),
])
def test_bad_input_is_a_one_line_error(fake_lut: str, cli, args: list[str], message: str) -> None:
    code, _, err = cli(["predict", *args, "--db", fake_lut])
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1


def test_a_lut_of_several_batches_is_refused_not_priced_at_one_of_them(tmp_path: Path, cli) -> None:
    db = str(tmp_path / "two.db")
    for batch in ("1", "2"):
        code, _, err = cli(["profile", "--model", "resnet18", "--input-size", str(SIZE), "--backend", "fake",
                            "--grid", "full:64", "--batch", batch, "-q", "--db", db])
        assert code == 0, err
    code, _, err = cli(["predict", *NET, "--db", db])
    assert code == 1 and "covers 2 settings" in err and "latlab fit --batch" in err


def test_a_non_square_exported_network_is_priced_and_timed_at_its_own_size(tmp_path: Path, cli) -> None:
    """A .pt2 exported at 32×48 is predicted and measured at that size (a square --input-size would clash)."""
    from db.engine import open_database as open_db
    from profiler.backends.fake import FakeBackend
    from profiler.measure import save_program
    from profiler.plan import build_plan
    from profiler.runner import run_sweep

    net = resnet18(num_classes=10).eval()
    db = str(tmp_path / "wide.db")
    run_sweep(open_db(db), build_plan(net, "full:64", input_size=(32, 48), batch=4), FakeBackend(), progress=False)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(net, (torch.zeros(2, 3, 32, 48),), dynamic_shapes=({0: batch},))
    pt2 = save_program(program, tmp_path / "wide.pt2", model="resnet18", variant="dense")
    code, out, err = cli(["predict", "--module", str(pt2), "-f", "json", "--db", db])
    assert code == 0, err
    assert json.loads(out)[0]["conv_ms"] == pytest.approx(_lut_sum(db, net, (32, 48)))
    code, out, err = cli(["measure", "--module", str(pt2), "--backend", "fake", "--batch", "4", "--repeats", "3",
                          "-f", "json", "--db", db])
    assert code == 0 and json.loads(out)[0]["input_size"] == "32×48", err
    code, _, err = cli(["predict", "--module", str(pt2), "--input-size", "32", "--db", db])
    assert code == 1 and "takes 32×48 images (fixed when it was exported); run latlab predict without" in err


def test_tables_print_brackets_as_text() -> None:
    """Column names like `ms[lut]` and values like `[pt2]` are text, not Rich markup."""
    out = render([{"share[lut]_pct": "[b]x[/b]"}], title="[red]t")
    assert "share[lut]_pct" in out and "[b]x[/b]" in out and "[red]t" in out
