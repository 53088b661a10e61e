"""``latlab graph``: the prunable structure of a network (channel groups, q, blocks) and HALP/MDP tables."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Annotated

import typer

from db.errors import LatlabError
from latlab.cli._options import INPUT_SIZE_HELP, MODEL_HELP, KeepOption, echo_rows, parse_group_sizes, parse_input_size

FORMATS = ("table", "mdp", "json")


def graph(
    model: Annotated[str, typer.Option(help=f"{MODEL_HELP}.")],
    outdir: Annotated[Path | None, typer.Argument(help="Folder for the files of --format mdp/json.")] = None,
    format: Annotated[str, typer.Option(
        "--format", "-f",
        help="table (print only) | mdp (HALP/MDP json tables) | json (one description file)")] = "table",
    input_size: Annotated[str, typer.Option(help=INPUT_SIZE_HELP)] = "224",
    group_sizes: Annotated[str, typer.Option(
        help="auto (8/16/32 by width) | reference (HALP/MDP ResNet50 sizes) | an integer q")] = "auto",
    prefix: Annotated[str, typer.Option(help="Prefix for names in the mdp tables, e.g. 'module.' (DDP).")] = "",
    check: Annotated[bool, typer.Option(
        "--check", help="Also prune the network at random (random kept items per group, every other block "
        "removed), export it, compare it with the masked network and torch.export it: can latlab prune it?")] = False,
    keep: KeepOption = None,
) -> None:
    r"""Trace MODEL and show its channel groups, group sizes q, channel items and removable blocks.

    A group is a set of channels that must be pruned together (convs joined by a residual add, a
    depthwise conv and its producer …); a fixed group shows why it cannot be pruned. --format mdp writes
    the tables HALP/MDP's released code reads; --check proves that latlab can prune and export MODEL.

    Examples:

        latlab graph --model resnet50 --group-sizes reference
        latlab graph --model densenet121 --check
        latlab graph --model resnet50 --keep stem --keep 'layer4.*'
        latlab graph --model resnet50 --format mdp ./rn50_tables
        latlab graph --model resnet50 --format mdp --group-sizes reference \
            --prefix module. ./rn50_tables
        latlab graph --model mobilenet_v2 --format json ./tables
    """
    from db.files import claim_output_folder
    from pruning.graph import build_network_spec
    from pruning.mdp_tables import mdp_table_paths, write_mdp_tables

    if format not in FORMATS:
        raise LatlabError(f"unknown format {format!r}; choose from {', '.join(FORMATS)}")
    if format == "mdp" and outdir is None:
        raise LatlabError("--format mdp needs an OUTDIR argument to write the tables into")
    if format == "table" and (outdir is not None or prefix):
        raise LatlabError("--format table only prints; OUTDIR and --prefix apply to --format mdp (and OUTDIR to json)")
    if format == "json" and prefix:
        raise LatlabError("--prefix names the entries of the mdp tables; it does not apply to --format json")
    sizes, hw = parse_group_sizes(group_sizes), parse_input_size(input_size)
    if format == "mdp" and hw[0] != hw[1]:  # their fmap table holds one number per conv
        raise LatlabError(f"HALP/MDP's tables describe square feature maps; --input-size {input_size} is not: use a "
                          "square --input-size")
    arch = re.sub(r"[^A-Za-z0-9_.-]+", "_", model.strip().lower())
    writes = [p.name for p in mdp_table_paths(".", arch).values()] if format == "mdp" else [f"{arch}_network.json"]
    if outdir is not None:
        claim_output_folder(outdir, "graph", writes=writes, create=False)  # before any work; created when written
    if check:  # a real network to export (the graph alone is traced on the meta device)
        from profiler.plan import resolve_model

        name, net = resolve_model(model)
        spec = build_network_spec(net, hw, group_sizes=sizes, name=name, keep=keep or ())
    else:
        spec = build_network_spec(model, hw, group_sizes=sizes, keep=keep or ())
    description = spec.to_dict()
    checked = ""
    if check:
        from pruning.check import check_export

        result = check_export(net, spec)
        description["check"] = dataclasses.asdict(result)
        checked = (f"export check: kept {result.kept_items} of {result.items} channel items, removed "
                   f"{len(result.removed_blocks)} of {len(spec.blocks)} blocks; max |Δ logits| "
                   f"{result.max_logit_delta:.2g} against the masked network; torch.export ok "
                   f"({result.seconds:.1f} s)")
    if format == "json" and outdir is None:  # stdout is the JSON document alone
        typer.echo(json.dumps(description, indent=2))
        return
    summary = {"model": spec.model_name, **spec.summary()}
    echo_rows([summary], "table", title=f"{spec.model_name} at {hw[0]}x{hw[1]}", record=True)
    if checked:
        typer.echo(checked)
    if format == "table":
        striped = any(g.stripes > 1 for g in spec.groups.values())  # grouped convs: a column only then
        fixed = any(g.fixed_by for g in spec.groups.values())
        rows = [{"group": g.id, "convs": len(g.convs), "width": g.width, "q": g.q, "items": g.m,
                 **({"stripes": g.stripes} if striped else {}), "coupled": g.coupled, "prunable": g.prunable,
                 **({"fixed by": g.fixed_by} if fixed else {})} for g in spec.groups.values()]
        echo_rows(rows, "table", title="channel groups")
        if spec.blocks:
            brows = [{"block": b.name, "convs": len(b.convs), "input group": b.input_group,
                      "output group": b.output_group} for b in spec.blocks]
            echo_rows(brows, "table", title="removable blocks")
        return
    assert outdir is not None
    claim_output_folder(outdir, "graph", writes=writes)
    if format == "mdp":
        paths = write_mdp_tables(spec, outdir, arch, prefix=prefix)
        for path in paths.values():
            typer.echo(f"wrote {path}")
        return
    data = json.dumps(description, indent=2)
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / f"{arch}_network.json"
    path.write_text(data + "\n")
    typer.echo(f"wrote {path}")
