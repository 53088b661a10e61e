"""``latlab hw``: describe the hardware a backend would measure on."""

from __future__ import annotations

from typing import Annotated

import typer

from latlab.cli._options import FormatOption, GpuOption, echo_rows, gpu_options


def hw(
    backend: Annotated[str, typer.Option(help="cuda | cpu | fake")] = "cpu",
    gpu: GpuOption = None,
    fmt: FormatOption = "table",
) -> None:
    """Show the device, host and software versions that a sweep would record, and its fingerprint.

    The fingerprint hashes what identifies a hardware profile (device and its UUID, driver, CUDA, cuDNN, CPU
    model and cores, torch version); sweeps with the same fingerprint share one profile, and --hardware
    accepts its prefix. Clocks and temperatures are telemetry, recorded beside every measurement.

    Examples:

        latlab hw                          # this CPU
        latlab hw --backend cuda           # GPU 0 via NVML and torch
        latlab hw --backend cuda --gpu 1   # the second visible GPU
    """
    from profiler.hardware import detect_hardware, gpu_telemetry
    device = gpu_options(backend, gpu).get("device_index", 0)
    info = detect_hardware(backend, device_index=device).to_dict()
    if backend == "cuda":
        info.update({f"now_{k}": v for k, v in gpu_telemetry(device).items()})
    notes = info.pop("notes", [])
    rows = [{"field": k, "value": v} for k, v in info.items() if v not in (None, "")]
    rows += [{"field": "note", "value": n} for n in notes]
    echo_rows(rows, fmt, title=f"hardware ({backend})")
