"""Shared by the CPU benchmarks: the machine a result was measured on, and writing its JSON + Markdown."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

from profiler.hardware import detect_hardware


def cpu_machine() -> dict[str, Any]:
    """This host's CPU as the results record it (name, model, cores / threads, torch and Python versions)."""
    hw = detect_hardware("cpu")
    return {"device": hw.name, "cpu_model": hw.cpu_model, "cores": hw.cpu_cores, "threads": hw.cpu_threads,
            "torch": hw.torch_version, "python": platform.python_version()}


def result_header(benchmark: str, argv: list[str] | None) -> dict[str, Any]:
    """The first keys of a result: benchmark name, backend, the command that ran it and the machine."""
    args = argv if argv is not None else sys.argv[1:]
    return {"benchmark": benchmark, "backend": "cpu",
            "command": " ".join(["python -m", f"benchmarks.{benchmark}", *args]), "machine": cpu_machine()}


def machine_line(machine: dict[str, Any]) -> str:
    """``Machine: NAME, C cores / T threads, torch V`` for a Markdown header."""
    m = machine
    return f"Machine: {m['device']}, {m['cores']} cores / {m['threads']} threads, torch {m['torch']}"


def write_result(out: Path, result: dict[str, Any], markdown: list[str]) -> None:
    """``out``.json and ``out``.md (``out`` without extension); the Markdown is printed too."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text("\n".join(markdown) + "\n")
    print("\n".join(markdown))
