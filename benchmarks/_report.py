"""Shared by the benchmarks: the machine a result was measured on, and writing its JSON + Markdown."""

from __future__ import annotations

import json
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

from db.engine import hide_password
from profiler.hardware import detect_hardware


def machine(backend: str = "cpu") -> dict[str, Any]:
    """The device of ``backend`` and its host as the results record them (name, CPU cores / threads, GPU
    driver and cuDNN where there is one, torch and Python versions)."""
    hw = detect_hardware(backend)
    out = {"device": hw.name, "cpu_model": hw.cpu_model, "cores": hw.cpu_cores, "threads": hw.cpu_threads,
           "torch": hw.torch_version, "python": platform.python_version()}
    if hw.kind == "cuda":
        out.update(driver=hw.driver_version, cuda=hw.cuda_version, cudnn=hw.cudnn_version)
    return out


def command_line(benchmark: str, argv: list[str] | None = None) -> str:
    """``python -m benchmarks.<benchmark> ARGS`` as a shell would take it back (empty and spaced args quoted)."""
    return shlex.join(["python", "-m", f"benchmarks.{benchmark}",
                       *(hide_password(a) for a in (argv if argv is not None else sys.argv[1:]))])


def result_header(benchmark: str, argv: list[str] | None, backend: str = "cpu") -> dict[str, Any]:
    """The first keys of a result: benchmark name, backend, the command that ran it and the machine."""
    return {"benchmark": benchmark, "backend": backend, "command": command_line(benchmark, argv),
            "machine": machine(backend)}


def machine_line(machine: dict[str, Any]) -> str:
    """``Machine: NAME, C cores / T threads, torch V`` (plus driver / CUDA / cuDNN on a GPU) for a Markdown
    header."""
    m = machine
    gpu = f", driver {m['driver']}, CUDA {m['cuda']}, cuDNN {m['cudnn']}" if "driver" in m else ""
    return f"Machine: {m['device']}, {m['cores']} cores / {m['threads']} threads{gpu}, torch {m['torch']}"


def write_result(out: Path, result: dict[str, Any], markdown: list[str]) -> None:
    """``out``.json and ``out``.md (``out`` without extension); the Markdown is printed too."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text("\n".join(markdown) + "\n")
    print("\n".join(markdown))
