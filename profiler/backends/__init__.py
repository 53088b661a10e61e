"""Timing backends behind one interface, reached by name: ``get_backend("cuda" | "cpu" | "fake")``.

Built-in backends are imported lazily, so ``import profiler`` never initialises CUDA.
"""

from __future__ import annotations

import importlib
from dataclasses import replace
from typing import Any

from db.errors import LatlabError
from profiler.backends.base import Backend, BackendUnavailableError, MeasurementFailed, TimingResult
from profiler.protocol import TimingProtocol

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "MeasurementFailed",
    "TimingResult",
    "get_backend",
    "list_backends",
    "register_backend",
    "with_protocol",
]

_BUILTIN: dict[str, str] = {
    "cuda": "profiler.backends.cuda:CudaBackend",
    "cpu": "profiler.backends.cpu:CpuBackend",
    "fake": "profiler.backends.fake:FakeBackend",
}
_REGISTERED: dict[str, type[Backend]] = {}


def register_backend(name: str, cls: type[Backend]) -> type[Backend]:
    """Add a backend class under ``name``; registering a taken name raises."""
    if name in _BUILTIN or name in _REGISTERED:
        raise LatlabError(f"a profiler backend named {name!r} is already registered")
    _REGISTERED[name] = cls
    return cls


def list_backends() -> list[str]:
    """The timing backend names (built-ins and registered ones), sorted."""
    return sorted({*_BUILTIN, *_REGISTERED})


def get_backend(name: str, protocol: TimingProtocol | None = None, **options: Any) -> Backend:
    """Instantiate backend ``name``; unknown names and unusable backends raise with the reason."""
    if name in _REGISTERED:
        cls = _REGISTERED[name]
    elif name in _BUILTIN:
        module, _, attr = _BUILTIN[name].partition(":")
        cls = getattr(importlib.import_module(module), attr)
    else:
        raise LatlabError(f"unknown profiler backend {name!r}; choose from {', '.join(list_backends())}")
    return cls(protocol, **options)


def with_protocol(backend: Backend, **changes: Any) -> Backend:
    """``backend`` itself when ``changes`` leave its protocol as it is, else a new backend of the same name
    under the changed protocol (constructor options of the original are not carried over)."""
    protocol = replace(backend.protocol, **changes)
    return backend if protocol == backend.protocol else get_backend(backend.name, protocol)
