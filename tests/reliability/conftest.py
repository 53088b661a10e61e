"""Fixtures of the fault-injection suite: the ResNet-50 reference plan, result lines, the helpers module."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest


def _load_helpers() -> ModuleType:
    spec = importlib.util.spec_from_file_location("reliability_helpers", Path(__file__).with_name("helpers.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def h() -> ModuleType:
    """The helpers module (worker subprocesses, row counts)."""
    return _load_helpers()


@pytest.fixture(scope="session")
def reference_plan(h: ModuleType):  # type: ignore[no-untyped-def]
    from profiler.plan import build_plan

    plan = build_plan("resnet50", "reference")
    assert len(plan) == h.N_REFERENCE
    return plan


@pytest.fixture
def figure() -> Callable[[str], None]:
    """Print a result line so `pytest -s` / `-rA` shows what each fault-injection test established."""
    def show(text: str) -> None:
        print(f"\n[reliability] {text}")

    return show
