"""pruning.mdp_tables (HALP/MDP json tables) and the ``latlab graph`` command."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from db.errors import LatlabError
from latlab.cli.graph import graph
from pruning.graph import NetworkSpec, build_network_spec
from pruning.mdp_tables import mdp_table_paths, read_mdp_tables, write_mdp_tables


@pytest.fixture(scope="module")
def rn50() -> NetworkSpec:
    return build_network_spec("resnet50", 224, group_sizes="reference")


@pytest.fixture(scope="module")
def v3() -> NetworkSpec:
    return build_network_spec("mobilenet_v3_small", 64)


def _same(spec: NetworkSpec, tables: dict) -> None:
    assert tables["groups"] == [g.convs for g in spec.groups.values()]
    assert tables["coupled"] == [g.coupled for g in spec.groups.values()]
    assert tables["group_q"] == [g.q for g in spec.groups.values()]
    assert tables["fmap"] == {c.name: c.fmap_in for c in spec.convs}
    assert tables["bn"] == {c.name: c.bn for c in spec.convs}
    group_of = {n: i for i, g in enumerate(tables["groups"]) for n in g}
    ids = list(spec.groups)
    for c in spec.convs:
        pre = tables["pre_conv"][c.name]
        assert (None if pre is None else ids[group_of[pre]]) == c.producer_group, c.name


def test_resnet50_round_trip(rn50: NetworkSpec, tmp_path: Path) -> None:
    paths = write_mdp_tables(rn50, tmp_path, "resnet50")
    assert sorted(p.name for p in paths.values()) == [
        "resnet50_fmap.json",
        "resnet50_group_size.json",
        "resnet50_structure.json",
    ]
    structure = json.loads(paths["structure"].read_text())
    types = [g["reg_type"] for g in structure["reg_groups"]]
    assert len(types) == 37 and types.count("GS_SPARSE") == 33 and types.count("CL_GROUP") == 4
    stage2 = next(g for g in structure["reg_groups"] if "layer2.0.downsample.0" in g["layers"])
    assert stage2["reg_type"] == "CL_GROUP" and len(stage2["layers"]) == 5
    assert stage2["bn_name"][stage2["layers"].index("layer2.0.downsample.0")] == "layer2.0.downsample.1"
    # spec §2.2: the stage-2 shortcut's named producer is stage 1's downsample.0
    assert stage2["pre_conv"][stage2["layers"].index("layer2.0.downsample.0")] == "layer1.0.downsample.0"
    conv1 = structure["reg_groups"][0]
    assert conv1["layers"] == ["conv1"] and conv1["pre_conv"] == [None] and conv1["bn_name"] == ["bn1"]
    assert "layer1.0.conv1" in conv1["aft_conv"][0] and "layer1.0.downsample.0" in conv1["aft_conv"][0]
    sizes = json.loads(paths["group_size"].read_text())
    assert sizes["conv1"] == 2 and sizes["layer3.2.conv1"] == 128 and sizes["layer2.0.conv3"] == 128
    assert json.loads(paths["fmap"].read_text())["conv1"] == 224
    tables = read_mdp_tables(tmp_path, "resnet50")
    _same(rn50, tables)
    assert sum(len(g) for g in tables["groups"]) == 53


def test_prefix_round_trip(v3: NetworkSpec, tmp_path: Path) -> None:
    write_mdp_tables(v3, tmp_path, "mbv3", prefix="module.")
    structure = json.loads((tmp_path / "mbv3_structure.json").read_text())
    assert all(n.startswith("module.") for g in structure["reg_groups"] for n in g["layers"])
    _same(v3, read_mdp_tables(tmp_path, "mbv3"))  # prefix detected
    _same(v3, read_mdp_tables(tmp_path, "mbv3", prefix="module."))
    with pytest.raises(LatlabError, match="lacks the prefix"):
        read_mdp_tables(tmp_path, "mbv3", prefix="ddp.")


def test_multi_layer_gs_sparse_is_split(v3: NetworkSpec, tmp_path: Path) -> None:
    paths = write_mdp_tables(v3, tmp_path, "a")
    data = json.loads(paths["structure"].read_text())
    sparse = [g for g in data["reg_groups"] if g["reg_type"] == "GS_SPARSE"]
    merged = {k: [v for g in sparse for v in g[k]] for k in ("layers", "bn_name", "pre_conv", "aft_conv")}
    data["reg_groups"] = [{"reg_type": "GS_SPARSE", **merged}] + [
        g for g in data["reg_groups"] if g["reg_type"] == "CL_GROUP"
    ]
    paths["structure"].write_text(json.dumps(data))
    tables = read_mdp_tables(tmp_path, "a")
    assert sorted(tables["groups"]) == sorted(g.convs for g in v3.groups.values())


def _corrupt(tmp_path: Path, spec: NetworkSpec, kind: str, edit) -> Path:
    paths = write_mdp_tables(spec, tmp_path, "x")
    path = paths[kind]
    if edit is None:
        path.write_text("{not json")
    else:
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
    return path


def _first(data: dict) -> dict:
    return data["reg_groups"][0]


@pytest.mark.parametrize(
    ("kind", "edit", "message"),
    [
        ("structure", None, "not valid JSON"),
        ("structure", lambda d: d.pop("reg_groups"), "'reg_groups' list"),
        ("structure", lambda d: _first(d).update(reg_type="NOPE"), "reg_type must be one of"),
        ("structure", lambda d: _first(d).pop("bn_name"), "lacks bn_name"),
        ("structure", lambda d: _first(d)["pre_conv"].append(None), "as long as layers"),
        ("structure", lambda d: _first(d).update(layers=[]), "non-empty list"),
        ("structure", lambda d: d["reg_groups"].append(d["reg_groups"][0]), "more than one group"),
        ("structure", lambda d: d["reg_groups"][1]["pre_conv"].__setitem__(0, "ghost"), "not a listed conv"),
        ("fmap", lambda d: d.pop(next(iter(d))), "convs differ"),
        ("group_size", lambda d: d.update({next(iter(d)): 0}), "integer >= 1"),
        ("group_size", lambda d: d.update({next(iter(d)): "8"}), "integer >= 1"),
    ],
)
def test_malformed_tables_rejected(v3: NetworkSpec, tmp_path: Path, kind: str, edit, message: str) -> None:
    path = _corrupt(tmp_path, v3, kind, edit)
    with pytest.raises(LatlabError, match=message) as info:
        read_mdp_tables(tmp_path, "x")
    assert path.name in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LatlabError, match="no such file"):
        read_mdp_tables(tmp_path, "nothing")
    assert mdp_table_paths(tmp_path, "a")["fmap"] == tmp_path / "a_fmap.json"


# ------------------------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()
    app.command("graph")(graph)
    app.command("noop")(lambda: None)  # keep "graph" a subcommand
    return app


def test_cli_table(app: typer.Typer) -> None:
    result = CliRunner().invoke(app, ["graph", "--model", "mobilenet_v3_small", "--input-size", "64"])
    assert result.exit_code == 0, result.output
    assert "channel groups" in result.output and "removable blocks" in result.output
    assert "features.11" in result.output and "stripes" not in result.output and "fixed by" not in result.output
    result = CliRunner().invoke(app, ["graph", "--model", "resnext50_32x4d", "--input-size", "64"])
    assert result.exit_code == 0 and "stripes" in result.output, result.output  # grouped convs: the column shows
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["graph", "--model", "squeezenet1_1", "--input-size", "64",
                                                           "--check"])
    assert result.exit_code == 0 and "fixed by" in result.output, result.output  # concats: why groups are fixed
    assert "cat in features.3" in result.output and "network output" in result.output
    assert re.search(r"export check: kept \d+ of 48 channel items, removed 0 of 0 blocks; max \|Δ logits\| \S+ "
                     r"against the masked network; torch.export ok", result.output), result.output


def test_cli_mdp_and_json(app: typer.Typer, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "graph",
            "--model",
            "resnet50",
            "--format",
            "mdp",
            "--group-sizes",
            "reference",
            "--prefix",
            "module.",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "246" in result.output and "wrote" in result.output
    tables = read_mdp_tables(tmp_path, "resnet50", prefix="module.")
    assert len(tables["groups"]) == 37 and sum(tables["coupled"]) == 4
    result = CliRunner().invoke(app, ["graph", "--model", "mobilenet_v2", "--format", "json", "--input-size", "32"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["summary"]["blocks"] == 10
    result = CliRunner().invoke(
        app, ["graph", "--model", "mobilenet_v2", "--format", "json", "--input-size", "32", str(tmp_path)]
    )
    assert result.exit_code == 0 and (tmp_path / "mobilenet_v2_network.json").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--format", "xml"], "unknown format"),
        (["--format", "mdp"], "needs an OUTDIR"),
        (["--group-sizes", "big"], "--group-sizes"),
        (["out_dir"], "--format table only prints"),  # an OUTDIR nothing would be written to
        (["--prefix", "module."], "--format table only prints"),
        (["--format", "json", "--prefix", "module."], "does not apply to --format json"),
        (["--format", "mdp", "--input-size", "32x48", "out_dir"], "describe square feature maps"),
    ],
)
def test_cli_errors(app: typer.Typer, argv: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["graph", "--model", "resnet18", "--input-size", "32", *argv])
    assert isinstance(result.exception, LatlabError)
    assert message in str(result.exception)
