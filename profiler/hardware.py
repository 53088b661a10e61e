"""Describe the machine a latency was measured on (GPU via pynvml + torch, CPU via psutil).

Nothing here initialises CUDA at import time; ``torch`` and ``pynvml`` are imported lazily.
GPU presence is decided by ``torch.cuda.is_available()`` only (``torch.backends.cudnn.is_available()``
is True on a CUDA build of torch even without a GPU).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import platform
import socket
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

logger = logging.getLogger(__name__)

# Fields that identify *which* device and software stack produced a number. Two sweeps whose
# fingerprints match share one ``hardware`` row. Clocks and temperatures are telemetry, not identity.
_IDENTITY_FIELDS = (
    "kind", "name", "gpu_uuid", "driver_version", "cuda_version", "cudnn_version",
    "cpu_model", "cpu_cores", "torch_version",
)


@dataclass
class HardwareInfo:
    """One hardware profile: device, host and software versions."""

    kind: str  # "cuda" | "cpu" | "fake" | "imported"
    name: str  # e.g. "NVIDIA H100 80GB HBM3", "AMD EPYC 7B13 (2 threads)"
    gpu_uuid: str | None = None
    driver_version: str | None = None
    cuda_version: str | None = None
    cudnn_version: str | None = None
    sm_count: int | None = None
    gpu_memory_mb: int | None = None
    sm_clock_max_mhz: int | None = None
    mem_clock_max_mhz: int | None = None
    compute_capability: str | None = None
    cpu_model: str | None = None
    cpu_cores: int | None = None
    cpu_threads: int | None = None
    memory_mb: int | None = None
    torch_version: str | None = None
    torchvision_version: str | None = None
    python_version: str | None = None
    hostname: str | None = None
    notes: list[str] = field(default_factory=list)  # why a field is missing (e.g. "NVML not found")

    @property
    def fingerprint(self) -> str:
        return _fingerprint({k: getattr(self, k) for k in _IDENTITY_FIELDS})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fingerprint"] = self.fingerprint
        return d


# --------------------------------------------------------------------------------------------- NVML

# NVML "clocks event" (formerly "throttle") reason bits, decoded for humans.
_THROTTLE_BITS: tuple[tuple[int, str], ...] = (
    (0x1, "gpu_idle"),
    (0x2, "app_clocks"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal"),
    (0x40, "hw_thermal"),
    (0x80, "hw_power_brake"),
    (0x100, "display_clocks"),
)

# None: not tried yet; True: initialised; str: why NVML is unusable (cached so we try once).
_nvml_state: bool | str | None = None


def _fingerprint(ident: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def named(info: dict[str, Any], name: str) -> dict[str, Any]:
    """``info`` (a :meth:`HardwareInfo.to_dict`) under the profile name ``name``, which then identifies it in
    place of the GPU's UUID: identical boxes given one name (a fleet) share one profile and one sweep."""
    ident = {k: info.get(k) for k in _IDENTITY_FIELDS if k != "gpu_uuid"}
    ident |= {"name": name, "device": info.get("name")}  # the device model still counts, under its new name
    return {**info, "name": name, "fingerprint": _fingerprint(ident)}


def _reset_nvml() -> None:
    """Forget the cached NVML state (tests use this after monkeypatching ``pynvml``)."""
    global _nvml_state
    _nvml_state = None


