"""Adaptive sampling: build a LUT with fewer measurements by measuring where the surface is least sure.

nn-Meter refines around training points whose prediction error exceeds 10%. We fit the MDLM surface
(a Gaussian process per shape family on a roofline baseline, see ``estimators``), whose posterior
gives every lattice point not yet measured a relative uncertainty *and* tells how measuring one
point would shrink the uncertainty of its neighbours. Each round greedily picks the measurements
that raise the expected number of lattice points within ±5% the most (a batch design: after each
pick the posterior is conditioned on it, so a batch spreads out). The loop stops when the
measurement budget is spent or when the surface's own estimate of the share of unmeasured lattice
points within ±5% reaches the target.

:func:`run_adaptive` drives it against an oracle (a callable returning latencies, used by the
benchmark); :func:`adaptive_sweep` drives it against a real backend writing to the database.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import ndtr

from db.engine import Database
from db.errors import LatlabError, LUTMissError
from db.keys import ConvConfig
from db.lut import config_key, lookup, measured_keys
from latency_models.base import LatencyModel, get_model
from latency_models.features import configs_from_frame, frame_from_configs, group_key, lut_frame
from profiler.backends.base import Backend
from profiler.plan import SweepPlan
from profiler.runner import run_sweep, set_sweep_status, start_sweep

log = logging.getLogger(__name__)

LOG_5PCT = math.log(1.05)


@dataclass
class AdaptiveRound:
    measured: int
    estimated_within_5: float
    proposed: int


@dataclass
class AdaptiveResult:
    measured: list[ConvConfig]
    rounds: list[AdaptiveRound] = field(default_factory=list)
    stopped_by: str = "budget"
    model: LatencyModel | None = None


def initial_design(candidates: Sequence[ConvConfig], per_family: int = 4, seed: int = 0) -> list[int]:
    """Indices of a space-filling start: each group's corners (min/max cin x cout) plus random points."""
    rng = np.random.default_rng(seed)
    by_group: dict[tuple, list[int]] = {}
    for i, c in enumerate(candidates):
        by_group.setdefault(group_key(c), []).append(i)
    chosen: list[int] = []
    for idx in by_group.values():
        cins = [candidates[i].cin for i in idx]
        couts = [candidates[i].cout for i in idx]
        corners = {(min(cins), min(couts)), (min(cins), max(couts)), (max(cins), min(couts)), (max(cins), max(couts))}
        picked = [i for i in idx if (candidates[i].cin, candidates[i].cout) in corners]
        rest = [i for i in idx if i not in picked]
        extra = max(0, per_family - len(picked))
        if rest and extra:
            picked += list(rng.choice(rest, size=min(extra, len(rest)), replace=False))
        chosen += [int(i) for i in picked]
    return sorted(set(chosen))


def estimated_within(sigma: np.ndarray, tol: float = LOG_5PCT) -> np.ndarray:
    """P(|log error| < tol) for a zero-mean Gaussian with std ``sigma`` (log space)."""
    sigma = np.maximum(np.nan_to_num(sigma, nan=1.0), 1e-9)
    return 2.0 * ndtr(tol / sigma) - 1.0  # the standard normal CDF; scipy.stats.norm.cdf is 30× slower


def _gains(cov: np.ndarray) -> np.ndarray:
    """Expected rise in the number of points within ±5% if each candidate (column) were measured.

    Measuring j makes j exact and shrinks every other point's variance by ``cov[i, j]**2 / cov[j, j]``
    (Gaussian conditioning on a noisy observation; ``cov`` holds the noise on its diagonal).
    """
    var = np.clip(np.diag(cov), 1e-12, None)
    now = estimated_within(np.sqrt(var))
    after = np.clip(var[:, None] - cov**2 / var[None, :], 1e-12, None)
    gain = (estimated_within(np.sqrt(after)) - now[:, None]).sum(axis=0)
    return gain + (1.0 - now)  # the measured point itself becomes exact


def propose(model: LatencyModel, candidates: pd.DataFrame, k: int) -> np.ndarray:
    """Positions (into ``candidates``) of the next ``k`` points to measure.

    Greedy batch design on the MDLM surface's Gaussian process: repeatedly take the candidate whose
    measurement raises the expected number of lattice points within ±5% the most, then condition the
    group's posterior covariance on it (so a batch spreads out by itself). Models without a posterior
    covariance fall back to the largest predictive std.
    """
    if not hasattr(model, "posterior_covariance"):
        sigma = np.nan_to_num(model.predict_std(candidates), nan=1.0)
        return np.argsort(-sigma, kind="stable")[:k]
    groups = {key: (idx, cov.copy()) for key, (idx, cov) in model.posterior_covariance(candidates).items()}
    gains = {key: _gains(cov) for key, (_, cov) in groups.items()}
    picked: list[int] = []
    while len(picked) < k and groups:
        key = max(gains, key=lambda g: float(gains[g].max()))
        idx, cov = groups[key]
        j = int(np.argmax(gains[key]))
        picked.append(int(idx[j]))
        cov = cov - np.outer(cov[:, j], cov[j, :]) / max(cov[j, j], 1e-12)
        keep = np.arange(len(idx)) != j
        if keep.any():
            groups[key] = (idx[keep], cov[np.ix_(keep, keep)])
            gains[key] = _gains(groups[key][1])
        else:
            del groups[key], gains[key]
    if len(picked) < k:  # groups without a GP surface: most uncertain first
        sigma = np.nan_to_num(model.predict_std(candidates), nan=1.0)
        chosen = set(picked)
        picked += [int(p) for p in np.argsort(-sigma, kind="stable") if int(p) not in chosen][: k - len(picked)]
    return np.array(picked, dtype=int)


