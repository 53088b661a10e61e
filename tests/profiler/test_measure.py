"""Whole-network timing: model loading (safe weights, TorchScript), MACs, and the stored row."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from sqlalchemy import select

from db import LatlabError, open_database
from db.models import ModelMeasurement
from profiler.backends.base import MeasurementFailed, TimingResult
from profiler.backends.fake import FakeBackend
from profiler.measure import (
    count_params_and_macs,
    load_model,
    load_state_dict,
    measure_model,
    measure_models_interleaved,
    paired_speedup,
    program_labels,
    save_program,
)
from profiler.protocol import TimingProtocol


def test_state_dict_with_ddp_prefix_and_wrapper(tmp_path: Path) -> None:
    net = torchvision.models.resnet18(num_classes=10)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "ckpt.pth")
    name, loaded = load_model("resnet18", weights=tmp_path / "ckpt.pth", num_classes=10)
    assert name == "resnet18" and not loaded.training
    assert torch.equal(loaded.conv1.weight, net.conv1.weight)


def test_mismatched_weights_name_the_keys(tmp_path: Path) -> None:
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(LatlabError, match=r"do not match resnet34: \d+ missing keys \(e\.g\. layer"):
        load_model("resnet34", weights=tmp_path / "r18.pth", num_classes=10)
    with pytest.raises(LatlabError, match=r"do not match resnet18: 2 tensors of another shape \(size mismatch for fc"):
        load_model("resnet18", weights=tmp_path / "r18.pth", num_classes=1000)


def test_unsafe_or_bogus_weight_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(LatlabError, match="cannot load weights"):
        load_state_dict(tmp_path / "junk.pth")
    torch.save({"a": 1}, tmp_path / "notensors.pth")
    with pytest.raises(LatlabError, match="not a state dict"):
        load_state_dict(tmp_path / "notensors.pth")
    with pytest.raises(LatlabError, match="does not exist"):
        load_state_dict(tmp_path / "missing.pth")


def test_torchscript_module_file(tmp_path: Path) -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
    torch.jit.script(net).save(str(tmp_path / "m.pt"))
    name, loaded = load_model(module_file=tmp_path / "m.pt")
    assert name == "m"
    with pytest.raises(LatlabError, match="either a model name .* or a saved module"):
        load_model("resnet18", module_file=tmp_path / "m.pt")
    (tmp_path / "bad.pt").write_bytes(b"zzz")
    with pytest.raises(LatlabError, match="cannot load"):
        load_model(module_file=tmp_path / "bad.pt")
    (tmp_path / "slim.onnx").write_bytes(b"zzz")
    with pytest.raises(LatlabError, match="is ONNX: --module takes TorchScript"):
        load_model(module_file=tmp_path / "slim.onnx")


def test_exported_program_file(tmp_path: Path) -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()).eval()
    x = torch.randn(1, 3, 16, 16)
    torch.export.save(torch.export.export(net, (x,)), str(tmp_path / "m.pt2"))
    name, loaded = load_model(module_file=tmp_path / "m.pt2")
    assert name == "m" and torch.allclose(loaded(x), net(x)) and program_labels(tmp_path / "m.pt2") == {}


def test_labelled_program_names_its_source_network(tmp_path: Path) -> None:
    """A pt2 latlab wrote is stored under the network it was pruned from, whatever the file is called."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()).eval()
    program = torch.export.export(net, (torch.randn(1, 3, 16, 16),))
    save_program(program, tmp_path / "pruned.pt2", model="resnet50", variant="halp50")
    assert program_labels(tmp_path / "pruned.pt2") == {"model": "resnet50", "variant": "halp50"}
    assert load_model(module_file=tmp_path / "pruned.pt2")[0] == "resnet50"
    (tmp_path / "junk.pt2").write_bytes(b"zzz")
    assert program_labels(tmp_path / "junk.pt2") == program_labels(tmp_path / "missing.pt2") == {}


def test_macs_of_resnet18() -> None:
    counts = count_params_and_macs(torchvision.models.resnet18(), (1, 3, 224, 224))
    assert counts["params"] == 11_689_512
    assert abs(counts["macs_per_image"] / 1e9 - 1.814) < 0.005  # the well-known 1.82 GMACs


def test_macs_of_saved_modules_and_train_mode_kept() -> None:
    """torch.export and TorchScript modules (no nn.Conv2d to hook) count the same MACs; the mode is restored."""
    net = torchvision.models.resnet18(num_classes=10).train()
    dense = count_params_and_macs(net, (1, 3, 64, 64))
    assert net.training
    program = torch.export.export(net.eval(), (torch.zeros(1, 3, 64, 64),))
    scripted = torch.jit.trace(net, torch.zeros(1, 3, 64, 64))
    for saved in (program.module(), scripted):
        assert count_params_and_macs(saved, (1, 3, 64, 64)) == dense


def test_measure_model_stores_a_row(tmp_path: Path) -> None:
    database = open_database(tmp_path / "m.db")
    net = torchvision.models.resnet18(num_classes=10).eval()
    backend = FakeBackend(TimingProtocol(repeats=7))
    result = measure_model(database, backend, net, name="resnet18", variant="dense", input_shape=(4, 3, 64, 64))
    assert result.status == "ok" and result.n == 7 and result.median_ms > 0
    assert result.images_per_s == pytest.approx(4 * 1000 / result.median_ms)
    with database.session() as s:
        row = s.scalars(select(ModelMeasurement)).one()
        assert (row.model_name, row.batch, row.input_h, row.backend) == ("resnet18", 4, 64, "fake")
        assert row.protocol["repeats"] == 7 and row.details["params"] > 0
        assert row.hardware.kind == "fake"
    with pytest.raises(LatlabError, match="input shape"):
        measure_model(None, backend, net, name="x", input_shape=(4, 3, 64))