def _nvml() -> tuple[Any | None, str | None]:
    """Return ``(pynvml, None)`` with NVML initialised, or ``(None, reason)``."""
    global _nvml_state
    if _nvml_state is True:
        return importlib.import_module("pynvml"), None
    if isinstance(_nvml_state, str):
        return None, _nvml_state
    try:
        pynvml = importlib.import_module("pynvml")
    except ImportError:
        _nvml_state = "NVML unavailable: the nvidia-ml-py package (module pynvml) is not installed"
        return None, _nvml_state
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        _nvml_state = f"NVML unavailable: {_text(exc) or type(exc).__name__}"
        return None, _nvml_state
    except OSError as exc:  # a broken libnvidia-ml can surface as OSError from ctypes
        _nvml_state = f"NVML unavailable: {exc}"
        return None, _nvml_state
    _nvml_state = True
    return pynvml, None


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def _nvml_handle(pynvml: Any, device_index: int) -> Any:
    """NVML handle of CUDA device ``device_index``: by UUID when torch knows it, else by index."""
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_initialized():
                uuid = str(torch.cuda.get_device_properties(device_index).uuid)
                uuid = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
                return pynvml.nvmlDeviceGetHandleByUUID(uuid)
        except Exception:  # any failure: fall back to the index mapping below
            logger.debug("NVML lookup by UUID failed; using the device index", exc_info=True)
    index = device_index
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    parts = [p.strip() for p in visible.split(",") if p.strip()]
    if parts and all(p.isdigit() for p in parts) and device_index < len(parts):
        index = int(parts[device_index])
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def decode_throttle_reasons(mask: int) -> str:
    """Short text for an NVML clocks-event bitmask, e.g. ``"sw_power_cap|hw_thermal"`` or ``"none"``."""
    names = [name for bit, name in _THROTTLE_BITS if mask & bit]
    rest = mask & ~sum(bit for bit, _ in _THROTTLE_BITS)
    if rest:
        names.append(hex(rest))
    return "|".join(names) if names else "none"


def gpu_telemetry(device_index: int = 0) -> dict[str, Any]:
    """Current clocks, temperature, power and throttle reasons of a GPU; ``{}`` without NVML.

    Keys: ``sm_clock_mhz``, ``mem_clock_mhz``, ``temperature_c``, ``power_w``, ``throttle_reasons``
    (NVML bitmask) and ``throttle`` (decoded). A reading NVML refuses is left out.
    """
    pynvml, _ = _nvml()
    if pynvml is None:
        return {}
    try:
        handle = _nvml_handle(pynvml, device_index)
    except pynvml.NVMLError as exc:
        logger.debug("no NVML handle for device %d: %s", device_index, exc)
        return {}
    out: dict[str, Any] = {}
    readers: dict[str, Any] = {
        "sm_clock_mhz": lambda: int(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)),
        "mem_clock_mhz": lambda: int(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM)),
        "temperature_c": lambda: int(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)),
        "power_w": lambda: round(pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0, 1),
        "throttle_reasons": lambda: int(_throttle_reasons(pynvml, handle)),
    }
    for key, read in readers.items():
        try:
            out[key] = read()
        except (pynvml.NVMLError, AttributeError) as exc:
            logger.debug("NVML could not read %s: %s", key, exc)
    if "throttle_reasons" in out:
        out["throttle"] = decode_throttle_reasons(out["throttle_reasons"])
    return out


def _throttle_reasons(pynvml: Any, handle: Any) -> int:
    getter = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
    if getter is None:  # nvidia-ml-py before the "clocks event" rename
        getter = pynvml.nvmlDeviceGetCurrentClocksThrottleReasons
    return int(getter(handle))


