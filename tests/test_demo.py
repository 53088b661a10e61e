"""The demo chain end to end (reduced size): profile on CPU into SQLite, summarise, time, report."""

from __future__ import annotations

from pathlib import Path

from latlab.demo import DemoConfig, run_demo


def test_demo_runs_end_to_end_and_resumes(tmp_path: Path) -> None:
    cfg = DemoConfig(out_dir=str(tmp_path / "demo"), model="resnet18", input_size=64, grid="lhs:2:32",
                     repeats=3, warmup=1, model_repeats=5, threads=1, pruned_networks=1, progress=False)
    first = run_demo(cfg)
    assert first.sweep.complete and first.sweep.measured == first.sweep.planned > 0
    assert len(first.lut_rows) == 11  # ResNet-18 has 11 conv shape families
    assert first.conv_sum_ms and first.model_ms and not first.missing
    out = Path(cfg.out_dir)
    report = (out / "report.md").read_text()
    assert "## 1. LUT sweep" in report and "convs explain" in report and "## 3. Latency models" in report
    assert set(first.models["model"]) == {"lut", "llm", "mdlm", "bilinear", "rf", "gbdt"}
    assert (first.whole_network["n_pruned"] == 1).all()
    assert (out / "latency_models" / "report.md").exists() and (out / "latency_models" / "error_cdf.png").exists()
    assert list(first.pruned["method"]) == ["halp", "mdp"] and "## 4. Prune for this machine" in report
    assert (out / "lut_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "lut_summary.csv").read_text().count("\n") == 12
    assert (out / "config.json").exists()
    again = run_demo(cfg)
    assert again.sweep.measured == 0 and again.sweep.already_done == first.sweep.planned
