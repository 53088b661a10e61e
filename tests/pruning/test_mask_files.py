"""HALP/MDP mask pickles and latlab masks.pt: safe reading, mapping onto a model, `latlab measure --mask`."""

from __future__ import annotations

import hashlib
import os
import pickle

import pytest
import torch
from torchvision.models import resnet18

from db.errors import LatlabError
from profiler.plan import trace_network
from pruning.export import export_pruned, masked_reference, verify_export
from pruning.graph import build_network_spec
from pruning.mask_files import masks_for_model, read_mask_file

SIZE = 64


@pytest.fixture(scope="module")
def net_and_spec():
    net = resnet18(num_classes=10).eval()
    return net, build_network_spec(net, SIZE)


def _half(n: int) -> torch.Tensor:
    m = torch.zeros(n)
    m[: n // 2] = 1.0
    return m


def _mdp_layer_masks(spec, removed_block: str | None) -> dict[str, torch.Tensor]:
    """A per-layer mask dict as MDP pickles it: `module.` names, float 0/1 tensors, a removed block all-zero."""
    out = {}
    block = next((b for b in spec.blocks if b.name == removed_block), None)
    for gid, group in spec.groups.items():
        mask = _half(group.width) if spec.groups[gid].prunable else torch.ones(group.width)
        for conv in group.convs:
            out[f"module.{conv}"] = torch.zeros(group.width) if block and conv in block.convs else mask.clone()
    return out


def test_mdp_layer_masks_pickle_gives_slim_network(tmp_path, net_and_spec):
    net, spec = net_and_spec
    path = tmp_path / "layer_masks.pkl"
    path.write_bytes(pickle.dumps(_mdp_layer_masks(spec, "layer2.1")))
    masks, removed = masks_for_model(read_mask_file(path), net, spec, per_layer=True)
    assert removed == ["layer2.1"]
    assert not any(c.startswith("layer2.1.") for c in masks)
    slim = export_pruned(net, trace_network(net, SIZE), masks, removed)
    assert slim(torch.randn(2, 3, SIZE, SIZE)).shape == (2, 10)
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in net.parameters())


