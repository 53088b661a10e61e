"""The benchmarks run on any backend (here the fake GPU) and record what they ran on; the model-zoo check records
every outcome."""

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


def test_model_zoo_records_every_outcome(tmp_path: Path) -> None:
    from benchmarks.model_zoo import main as model_zoo

    out = tmp_path / "zoo"
    assert model_zoo(["--models", "resnet18,convnext_tiny,vit_b_16", "--input-size", "32", "--out", str(out)]) == 0
    rows = {r["model"]: r for r in json.loads(out.with_suffix(".json").read_text())["rows"]}
    assert rows["resnet18"]["status"] == "ok" and rows["resnet18"]["max_logit_delta"] < 1e-4
    assert 0 < rows["resnet18"]["kept_items"] < rows["resnet18"]["items"] and rows["resnet18"]["removed_blocks"] == 4
    assert rows["convnext_tiny"]["status"] == "nothing to prune (fixed by add, permute)"
    assert rows["vit_b_16"]["status"].startswith("refused: shape propagation")  # ViT needs 224 px; the rest went on
    assert "1 pruned and exported, 1 with nothing to prune, 1 refused (with the reason), 0 failed" in out.with_suffix(
        ".md").read_text()


def test_recorded_command_can_be_pasted_back() -> None:
    from benchmarks._report import command_line

    line = command_line("export_speed", ["--sweep-name", "", "--db", "my luts.db"])
    assert line == "python -m benchmarks.export_speed --sweep-name '' --db 'my luts.db'"


def test_export_speed_summary_keeps_error_size_apart_from_bias() -> None:
    import pandas as pd

    from benchmarks.export_speed import _summary

    errors = {"_speedup_err_pct": [2.0, -6.0], "+other_speedup_err_pct": [1.0, -1.0], "+other_err_pct": [8.0, -8.0]}
    pruned = pd.DataFrame({f"{p}{k}": v for p in ("llm_frozen", "mdlm") for k, v in errors.items()})
    row = _summary(pruned).set_index("predictor").loc["mdlm"]
    assert row["speed-up error, mean abs %"] == 4.0 and row["within 5%"] == "1/2"
    assert row["+ other ops: latency error, mean abs %"] == 8.0  # errors of either sign do not cancel out
    assert row["+ other ops: latency error, mean (bias) %"] == 0.0