# ------------------------------------------------------------------------------------------- host


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    if name:
                        return name
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _package_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _host_info(notes: list[str]) -> dict[str, Any]:
    """CPU, memory, software versions and hostname (shared by every kind)."""
    import torch

    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "torch_version": str(torch.__version__),
        "torchvision_version": _package_version("torchvision"),
        "python_version": platform.python_version(),
        "hostname": socket.gethostname() or platform.node() or None,
    }
    try:
        import psutil

        info["cpu_threads"] = psutil.cpu_count(logical=True)
        info["cpu_cores"] = psutil.cpu_count(logical=False) or info["cpu_threads"]
        info["memory_mb"] = int(psutil.virtual_memory().total // 2**20)
    except ImportError:
        notes.append("psutil not installed: CPU core counts from os.cpu_count(), memory unknown")
        info["cpu_threads"] = os.cpu_count()
        info["cpu_cores"] = os.cpu_count()
    if info["torchvision_version"] is None:
        notes.append("torchvision not installed")
    return info


def _cuda_info(device_index: int, notes: list[str]) -> dict[str, Any]:
    import torch

    from profiler.backends.base import BackendUnavailableError

    if not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"no CUDA GPU: torch.cuda.is_available() is False (torch {torch.__version__}, "
            f"built for CUDA {torch.version.cuda or 'none'}); use --backend cpu or --backend fake"
        )
    count = torch.cuda.device_count()
    if not 0 <= device_index < count:
        raise BackendUnavailableError(f"no CUDA device {device_index}: this machine has {count} visible")
    props = torch.cuda.get_device_properties(device_index)
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    info: dict[str, Any] = {
        "name": str(props.name),
        "sm_count": int(props.multi_processor_count),
        "gpu_memory_mb": int(props.total_memory // 2**20),
        "compute_capability": f"{props.major}.{props.minor}",
        "cuda_version": torch.version.cuda,
        "cudnn_version": str(cudnn) if cudnn is not None else None,
    }
    uuid = getattr(props, "uuid", None)
    if uuid is not None:
        text = str(uuid)
        info["gpu_uuid"] = text if text.startswith("GPU-") else f"GPU-{text}"
    if cudnn is None:
        notes.append("cuDNN unavailable in this torch build")

    pynvml, reason = _nvml()
    if pynvml is None:
        notes.append(f"{reason}; driver version and max clocks unknown")
        return info
    try:
        handle = _nvml_handle(pynvml, device_index)
        info["driver_version"] = _text(pynvml.nvmlSystemGetDriverVersion())
        info["gpu_uuid"] = _text(pynvml.nvmlDeviceGetUUID(handle))
        info["sm_clock_max_mhz"] = int(pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM))
        info["mem_clock_max_mhz"] = int(pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM))
    except pynvml.NVMLError as exc:
        notes.append(f"NVML query failed: {_text(exc) or type(exc).__name__}")
    return info


def fake_hardware(
    peak_tflops: float | None = None, bandwidth_gbs: float | None = None, sm_count: int | None = None,
    launch_us: float | None = None,
) -> HardwareInfo:
    """HardwareInfo of the fake backend's synthetic GPU (defaults: the FakeBackend defaults)."""
    from profiler.backends import fake

    peak = fake.DEFAULT_PEAK_TFLOPS if peak_tflops is None else peak_tflops
    bw = fake.DEFAULT_BANDWIDTH_GBS if bandwidth_gbs is None else bandwidth_gbs
    sms = fake.DEFAULT_SM_COUNT if sm_count is None else sm_count
    launch = fake.DEFAULT_LAUNCH_US if launch_us is None else launch_us
    notes: list[str] = []
    host = _host_info(notes)
    name = (
        f"latlab-fake-gpu (roofline {peak:g} TFLOP/s fp32, {peak * fake.HALF_SPEEDUP:g} fp16/bf16, "
        f"{bw:g} GB/s, {sms} SMs, launch {launch:g} us)"
    )
    notes.insert(0, "synthetic GPU of the fake backend: latencies come from an analytical model")
    return HardwareInfo(kind="fake", name=name, sm_count=sms, notes=notes, **host)


def detect_hardware(kind: str = "cpu", device_index: int = 0) -> HardwareInfo:
    """Describe the device for backend ``kind`` (``cuda``, ``cpu`` or ``fake``) and its host.

    ``cuda`` without a GPU raises :class:`~profiler.backends.base.BackendUnavailableError`; missing
    optional facts (NVML, psutil) are explained in ``notes`` instead of raising.
    """
    from db.errors import LatlabError

    if kind == "fake":
        return fake_hardware()
    notes: list[str] = []
    if kind == "cuda":
        gpu = _cuda_info(device_index, notes)
        host = _host_info(notes)
        return HardwareInfo(kind="cuda", notes=notes, **gpu, **host)
    if kind == "cpu":
        host = _host_info(notes)
        threads = host.get("cpu_threads")
        name = f"{host['cpu_model']} ({threads} threads)" if threads else str(host["cpu_model"])
        return HardwareInfo(kind="cpu", name=name, notes=notes, **host)
    raise LatlabError(f"unknown hardware kind {kind!r}; choose from cuda, cpu, fake")
