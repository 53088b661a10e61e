"""The training-throughput benchmark runs end to end on the CPU, slim rows included (a fake-backend LUT)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import train_throughput
from tests.training.helpers import make_lut_db


def test_train_throughput_with_slim_networks(tmp_path: Path) -> None:
    db = make_lut_db(tmp_path / "lut.db")
    out = tmp_path / "tt"
    assert train_throughput.main(["--device", "cpu", "--model", "resnet18", "--batch", "2", "--input-size", "32",
                                  "--warmup", "1", "--iters", "2", "--rounds", "2", "--db", db, "--lut-size", "32",
                                  "--target", "0.7", "--out", str(out)]) == 0
    rows = {r["variant"]: r for r in json.loads(out.with_suffix(".json").read_text())["rows"]}
    assert list(rows) == ["reference", "latlab-halp", "latlab-mdp", "slim-halp", "slim-mdp"]
    assert rows["slim-halp"]["params_m"] < rows["reference"]["params_m"]
    assert rows["latlab-halp"]["aten_ops"] > rows["slim-halp"]["aten_ops"]  # no masks, no importance
    assert len(rows["slim-mdp"]["ms_per_round"]) == 2 and "slim-mdp" in out.with_suffix(".md").read_text()
