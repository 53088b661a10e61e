"""Hardware detection: CPU facts here, CUDA refusal without a GPU, NVML absent/failing/working."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterator

import pytest
import torch

from db.errors import LatlabError
from profiler import hardware
from profiler.backends.base import BackendUnavailableError
from profiler.hardware import (
    HardwareInfo,
    decode_throttle_reasons,
    detect_hardware,
    gpu_telemetry,
)

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks behaviour without a GPU")


@pytest.fixture(autouse=True)
def _fresh_nvml() -> Iterator[None]:
    hardware._reset_nvml()
    yield
    hardware._reset_nvml()


def test_detect_cpu_fields() -> None:
    info = detect_hardware("cpu")
    assert isinstance(info, HardwareInfo)
    assert info.kind == "cpu"
    assert info.cpu_model and info.cpu_model in info.name
    assert info.cpu_threads and info.cpu_threads >= 1
    assert info.cpu_cores and 1 <= info.cpu_cores <= info.cpu_threads
    assert info.memory_mb and info.memory_mb > 0
    assert info.torch_version == torch.__version__
    assert info.python_version and info.hostname
    assert info.gpu_uuid is None and info.sm_count is None
    d = info.to_dict()
    assert d["fingerprint"] == info.fingerprint and len(info.fingerprint) == 16


def test_cpu_fingerprint_stable() -> None:
    assert detect_hardware("cpu").fingerprint == detect_hardware("cpu").fingerprint


def test_fingerprint_ignores_telemetry_like_fields() -> None:
    a = detect_hardware("cpu")
    b = detect_hardware("cpu")
    b.memory_mb = (b.memory_mb or 0) + 1
    b.notes.append("something")
    assert a.fingerprint == b.fingerprint


def test_cpu_model_falls_back_to_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_file(*args: object, **kwargs: object) -> None:
        raise OSError("no /proc here")

    monkeypatch.setattr("builtins.open", no_file)
    monkeypatch.setattr(hardware.platform, "processor", lambda: "Imaginary CPU 9000")
    assert hardware._cpu_model() == "Imaginary CPU 9000"


@no_gpu
def test_cuda_kind_raises_without_gpu() -> None:
    with pytest.raises(BackendUnavailableError) as err:
        detect_hardware("cuda")
    msg = str(err.value)
    assert "torch.cuda.is_available() is False" in msg
    assert "\n" not in msg


def test_unknown_kind() -> None:
    with pytest.raises(LatlabError, match="unknown hardware kind"):
        detect_hardware("tpu")


def test_fake_kind_names_synthetic_gpu() -> None:
    info = detect_hardware("fake")
    assert info.kind == "fake"
    assert info.name.startswith("latlab-fake-gpu")
    assert "TFLOP/s" in info.name and "GB/s" in info.name and "80 SMs" in info.name
    assert info.sm_count == 80
    assert info.cpu_model and info.torch_version
    assert any("synthetic" in n for n in info.notes)
    assert detect_hardware("fake").fingerprint == info.fingerprint


def test_fake_hardware_parameters_change_fingerprint() -> None:
    assert hardware.fake_hardware(bandwidth_gbs=900.0).fingerprint != detect_hardware("fake").fingerprint


@no_gpu
def test_gpu_telemetry_empty_here() -> None:
    assert gpu_telemetry() == {}
    assert gpu_telemetry(3) == {}


# ------------------------------------------------------------------------------- simulated NVML


class _FakeNVMLError(Exception):
    pass


def _fake_pynvml(*, init_error: Exception | None = None, fail_reads: bool = False) -> types.ModuleType:
    mod = types.ModuleType("pynvml")
    mod.NVMLError = _FakeNVMLError  # type: ignore[attr-defined]
    mod.NVML_CLOCK_SM = 1  # type: ignore[attr-defined]
    mod.NVML_CLOCK_MEM = 2  # type: ignore[attr-defined]
    mod.NVML_TEMPERATURE_GPU = 0  # type: ignore[attr-defined]
    calls = {"init": 0}

    def init() -> None:
        calls["init"] += 1
        if init_error is not None:
            raise init_error

    def read(value: object) -> Callable[..., object]:
        def reader(*args: object) -> object:
            if fail_reads:
                raise _FakeNVMLError("Not Supported")
            return value

        return reader

    def clock(handle: object, kind: int) -> int:
        if fail_reads:
            raise _FakeNVMLError("Not Supported")
        return {1: 1755, 2: 2619}[kind]

    mod.calls = calls  # type: ignore[attr-defined]
    mod.nvmlInit = init  # type: ignore[attr-defined]
    mod.nvmlDeviceGetHandleByIndex = lambda i: ("handle", i)  # type: ignore[attr-defined]
    mod.nvmlDeviceGetClockInfo = clock  # type: ignore[attr-defined]
    mod.nvmlDeviceGetTemperature = read(41)  # type: ignore[attr-defined]
    mod.nvmlDeviceGetPowerUsage = read(123456)  # type: ignore[attr-defined]
    mod.nvmlDeviceGetCurrentClocksEventReasons = read(0x4 | 0x40)  # type: ignore[attr-defined]
    return mod


def test_telemetry_with_working_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml())
    tel = gpu_telemetry(0)
    assert tel == {
        "sm_clock_mhz": 1755,
        "mem_clock_mhz": 2619,
        "temperature_c": 41,
        "power_w": 123.5,
        "throttle_reasons": 0x44,
        "throttle": "sw_power_cap|hw_thermal",
    }


def test_telemetry_nvml_init_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_pynvml(init_error=_FakeNVMLError("Driver Not Loaded"))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert gpu_telemetry() == {}
    assert gpu_telemetry() == {}
    assert fake.calls["init"] == 1  # the failure is cached, NVML is not retried per config


def test_telemetry_nvml_reads_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(fail_reads=True))
    assert gpu_telemetry() == {}


def test_telemetry_nvml_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    assert gpu_telemetry() == {}
    assert "not installed" in str(hardware._nvml_state)


def test_real_pynvml_failure_is_a_note_not_a_traceback() -> None:
    pynvml, reason = hardware._nvml()
    if pynvml is not None:
        pytest.skip("NVML works on this machine")
    assert reason and reason.startswith("NVML unavailable")
    assert "Traceback" not in reason


def test_cuda_info_notes_nvml_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a (simulated) GPU but no NVML, detect_hardware('cuda') explains it in notes."""
    props = types.SimpleNamespace(name="Simulated GPU", multi_processor_count=132, total_memory=80 * 2**30,
                                  major=9, minor=0, uuid="1234-abcd")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setitem(sys.modules, "pynvml",
                        _fake_pynvml(init_error=_FakeNVMLError("NVML Shared Library Not Found")))
    info = detect_hardware("cuda")
    assert info.kind == "cuda" and info.name == "Simulated GPU"
    assert info.sm_count == 132 and info.compute_capability == "9.0"
    assert info.gpu_uuid == "GPU-1234-abcd"
    assert info.driver_version is None
    assert any("NVML unavailable" in n and "Library Not Found" in n for n in info.notes)


def test_decode_throttle_reasons() -> None:
    assert decode_throttle_reasons(0) == "none"
    assert decode_throttle_reasons(0x1) == "gpu_idle"
    assert decode_throttle_reasons(0x4 | 0x20) == "sw_power_cap|sw_thermal"
    assert decode_throttle_reasons(0x10000) == "0x10000"
