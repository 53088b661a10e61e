"""`latlab export`: an MDP checkpoint + layer_masks.pkl become a slim pt2 and ONNX network; bad input writes nothing."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18

from db.errors import LatlabError
from profiler.measure import program_labels
from pruning.export import masked_reference
from pruning.graph import build_network_spec
from pruning.mask_files import load_masks, read_mask_file
from pruning.onnx_export import onnx_max_delta, save_onnx

SIZE = 32
MODEL = ["--model", "resnet18", "--num-classes", "10", "--input-size", str(SIZE)]


@pytest.fixture(scope="module")
def mdp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """What an MDP training run leaves: a DDP checkpoint (`module.` keys) and a per-layer mask pickle that
    halves every prunable group and removes layer3.1 (its convs all-zero)."""
    folder = tmp_path_factory.mktemp("mdp")
    torch.manual_seed(0)
    net = resnet18(num_classes=10)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial BN so that wrong slicing shows in the logits
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    ckpt = folder / "checkpoint.pth.tar"
    torch.save({"epoch": 90, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, ckpt)
    spec = build_network_spec(net, SIZE)
    removed = next(b for b in spec.blocks if b.name == "layer3.1")
    masks = {}
    for group in spec.groups.values():
        keep = (torch.arange(group.width) % 2 == 0).float() if group.prunable else torch.ones(group.width)
        for conv in group.convs:
            masks[f"module.{conv}"] = torch.zeros(group.width) if conv in removed.convs else keep
    layer_masks = folder / "layer_masks.pkl"
    layer_masks.write_bytes(pickle.dumps(masks))
    return folder, ckpt, layer_masks


def test_mdp_checkpoint_and_masks_export_to_pt2_and_onnx(tmp_path: Path, mdp_run, cli) -> None:
    _, ckpt, layer_masks = mdp_run
    out = tmp_path / "rn18-mdp"
    code, stdout, err = cli(["export", *MODEL, "--weights", str(ckpt), "--mask", str(layer_masks), "--mgp",
                             "--format", "pt2,onnx", "--out", str(out)])
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    assert result["removed_blocks"] == 1 and result["max_abs_delta_logits"] < 1e-4
    assert result["params_pruned"] < result["params_dense"] / 2 and result["macs_pruned"] < result["macs_dense"]
    assert result["onnx_max_abs_delta"] < 1e-4 and result["onnx_input"] in stdout
    assert set(result["files"]) == {"masks", "pt2", "onnx"}

    # the slim pt2 computes what the masked dense network with the checkpoint's weights computes
    net = resnet18(num_classes=10).eval()
    net.load_state_dict({k.removeprefix("module."): v for k, v in torch.load(ckpt)["state_dict"].items()})
    masks, removed = load_masks(layer_masks, net, SIZE, per_layer=True)
    slim = torch.export.load(str(out / "pruned.pt2")).module()
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.allclose(slim(x), masked_reference(net, masks, removed)(x), atol=1e-4)
    assert onnx_max_delta(out / "pruned.onnx", slim, torch.randn(5, 3, SIZE, SIZE)) < 1e-4  # any batch size
    assert program_labels(out / "pruned.pt2") == {"model": "resnet18", "variant": "mask:layer_masks.pkl"}

    # masks.pt holds the same masks in latlab's format
    again = read_mask_file(out / "masks.pt")
    assert again.removed_blocks == removed
    assert {k[0]: v.tolist() for k, v in again.masks.items()} == {k: v.float().tolist() for k, v in masks.items()}

    # the pt2 converts to ONNX on its own (and to a pt2 that keeps its labels); its input size comes from the program
    code, _, err = cli(["export", "--module", str(out / "pruned.pt2"), "--format", "onnx,pt2", "--out",
                        str(tmp_path / "onnx")])
    assert code == 0, err
    converted = json.loads((tmp_path / "onnx" / "result.json").read_text())
    assert converted["input_size"] == [SIZE, SIZE] and converted["params"] == result["params_pruned"]
    assert converted["macs"] == result["macs_pruned"] and converted["onnx_max_abs_delta"] < 1e-4
    assert program_labels(tmp_path / "onnx" / "pruned.pt2") == program_labels(out / "pruned.pt2")


@pytest.mark.parametrize(("args", "message"), [
    ([], "give either --model"),
    ([*MODEL, "--module", "x.pt2"], "give either --model"),
    (["--module", "x.pt2", "--mask", "m.pkl"], "apply to --model"),
    (["--module", "x.pt"], "torch.export program (.pt2)"),
    (["--module", "missing.pt2"], "does not exist"),
    ([*MODEL, "--format", "tflite"], "comma-separated list of pt2, onnx"),
])
def test_bad_arguments_are_refused_before_any_work(tmp_path: Path, cli, args: list[str], message: str) -> None:
    code, _, err = cli(["export", *args, "--out", str(tmp_path / "out")])
    assert code == 1 and message in err
    assert not (tmp_path / "out").exists()


def test_masks_of_another_network_are_refused_and_nothing_written(tmp_path: Path, mdp_run, cli) -> None:
    _, ckpt, layer_masks = mdp_run
    code, _, err = cli(["export", "--model", "resnet34", "--num-classes", "10", "--input-size", str(SIZE),
                        "--mask", str(layer_masks), "--mgp", "--out", str(tmp_path / "out")])
    assert code == 1 and "has no mask for layer1.2.conv2" in err  # resnet34 has layer1.2: the file lacks it
    code, _, err = cli(["export", "--model", "resnet34", "--num-classes", "10", "--weights", str(ckpt),
                        "--out", str(tmp_path / "out")])
    assert code == 1 and "do not match resnet34" in err
    assert not (tmp_path / "out").exists()


def test_onnx_without_its_packages_names_the_extra_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    cli) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript -> ImportError
    program = torch.export.export(torch.nn.Conv2d(3, 4, 3).eval(), (torch.zeros(1, 3, 8, 8),))
    with pytest.raises(LatlabError, match=r"onnxscript is missing\): pip install onnx onnxscript onnxruntime"):
        save_onnx(program, tmp_path / "x.onnx")
    code, _, err = cli(["export", *MODEL, "--format", "pt2,onnx", "--out", str(tmp_path / "out")])
    assert code == 1 and "onnx extra" in err and not (tmp_path / "out").exists()


def test_an_onnx_file_that_disagrees_with_the_network_is_an_error(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net, other = torch.nn.Conv2d(3, 4, 3).eval(), torch.nn.Conv2d(3, 4, 3).eval()
    path = save_onnx(torch.export.export(net, (torch.zeros(1, 3, 8, 8),)), tmp_path / "conv.onnx")
    x = torch.randn(1, 3, 8, 8)
    assert onnx_max_delta(path, net, x) < 1e-5
    with pytest.raises(LatlabError, match="disagrees with the network in ONNX Runtime"):
        onnx_max_delta(path, other, x)
