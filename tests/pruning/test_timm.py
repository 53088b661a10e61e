"""timm models by name (``timm:NAME``): built without downloads, pruned, exported and checked."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from db.errors import LatlabError
from profiler.measure import load_model, load_state_dict
from profiler.plan import resolve_model
from pruning.check import check_export
from pruning.graph import build_network_spec

timm = pytest.importorskip("timm")


def test_timm_names_build_without_weights() -> None:
    name, net = resolve_model("timm:resnet18d", num_classes=10)
    assert name == "timm:resnet18d" and net.fc.out_features == 10 and not net.training
    with pytest.raises(LatlabError, match="unknown timm model 'resnt18d'; did you mean resnet18d"):
        resolve_model("timm:resnt18d")
    with pytest.raises(LatlabError, match="cannot build timm model 'resnet18.nope'"):
        resolve_model("timm:resnet18.nope")


def test_a_timm_name_without_timm_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(LatlabError, match=r"needs the timm package: pip install timm"):
        resolve_model("timm:resnet18d")


@pytest.mark.parametrize(("model", "prunable"), [
    ("efficientnet_b0", 40),        # BatchNormAct2d (BN + activation in one module)
    ("tf_efficientnet_b0", 40),     # Conv2dSame (asymmetric 'same' padding)
    ("mobilenetv3_small_050", 26),
    ("rexnet_100", 31),             # cat([x[:, :C] + shortcut, x[:, C:]]): sliced channels fixed, no removable block
    ("ecaresnet26t", 19),           # ECA: Conv1d over the channel axis
    ("resnetv2_50", 32),            # pre-activation BN and weight-standardised convs
    ("mixnet_s", 14),               # depthwise convs on splits
    ("cspdarknet53", 34),           # split + add of halves
    ("vgg11", 7),                   # ConvMlp head branches on the input size: traced as timm's leaf, its input fixed
    ("efficientvit_b0", 14),        # LiteMLA attention: the same
])
def test_timm_cnns_prune_and_export(model: str, prunable: int) -> None:
    _, net = resolve_model(f"timm:{model}", num_classes=10)
    spec = build_network_spec(net, 64)
    assert sum(g.prunable for g in spec.groups.values()) == prunable
    check = check_export(net, spec)
    assert check.kept_items < check.items and check.max_logit_delta < 1e-9


def test_normalizer_free_nets_have_nothing_to_prune() -> None:
    """NF-ResNet: every conv is a ScaledStdConv2d (weights standardised, a gain per output): all fixed."""
    _, net = resolve_model("timm:nf_resnet26", num_classes=10)
    spec = build_network_spec(net, 64)
    assert not any(g.prunable for g in spec.groups.values())
    assert all("ScaledStdConv2d" in g.fixed_by or g.fixed_by == "network output" for g in spec.groups.values())


def test_safetensors_weights_load(tmp_path: Path) -> None:
    """timm and Hugging Face ship .safetensors: they load (no pickle), with module. prefixes stripped."""
    from safetensors.torch import save_file

    _, net = resolve_model("timm:resnet18d", num_classes=10)
    state = {f"module.{k}": v.clone() + 1 for k, v in net.state_dict().items()}
    save_file(state, tmp_path / "w.safetensors")
    _, loaded = load_model("timm:resnet18d", weights=tmp_path / "w.safetensors", num_classes=10)
    assert torch.equal(loaded.fc.weight, net.fc.weight + 1)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(LatlabError, match="cannot load weights .*bad.safetensors as safetensors"):
        load_state_dict(tmp_path / "bad.safetensors")
