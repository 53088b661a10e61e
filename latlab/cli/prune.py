"""``latlab prune``: one-shot latency-constrained pruning against a hardware profile's latency model."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from db.errors import LatlabError
from latlab.cli._options import (
    INPUT_SIZE_HELP,
    MODEL_HELP,
    DbOption,
    HardwareOption,
    KeepOption,
    NumClassesOption,
    SweepOption,
    TrustCheckpointOption,
    WeightsOption,
    command_line,
    echo_rows,
    parse_group_sizes,
    parse_input_size,
    size_value,
    unseen_shape_error,
)
from pruning.methods import METHODS
from pruning.solvers import list_solvers

WRITES = ("masks.pt", "pruned.pt2", "result.json", "report.md", "config.json")


def _data_batches(path: Path, input_size: tuple[int, int], batch_size: int, seed: int):  # type: ignore[no-untyped-def]
    import torch
    from torchvision import datasets

    from training.data import read_image, transforms_for

    if not path.is_dir():
        raise LatlabError(f"dataset folder {path} does not exist (expected ImageFolder layout: CLASS/IMAGE)")
    try:
        data = datasets.ImageFolder(str(path), transform=transforms_for(input_size, train=False), loader=read_image)
    except (FileNotFoundError, RuntimeError) as exc:
        raise LatlabError(f"cannot read {path} as an ImageFolder dataset: {exc}") from None
    return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True,
                                       generator=torch.Generator().manual_seed(seed))


def _step(text: str) -> None:
    """One line of progress on stdout (stderr carries only the error, if any)."""
    typer.echo(text)


def prune(
    model: Annotated[str, typer.Option(help=f"{MODEL_HELP}.")],
    method: Annotated[str, typer.Option(help=f"{' | '.join(METHODS)} (HALP=OCP+LLM, MGP+LLM, OCP+MDLM, MDP).")],
    target: Annotated[float, typer.Option(help="Kept share of the dense latency, e.g. 0.5 (HALP50).")],
    out: Annotated[Path, typer.Option(help="Directory for masks.pt, pruned.pt2, result.json, report.md.")],
    weights: WeightsOption = None,
    trust_checkpoint: TrustCheckpointOption = False,
    num_classes: NumClassesOption = None,
    input_size: Annotated[str, typer.Option(help=INPUT_SIZE_HELP)] = "224",
    latency_model: Annotated[str | None, typer.Option(
        help="Stored latency model name (`latlab models list`); default: fit one on the sweep's LUT.")] = None,
    kind: Annotated[str | None, typer.Option(help="Kind to fit when no --latency-model (default by method).")] = None,
    sweep: SweepOption = None, hardware: HardwareOption = None,
    group_sizes: Annotated[str, typer.Option(help="auto | reference (ResNet-50) | N channels per item.")] = "auto",
    data: Annotated[Path | None, typer.Option(help="ImageFolder for Taylor importance (else BN magnitude).")] = None,
    batches: Annotated[int, typer.Option(help="Batches of --data for importance.")] = 4,
    batch_size: Annotated[int, typer.Option(help="Images per importance batch.")] = 16,
    solver: Annotated[str, typer.Option(help=" | ".join(list_solvers()))] = "lagrange",
    time_limit: Annotated[float, typer.Option(help="Solver time limit (s).")] = 60.0,
    keep: KeepOption = None,
    min_keep_share: Annotated[float, typer.Option(
        help="Least share of each pruned group's channels to keep, e.g. 0.25 (at least one item; 0: no floor).")] = 0.0,
    max_kept_blocks: Annotated[int | None, typer.Option(
        help="mgp/mdp: keep at most this many removable blocks (MGP's --blocks_num).")] = None,
    seed: Annotated[int, typer.Option(
        help="Seed of the random initial weights without --weights, and of the --data batches.")] = 0,
    db: DbOption = None,
) -> None:
    r"""Prune MODEL once to TARGET × its dense latency on a hardware profile, and export the slim network.

    The latency model is a stored one (--latency-model) or fitted now on a sweep's LUT (--hardware /
    --sweep; batch, dtype and layout come from that LUT). Importance is HALP's BN-Taylor score over a few
    batches of --data, or BN |γ| without data. The problem is solved exactly; the slim network is checked
    against the masked one (max |Δ logits|) and saved with torch.export, loadable by `latlab measure --module`.

    Examples:

        latlab prune --model resnet50 --method mdp --target 0.5 \
            --hardware "TITAN V" --group-sizes reference --keep stem \
            --out rn50-mdp50
        latlab prune --model resnet18 --weights r18.pth --method halp \
            --target 0.7 --data imagenet/val --out r18-halp70
    """
    import torch

    from db.engine import open_database
    from db.files import claim_output_folder, staged_folder
    from latency_models.base import OutOfRangeError
    from latency_models.resolve import resolve_latency_model
    from profiler.measure import load_model as load_network
    from profiler.runner import provenance
    from pruning.cost import check_limits, check_prunable
    from pruning.graph import build_network_spec
    from pruning.methods import DEFAULT_KIND
    from pruning.oneshot import magnitude_layer_scores, magnitude_scores, prune_once, save_outputs, taylor_scores
    if method not in METHODS:
        raise LatlabError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if solver not in list_solvers():
        raise LatlabError(f"unknown solver {solver!r}; choose from {', '.join(list_solvers())}")
    if not 0 < time_limit < float("inf"):
        raise LatlabError(f"--time-limit must be a positive number of seconds, got {time_limit}")
    if not 0 < target <= 1:  # before loading anything
        raise LatlabError(f"--target must be the kept share of latency in (0, 1], got {target}")
    sizes, hw = parse_group_sizes(group_sizes), parse_input_size(input_size)
    claim_output_folder(out, "prune", writes=WRITES, create=False)  # before any work; created when written
    database = open_database(db, create=False, upgrade=False)
    torch.manual_seed(seed)  # the random initial weights without --weights: the same pruned.pt2 every run
    name, net = load_network(model, weights=weights, num_classes=num_classes, trust_checkpoint=trust_checkpoint)
    spec = build_network_spec(net, hw, group_sizes=sizes, name=name, keep=keep or ())
    check_prunable(spec, method)
    check_limits(spec, method, min_keep_share=min_keep_share, max_kept_blocks=max_kept_blocks)
    counts = spec.summary()
    _step(f"{name} at {hw[0]}x{hw[1]}: {counts['prunable']} prunable channel groups, {counts['items']} "
          f"items, {counts['blocks']} removable blocks")
    batches_iter = _data_batches(data, hw, batch_size, seed) if data is not None else None
    t0 = time.perf_counter()
    lat, settings, source = resolve_latency_model(database, latency_model=latency_model, sweep=sweep, hardware=hardware,
                                                  kind=kind or DEFAULT_KIND[method])
    seconds = time.perf_counter() - t0
    refit = "" if latency_model or seconds < 5 else (
        f"; `latlab fit --models {kind or DEFAULT_KIND[method]} --name NAME` stores it once, then "
        "--latency-model NAME skips this")
    _step(f"latency model: {source} ({seconds:.1f} s{refit})")
    t0 = time.perf_counter()
    if batches_iter is not None:
        importances, layer_importances = taylor_scores(net, spec, batches_iter, max_batches=batches)
        imp_source = f"BN-Taylor over {batches} batches of {data}"
    else:
        importances, layer_importances = magnitude_scores(net, spec), magnitude_layer_scores(net, spec)
        imp_source = "BN |gamma| (no --data)"
    _step(f"importance: {imp_source} ({time.perf_counter() - t0:.1f} s); solving {method} to {target:.0%} of the "
          f"dense latency with {solver}, then exporting")
    try:
        res = prune_once(net, spec, lat, importances, method=method, target=target, settings=settings,
                         solver=solver, time_limit=time_limit, min_keep_share=min_keep_share,
                         max_kept_blocks=max_kept_blocks, layer_importances=layer_importances)
    except OutOfRangeError as exc:
        raise unseen_shape_error(exc, hw, "prune") from None
    config = {"model": name, "weights": str(weights) if weights else None, "method": method, "target": target,
              "latency_model": source, "lut_settings": settings.__dict__, "group_sizes": group_sizes,
              "importance": imp_source, "solver": solver, "time_limit": time_limit,
              "input_size": size_value(hw), "keep": keep or [],
              "min_keep_share": min_keep_share, "max_kept_blocks": max_kept_blocks,
              "seed": seed, "num_classes": num_classes, "batches": batches, "batch_size": batch_size,
              "data": str(data) if data else None, "command": command_line(), "provenance": provenance()}
    claim_output_folder(out, "prune", writes=WRITES)  # again: a run may have taken the folder meanwhile
    with staged_folder(out) as stage:  # all files or none: a stopped run leaves a previous result whole
        paths = save_outputs(res, spec, stage, config)
        (stage / "config.json").write_text(json.dumps(config, indent=2))
    echo_rows([res.summary() | {"removed_blocks": len(res.removed_blocks)}], "table", title="pruned", record=True)
    typer.echo(f"wrote {', '.join(str(out / p.name) for p in paths.values())}, {out / 'config.json'}")
