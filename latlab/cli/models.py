"""``latlab fit`` and ``latlab models``: fit latency models on a LUT, store them, list them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Annotated, Any

import typer

from db.errors import LatlabError
from latlab.cli._options import (
    DbOption,
    FormatOption,
    HardwareOption,
    SweepOption,
    check_stored_name,
    command_group,
    command_line,
    echo_rows,
)

app = command_group("Stored latency models: list them.")

ModelsOption = Annotated[
    str, typer.Option("--models", help="Comma-separated kinds: lut, llm, mdlm, bilinear, rf, gbdt.")
]


def parse_kinds(text: str) -> list[str]:
    """``"lut,llm"`` -> validated list of model kinds."""
    from latency_models.base import list_models
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    known = list_models()
    unknown = [k for k in kinds if k not in known]
    if not kinds or unknown:
        what = ", ".join(unknown) or "(none given)"
        raise LatlabError(f"unknown latency model(s) {what}; choose from {', '.join(known)}")
    return kinds


ParamOption = Annotated[list[str] | None, typer.Option(
    "--param", help="A model parameter, KIND.NAME=VALUE (or NAME=VALUE for every kind that has it), e.g. "
    "rf.max_samples=20000 or lut.missing=nearest. Repeatable; see the README for each kind's parameters.",
    show_default=False)]


def parse_params(texts: Sequence[str] | None, kinds: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["rf.n_estimators=100", "strict=true"]`` -> ``{kind: {name: value}}`` for every kind in ``kinds``.

    A NAME without KIND applies to every kind that has it; values are YAML scalars (``100``, ``0.5``, ``null``,
    ``true``, ``sqrt``). Unknown kinds or names raise, naming the kind's parameters.
    """
    import yaml

    from latency_models.base import get_model
    known = {kind: sorted(get_model(kind).get_params()) for kind in kinds}
    out: dict[str, dict[str, Any]] = {kind: {} for kind in kinds}
    for text in texts or ():
        key, sep, raw = text.partition("=")
        kind, dot, name = key.strip().rpartition(".")
        if not sep or not name:
            raise LatlabError(f"--param {text!r}: expected KIND.NAME=VALUE or NAME=VALUE, e.g. rf.n_estimators=100")
        if dot and kind not in known:
            raise LatlabError(f"--param {text!r}: {kind!r} is not among --models ({', '.join(kinds)})")
        targets = [kind] if dot else [k for k in kinds if name in known[k]]
        if not targets or name not in known[targets[0]]:
            where = f"{kind} has no" if dot else f"none of {', '.join(kinds)} has a"
            listing = "; ".join(f"{k}: {', '.join(known[k])}" for k in ([kind] if dot else kinds))
            raise LatlabError(f"--param {text!r}: {where} parameter {name!r} ({listing})")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw.strip()
        if not raw.strip() or isinstance(value, dict | list):
            raise LatlabError(f"--param {text!r}: the value must be one number, word, true/false or null")
        for k in targets:
            out[k][name] = value
    return out


