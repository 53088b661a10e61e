"""`--gpu` of `latlab profile`, `measure` and `hw`: CUDA only, an index >= 0, handed to the CUDA backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from profiler import backends
from profiler.backends.fake import FakeBackend
from profiler.protocol import TimingProtocol

SMALL = ["--model", "resnet18", "--input-size", "32"]


def _with_db(argv: list[str], db: Path) -> list[str]:
    return argv if argv[0] == "hw" else [*argv, "--db", str(db)]


@pytest.mark.parametrize("argv", [
    ["profile", *SMALL, "--backend", "cpu", "--gpu", "1"],
    ["profile", *SMALL, "--backend", "fake", "--gpu", "0", "--dry-run"],
    ["measure", *SMALL, "--backend", "cpu", "--gpu", "0"],
    ["measure", *SMALL, "--backend", "fake", "--gpu", "1"],
    ["hw", "--backend", "cpu", "--gpu", "1"],
    ["hw", "--backend", "fake", "--gpu", "0"],
], ids=" ".join)
def test_gpu_with_another_backend_is_refused_before_any_work(tmp_path: Path, cli, argv: list[str]) -> None:
    code, out, err = cli(_with_db(argv, tmp_path / "never.db"))
    backend = argv[argv.index("--backend") + 1]
    assert code == 1 and not out, (out, err)
    assert err == f"latlab: error: --gpu only applies to --backend cuda, not --backend {backend}\n"
    assert not (tmp_path / "never.db").exists()


@pytest.mark.parametrize("command", [["profile", *SMALL], ["measure", *SMALL], ["hw"]], ids=" ".join)
def test_a_negative_gpu_index_is_refused(tmp_path: Path, cli, command: list[str]) -> None:
    code, out, err = cli(_with_db([*command, "--backend", "cuda", "--gpu", "-1"], tmp_path / "never.db"))
    assert code == 2 and not out
    assert err.startswith("latlab: error: Invalid value for '--gpu'") and err.count("\n") == 1, err


class _RecordingCuda(FakeBackend):
    """The fake backend standing in for ``cuda``: records the device index it was built with."""

    built: ClassVar[list[int]] = []

    def __init__(self, protocol: TimingProtocol | None = None, device_index: int = 0, **options: Any) -> None:
        super().__init__(protocol, **options)
        self.built.append(device_index)


@pytest.fixture
def recording_cuda(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """``--backend cuda`` builds a :class:`_RecordingCuda`; returns the device indices it was built with."""
    monkeypatch.setitem(backends._REGISTERED, "cuda", _RecordingCuda)
    monkeypatch.setattr(_RecordingCuda, "built", [])
    return _RecordingCuda.built


def test_profile_and_measure_hand_the_index_to_the_cuda_backend(tmp_path: Path, cli,
                                                                recording_cuda: list[int]) -> None:
    db = str(tmp_path / "gpu.db")
    code, _, err = cli(["profile", *SMALL, "--backend", "cuda", "--gpu", "3", "--grid", "random:1", "--batch", "1",
                        "--max-configs", "2", "-q", "--db", db])
    assert code == 0, err
    code, _, err = cli(["measure", *SMALL, "--num-classes", "10", "--backend", "cuda", "--gpu", "2", "--warmup",
                        "1", "--repeats", "2", "--no-store"])
    assert code == 0, err
    code, _, err = cli(["measure", *SMALL, "--num-classes", "10", "--backend", "cuda", "--warmup", "1", "--repeats",
                        "2", "--no-store"])
    assert code == 0, err
    assert recording_cuda == [3, 2, 0]  # without --gpu: the backend's own default, the first visible GPU


def test_hw_reads_the_chosen_gpu(monkeypatch: pytest.MonkeyPatch, cli) -> None:
    from profiler import hardware

    asked: list[tuple[str, int]] = []

    def detect(kind: str = "cpu", device_index: int = 0) -> hardware.HardwareInfo:
        asked.append(("detect", device_index))
        return hardware.HardwareInfo(kind=kind, name="GPU under test")

    def telemetry(device_index: int = 0) -> dict[str, Any]:
        asked.append(("telemetry", device_index))
        return {"sm_clock_mhz": 1980}

    monkeypatch.setattr(hardware, "detect_hardware", detect)
    monkeypatch.setattr(hardware, "gpu_telemetry", telemetry)
    code, out, err = cli(["hw", "--backend", "cuda", "--gpu", "1", "-f", "json"])
    assert code == 0, err
    assert asked == [("detect", 1), ("telemetry", 1)]
    assert {"field": "now_sm_clock_mhz", "value": 1980} in json.loads(out)


@pytest.mark.gpu
def test_hw_on_gpu_0(cli) -> None:
    code, out, err = cli(["hw", "--backend", "cuda", "--gpu", "0", "-f", "json"])
    assert code == 0, err
    fields = {row["field"]: row["value"] for row in json.loads(out)}
    assert fields["kind"] == "cuda" and fields["name"] == torch.cuda.get_device_name(0) and fields["fingerprint"]
    beyond = torch.cuda.device_count()
    code, _, err = cli(["hw", "--backend", "cuda", "--gpu", str(beyond)])
    assert code == 1 and f"no CUDA device {beyond}" in err, err
