"""The predicted-vs-measured benchmark runs on any backend (here the fake GPU) and records what it ran on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.prediction_error import main as prediction_error


@pytest.mark.slow
def test_prediction_error_runs_on_another_backend(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pe"
    assert prediction_error(["--backend", "fake", "--batch", "2", "--dtype", "fp16", "--layout", "nhwc",
                             "--repeats", "1", "--rounds", "2", "--targets", "0.8,0.02", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["backend"] == "fake" and result["machine"]["device"].startswith("latlab-fake-gpu")
    assert (result["batch"], result["dtype"], result["layout"]) == (2, "fp16", "nhwc")
    assert [r["network"] for r in result["rows"]] == ["halp80", "mdp80"]
    assert [u["network"] for u in result["unreached"]] == ["halp2", "mdp2"]  # recorded, and the rest went on
    assert "minimum achievable latency" in result["unreached"][0]["why"]
    assert all(r["measured_ms"] > 0 and r["speedup"] > 1 for r in result["rows"])
    errors = {s["error"] for s in result["summary"]}
    assert {"llm_speedup_err_pct", "mdlm_speedup_err_pct", "mdlm+other_speedup_err_pct"} <= errors
    assert "backend `fake`, batch 2, fp16, nhwc" in out.with_suffix(".md").read_text()
