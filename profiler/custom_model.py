"""Your own network by reference: ``FILE.py:NAME`` or ``package.module:NAME`` wherever a model name is taken.

``NAME`` is an ``nn.Module`` subclass or a function returning one; it is called with no arguments, or with
``num_classes=`` when a class count is given and it takes that keyword (one that does not may only be asked
for 1000, the presets' value). ``NAME`` may be dotted (``nets.py:zoo.small``). A file path is relative to the
working directory. While the file runs and ``NAME`` is called, the file's folder and the working directory
are first on ``sys.path``, as ``python nets.py`` and ``python -m`` have them: the file may import the modules
beside it. This runs the file's code, as importing it in Python would: refer only to files you trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from db.errors import LatlabError

__all__ = ["build_custom_model", "is_custom_reference"]

_MODULE_NAME = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"


def is_custom_reference(name: str) -> bool:
    """True for ``FILE.py:NAME`` and ``package.module:NAME`` (``timm:NAME`` is not one)."""
    source, sep, attr = name.strip().rpartition(":")
    if not sep or not attr or source.lower() == "timm":
        return False
    return source.endswith(".py") or re.fullmatch(_MODULE_NAME, source) is not None


def build_custom_model(reference: str, num_classes: int | None = None) -> nn.Module:
    """The network ``reference`` (``FILE.py:NAME`` or ``package.module:NAME``) names, built; a clear
    :class:`LatlabError` when the file, module or name is missing, its code fails, or it is not an nn.Module."""
    source, _, attr = reference.strip().rpartition(":")
    folder = Path(source).expanduser().resolve().parent if source.endswith(".py") else None
    with _on_sys_path(folder, Path.cwd()):
        module = _load_file(source) if folder is not None else _import(source)
        return _build(reference, module, source, attr, num_classes)


def _build(reference: str, module: ModuleType, source: str, attr: str, num_classes: int | None) -> nn.Module:
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise LatlabError(f"{source} has no {attr!r}; {_candidates(module)}")
        target = getattr(target, part)
    if isinstance(target, nn.Module):
        raise LatlabError(f"{reference} is a module instance; name its class or a function that builds it")
    if not callable(target):
        raise LatlabError(f"{reference} is not an nn.Module class or a function (its type: {type(target).__name__})")
    kwargs = {"num_classes": num_classes} if num_classes is not None and _accepts(target, "num_classes") else {}
    if not kwargs and num_classes not in (None, 1000):
        raise LatlabError(f"{reference} takes no num_classes argument; drop --num-classes (or model.num_classes) "
                          "or give it one")
    try:
        built = target(**kwargs)
    except Exception as exc:
        raise LatlabError(f"building {reference} failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(built, nn.Module):
        raise LatlabError(f"{reference}() returned no nn.Module (its type: {type(built).__name__})")
    return built


def _load_file(source: str) -> ModuleType:
    path = Path(source).expanduser().resolve()
    if not path.is_file():
        raise LatlabError(f"no Python file {source} (from the working directory {Path.cwd()})")
    name = f"latlab_user_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:  # loaded once per process, like an import
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise LatlabError(f"cannot load {source} as Python code")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise LatlabError(f"running {source} failed: {type(exc).__name__}: {exc}") from None
    return module


@contextlib.contextmanager
def _on_sys_path(*folders: Path | None) -> Iterator[None]:
    """``folders`` first on ``sys.path`` for the duration (those already there stay where they are)."""
    added = [str(f) for f in folders if f is not None and str(f) not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for folder in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(folder)


def _import(source: str) -> ModuleType:
    try:
        return importlib.import_module(source)
    except ModuleNotFoundError as exc:
        if exc.name and source.startswith(exc.name):
            raise LatlabError(f"no module {source!r} (looked in {Path.cwd()} and on sys.path)") from None
        raise LatlabError(f"importing {source} failed: {type(exc).__name__}: {exc}") from None
    except Exception as exc:
        raise LatlabError(f"importing {source} failed: {type(exc).__name__}: {exc}") from None


def _accepts(fn: Any, keyword: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True  # cannot tell: let the call say
    return any(p.name == keyword or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _candidates(module: ModuleType) -> str:
    names = sorted(n for n, v in vars(module).items() if not n.startswith("_") and inspect.isclass(v)
                   and issubclass(v, nn.Module) and v.__module__ == module.__name__)
    return f"its nn.Module classes: {', '.join(names)}" if names else "it defines no nn.Module class"
