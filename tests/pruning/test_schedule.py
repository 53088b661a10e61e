from __future__ import annotations

import math

import pytest
import torch

from db.errors import LatlabError
from pruning.schedule import LatencySchedule, preset


def test_targets_geometric_to_final() -> None:
    s = LatencySchedule(304.74, 0.7, 30, 40)
    t = s.targets()
    assert len(t) == 30
    assert all(a > b for a, b in zip(t, t[1:], strict=False))
    assert math.isclose(t[-1], 304.74 * 0.3)
    ratios = [b / a for a, b in zip(t, t[1:], strict=False)]
    assert all(math.isclose(r, 0.3 ** (1 / 30)) for r in ratios)
    assert math.isclose(t[0], 304.74 * 0.3 ** (1 / 30))  # spec §5.4: cap_k = L0·0.3^{(k+1)/30}


def test_halp_positions() -> None:
    s = preset("halp", 100.0, 0.45)
    steps = [g for g in range(5000) if s.is_prune_step(g)]
    assert steps == list(range(39, 1200, 40)) == s.prune_steps()
    assert [s.step_index(g) for g in steps] == list(range(30))
    assert s.done(1199) and not s.done(1198)
    assert s.accumulating(0) and s.accumulating(1199) and not s.accumulating(1200)
    with pytest.raises(LatlabError):
        s.step_index(40)


def test_presets() -> None:
    assert preset("mgp", 1.0, 0.5).prune_steps() == preset("halp", 1.0, 0.5).prune_steps()
    assert preset("mdlm", 1.0, 0.5).prune_steps() == list(range(119, 1200, 120))
    mdp = preset("mdp", 10.0, 0.7)
    assert mdp.prune_steps() == [1199]
    assert math.isclose(mdp.target(0), 3.0)
    with pytest.raises(LatlabError):
        preset("nope", 1.0, 0.5)


def test_short_epochs_use_global_steps() -> None:
    s = preset("halp", 50.0, 0.5, start=5)
    epoch_len, fired = 100, []
    for epoch in range(20):
        for i in range(epoch_len):
            g = epoch * epoch_len + i
            if s.is_prune_step(g):
                fired.append(s.step_index(g))
    assert fired == list(range(30))
    assert s.prune_steps()[0] == 44 and s.last_step == 5 + 1200 - 1


def test_state_round_trip(tmp_path) -> None:
    s = LatencySchedule(12.5, 0.3, 7, 11, 3)
    torch.save(s.state_dict(), tmp_path / "s.pt")
    t = LatencySchedule(1.0, 0.1, 1, 1)
    t.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert t == s and t.targets() == s.targets()
    with pytest.raises(LatlabError):
        LatencySchedule(1.0, 1.0, 1, 1)