def test_fake_backend_prices_a_saved_program_like_its_module(tmp_path: Path) -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()).eval()
    torch.export.save(torch.export.export(net, (torch.randn(1, 3, 16, 16),)), str(tmp_path / "m.pt2"))
    _, loaded = load_model(module_file=tmp_path / "m.pt2")
    result = measure_model(None, FakeBackend(), loaded, name="m", input_shape=(1, 3, 16, 16))
    assert result.status == "ok" and result.median_ms == measure_model(
        None, FakeBackend(), net, name="m", input_shape=(1, 3, 16, 16)).median_ms


def test_truncated_or_corrupted_programs_are_refused_in_one_line(tmp_path: Path) -> None:
    from profiler.measure import load_program

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3), torch.nn.ReLU()).eval()
    good = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(net, (torch.randn(1, 3, 16, 16),)), str(good))
    data = good.read_bytes()
    (tmp_path / "cut.pt2").write_bytes(data[: len(data) // 2])
    weight = data.index(net[0].weight.detach().numpy().tobytes()[:64])  # flip bytes inside the stored weight
    (tmp_path / "flip.pt2").write_bytes(data[:weight] + bytes(b ^ 0xFF for b in data[weight:weight + 64])
                                        + data[weight + 64:])
    for name, message in (("cut.pt2", "cut.pt2 is truncated or corrupt"), ("flip.pt2", "fails the archive's CRC")):
        for load in (lambda p: load_model(module_file=p), load_program):
            with pytest.raises(LatlabError, match=message):
                load(tmp_path / name)


class DriftingBackend(FakeBackend):
    """The fake backend on a host that slows down steadily (10% more per call), as busy VMs do."""

    def __init__(self, fail: torch.nn.Module | None = None) -> None:
        super().__init__(TimingProtocol(repeats=5))
        self.calls: list[int] = []
        self.fail = fail

    def measure_model(self, model, input_shape, dtype="fp32", layout="nchw"):  # type: ignore[no-untyped-def]
        if model is self.fail:
            raise MeasurementFailed("out of memory (injected)", "oom")
        self.calls.append(id(model))
        slow = 1.0 + 0.1 * len(self.calls)
        result = super().measure_model(model, input_shape, dtype, layout)
        return TimingResult([x * slow for x in result.samples_ms], result.telemetry)


def test_interleaved_rounds_cancel_host_drift(tmp_path: Path) -> None:
    dense = torchvision.models.resnet34(num_classes=10).eval()
    slim = torchvision.models.resnet18(num_classes=10).eval()
    shape = (2, 3, 64, 64)
    truth = FakeBackend().model_latency_ms(dense, shape) / FakeBackend().model_latency_ms(slim, shape)
    assert truth > 1.4

    sequential = DriftingBackend()
    one_after_other = sequential.measure_model(dense, shape).median_ms / sequential.measure_model(slim, shape).median_ms
    assert abs(one_after_other / truth - 1) > 0.08  # the drift shows up as a speed-up error

    database = open_database(tmp_path / "m.db")
    backend = DriftingBackend()
    timed = measure_models_interleaved(database, backend, {"dense": dense, "slim": slim}, name="resnet18",
                                       rounds=6, input_shape=shape, extra_details={"slim": {"top1": 50.0}})
    assert backend.calls == [id(dense), id(slim), id(slim), id(dense)] * 3  # A B, B A, ...
    assert paired_speedup(timed["dense"], timed["slim"]) == pytest.approx(truth, rel=0.03)
    assert timed["slim"].n == 30 and len(timed["slim"].round_ms) == 6
    with database.session() as s:
        rows = {r.variant: r for r in s.scalars(select(ModelMeasurement))}
    assert set(rows) == {"dense", "slim"} and rows["slim"].details["top1"] == 50.0
    assert rows["dense"].protocol["interleaved"] == {"rounds": 6, "variants": ["dense", "slim"]}
    assert len(rows["dense"].details["round_median_ms"]) == 6


def test_interleaved_failure_is_recorded_and_the_rest_goes_on(tmp_path: Path) -> None:
    dense = torchvision.models.resnet18(num_classes=10).eval()
    broken = torchvision.models.resnet18(num_classes=10).eval()
    database = open_database(tmp_path / "m.db")
    timed = measure_models_interleaved(database, DriftingBackend(fail=broken), {"dense": dense, "big": broken},
                                       name="resnet18", rounds=3, input_shape=(1, 3, 32, 32))
    assert timed["dense"].status == "ok" and timed["dense"].n == 15
    assert timed["big"].status == "oom" and timed["big"].median_ms is None
    assert paired_speedup(timed["dense"], timed["big"]) is None
    with database.session() as s:
        assert {r.variant: r.status for r in s.scalars(select(ModelMeasurement))} == {"dense": "ok", "big": "oom"}
    with pytest.raises(LatlabError, match="rounds"):
        measure_models_interleaved(None, FakeBackend(), {"dense": dense}, name="x", rounds=0)
