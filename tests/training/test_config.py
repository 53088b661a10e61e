"""Config loading: unknown keys, types, overrides, presets, resolved config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from db.errors import LatlabError
from training.config import load_config, save_config

ROOT = Path(__file__).resolve().parents[2]

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("optim:\n  lr: 0.1\n  lrr: 0.2\n")
    with pytest.raises(LatlabError, match=r"bad\.yaml.*unknown key 'optim\.lrr'"):
        load_config(p)
    p.write_text("optimiser: {}\n")
    with pytest.raises(LatlabError, match="unknown key 'optimiser'"):
        load_config(p)
    with pytest.raises(LatlabError, match="unknown key 'run.nope'"):
        load_config(None, ["run.nope=1"])


def test_types_and_ranges_are_checked(tmp_path: Path) -> None:
    with pytest.raises(LatlabError, match="optim.epochs must be an integer"):
        load_config(None, {"optim.epochs": "ten"})
    with pytest.raises(LatlabError, match="prune.method must be one of"):
        load_config(None, ["prune.method=halp2"])
    with pytest.raises(LatlabError, match="prune.ratio must be in"):
        load_config(None, ["prune.ratio=1.5"])
    with pytest.raises(LatlabError, match=r"prune.min_keep_share must be in \[0, 1\]"):
        load_config(None, ["prune.min_keep_share=-0.1"])
    with pytest.raises(LatlabError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    for override, message in (("prune.time_limit=-1", "prune.time_limit must be a finite number > 0"),
                               ("optim.lr=.inf", "optim.lr must be a finite number > 0"),
                               ("optim.weight_decay=.nan", "optim.weight_decay must be a finite number >= 0"),
                               ("optim.momentum=5", r"optim.momentum must be in \[0, 1\)"),
                               ("model.num_classes=0", "model.num_classes must be a finite number > 0")):
        with pytest.raises(LatlabError, match=message):
            load_config(None, [override])


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_parses(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.prune.method in ("halp", "mgp", "mdlm", "mdp")
    if "resnet50" in path.stem:
        assert cfg.prune.ratio == 0.7 and cfg.optim.epochs == 90 and cfg.optim.weight_decay == 2**-15
        assert (cfg.optim.schedule, cfg.optim.warmup_epochs) == ("linear", 16)  # MDP's trainer, HALP's row too
        assert cfg.prune.keep == ["stem"]  # HALP and MDP never prune conv1 (spec §4.4, §8.2)


def test_list_keys_take_a_list_or_one_value() -> None:
    assert load_config(None, ["prune.keep=[stem, 'layer4.*']"]).prune.keep == ["stem", "layer4.*"]
    assert load_config(None, ["prune.keep=stem"]).prune.keep == ["stem"]
    assert load_config(None, {"prune.keep": []}).prune.keep == []
    with pytest.raises(LatlabError, match=r"prune.keep\[1\] must be a string"):
        load_config(None, {"prune.keep": ["stem", {"a": 1}]})


def test_a_checkpoint_without_a_newer_key_resumes_with_its_default(tmp_path: Path) -> None:
    from training.checkpoint import check_compatible

    saved = load_config(None).to_dict()
    del saved["prune"]["keep"]  # written before prune.keep existed
    check_compatible(saved, load_config(None).to_dict(), tmp_path / "ckpt.pt")
    with pytest.raises(LatlabError, match=r"prune.keep: checkpoint \[\] vs config \['stem'\]"):
        check_compatible(saved, load_config(None, ["prune.keep=[stem]"]).to_dict(), tmp_path / "ckpt.pt")
    with pytest.raises(LatlabError, match=r"run.max_iters_per_epoch: checkpoint None vs config 5"):  # the LR schedule
        check_compatible(saved, load_config(None, ["run.max_iters_per_epoch=5"]).to_dict(), tmp_path / "ckpt.pt")
    with pytest.raises(LatlabError, match=r"prune.hardware: checkpoint None vs config 'TITAN V'"):  # another LUT
        check_compatible(saved, load_config(None, ["prune.hardware=TITAN V"]).to_dict(), tmp_path / "ckpt.pt")


def test_overrides_and_resolved_config(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS[0], ["optim.epochs=3", "run.amp=false", "prune.group_sizes=16", "model.weights=null"])
    assert cfg.optim.epochs == 3 and cfg.run.amp is False and cfg.prune.group_sizes == 16
    cfg2 = load_config(None, {"data.input_size": 64, "run.seed": 5})
    assert (cfg2.data.input_size, cfg2.run.seed) == (64, 5)
    path = save_config(cfg, tmp_path / "run" / "config.resolved.yaml")
    again = load_config(path)
    assert again.to_dict() == cfg.to_dict()
    assert yaml.safe_load(path.read_text())["optim"]["epochs"] == 3
    cfg.prune.db = "postgresql+psycopg://me:hunter2@lut-server/lut"  # the saved file hides the password
    assert yaml.safe_load(save_config(cfg, path).read_text())["prune"]["db"] == "postgresql+psycopg://me:***@lut-server/lut"


def test_presets_by_name_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--config mdp_resnet50` (or the docs' configs/mdp_resnet50.yaml) works outside the checkout too."""
    from training.config import config_path, list_presets

    monkeypatch.chdir(tmp_path)
    assert {"halp_resnet50", "mgp_resnet50", "mdlm_resnet50", "mdp_resnet50"} <= set(list_presets())
    for name in ("mdp_resnet50", "mdp_resnet50.yaml", "configs/mdp_resnet50.yaml"):
        assert config_path(name).read_text() == (ROOT / "configs" / "mdp_resnet50.yaml").read_text()
        assert load_config(name).prune.method == "mdp"
    (tmp_path / "mdp_resnet50.yaml").write_text("optim:\n  epochs: 30\n")  # a file of that name comes first
    assert load_config("mdp_resnet50.yaml").optim.epochs == 30
    with pytest.raises(LatlabError, match=r"elsewhere/mdp_resnet50.yaml does not exist \(bundled presets: demo_"):
        load_config("elsewhere/mdp_resnet50.yaml")


def test_a_home_folder_path_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``~`` in a YAML path is the home folder, as in a shell, not a folder named ``~`` in the working directory."""
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_config(None, ["data.path=~/digits", "run.out=~/runs/a", "model.weights=~/w.pt", "prune.db=~/lut.db"])
    assert (cfg.data.path, cfg.run.out, cfg.model.weights, cfg.prune.db) == (
        f"{tmp_path}/digits", f"{tmp_path}/runs/a", f"{tmp_path}/w.pt", f"{tmp_path}/lut.db")
