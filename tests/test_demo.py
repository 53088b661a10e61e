"""The demo chain end to end (reduced size): profile on CPU into SQLite, summarise, time, report."""

from __future__ import annotations

import json
from pathlib import Path

from latlab.demo import DemoConfig, run_demo


def test_demo_runs_end_to_end_and_resumes(tmp_path: Path) -> None:
    cfg = DemoConfig(out_dir=str(tmp_path / "demo"), model="resnet18", input_size=64, grid="lhs:4:16",
                     repeats=3, warmup=1, model_repeats=5, threads=1, pruned_networks=1, progress=False,
                     dense_epochs=1, finetune_epochs=2, finetune_targets=(0.8,), max_iters_per_epoch=10,
                     model_rounds=2)
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
    assert list(first.stage_s)[0] == "1. LUT sweep" and all(t >= 0 for t in first.stage_s.values())
    assert "## Time per stage" in report and "| total |" in report
    ft = first.finetuned.set_index("method")
    assert list(ft.index) == ["dense", "halp", "mdp"] and "## 5. Prune while fine-tuning" in report
    for method in ("halp", "mdp"):  # each pruned network was trained, exported, timed and stored
        assert ft.loc[method, "measured_ms"] > 0 and 0 <= ft.loc[method, "top1"] <= 100
        assert (out / "runs" / f"digits-{method}80" / "pruned.pt2").exists()
    assert (out / "finetune.png").read_bytes()[:4] == b"\x89PNG" and (out / "finetune.csv").exists()
    for method, kind in (("halp", "llm"), ("mdp", "mdlm")):  # pruned with the models the report evaluated
        result = json.loads((out / "runs" / f"digits-{method}80" / "result.json").read_text())
        assert result["latency_model"] == f"stored model 'demo-sweep{first.sweep.sweep_id}-{kind}'"
    from db import open_database
    from latency_models.store import stored_models

    listed = {m["name"]: m for m in stored_models(open_database(out / "latlab.db"))}
    assert listed[f"demo-sweep{first.sweep.sweep_id}-mdlm"]["mape"] > 0  # with its held-out scores
    from sqlalchemy import select

    from db.models import ModelMeasurement

    with open_database(out / "latlab.db").session() as session:
        stored = {m.variant: m.details for m in session.scalars(select(ModelMeasurement))}
    assert {"digits-dense", "digits-halp80", "digits-mdp80"} <= set(stored)
    assert set(stored["digits-mdp80"]["predicted_conv_ms"]) == {"llm_frozen", "mdlm"}
    assert 0 < stored["digits-mdp80"]["predicted_other_ops_ms"] <= stored["digits-dense"]["predicted_other_ops_ms"]
    assert len(stored["digits-dense"]["round_median_ms"]) == cfg.model_rounds  # timed in interleaved rounds
    assert ft.loc["dense", "speedup"] == 1.0 and ft.loc["halp", "speedup"] > 0
    assert first.other_ops is not None and first.other_ops.dense_ms > 0 and "convs + other ops explain" in report
    for col in ("mdlm+other_err_pct", "llm_frozen+other_speedup_err_pct", "mdlm_speedup_err_pct"):
        assert ft[col].notna().all() and col in report
    cfg.finetune = False
    again = run_demo(cfg)
    assert again.sweep.measured == 0 and again.sweep.already_done == first.sweep.planned
    cfg.llc_flush, cfg.pruned_networks = True, 0  # another protocol: a sweep of its own in the same database
    cold = run_demo(cfg)
    assert cold.sweep.sweep_id != first.sweep.sweep_id and cold.sweep.measured == first.sweep.planned
    assert "cold cache" in cold.report_path.read_text() and cold.other_ops is not None


def test_demo_cli_checks_its_stage_sizes_before_any_work(tmp_path, cli) -> None:  # type: ignore[no-untyped-def]
    for flag in ("--max-iters", "--dense-epochs", "--finetune-epochs"):
        code, _, err = cli(["demo", "--out", str(tmp_path / "d"), flag, "0"])
        assert code != 0 and f"{flag} must be >= 1, got 0" in err
    assert not (tmp_path / "d").exists()


def test_finetune_schedules_fit_any_run_length() -> None:
    """`--max-iters 5` compresses HALP's 6 steps 3 apart and MDP's step at 10 into the run (each must end
    before the run does); at 18+ iterations they are the papers' own."""
    from latlab.demo import finetune_schedules

    for iterations in range(1, 40):
        for method, s in finetune_schedules(iterations).items():
            assert 1 <= s["prune.steps"] * s["prune.every"] <= iterations, (iterations, method, s)
    assert finetune_schedules(18) == {"halp": {"prune.steps": 6, "prune.every": 3},
                                      "mdp": {"prune.steps": 1, "prune.every": 10}}
