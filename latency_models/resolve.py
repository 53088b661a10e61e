"""Obtain the latency model a pruner prices networks with: a stored one, or one fitted now on a sweep's LUT."""

from __future__ import annotations

from dataclasses import dataclass

from db.engine import Database
from db.errors import LatlabError
from db.lut import find_sweep
from latency_models.base import LatencyModel, get_model
from latency_models.features import configs_from_frame, lut_frame
from latency_models.store import load_model

__all__ = ["LutSettings", "resolve_latency_model"]


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
        X = model.train_data_[0]
        source = f"stored model {latency_model!r}"
    else:
        with database.session() as session:
            row = find_sweep(session, sweep, hardware, choose=choose_sweep)
            X, y = lut_frame(session, row.id)
            source = f"{kind} fitted on sweep {row.id} ({row.hardware.name})"
        model = get_model(kind).fit(X, y)
    settings = X[["batch", "dtype", "layout", "op"]].drop_duplicates()
    if len(settings) > 1:  # which one the prices are for would depend on the row order
        listed = "; ".join(" ".join(map(str, row)) for row in settings.itertuples(index=False))
        raise LatlabError(f"{source} covers {len(settings)} settings (batch dtype layout op: {listed}); fit a model "
                          "on one (`latlab fit --batch B --dtype D --layout L --op OP --name NAME`) and pass it as "
                          "--latency-model NAME")
    first = configs_from_frame(X.iloc[:1])[0]
    return model, LutSettings(first.batch, first.dtype, first.layout, first.op), source
