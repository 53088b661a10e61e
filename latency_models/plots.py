"""PNG plots of latency-model accuracy (matplotlib, Agg canvas; no display, no pyplot state).

Inputs are the long frames of :mod:`latency_models.evaluate`: per-conv ``predictions`` (columns
``model``, ``measured``, ``predicted``, ``pct_error``, ``family``, ``cin``, ``cout``, ...) and the
``whole_network`` frame. Every function writes one PNG and returns its path.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from db.errors import LatlabError

__all__ = ["plot_error_cdf", "plot_error_plane", "plot_pred_vs_measured", "plot_whole_network"]

_DPI = 110


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def _valid(predictions: pd.DataFrame) -> pd.DataFrame:
    need = {"model", "measured", "predicted"}
    if not need <= set(predictions.columns):
        raise LatlabError(f"predictions need columns {sorted(need)}, got {list(predictions.columns)}")
    ok = predictions[np.isfinite(predictions["predicted"]) & (predictions["measured"] > 0)].copy()
    ok["pct_error"] = 100.0 * (ok["predicted"] - ok["measured"]) / ok["measured"]
    return ok


def _models(frame: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(frame["model"]))


def _readable_log_ticks(ax: Any) -> None:
    """Log axes labelled at 1, 2 and 5 × 10^k as plain numbers: a range under a decade gets labels that do not
    run into each other (matplotlib's default labels every minor tick there)."""
    from matplotlib import ticker

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        axis.set_minor_formatter(ticker.NullFormatter())


def plot_pred_vs_measured(predictions: pd.DataFrame, path: str | Path, *, title: str | None = None) -> Path:
    """Log-log scatter of predicted vs measured latency, one panel per model, with y = x and a ±10% band."""
    ok = _valid(predictions)
    models = _models(predictions)
    n = max(len(models), 1)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = _new_figure(4.2 * cols, 3.9 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    pos = ok[(ok["predicted"] > 0)]
    lo = float(min(pos["measured"].min(), pos["predicted"].min())) if len(pos) else 1e-3
    hi = float(max(pos["measured"].max(), pos["predicted"].max())) if len(pos) else 1.0
    lo, hi = lo / 1.3, min(hi * 1.3, max(hi, 1e300))  # a margin, short of overflowing to inf
    line = np.geomspace(lo, hi, 50)
    for ax, name in zip(axes, models, strict=False):
        scored, part = ok[ok["model"] == name], pos[pos["model"] == name]
        missing = int((predictions["model"] == name).sum() - len(scored))
        not_drawn = len(scored) - len(part)  # predictions of 0 ms or less have no place on log axes
        ax.fill_between(line, 0.9 * line, 1.1 * line, color="tab:green", alpha=0.15, label="±10%")
        ax.plot(line, line, color="black", lw=1, label="y = x")
        ax.scatter(part["measured"], part["predicted"], s=7, alpha=0.45, color="tab:blue", lw=0,
                   label="test configurations")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        extra = f", {missing} missing" if missing else ""
        extra += f"\n{not_drawn} at ≤ 0 ms not drawn" if not_drawn else ""
        _readable_log_ticks(ax)
        if len(scored):  # the same points as the tables
            mape = scored["pct_error"].abs().mean()
            within = (scored["pct_error"].abs() <= 10).mean() * 100
            ax.set_title(f"{name}\nMAPE {mape:.2f}%, {within:.0f}% within ±10%{extra}", fontsize=9)
        else:
            ax.set_title(f"{name}\nno predictions{extra}", fontsize=9)
            ax.text(0.5, 0.5, "model could not predict\nany test configuration", transform=ax.transAxes,
                    ha="center", va="center", color="tab:red", fontsize=9)
        ax.set_xlabel("measured latency (ms)")
        ax.set_ylabel("predicted latency (ms)")
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes[len(models):]:
        ax.set_visible(False)
    if models:
        axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(title or "Predicted vs measured latency per convolution (held-out keys)")
    return _save(fig, path)


def plot_error_cdf(predictions: pd.DataFrame, path: str | Path, *, title: str | None = None) -> Path:
    """Cumulative share of test points vs |% error|, one curve per model (log x), with 5% / 10% markers."""
    ok = _valid(predictions)
    fig = _new_figure(7.0, 4.5)
    ax = fig.add_subplot()
    floor = 1e-2
    for name in _models(predictions):
        err = np.sort(np.maximum(ok.loc[ok["model"] == name, "pct_error"].abs().to_numpy(), floor))
        if err.size == 0:
            ax.plot([], [], lw=1.6, ls=":", label=f"{name} (no predictions)")
            continue
        share = np.arange(1, err.size + 1) / err.size
        ax.step(err, share, where="post", lw=1.6, label=f"{name} (MAPE {err.mean():.2f}%)")
    for x in (5, 10):
        ax.axvline(x, color="grey", ls="--", lw=0.8)
        ax.text(x, 0.02, f" {x}%", color="grey", fontsize=8)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("|prediction error| (%), log scale")
    ax.set_ylabel("share of test configurations")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or "Error CDF per model (held-out keys)")
    return _save(fig, path)


def plot_error_plane(
    predictions: pd.DataFrame, model: str, path: str | Path, *, max_surfaces: int = 4, title: str | None = None,
) -> Path:
    """Signed % error of ``model`` over the (cin, cout) plane, one panel per surface (largest first).

    A surface is a (family, batch, dtype, layout, op) combination; red over-estimates, blue under-estimates.
    """
    ok = _valid(predictions)
    part = ok[ok["model"] == model]
    if part.empty:
        raise LatlabError(f"no finite predictions of model {model!r} to plot")
    surface_cols = [c for c in ("family", "batch", "dtype", "layout", "op") if c in part.columns]
    sizes = part.groupby(surface_cols, sort=False).size().sort_values(ascending=False)
    chosen = list(sizes.index[:max_surfaces])
    n = len(chosen)
    cols = min(2, n)
    rows = math.ceil(n / cols)
    fig = _new_figure(5.2 * cols, 4.3 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    lim = float(np.nanpercentile(part["pct_error"].abs(), 95)) if len(part) else 1.0
    lim = max(lim, 1.0)
    norm = TwoSlopeNorm(vmin=-lim, vcenter=0.0, vmax=lim)
    sc = None
    for ax, key in zip(axes, chosen, strict=False):
        key = key if isinstance(key, tuple) else (key,)
        sel = np.ones(len(part), dtype=bool)
        for c, v in zip(surface_cols, key, strict=True):
            sel &= (part[c] == v).to_numpy()
        pts = part[sel]
        sc = ax.scatter(pts["cin"], pts["cout"], c=np.clip(pts["pct_error"], -lim, lim), cmap="RdBu_r", norm=norm,
                        s=16, edgecolors="0.55", linewidths=0.3)  # grey rim: near-zero errors stay visible
        label = dict(zip(surface_cols, key, strict=True))
        sub = ", ".join(f"{k}={v}" for k, v in label.items() if k != "family")
        ax.set_title(f"{label.get('family', '')}\n{sub} ({len(pts)} points, "
                     f"MAPE {pts['pct_error'].abs().mean():.2f}%)", fontsize=8)
        ax.set_xlabel("cin (input channels)")
        ax.set_ylabel("cout (output channels)")
        ax.grid(True, alpha=0.25)
    for ax in axes[n:]:
        ax.set_visible(False)
    if sc is not None:
        cbar = fig.colorbar(sc, ax=list(axes[:n]), shrink=0.9)
        cbar.set_label("signed error (%)  red: over-estimate, blue: under")
    fig.suptitle(title or f"Error of {model} over the (cin, cout) plane (largest surfaces; colour clipped at "
                          f"±{lim:.1f}%)", fontsize=10)
    return _save(fig, path)


def plot_whole_network(whole: pd.DataFrame, path: str | Path, *, title: str | None = None) -> Path:
    """Strip chart of each model's whole-network % error (pruned configs as dots, dense as a star, mean bar)."""
    refs = [(col, label) for col, label in (("err_vs_lattice_pct", "exact lattice sum"),
                                            ("err_vs_measured_pct", "measured whole model"))
            if col in whole.columns and whole[col].notna().any()]
    if not refs:
        raise LatlabError("whole-network frame has no error column with values (no truth or measure given)")
    models = _models(whole)
    fig = _new_figure(min(max(6.0, 1.2 * len(models) + 2.5), 14.0), 4.0 * len(refs) + 0.4)
    axes = np.atleast_1d(fig.subplots(len(refs), 1, squeeze=False)).ravel()
    rng = np.random.default_rng(0)
    for ax, (col, label) in zip(axes, refs, strict=True):
        for i, name in enumerate(models):
            part = whole[whole["model"] == name]
            pruned = part.loc[~part["dense"], col].dropna().to_numpy()
            dense = part.loc[part["dense"], col].dropna().to_numpy()
            if pruned.size:
                ax.bar(i, pruned.mean(), width=0.6, color="tab:blue", alpha=0.25,
                       label="mean over pruned" if i == 0 else None)
                ax.scatter(i + rng.uniform(-0.18, 0.18, pruned.size), pruned, s=14, color="tab:blue", alpha=0.7,
                           label="random pruned network" if i == 0 else None)
            if dense.size:
                ax.scatter([i], dense, marker="*", s=140, color="tab:red", edgecolors="black", lw=0.5, zorder=3,
                           label="dense network" if i == 0 else None)
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models, rotation=20, ha="right")
        ax.set_ylabel("signed error of summed prediction (%)")
        ax.set_title(f"vs {label}", fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title or "Whole-network latency error (positive = over-estimate)")
    return _save(fig, path)