def fit(
    models: ModelsOption = "mdlm",
    name: Annotated[str | None, typer.Option(
        help="Stored name (default: sweepID-KIND, e.g. sweep1-mdlm); with several --models, NAME-KIND.")] = None,
    sweep: SweepOption = None, hardware: HardwareOption = None,
    batch: Annotated[int | None, typer.Option(help="Only rows with this batch size.")] = None,
    dtype: Annotated[str | None, typer.Option(help="Only rows of this dtype.")] = None,
    layout: Annotated[str | None, typer.Option(help="Only rows of this memory layout (nchw, nhwc).")] = None,
    op: Annotated[str | None, typer.Option(help="Only rows of this op (conv, conv_bn_relu).")] = None,
    holdout: Annotated[float, typer.Option(
        help="Share of distinct LUT keys held out to report accuracy (0: fit on all).")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the hold-out split and the models.")] = 0,
    replace: Annotated[bool, typer.Option(help="Overwrite a stored model of the same name.")] = False,
    param: ParamOption = None, fmt: FormatOption = "table", db: DbOption = None,
) -> None:
    """Fit latency models on a sweep's LUT and store them in the database by name.

    With --holdout, the models are scored on held-out LUT keys first (split by distinct key), then
    stored as fitted on the training part; without it they are fitted on every row.

    Examples:

        latlab fit --models mdlm,llm --hardware "TITAN V"
        latlab fit --models mdlm --sweep 3 --holdout 0.75 --name h100-mdlm-25pct
        latlab fit --models rf --param rf.max_samples=20000 --name rf-20k
    """
    import numpy as np

    from db.engine import open_database
    from db.lut import find_sweep
    from latency_models.base import LatencyModel, get_model
    from latency_models.evaluate import fit_predict
    from latency_models.features import lut_frame
    from latency_models.splits import make_split
    from latency_models.store import save_model, stored_models
    kinds = parse_kinds(models)
    overrides = parse_params(param, kinds)
    if not 0.0 <= holdout < 1.0:
        raise LatlabError(f"--holdout must be in [0, 1), got {holdout}")
    database = open_database(db, create=False, upgrade=True)
    with database.session() as session:
        settings = {"batch": batch, "dtype": dtype, "layout": layout, "op": op}
        sweep_row = find_sweep(session, sweep, hardware, holding=settings)
        X, y = lut_frame(session, sweep_row.id, **settings)
        hw_name = sweep_row.hardware.name
        sweep_id = sweep_row.id
    if holdout > 0:
        train, test = make_split(X, "random", 1.0 - holdout, seed)
    else:
        train, test = np.arange(len(X)), np.array([], dtype=int)
    names = {kind: (f"{name}-{kind}" if name and len(kinds) > 1 else name) or f"sweep{sweep_id}-{kind}"
             for kind in kinds}
    for stored in names.values():
        check_stored_name(stored, f"the model name {stored[:40]!r}…")
    taken = sorted(set(names.values()) & {r["name"] for r in stored_models(database)})
    if taken and not replace:  # before the fits, which may take minutes
        raise LatlabError(f"a latency model named {', '.join(map(repr, taken))} already exists (use --replace)")
    results: list[tuple[str, LatencyModel, dict, str]] = []
    for kind in kinds:  # every model is fitted before any is stored: a bad --param stores nothing
        params = ({"random_state": seed} if "random_state" in get_model(kind).get_params() else {}) | overrides[kind]
        model = get_model(kind, **params)
        started = time.perf_counter()  # a fit on a large LUT takes minutes (rf, gbdt, mdlm's surfaces): say what runs
        scored = f", scoring it on {len(test):,} held-out rows" if len(test) else ""
        typer.echo(f"fitting {kind} on {len(train):,} LUT rows{scored}…", err=fmt != "table")  # -f csv: the table
        metrics, error = {}, ""
        fitted: dict[str, LatencyModel] = {}
        if len(test):  # tolerant: points a model cannot predict are counted, not fatal
            table, _ = fit_predict({kind: model}, X, y, (train, test), keep_fitted=fitted)
            metrics = {k: v for k, v in table.iloc[0].to_dict().items() if k not in ("model", "error")}
            error = table.loc[0, "error"]
        try:
            model = fitted[kind] if kind in fitted else model.fit(X.iloc[train].reset_index(drop=True), y[train])
            model.to_state()  # what is stored; MDLM fits its surfaces (and checks their parameters) only here
        except (ValueError, TypeError) as exc:  # scikit-learn's parameter checks
            given = ", ".join(f"{k}={v}" for k, v in overrides[kind].items()) or "default parameters"
            raise LatlabError(f"cannot fit {kind} ({given}): {' '.join(str(exc).split())}") from None
        typer.echo(f"fitted {kind} in {time.perf_counter() - started:.1f} s", err=fmt != "table")
        results.append((kind, model, metrics, error))
    rows = []
    for kind, model, metrics, error in results:
        stored = names[kind]
        training = {"sweep": sweep_id, "batch": batch, "dtype": dtype, "layout": layout, "op": op,
                    "holdout": holdout, "seed": seed, "n_rows": len(X), "command": command_line()}
        save_model(database, stored, model, sweep_id=sweep_id, training=training, metrics=metrics, replace=replace)
        rows.append({"name": stored, "kind": kind, "n_train": len(train), "n_test": len(test),
                     **{k: metrics.get(k) for k in ("missing", "within_5", "within_10", "mape", "max_ape")},
                     "error": error})  # why held-out points are missing (the first refusal)
    if not any(r["error"] for r in rows):
        rows = [{k: v for k, v in r.items() if k != "error"} for r in rows]
    echo_rows(rows, fmt, title=f"fitted on sweep {sweep_id} ({hw_name})")


@app.command("list")
def list_(fmt: FormatOption = "table", db: DbOption = None) -> None:
    """List the latency models stored in the database.

    Each with its kind, the sweep it was fitted on, its training rows and, when fitted with --holdout, its
    held-out error. Other commands take the name as --latency-model.

    Example:

        latlab models list --db rn50.db
    """
    from db.engine import open_database
    from latency_models.store import stored_models
    rows = stored_models(open_database(db, create=False))
    echo_rows(rows, fmt, title="latency models", empty="no stored latency models: run `latlab fit`")
