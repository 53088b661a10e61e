"""Obtain the latency model a pruner prices networks with: a stored one, or one fitted now on a sweep's LUT."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from db.engine import Database
from db.errors import LatlabError
from db.lut import find_sweep
from latency_models.base import LatencyModel, get_model
from latency_models.features import configs_from_frame, lut_frame
from latency_models.store import load_model

__all__ = ["LutSettings", "held_settings", "model_settings", "resolve_latency_model"]


@dataclass(frozen=True)
class LutSettings:
    """Execution settings of the LUT keys a latency model is fitted on / asked about (``pruning.cost.Settings``)."""

    batch: int
    dtype: str = "fp32"
    layout: str = "nchw"
    op: str = "conv"


def resolve_latency_model(
    database: Database, *, latency_model: str | None, sweep: int | None, hardware: str | None, kind: str,
    choose_sweep: str = "--sweep ID",
) -> tuple[LatencyModel, LutSettings, str]:
    """``(fitted model, LUT settings, human-readable source)``.

    ``latency_model`` names a stored model (``latlab models list``); otherwise a model of ``kind`` is fitted
    on the LUT of the chosen sweep (``find_sweep``: by id, or the only one of ``hardware``; ``choose_sweep`` is how
    the error for several says to choose). Batch, dtype, layout and op are those of the LUT rows the model was
    trained on.
    """
    if latency_model is not None:
        model = load_model(database, latency_model)
        source = f"stored model {latency_model!r}"
    else:
        with database.session() as session:
            row = find_sweep(session, sweep, hardware, choose=choose_sweep)
            X, y = lut_frame(session, row.id)
            source = f"{kind} fitted on sweep {row.id} ({row.hardware.name})"
        model = get_model(kind).fit(X, y)
    return model, model_settings(model, source), source


def held_settings(X: pd.DataFrame) -> list[str]:
    """The distinct settings of LUT rows, each as ``"batch dtype layout op"`` (for messages that list them)."""
    return [" ".join(map(str, row)) for row in X[["batch", "dtype", "layout", "op"]].drop_duplicates()
            .itertuples(index=False)]


def model_settings(model: LatencyModel, source: str) -> LutSettings:
    """The one batch, dtype, layout and op a fitted model's training rows share; several raise (the prices would
    depend on the row order), naming them and the ``latlab fit`` that makes a model of one. ``source`` names the
    model in the message."""
    X = model.train_data_[0]
    held = held_settings(X)
    if len(held) > 1:
        raise LatlabError(f"{source} covers {len(held)} settings (batch dtype layout op: {'; '.join(held)}); fit a "
                          "model on one (`latlab fit --batch B --dtype D --layout L --op OP --name NAME`) and pass it "
                          "as --latency-model NAME")
    first = configs_from_frame(X.iloc[:1])[0]
    return LutSettings(first.batch, first.dtype, first.layout, first.op)
