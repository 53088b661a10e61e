from __future__ import annotations

import math

import numpy as np
import pytest

from db.errors import LatlabError
from latency_models.metrics import METRIC_COLUMNS, error_metrics, percentage_errors


def test_hand_computed_metrics() -> None:
    # signed errors: +5 %, -10 %, 0 %, +20 %
    m = error_metrics([100.0, 200.0, 50.0, 10.0], [105.0, 180.0, 50.0, 12.0])
    assert set(m) == set(METRIC_COLUMNS)
    assert m["n"] == 4
    assert m["mape"] == pytest.approx(35.0 / 4)
    assert m["rmspe"] == pytest.approx(math.sqrt((25 + 100 + 0 + 400) / 4))
    assert m["max_ape"] == pytest.approx(20.0)
    assert m["within_5"] == pytest.approx(0.5)  # +5 % sits on the band edge and counts as inside
    assert m["within_10"] == pytest.approx(0.75)
    assert m["bias"] == pytest.approx(15.0 / 4)


def test_perfect_and_single_point() -> None:
    m = error_metrics(np.array([1.0, 2.0]), np.array([1.0, 2.0]))
    assert m["mape"] == m["rmspe"] == m["max_ape"] == m["bias"] == 0.0
    assert m["within_5"] == m["within_10"] == 1.0
    one = error_metrics([4.0], [3.0])
    assert one["mape"] == pytest.approx(25.0) and one["bias"] == pytest.approx(-25.0)
    assert one["within_10"] == 0.0


def test_percentage_errors_sign() -> None:
    np.testing.assert_allclose(percentage_errors([2.0, 4.0], [3.0, 3.0]), [50.0, -25.0])


def test_empty_gives_nan() -> None:
    m = error_metrics([], [])
    assert m["n"] == 0
    assert all(math.isnan(m[k]) for k in METRIC_COLUMNS if k != "n")


@pytest.mark.parametrize(("t", "p"), [([1.0, 2.0], [1.0]), ([0.0], [1.0]), ([1.0], [float("nan")])])
def test_bad_input_raises(t: list[float], p: list[float]) -> None:
    with pytest.raises(LatlabError):
        error_metrics(t, p)
