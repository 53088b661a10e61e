"""Save fitted latency models in the database and load them back by name (no pickle)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from db.engine import Database
from db.errors import LatlabError
from db.json_values import finite_or_none
from db.models import StoredLatencyModel, as_utc, utcnow
from latency_models.base import LatencyModel, get_model, model_from_state


def _jsonable(obj: Any) -> Any:
    """Round-trip through JSON so NaN/inf and numpy scalars cannot reach the database."""
    return finite_or_none(json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o))))


def save_model(
    db: Database, name: str, model: LatencyModel, *, sweep_id: int | None = None,
    training: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None, replace: bool = False,
) -> int:
    """Store ``model`` under ``name``; an existing name raises unless ``replace``. Returns the row id."""
    if not name or not name.strip():
        raise LatlabError("a stored latency model needs a non-empty name")
    state = _jsonable(model.to_state())
    with db.session() as session:
        row = session.scalar(select(StoredLatencyModel).where(StoredLatencyModel.name == name))
        if row is not None and not replace:
            raise LatlabError(f"a latency model named {name!r} already exists (--replace or replace=True overwrites)")
        if row is None:
            row = StoredLatencyModel(name=name)
            session.add(row)
        row.kind = model.kind
        row.sweep_id = sweep_id
        row.params = state["params"]
        row.state = state
        row.training = _jsonable(training or {})
        row.metrics = _jsonable(metrics or {})
        row.n_train = len(state.get("y", [])) if isinstance(state.get("y"), list) else 0
        row.updated_at = utcnow()
        session.flush()
        return row.id


def load_model(db: Database, name: str) -> LatencyModel:
    """The fitted model stored as ``name``; unknown names raise listing the stored ones."""
    with db.session() as session:
        row = session.scalar(select(StoredLatencyModel).where(StoredLatencyModel.name == name))
        if row is None:
            known = ", ".join(session.scalars(select(StoredLatencyModel.name))) or "none"
            raise LatlabError(f"no latency model named {name!r} in the database (stored: {known})")
        state, kind = row.state, row.kind
    if not isinstance(state, dict) or state.get("kind") != kind:
        raise LatlabError(f"stored latency model {name!r} is listed as {kind!r} but its state is not one; refit it "
                          "with `latlab fit --replace`")
    try:
        return model_from_state(state)
    except LatlabError as exc:
        raise LatlabError(f"stored latency model {name!r}: {exc}") from None
    except Exception as exc:  # noqa: BLE001  (another latlab's or a damaged state: whatever it breaks, say so)
        raise LatlabError(f"stored latency model {name!r} cannot be rebuilt ({type(exc).__name__}: "
                          f"{str(exc)[:200]}); refit it with `latlab fit --replace`") from None


def _changed_params(kind: str, params: Any) -> str:
    """``"max_samples=20000, random_state=3"``: the stored parameters that differ from the kind's defaults."""
    if not isinstance(params, dict):
        return ""
    try:
        defaults = get_model(kind).get_params()
    except LatlabError:  # a kind this latlab does not know: show them all
        defaults = {}
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in defaults or defaults[k] != v)


def stored_models(db: Database) -> list[dict[str, Any]]:
    """One summary dict per stored model (held-out ``mape`` in %, ``within_5``/``within_10`` as shares, as
    ``latlab fit`` prints them; ``params``: those not at the kind's defaults)."""
    with db.session() as session:
        rows = session.scalars(select(StoredLatencyModel).order_by(StoredLatencyModel.id)).all()
        return [{
            "name": r.name, "kind": r.kind, "params": _changed_params(r.kind, r.params), "sweep": r.sweep_id,
            "n_train": r.n_train, "mape": r.metrics.get("mape"), "within_5": r.metrics.get("within_5"),
            "within_10": r.metrics.get("within_10"), "updated": as_utc(r.updated_at).strftime("%Y-%m-%d %H:%M"),
        } for r in rows]
