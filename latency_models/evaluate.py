"""Compare latency models: per-conv accuracy on held-out LUT keys, accuracy vs sweep budget,
whole-network accuracy on random pruned networks, and a Markdown report with CSVs and PNG plots.

Models are :class:`~latency_models.base.LatencyModel` instances (or anything with ``fit``/``predict``).
The comparison never stops at one model's failure: a model that cannot fit, or cannot predict some
test points (e.g. a LUT with the ``"error"`` miss policy), is reported with those points counted in
``missing`` and its metrics computed on the rest.
"""

from __future__ import annotations

import copy
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from db.errors import LatlabError, LUTMissError
from latency_models._common import describe
from latency_models.features import FEATURE_COLUMNS, GROUP_COLUMNS, as_frame
from latency_models.metrics import METRIC_COLUMNS, error_metrics
from latency_models.network import network_latency
from latency_models.splits import SPLIT_KINDS, Split, make_split

if TYPE_CHECKING:

    from profiler._trace import TraceResult

__all__ = [
    "RESULT_COLUMNS", "accuracy_vs_budget", "candidate_models", "evaluate_models", "fit_predict", "markdown_table",
    "prediction_errors", "summarise_whole_network", "whole_network_eval", "write_report",
]

RESULT_COLUMNS = ("model", "n_train", "n_test", "missing", "fit_s", "predict_s", *METRIC_COLUMNS, "error")
"""Columns of :func:`evaluate_models`."""

Widths = Mapping[str, tuple[int, int]]