def test_halp_group_mask_pickle_with_tuple_keys(tmp_path, net_and_spec):
    net, spec = net_and_spec
    groups = {tuple(f"module.{c}" for c in g.convs): _half(g.width) for g in spec.groups.values() if g.prunable}
    path = tmp_path / "group_mask.pkl"
    path.write_bytes(pickle.dumps(groups))
    raw = read_mask_file(path)
    masks, removed = masks_for_model(raw, net, spec)
    assert removed == [] and all(int(k.sum()) == k.numel() // 2 for k in masks.values())
    with pytest.raises(LatlabError, match="--mgp expects one layer per mask"):
        masks_for_model(raw, net, spec, per_layer=True)


def test_halp_layer_removal_keeps_a_dead_channel_and_exports_exactly(tmp_path) -> None:
    """HALP may empty a block's conv1 (layer removal): the branch then adds a constant, not 0, so the block
    stays, with one dead channel, and the slim network equals HALP's masked one."""
    torch.manual_seed(0)
    net = resnet18(num_classes=10).eval()
    for m in net.modules():  # trained-looking BNs: a constant branch output is far from 0
        if isinstance(m, torch.nn.BatchNorm2d):
            m.bias.data.uniform_(-0.5, 0.5)
            m.running_mean.uniform_(-0.5, 0.5)
    spec = build_network_spec(net, SIZE)
    groups = {tuple(f"module.{c}" for c in g.convs): _half(g.width) for g in spec.groups.values() if g.prunable}
    groups[("module.layer3.1.conv1",)] = torch.zeros(256)
    path = tmp_path / "group_mask.pkl"
    path.write_bytes(pickle.dumps(groups))
    halp = masked_reference(net, {c.removeprefix("module."): v > 0 for k, v in groups.items() for c in k})
    masks, removed = masks_for_model(read_mask_file(path), net, spec)
    assert removed == [] and int(masks["layer3.1.conv1"].sum()) == 1
    slim = export_pruned(net, trace_network(net, SIZE), masks, removed)
    assert slim.layer3[1].conv1.out_channels == 1
    assert verify_export(halp, slim, (2, 3, SIZE, SIZE)) < 1e-9


def test_latlab_masks_pt_reads_back(tmp_path, net_and_spec):
    net, spec = net_and_spec
    path = tmp_path / "masks.pt"
    torch.save({"masks": {"layer1.0.conv1": torch.arange(64) < 32}, "removed_blocks": ["layer2.1"]}, path)
    masks, removed = masks_for_model(read_mask_file(path), net, spec)
    assert int(masks["layer1.0.conv1"].sum()) == 32 and removed == ["layer2.1"]
    torch.save({"masks": {"conv1": torch.ones(64)}, "removed_blocks": ["layer1.0.downsample"]}, path)
    with pytest.raises(LatlabError, match="not a removable block"):
        masks_for_model(read_mask_file(path), net, spec)


class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "layer_masks.pkl"
    path.write_bytes(pickle.dumps({"conv1": _Exploit(str(marker))}))
    with pytest.raises(LatlabError, match="refusing to load"):
        read_mask_file(path)
    assert not marker.exists()


def test_truncated_and_wrong_files_are_clear_errors(tmp_path, net_and_spec):
    net, spec = net_and_spec
    good = pickle.dumps(_mdp_layer_masks(spec, None))
    (tmp_path / "cut.pkl").write_bytes(good[: len(good) // 2])
    with pytest.raises(LatlabError, match="truncated or corrupt"):
        read_mask_file(tmp_path / "cut.pkl")
    with pytest.raises(LatlabError, match="does not exist"):
        read_mask_file(tmp_path / "missing.pkl")
    (tmp_path / "pruned.pt2").write_bytes(b"PK\x03\x04")
    with pytest.raises(LatlabError, match="an exported network, not masks: give it to --module"):
        read_mask_file(tmp_path / "pruned.pt2")
    (tmp_path / "other.pkl").write_bytes(pickle.dumps({"module.layer9.conv1": torch.ones(3)}))
    with pytest.raises(LatlabError, match="not in the model.*layer9.conv1"):
        masks_for_model(read_mask_file(tmp_path / "other.pkl"), net, spec)
    (tmp_path / "short.pkl").write_bytes(pickle.dumps({"conv1": torch.ones(3)}))
    with pytest.raises(LatlabError, match="mask of conv1 has 3 entries; conv1 has 64"):
        masks_for_model(read_mask_file(tmp_path / "short.pkl"), net, spec)
    (tmp_path / "stem.pkl").write_bytes(pickle.dumps({"conv1": torch.zeros(64)}))
    with pytest.raises(LatlabError, match="keeps no channel"):
        masks_for_model(read_mask_file(tmp_path / "stem.pkl"), net, spec)


def test_old_protocols_soft_masks_and_partial_groups(tmp_path, net_and_spec):
    """Pickles of protocols 0-2 (bytes via _codecs.encode) read; soft masks and half-given coupled groups do not."""
    net, spec = net_and_spec
    masks = _mdp_layer_masks(spec, None)
    for proto in (0, 2):
        (tmp_path / f"p{proto}.pkl").write_bytes(pickle.dumps({k: v.numpy() for k, v in masks.items()}, protocol=proto))
        assert len(read_mask_file(tmp_path / f"p{proto}.pkl").masks) == len(masks)
    (tmp_path / "soft.pkl").write_bytes(pickle.dumps({"conv1": torch.full((64,), 0.7)}))
    with pytest.raises(LatlabError, match="holds 0.7; a mask keeps"):
        read_mask_file(tmp_path / "soft.pkl")
    (tmp_path / "part.pkl").write_bytes(pickle.dumps({"conv1": _half(64)}))  # its coupled layer1 convs missing
    with pytest.raises(LatlabError, match="prunes conv1 but has no mask for layer1.0.conv2"):
        masks_for_model(read_mask_file(tmp_path / "part.pkl"), net, spec)


def test_measure_cli_with_mdp_mask_and_module_prefixed_checkpoint(tmp_path, cli, net_and_spec):
    net, spec = net_and_spec
    (tmp_path / "layer_masks.pkl").write_bytes(pickle.dumps(_mdp_layer_masks(spec, "layer3.1")))
    ckpt = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}
    torch.save(ckpt, tmp_path / "ckpt.pth")
    db = f"sqlite:///{tmp_path / 'm.db'}"
    for argv in (["profile", "--model", "resnet18", "--backend", "fake", "--grid", "full:32", "--input-size",
                  str(SIZE), "--batch", "1", "--op", "conv_bn_relu", "-q", "--db", db],  # priced at its own op
                 ["fit", "--models", "mdlm", "--name", "r18-mdlm", "--db", db]):
        code, out, err = cli(argv)
        assert code == 0, err
    code, out, err = cli(["measure", "--model", "resnet18", "--num-classes", "10", "--weights",
                          str(tmp_path / "ckpt.pth"), "--mask", str(tmp_path / "layer_masks.pkl"), "--mgp",
                          "--input-size", str(SIZE), "--backend", "cpu", "--warmup", "1", "--repeats", "3",
                          "--threads", "1", "--latency-model", "r18-mdlm", "--format", "json", "--db", db])
    assert code == 0, err
    assert "mask:layer_masks.pkl" in out and "predicted_conv_ms[r18-mdlm]" in out
    from sqlalchemy import select

    from db import open_database
    from db.models import ModelMeasurement

    with open_database(db).session() as session:
        row = session.scalars(select(ModelMeasurement)).one()
    assert row.variant == "mask:layer_masks.pkl" and row.details["predicted_conv_ms"]["r18-mdlm"] > 0
    digest = hashlib.sha256((tmp_path / "layer_masks.pkl").read_bytes()).hexdigest()
    assert row.details["mask"]["sha256"] == digest and row.details["input_size"] == SIZE
    code, out, err = cli(["measure", "--model", "resnet18", "--num-classes", "10", "--input-size", str(SIZE),
                          "--backend", "fake", "--batch", "8", "--latency-model", "r18-mdlm", "--db", db])
    assert code == 1 and "'r18-mdlm' was fitted on batch 1 fp32 nchw (conv_bn_relu) rows" in err, err
    assert "measure with --batch 1 --dtype fp32 --layout nchw" in err
    torch.save(net, tmp_path / "whole.pth")  # a whole-model pickle: refused without --trust-checkpoint
    code, out, err = cli(["measure", "--model", "resnet18", "--num-classes", "10", "--weights",
                          str(tmp_path / "whole.pth"), "--backend", "cpu", "--no-store"])
    assert code != 0 and "--trust-checkpoint" in out + err
