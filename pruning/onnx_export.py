"""ONNX for deployment runtimes (TensorRT, ONNX Runtime, OpenVINO): write a slim network's program, check it.

Uses torch's own exporter (``torch.onnx.export(..., dynamo=True)``, which needs the ``onnx`` and ``onnxscript``
packages: ``pip install -e '.[onnx]'``) on the :class:`torch.export.ExportedProgram` that ``pruned.pt2``
holds, so the batch dimension stays dynamic. The check runs the file in ONNX Runtime when it is installed.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch
from torch import nn

from db.errors import LatlabError

__all__ = ["onnx_input_name", "onnx_max_delta", "require_onnx", "save_onnx"]


def require_onnx() -> None:
    """Raise :class:`LatlabError` naming the extra to install when torch.onnx's exporter cannot run here."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise LatlabError(f"ONNX export needs the onnx and onnxscript packages ({exc.name} is missing): "
                          "pip install onnx onnxscript onnxruntime (latlab's onnx extra)") from None


def save_onnx(program: torch.export.ExportedProgram, path: str | Path, *, opset: int | None = None) -> Path:
    """Write ``program`` to ``path`` as ONNX (dynamic batch as in the program); returns the path."""
    require_onnx()
    path = Path(path)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its stages
        try:
            onnx_program = torch.onnx.export(program, dynamo=True, opset_version=opset, verbose=False)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise LatlabError(f"torch.onnx could not export the network: {type(exc).__name__}: {first}") from None
    assert onnx_program is not None
    try:
        onnx_program.save(str(path))
    except OSError as exc:  # a full disk: the file is cut off
        path.unlink(missing_ok=True)
        raise LatlabError(f"cannot write {path}: {exc.strerror or exc}") from None
    if opset is not None:
        import onnx

        got = next((o.version for o in onnx.load(str(path), load_external_data=False).opset_import
                    if o.domain in ("", "ai.onnx")), None)
        if got != opset:
            path.unlink()
            raise LatlabError(f"torch.onnx wrote opset {got}, not the requested {opset} (it does not convert this "
                              "network to older opsets); leave --opset out or ask for a newer one")
    return path


def onnx_max_delta(path: str | Path, reference: nn.Module, example: torch.Tensor, *, atol: float = 1e-3,
                   ) -> float | None:
    """Max |Δ output| of the ONNX file in ONNX Runtime (CPU) against ``reference`` (in eval mode) on ``example``.

    ``None`` when ONNX Runtime is not installed (the file is written but not checked). Raises
    :class:`LatlabError` when the difference exceeds ``atol`` × max(1, max |output|) (fp32 in both).
    """
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: example.numpy()})[0]
    with torch.no_grad():
        want = reference(example)
    want = (want if isinstance(want, torch.Tensor) else want[0]).numpy()  # (logits, aux …): the first output
    if got.shape != want.shape:
        raise LatlabError(f"{path} outputs shape {got.shape} in ONNX Runtime, the network {want.shape}")
    diff = float(np.abs(got - want).max())
    if not diff <= atol * max(1.0, float(np.abs(want).max())):
        raise LatlabError(f"{path} disagrees with the network in ONNX Runtime: max |Δ| = {diff:.3g} "
                          f"(max |output| {float(np.abs(want).max()):.3g}); the file is kept for inspection")
    return diff


def onnx_input_name(path: str | Path) -> str:
    """The name of the (image) input of an ONNX file, e.g. for ``trtexec --shapes=NAME:…``."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return next(i.name for i in graph.input if i.name not in initializers)