def _fresh(model: Any) -> Any:
    """An unfitted copy of ``model`` (sklearn ``clone``; a deep copy for objects it cannot clone)."""
    try:
        from sklearn.base import clone

        return clone(model)
    except Exception:
        return copy.deepcopy(model)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _predict_tolerant(model: Any, X: pd.DataFrame, trained: pd.DataFrame) -> tuple[np.ndarray, str]:
    """Predictions with NaN where the model raises; bisects failing chunks. Returns (pred, first error).

    All rows at once first, then group by group, then halves of a failing group down to single rows. A group
    not in the ``trained`` rows whose first row the model refuses counts as missing whole (a per-family model
    refuses a family it does not know) without a call per row. A model with ``predict_partial`` (the LUT)
    marks the rows it cannot predict itself, with no retries."""
    out = np.full(len(X), np.nan)
    first_error = ""
    columns = list(GROUP_COLUMNS)
    seen = set(trained[columns].astype(str).itertuples(index=False, name=None))
    partial = getattr(model, "predict_partial", None)

    def predict(rows: np.ndarray) -> np.ndarray:
        nonlocal first_error
        if partial is None:
            return model.predict(X.iloc[rows])
        pred, refusal = partial(X.iloc[rows])
        if refusal is not None:
            first_error = first_error or _one_line(refusal)
        return pred

    def run(rows: np.ndarray, split: bool = False) -> None:
        nonlocal first_error
        if not len(rows):
            return
        try:
            pred = np.asarray(predict(rows), dtype=float).ravel()
            if pred.shape != (len(rows),):
                raise LatlabError(f"predict returned {pred.shape[0]} values for {len(rows)} rows")
        except Exception as exc:
            if split:
                part = X.iloc[rows]
                for key, where in part[columns].astype(str).groupby(columns, sort=False).indices.items():
                    group = rows[where]
                    if key not in seen and len(group) > 1:
                        run(group[:1])
                        if np.isnan(out[group[0]]):
                            continue
                    run(group)
            elif len(rows) == 1:
                first_error = first_error or _one_line(exc)
            elif len(rows) <= 8:  # small chunks: row by row is cheaper than bisecting further
                for i in rows:
                    run(np.array([i]))
            else:
                run(rows[: len(rows) // 2])
                run(rows[len(rows) // 2:])
            return
        out[rows] = pred

    run(np.arange(len(X)), split=True)
    return out, first_error


def candidate_models(
    kinds: Sequence[str], *, seed: int = 0, strict: bool = False, params: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Unfitted models of ``kinds`` set up for a comparison: seeded, ``strict`` where the kind has it,
    and the LUT interpolating bilinearly on its grid (the "measure coarsely, interpolate" baseline);
    ``params[kind]`` overrides any of these."""
    from latency_models.base import get_model

    out: dict[str, Any] = {}
    for kind in kinds:
        known = get_model(kind).get_params()
        kw: dict[str, Any] = {"strict": strict} if "strict" in known else {}
        if "random_state" in known:
            kw["random_state"] = seed
        if kind == "lut":
            kw["missing"] = "bilinear"
        out[kind] = get_model(kind, **(kw | dict((params or {}).get(kind, {}))))
    return out


def fit_predict(
    models: Mapping[str, Any], X: Any, y: Any, split: Split, keep_fitted: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fit a fresh copy of each model on the training rows and predict the test rows.

    ``keep_fitted``, when given, receives the fitted copies (by name) of the models that fitted; ``progress``, when
    given, is told (one line) which model is fitted next: on a large LUT a fit takes minutes.

    Returns ``(table, predictions)``: one row per model with :data:`RESULT_COLUMNS`, and a long frame
    of the test rows (feature columns, ``measured``, ``model``, ``predicted`` (NaN where missing),
    ``pct_error``).
    """
    frame = as_frame(X).reset_index(drop=True)
    target = np.asarray(y, dtype=float).ravel()
    if len(frame) != len(target):
        raise LatlabError(f"X has {len(frame)} rows but y has {len(target)}")
    train, test = (np.asarray(s, dtype=np.int64) for s in split)
    zero = test[target[test] <= 0]
    if len(zero):  # an imported LUT may hold them; no percentage error is defined there
        raise LatlabError(f"{len(zero)} held-out LUT row(s) measure {target[zero[0]]:g} ms, e.g. "
                          f"{describe(*frame.iloc[zero[0]][list(FEATURE_COLUMNS)])}: percentage errors need latencies "
                          "> 0; re-measure those configurations or import the LUT without them")
    X_train, y_train = frame.iloc[train], target[train]
    X_test, y_test = frame.iloc[test].reset_index(drop=True), target[test]
    rows: list[dict[str, Any]] = []
    preds: list[pd.DataFrame] = []
    for name, model in models.items():
        if progress is not None:
            progress(f"{name}: fitting on {len(train):,} rows, predicting {len(test):,}")
        fitted = _fresh(model)
        error = ""
        fit_s = predict_s = float("nan")
        t0 = time.perf_counter()
        try:
            fitted.fit(X_train, y_train)
        except Exception as exc:
            error = f"fit failed: {_one_line(exc)}"
            pred = np.full(len(X_test), np.nan)
        else:
            fit_s = time.perf_counter() - t0
            if keep_fitted is not None:
                keep_fitted[name] = fitted
            t0 = time.perf_counter()
            pred, error = _predict_tolerant(fitted, X_test, X_train)
            predict_s = time.perf_counter() - t0
        ok = np.isfinite(pred)
        metrics = error_metrics(y_test[ok], pred[ok])
        rows.append({"model": name, "n_train": len(train), "n_test": len(test), "missing": int((~ok).sum()),
                     "fit_s": fit_s, "predict_s": predict_s, **metrics, "error": error})
        part = X_test[list(FEATURE_COLUMNS)].copy()
        part["measured"] = y_test
        part["model"] = name
        part["predicted"] = pred
        part["pct_error"] = 100.0 * (pred - y_test) / y_test
        preds.append(part)
    table = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    predictions = pd.concat(preds, ignore_index=True) if preds else pd.DataFrame()
    return table, predictions


def evaluate_models(models: Mapping[str, Any], X: Any, y: Any, split: Split,
                    progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """One row per model: metrics on the test rows of ``split``, fit/predict seconds, sizes, ``missing``."""
    return fit_predict(models, X, y, split, progress=progress)[0]


def accuracy_vs_budget(
    models: Mapping[str, Any], X: Any, y: Any, fractions: Sequence[float] = (0.05, 0.10, 0.25, 0.50),
    split_kind: str = "random", seeds: Sequence[int] = (0, 1, 2),
    done: Mapping[tuple[float, int], pd.DataFrame] | None = None, progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Metrics per (model, training fraction), averaged over ``seeds`` (one seed for deterministic kinds).

    ``train_share`` is the realised share of rows used for training. ``done`` holds tables of
    :func:`evaluate_models` already computed for these ``models`` on splits of ``split_kind``, by (fraction, seed):
    those splits are not fitted again (``latlab evaluate``'s held-out split is one of the curve's points).
    ``progress`` is told what is fitted next.
    """
    if split_kind not in SPLIT_KINDS:
        raise LatlabError(f"unknown split kind {split_kind!r}; choose from {', '.join(SPLIT_KINDS)}")
    frame = as_frame(X).reset_index(drop=True)
    runs = list(seeds) if split_kind in ("random", "family") else list(seeds)[:1]
    if not runs:
        raise LatlabError("accuracy_vs_budget needs at least one seed")
    tables = []
    for fraction in fractions:
        for seed in runs:
            if (float(fraction), seed) in (done or {}):
                table = done[(float(fraction), seed)].copy()  # type: ignore[index]
            else:
                told = None if progress is None else (
                    lambda text, f=fraction, s=seed: progress(f"training share {f:.0%} (seed {s}): {text}"))
                table = evaluate_models(models, frame, y, make_split(frame, split_kind, fraction, seed), progress=told)
            table.insert(1, "train_fraction", float(fraction))
            table["seed"] = seed
            tables.append(table)
    allt = pd.concat(tables, ignore_index=True)
    allt["train_share"] = allt["n_train"] / (allt["n_train"] + allt["n_test"])
    numeric = ["train_share", "n_train", "n_test", "missing", "fit_s", *METRIC_COLUMNS]
    out = allt.groupby(["model", "train_fraction"], sort=False)[numeric].mean().reset_index()
    out.insert(2, "split", split_kind)
    out.insert(3, "n_seeds", len(runs))
    return out


# ------------------------------------------------------------------------------------------------ networks

def _macs(trace: TraceResult, widths: Widths) -> float:
    total = 0.0
    for layer in trace.layers:
        cin, cout = widths.get(layer.name, (layer.cin, layer.cout))
        if cin and cout:
            total += layer.family.macs(int(cin), int(cout))
    return total


def whole_network_eval(
    models: Mapping[str, Any],
    trace: TraceResult,
    n_configs: int,
    rng: np.random.Generator | int | None,
    *,
    batch: int,
    dtype: str = "fp32",
    layout: str = "nchw",
    op: str = "conv",
    measure: Callable[[Sequence[Widths]], list[float]] | None = None,
    truth: Callable[[Widths], float] | None = None,
    other: Callable[[Widths], float] | None = None,
    group_sizes: Mapping[str, int] | None = None,
    min_keep: float = 0.3,
    multiple: int = 8,
    freeze_cin: Mapping[str, bool] | None = None,
) -> pd.DataFrame:
    """Predicted vs reference latency of the dense network and ``n_configs`` random consistent prunings.

    ``models`` are fitted. ``truth(widths)`` is the exact lattice sum (e.g. :func:`network.lattice_sum`
    of measured / true per-conv latencies); ``measure(configs)`` the measured whole-model latency of every
    width assignment (e.g. :func:`pruning.rebuild.measure_pruned`, which times them in interleaved rounds);
    ``other(widths)`` the time of the network's non-conv ops (e.g.
    :meth:`profiler.other_ops.OtherOps.latency`). ``freeze_cin`` optionally overrides the per-model input
    freezing (default: frozen for kind ``"llm"``, HALP's assumption). One row per (configuration, model):
    ``config`` (0 = dense), ``dense``, ``macs_ratio``, ``predicted_ms``, ``lattice_ms``, ``measured_ms``,
    ``other_ms`` and the signed % errors ``err_vs_lattice_pct``, ``err_vs_measured_pct`` and
    ``err_vs_measured_whole_pct`` (convs + other ops vs measured); ``error`` names a failed prediction.
    """
    from profiler.widths import dense_widths, random_pruned_widths

    if n_configs < 0:
        raise LatlabError(f"n_configs must be >= 0, got {n_configs}")
    gen = np.random.default_rng(rng)
    configs: list[Widths] = [dense_widths(trace)]
    configs += [random_pruned_widths(trace, gen, min_keep=min_keep, multiple=multiple, group_sizes=group_sizes)
                for _ in range(n_configs)]
    dense_macs = _macs(trace, configs[0])
    freeze = dict(freeze_cin or {})
    rows: list[dict[str, Any]] = []
    all_measured = [float(m) for m in measure(configs)] if measure is not None else [float("nan")] * len(configs)
    for i, (widths, measured) in enumerate(zip(configs, all_measured, strict=True)):
        lattice = _lattice_or_nan(truth, widths)
        other_ms = float(other(widths)) if other is not None else float("nan")
        for name, model in models.items():
            error = ""
            try:
                pred = network_latency(model, trace.layers, widths, batch=batch, dtype=dtype, layout=layout,
                                       op=op, freeze_cin=freeze.get(name))
            except Exception as exc:
                pred, error = float("nan"), _one_line(exc)
            rows.append({
                "config": i, "dense": i == 0, "macs_ratio": _macs(trace, widths) / dense_macs if dense_macs else 1.0,
                "model": name, "predicted_ms": pred, "lattice_ms": lattice, "measured_ms": measured,
                "err_vs_lattice_pct": 100.0 * (pred - lattice) / lattice if lattice else float("nan"),
                "err_vs_measured_pct": 100.0 * (pred - measured) / measured if measured else float("nan"),
                "other_ms": other_ms,
                "err_vs_measured_whole_pct": 100.0 * (pred + other_ms - measured) / measured if measured
                else float("nan"),
                "error": error,
            })
    return pd.DataFrame(rows)


def _lattice_or_nan(truth: Callable[[Widths], float] | None, widths: Widths) -> float:
    """The exact lattice sum, or NaN when there is none or the LUT lacks one of its keys (partial sweep)."""
    if truth is None:
        return float("nan")
    try:
        return float(truth(widths))
    except LUTMissError:
        return float("nan")


def prediction_errors(
    pruned: pd.DataFrame, dense: Mapping[str, float], predictors: Sequence[str], other: str = "other_ms",
) -> pd.DataFrame:
    """Signed % errors of predicted latency for pruned networks, as new columns of ``pruned``.

    ``pruned`` holds one row per network with each predictor's conv latency (ms), the predicted time of its
    other ops (column ``other``), ``measured_ms`` and the measured ``speedup`` over the dense network;
    ``dense`` the same predictions for the dense network. Per predictor ``p``: ``p_speedup_err_pct`` (the
    speed-up dense / pruned predicted from the convs alone), ``p+other_speedup_err_pct`` (from convs + other
    ops) and ``p+other_err_pct`` (whole-network latency, convs + other ops, against ``measured_ms``).
    """
    out = pruned.copy()
    for p in predictors:
        whole, dense_whole = out[p] + out[other], dense[p] + dense[other]
        out[f"{p}_speedup_err_pct"] = 100 * (dense[p] / out[p] / out["speedup"] - 1)
        out[f"{p}+other_speedup_err_pct"] = 100 * (dense_whole / whole / out["speedup"] - 1)
        out[f"{p}+other_err_pct"] = 100 * (whole / out["measured_ms"] - 1)
    return out


def summarise_whole_network(whole: pd.DataFrame) -> pd.DataFrame:
    """Per model: error on the dense network and mean / min / max / MAPE over the pruned ones, per reference."""
    out = []
    for name, part in whole.groupby("model", sort=False):
        row: dict[str, Any] = {"model": name, "n_pruned": int((~part["dense"]).sum())}
        for ref in ("lattice", "measured", "measured_whole"):
            col = f"err_vs_{ref}_pct"
            if col not in part or part[col].isna().all():
                continue
            dense = part.loc[part["dense"], col]
            pruned = part.loc[~part["dense"], col].dropna()
            row[f"dense_vs_{ref}_pct"] = float(dense.iloc[0]) if len(dense) else float("nan")
            row[f"mean_vs_{ref}_pct"] = float(pruned.mean()) if len(pruned) else float("nan")
            row[f"min_vs_{ref}_pct"] = float(pruned.min()) if len(pruned) else float("nan")
            row[f"max_vs_{ref}_pct"] = float(pruned.max()) if len(pruned) else float("nan")
            row[f"mape_vs_{ref}"] = float(pruned.abs().mean()) if len(pruned) else float("nan")
        out.append(row)
    return pd.DataFrame(out)


# ------------------------------------------------------------------------------------------------ report

def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if abs(v) < 1e-9:
            return "0"
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"  # as latlab.tables: 12346, not 1.235e+04
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame) -> str:
    """``df`` as a GitHub-flavoured Markdown table (floats to 4 significant digits, NaN blank)."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in df.itertuples(index=False, name=None)]
    return "\n".join(lines) + "\n"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "table"


def write_report(
    out_dir: str | Path,
    tables: Mapping[str, pd.DataFrame],
    predictions: pd.DataFrame | None = None,
    whole_network: pd.DataFrame | None = None,
    title: str = "Latency model comparison",
    plane_model: str | None = None,
) -> Path:
    """Write ``report.md`` (Markdown tables + plots), one CSV per table, and PNGs into ``out_dir``.

    ``predictions`` is the long frame of :func:`fit_predict` (plots: predicted vs measured, error CDF,
    error over the (cin, cout) plane of ``plane_model``, default the model with the lowest MAPE);
    ``whole_network`` the frame of :func:`whole_network_eval` (summary table and error strip chart).
    Returns the path of ``report.md``.
    """
    from latency_models import plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# {title}", "", "Units: `mape`, `rmspe`, `max_ape` and `bias` are in %; `within_5` / `within_10` are "
          "shares of the held-out points (0.9 = 90%); latencies in ms, `fit_s` / `predict_s` in seconds.", ""]
    for name, table in tables.items():
        slug = _slug(name)
        table.to_csv(out / f"{slug}.csv", index=False)
        md += [f"## {name}", "", markdown_table(table), f"CSV: [{slug}.csv]({slug}.csv)", ""]
    if predictions is not None and len(predictions):
        predictions.to_csv(out / "predictions.csv", index=False)
        md += ["## Per-convolution predictions", ""]
        p1 = plots.plot_pred_vs_measured(predictions, out / "pred_vs_measured.png")
        p2 = plots.plot_error_cdf(predictions, out / "error_cdf.png")
        md += [f"![predicted vs measured]({p1.name})", "", f"![error CDF]({p2.name})", ""]
        if plane_model is None:
            ok = predictions.dropna(subset=["predicted"])
            if len(ok):
                plane_model = str(ok.assign(ape=ok["pct_error"].abs()).groupby("model")["ape"].mean().idxmin())
        if plane_model is not None:
            p3 = plots.plot_error_plane(predictions, plane_model, out / f"error_plane_{_slug(plane_model)}.png")
            md += [f"![error over (cin, cout) for {plane_model}]({p3.name})", ""]
        md += ["CSV: [predictions.csv](predictions.csv)", ""]
    if whole_network is not None and len(whole_network):
        whole_network.to_csv(out / "whole_network.csv", index=False)
        summary = summarise_whole_network(whole_network)
        summary.to_csv(out / "whole_network_summary.csv", index=False)
        md += [
            "## Whole-network latency", "",
            "Signed % error of each model's summed prediction on the dense network and on random consistent "
            "prunings, against the exact lattice sum and (where measured) the whole-model latency. A model of "
            "kind `llm` freezes every conv's input width at its dense value (HALP), so it over-estimates pruned "
            "networks.", "",
        ]
        errors = whole_network.filter(like="err_vs_")
        if errors.notna().any().any():
            p4 = plots.plot_whole_network(whole_network, out / "whole_network.png")
            md += [markdown_table(summary), f"![whole-network error]({p4.name})", ""]
        else:
            first = next((e for e in whole_network["error"] if e), "no lattice sum and no measurement")
            md += [f"No model could price these networks (first reason: {first}).", ""]
        md += ["CSV: [whole_network.csv](whole_network.csv)", ""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path
