from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from db.errors import LatlabError, LUTMissError
from latency_models.base import get_model
from latency_models.features import configs_from_frame, frame_from_configs
from latency_models.network import CIN_REF, lattice_sum, network_configs, network_frame, network_latency
from profiler.backends.fake import FakeBackend
from profiler.plan import TraceResult, build_plan, trace_network
from profiler.widths import dense_widths, random_pruned_widths

BATCH = 64
FAKE = FakeBackend(noise=0.0)


class TrueLatency:
    """Stand-in model: the fake GPU's noise-free latency; kind "llm" honours the cin_ref column."""

    def __init__(self, kind: str = "lut") -> None:
        self.kind = kind
        self.calls: list[pd.DataFrame] = []

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        self.calls.append(X)
        if self.kind == "llm" and CIN_REF in X:
            X = X.assign(cin=X[CIN_REF])
        return np.array([FAKE.true_latency_ms(c) for c in configs_from_frame(X)])


@pytest.fixture(scope="module")
def trace() -> TraceResult:
    return trace_network("resnet18", 64)


@pytest.fixture(scope="module")
def pruned(trace: TraceResult) -> dict[str, tuple[int, int]]:
    return random_pruned_widths(trace, 0, multiple=16)


def test_network_configs_in_layer_order_and_skips_removed(trace: TraceResult) -> None:
    widths = dense_widths(trace)
    configs = network_configs(trace.layers, widths, batch=BATCH)
    assert [(c.cin, c.cout) for c in configs] == [(la.cin, la.cout) for la in trace.layers]
    assert all(c.batch == BATCH and c.family == la.family for c, la in zip(configs, trace.layers, strict=True))
    widths["layer1.0.conv1"] = (64, 0)
    assert len(network_configs(trace.layers, widths, batch=BATCH)) == len(trace.layers) - 1
    assert len(network_configs(trace.layers, {}, batch=BATCH)) == len(trace.layers)  # missing = dense
    with pytest.raises(LatlabError, match="unknown conv"):
        network_configs(trace.layers, {"nope": (1, 1)}, batch=BATCH)


def test_frozen_frame_has_dense_cin_ref(trace: TraceResult, pruned: dict[str, tuple[int, int]]) -> None:
    frame = network_frame(trace.layers, pruned, batch=BATCH, freeze_cin=True)
    assert list(frame["layer"]) == [la.name for la in trace.layers]
    np.testing.assert_array_equal(frame[CIN_REF], [la.cin for la in trace.layers])
    np.testing.assert_array_equal(frame["cin"], [pruned[la.name][0] for la in trace.layers])
    assert CIN_REF not in network_frame(trace.layers, pruned, batch=BATCH).columns


def test_llm_freeze_over_estimates_pruned_network(trace: TraceResult, pruned: dict[str, tuple[int, int]]) -> None:
    exact = lattice_sum(FAKE.true_latency_ms, trace.layers, pruned, batch=BATCH)
    llm = TrueLatency("llm")
    frozen = network_latency(llm, trace.layers, pruned, batch=BATCH)  # kind "llm": frozen by default
    assert CIN_REF in llm.calls[-1].columns
    assert frozen > exact * 1.02
    assert network_latency(llm, trace.layers, pruned, batch=BATCH, freeze_cin=False) == pytest.approx(exact)
    # any other model priced at L(cin_ref, cout) when asked to freeze
    lut = TrueLatency("lut")
    assert network_latency(lut, trace.layers, pruned, batch=BATCH) == pytest.approx(exact)
    assert network_latency(lut, trace.layers, pruned, batch=BATCH, freeze_cin=True) == pytest.approx(frozen)
    # on the dense network freezing changes nothing
    dense = dense_widths(trace)
    assert network_latency(llm, trace.layers, dense, batch=BATCH) == pytest.approx(
        lattice_sum(FAKE.true_latency_ms, trace.layers, dense, batch=BATCH))


def test_real_llm_and_lut_on_fake_lut(trace: TraceResult) -> None:
    """The registered kinds: a LUT on a full:16 lattice is exact, HALP's LLM over-estimates pruned nets."""
    plan = build_plan(trace, "full:16", batch=BATCH)
    X = frame_from_configs(plan.configs)
    y = np.array([FAKE.true_latency_ms(c) for c in plan.configs])
    lut = get_model("lut").fit(X, y)
    llm = get_model("llm").fit(X, y)
    for seed in range(3):
        widths = random_pruned_widths(trace, seed, multiple=16)
        exact = lattice_sum(FAKE.true_latency_ms, trace.layers, widths, batch=BATCH)
        assert network_latency(lut, trace.layers, widths, batch=BATCH) == pytest.approx(exact)
        assert network_latency(llm, trace.layers, widths, batch=BATCH) > exact * 1.02
        assert network_latency(llm, trace.layers, widths, batch=BATCH, freeze_cin=False) == pytest.approx(exact)


def test_lattice_sum_with_mapping(trace: TraceResult, pruned: dict[str, tuple[int, int]]) -> None:
    configs = network_configs(trace.layers, pruned, batch=BATCH)
    table = {c: 1.5 for c in configs}
    assert lattice_sum(table, trace.layers, pruned, batch=BATCH) == pytest.approx(1.5 * len(configs))
    del table[configs[3]]
    with pytest.raises(LUTMissError, match=configs[3].family.key):
        lattice_sum(table, trace.layers, pruned, batch=BATCH)


def test_bad_predictions_raise(trace: TraceResult) -> None:
    class Bad:
        kind = "lut"

        def predict(self, X: pd.DataFrame) -> np.ndarray:
            return np.full(len(X) - 1, 1.0)

    with pytest.raises(LatlabError, match="predictions"):
        network_latency(Bad(), trace.layers, {}, batch=BATCH)
