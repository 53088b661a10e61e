"""Adaptive sampling: build a LUT with fewer measurements by measuring where the surface is least sure.

nn-Meter refines around training points whose prediction error exceeds 10%. We fit the MDLM surface
(a Gaussian process per shape family on a roofline baseline, see ``estimators``) and score every
lattice point not yet measured by a relative uncertainty: the GP's predictive std (where data is
thin) combined with the surface's disagreement with bilinear interpolation of the measured
neighbours (where the surface is likely wrong: steps, kinks). Each round measures the candidates
most likely to be predicted outside ±5% (``1 - P(|err| < 5%)``), spread over the lattice so a
batch does not cluster. The loop stops when the measurement budget is spent or when the surface's
own estimate of the share of unmeasured lattice points within ±5% reaches the target.

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
from scipy.stats import norm

from db.engine import Database
from db.errors import LatlabError, LUTMissError
from db.keys import ConvConfig
from db.lut import lookup
from latency_models.base import LatencyModel, get_model
from latency_models.features import GROUP_COLUMNS, configs_from_frame, frame_from_configs, group_key, lut_frame
from profiler.backends.base import Backend
from profiler.plan import SweepPlan
from profiler.runner import run_sweep, start_sweep

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
    return norm.cdf(tol / sigma) - norm.cdf(-tol / sigma)


def uncertainty(model: LatencyModel, candidates: pd.DataFrame, committee: LatencyModel | None) -> np.ndarray:
    """Relative uncertainty of each candidate: the surface's predictive std combined with its
    disagreement (in log space) with a second model, e.g. bilinear interpolation of the measured
    neighbours. The GP's std depends only on *where* points were measured; the disagreement reveals
    *where the surface is wrong* (steps and kinks of real latency surfaces), nn-Meter's idea."""
    sigma = np.nan_to_num(model.predict_std(candidates), nan=1.0)
    if committee is None:
        return sigma
    a = np.maximum(model.predict(candidates), 1e-12)
    b = np.maximum(committee.predict(candidates), 1e-12)
    return np.sqrt(sigma**2 + np.log(a / b) ** 2)


def propose(model: LatencyModel, candidates: pd.DataFrame, k: int, committee: LatencyModel | None = None) -> np.ndarray:
    """Positions (into ``candidates``) of the next ``k`` points to measure.

    Candidates are ranked by their probability of being predicted *outside* ±5% (from
    :func:`uncertainty`); a batch is spread out by skipping a candidate whose lattice neighbour
    (within one grid step in cin and cout, same family) is already in this batch.
    """
    sigma = uncertainty(model, candidates, committee)
    p_miss = 1.0 - estimated_within(sigma)
    groups = candidates[list(GROUP_COLUMNS)].astype(str).agg("|".join, axis=1).to_numpy()
    ci_rank = candidates.groupby(groups)["cin"].rank(method="dense").to_numpy()
    co_rank = candidates.groupby(groups)["cout"].rank(method="dense").to_numpy()
    order = np.argsort(-p_miss, kind="stable")
    picked: list[int] = []
    taken: dict[str, list[tuple[float, float]]] = {}
    for pos in order:
        if len(picked) == k:
            break
        mine = taken.setdefault(groups[pos], [])
        if any(abs(ci_rank[pos] - a) < 2 and abs(co_rank[pos] - b) < 2 for a, b in mine):
            continue
        picked.append(int(pos))
        mine.append((ci_rank[pos], co_rank[pos]))
    if len(picked) < k:  # dense batch: fill with the best remaining candidates
        chosen = set(picked)
        picked += [int(p) for p in order if int(p) not in chosen][: k - len(picked)]
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
        within = estimated_within(uncertainty(model, X_pending, None)) if pending else np.array([])
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
            committee = get_model("lut", missing="bilinear").fit(X_known, y_known)
            chosen += [pending[i] for i in propose(model, X_pending, k - len(chosen), committee)]
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
    already = {c: v for c, v in already.items() if c in set(plan.configs)}

    def measure(configs: list[ConvConfig]) -> list[float | None]:
        sub = SweepPlan(configs, plan.description, plan.layers)
        run_sweep(db, sub, backend, name=name, hardware_name=hardware_name, progress=progress, command=command)
        out: list[float | None] = []
        with db.session() as session:
            for c in configs:
                try:
                    out.append(lookup(session, sweep_id, c))
                except LUTMissError:  # stored as oom/error: the row says why
                    out.append(None)
        return out

    result = run_adaptive(plan.configs, measure, budget=budget, per_round=per_round,
                          target_within_5=target_within_5, seed=seed, already=already)
    return result, sweep_id