def run_adaptive(
    candidates: Sequence[ConvConfig], measure: Callable[[list[ConvConfig]], Sequence[float | None]], *,
    budget: int, per_round: int | None = None, target_within_5: float = 0.95, initial_per_family: int = 4,
    model_factory: Callable[[], LatencyModel] | None = None, seed: int = 0,
    already: dict[ConvConfig, float] | None = None, on_round: Callable[[AdaptiveResult], None] | None = None,
) -> AdaptiveResult:
    """Choose and measure up to ``budget`` of ``candidates`` adaptively; returns what was measured.

    ``measure(configs)`` returns their latencies (ms), None for a configuration that failed (OOM,
    error): it counts against the budget but is left out of the surface and not proposed again.
    ``already`` holds measurements to start from (a resumed sweep); they do not count.
    """
    if budget < 1:
        raise LatlabError(f"adaptive budget must be >= 1, got {budget}")
    candidates = list(dict.fromkeys(candidates))
    factory = model_factory or (lambda: get_model("mdlm", surface="gp", random_state=seed))
    values: dict[ConvConfig, float] = dict(already or {})
    failed: set[ConvConfig] = set()
    result = AdaptiveResult(measured=[])
    per_round = per_round or max(8, len(candidates) // 50)

    def take(configs: list[ConvConfig]) -> None:
        configs = [c for c in configs if c not in values and c not in failed][: budget - len(result.measured)]
        if configs:
            for c, v in zip(configs, measure(configs), strict=True):
                if v is None or not math.isfinite(v):
                    failed.add(c)
                else:
                    values[c] = float(v)
            result.measured += configs

    if len(values) < 4 * len({group_key(c) for c in candidates}):
        take([candidates[i] for i in initial_design(candidates, initial_per_family, seed)])
    while True:
        pending = [c for c in candidates if c not in values and c not in failed]
        if not pending:
            result.stopped_by = "lattice complete"
            break
        known = list(values)
        X_known, y_known = frame_from_configs(known), np.array([values[c] for c in known])
        model = factory().fit(X_known, y_known)
        result.model = model
        seen = {group_key(c) for c in known}
        unseen = [c for c in pending if group_key(c) not in seen]  # families whose points all failed so far
        pending = [c for c in pending if group_key(c) in seen]
        X_pending = frame_from_configs(pending)
        within = estimated_within(np.nan_to_num(model.predict_std(X_pending), nan=1.0)) if pending else np.array([])
        est = float(np.sum(within) / (len(pending) + len(unseen)))
        if est >= target_within_5:
            result.rounds.append(AdaptiveRound(len(values), est, 0))
            result.stopped_by = "target accuracy"
            break
        if len(result.measured) >= budget:
            result.rounds.append(AdaptiveRound(len(values), est, 0))
            result.stopped_by = "budget"
            break
        k = min(per_round, budget - len(result.measured))
        chosen = unseen[:k]
        if pending and len(chosen) < k:
            chosen += [pending[i] for i in propose(model, X_pending, k - len(chosen))]
        result.rounds.append(AdaptiveRound(len(values), est, len(chosen)))
        log.info("adaptive round: %d measured, estimated within 5%%: %.3f, measuring %d more", len(values), est,
                 len(chosen))
        take(chosen)
        if on_round is not None:
            on_round(result)
    return result


def adaptive_sweep(
    db: Database, plan: SweepPlan, backend: Backend, *, budget: int, target_within_5: float = 0.95,
    per_round: int | None = None, name: str = "", hardware_name: str | None = None, progress: bool = True,
    command: str | None = None, seed: int = 0,
) -> tuple[AdaptiveResult, int]:
    """Adaptive sampling of ``plan``'s lattice with a real backend, writing every row to the database.

    Resumable: rows already stored for this (hardware, protocol, name) seed the surface and do not
    count against the budget. Returns the result and the sweep id.
    """
    sweep_id, _ = start_sweep(db, plan, backend, name=name, hardware_name=hardware_name, command=command)
    with db.session() as session:
        try:
            X, y = lut_frame(session, sweep_id)
            already = dict(zip(configs_from_frame(X), y, strict=True))
        except LatlabError:
            already = {}
    lattice = set(plan.configs)
    already = {c: v for c, v in already.items() if c in lattice}

    def measure(configs: list[ConvConfig]) -> list[float | None]:
        sub = SweepPlan(configs, plan.description, plan.layers)
        run_sweep(db, sub, backend, name=name, hardware_name=hardware_name, progress=progress, command=command,
                  done_status="running")  # not "complete" between rounds: a stop there leaves a sample
        out: list[float | None] = []
        with db.session() as session:
            for c in configs:
                try:
                    out.append(lookup(session, sweep_id, c))
                except LUTMissError:  # stored as oom/error: the row says why
                    out.append(None)
        return out

    try:
        result = run_adaptive(plan.configs, measure, budget=budget, per_round=per_round,
                              target_within_5=target_within_5, seed=seed, already=already)
    except KeyboardInterrupt:  # e.g. while the surface is fitted between rounds
        set_sweep_status(db, sweep_id, "interrupted")
        raise
    # each round ran as a sweep of its own few points: the sweep plans the whole lattice, a sample of it stored
    start_sweep(db, plan, backend, name=name, hardware_name=hardware_name, command=command)
    with db.session() as session:
        stored = len(measured_keys(session, sweep_id, ("ok", "oom", "error")) & {config_key(c) for c in lattice})
    set_sweep_status(db, sweep_id, "complete" if stored == len(lattice) else "sampled")
    return result, sweep_id
