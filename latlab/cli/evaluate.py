"""``latlab evaluate``: compare latency models on a LUT (held-out keys, budgets, whole networks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from db.errors import LatlabError
from latency_models.split_kinds import SPLIT_KINDS
from latlab.cli._options import (
    DbOption,
    HardwareOption,
    SweepOption,
    command_line,
    echo_rows,
    parse_input_size,
    size_value,
)
from latlab.cli.models import ModelsOption, ParamOption, parse_kinds, parse_params

WRITES = ("report.md", "config.json", "predictions.csv", "whole_network.csv")


def _sweep_run(plan: dict, network: str) -> dict:
    """The plan's run of ``network`` (else its first run with a grid): its grid and what ``--keep`` kept."""
    runs = [run for run in plan.get("runs", []) if run.get("grid")]
    return next((run for run in runs if run.get("model") == network), runs[0] if runs else {})


def _width_rule(run: dict, trace, multiple: int | None):  # type: ignore[no-untyped-def]
    """Group sizes for random prunings that land on the sweep's own grid (``run``: :func:`_sweep_run`)."""
    grid = run.get("grid", {})
    if multiple is not None:
        return None, multiple
    if grid.get("kind") == "reference":
        from profiler._grids import rn50_group, rn50_group_q

        return {layer.name: rn50_group_q(rn50_group(layer.name)) for layer in trace.layers}, 8
    if grid.get("kind") == "lattice":  # the pruner's own sizes; random_pruned_widths stripes them as it does
        from profiler._grids import auto_group_size

        return {layer.name: auto_group_size(layer.cout) for layer in trace.layers}, 8
    return None, int(grid.get("step") or 8)


def evaluate(
    models: ModelsOption = "lut,llm,mdlm,bilinear,rf,gbdt",
    sweep: SweepOption = None, hardware: HardwareOption = None,
    split: Annotated[str, typer.Option(help=f"How to hold out LUT keys: {' | '.join(SPLIT_KINDS)}")] = "random",
    train_fraction: Annotated[float, typer.Option(help="Share of distinct LUT keys used for training.")] = 0.25,
    batch: Annotated[int | None, typer.Option(help="Only rows with this batch size.")] = None,
    dtype: Annotated[str | None, typer.Option(help="Only rows of this dtype.")] = None,
    layout: Annotated[str | None, typer.Option(help="Only rows of this memory layout (nchw, nhwc).")] = None,
    op: Annotated[str | None, typer.Option(help="Only rows of this op (conv, conv_bn_relu).")] = None,
    budget_curve: Annotated[bool, typer.Option(help="Also accuracy vs training share 5/10/25/50%.")] = False,
    network: Annotated[str | None, typer.Option(help="Whole-network check on random prunings of this model.")] = None,
    pruned: Annotated[int, typer.Option(help="Random pruned configurations for --network.")] = 20,
    input_size: Annotated[str | None, typer.Option(
        help="Input resolution of --network, N or HxW (default: the one the sweep profiled it at, else 224).")
    ] = None,
    width_multiple: Annotated[int | None, typer.Option(
        help="Pruned widths are multiples of this (default: the sweep's grid step / reference groups).")] = None,
    measure_backend: Annotated[str | None, typer.Option(
        help="Also time each pruned network on this backend (cpu | cuda | fake).")] = None,
    threads: Annotated[int | None, typer.Option(
        help="CPU threads for --measure-backend cpu (default: the sweep's own on the sweep's backend).")] = None,
    strict: Annotated[bool, typer.Option(help="Fail on any point outside a model's trained range.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the split, the models and the prunings.")] = 0,
    param: ParamOption = None,
    out: Annotated[Path, typer.Option(
        help="Directory for report.md, CSVs, PNG plots and config.json.")] = Path("latlab-eval"),
    db: DbOption = None,
) -> None:
    r"""Fit each model on a share of a sweep's LUT keys and report accuracy on the rest, with plots.

    Writes OUT/report.md with tables (MAPE, RMSPE, max error, share within ±5% / ±10%) and PNGs
    (predicted vs measured, error CDF, error over the (cin, cout) plane, whole-network error), and
    OUT/config.json (the options and every model's parameters). Splits are by distinct LUT key, so
    repeated conv shapes never leak across.

    Examples:

        latlab evaluate --models lut,llm,mdlm,rf,gbdt --hardware "TITAN V" \
            --train-fraction 0.25
        latlab evaluate --sweep 1 --split family --out eval-family
        latlab evaluate --sweep 1 --network resnet50 --pruned 20 \
            --measure-backend cpu --budget-curve
    """
    from db.engine import open_database
    from db.files import claim_output_folder
    from db.lut import find_sweep
    from latency_models.evaluate import (
        accuracy_vs_budget,
        candidate_models,
        fit_predict,
        whole_network_eval,
        write_report,
    )
    from latency_models.features import configs_from_frame, lut_frame
    from latency_models.network import lattice_sum
    from latency_models.resolve import held_settings
    from latency_models.splits import make_split
    from profiler.protocol import cache_flags
    from profiler.runner import provenance
    from pruning.rebuild import measure_pruned

    kinds = parse_kinds(models)
    overrides = parse_params(param, kinds)
    if split not in SPLIT_KINDS:
        raise LatlabError(f"unknown split {split!r}; choose from {', '.join(SPLIT_KINDS)}")
    if threads is not None and (threads < 1 or measure_backend is None):
        raise LatlabError(f"--threads {threads}: give a count >= 1 with --measure-backend")
    if not 0 < train_fraction < 1:
        raise LatlabError(f"--train-fraction must be in (0, 1), got {train_fraction}")
    claim_output_folder(out, "evaluate", writes=WRITES, create=False)  # before any work; created when written
    module = None
    if network is not None:
        from profiler.plan import resolve_model

        _, module = resolve_model(network)  # an unknown network fails before the LUT is read
    database = open_database(db, create=False, upgrade=False)
    with database.session() as session:
        settings = {"batch": batch, "dtype": dtype, "layout": layout, "op": op}
        sweep_row = find_sweep(session, sweep, hardware, holding=settings)
        X, y = lut_frame(session, sweep_row.id, **settings)
        sweep_id, plan, hw_name = sweep_row.id, dict(sweep_row.plan), sweep_row.hardware.name
        # networks and other ops are timed like the LUT's convs: with the sweep's threads (and, for the ops, its
        # cache protocol) when on the sweep's own backend
        same = sweep_row.backend == measure_backend
        sweep_cache = cache_flags(sweep_row) if same else {}
        sweep_threads = {"num_threads": sweep_row.num_threads} if same and sweep_row.num_threads else {}
    if threads is not None:
        sweep_threads = {"num_threads": threads}
    held = held_settings(X)
    if network is not None and len(held) != 1:  # before the models are fitted
        raise LatlabError(f"the sweep holds {len(held)} settings (batch dtype layout op: {'; '.join(held)}); "
                          "choose one with --batch/--dtype/--layout/--op for --network")
    candidates = candidate_models(kinds, seed=seed, strict=strict, params=overrides)
    train, test = make_split(X, split, train_fraction, seed)
    fitted: dict = {}
    # on a large LUT each fit takes minutes: one line per step on stdout (stderr holds an error alone)
    table, predictions = fit_predict(candidates, X, y, (train, test), keep_fitted=fitted,
                                     progress=lambda text: typer.echo(f"held-out {split} split: {text}"))
    if strict:
        bad = table[table["missing"] > 0]
        if len(bad):
            raise LatlabError(f"--strict: model {bad.iloc[0]['model']} cannot predict "
                              f"{int(bad.iloc[0]['missing'])} held-out points: {bad.iloc[0]['error']}")
    tables = {f"Held-out accuracy ({split} split, {train_fraction:.0%} of keys for training)": table}
    trace = None
    if network is not None:
        from profiler.plan import trace_network

        swept = [int(v) for v in _sweep_run(plan, network).get("input_size") or [224]]
        hw = parse_input_size(input_size) or (swept[0], swept[-1])
        trace = trace_network(network, hw)
    if budget_curve:
        tables["Accuracy vs training share"] = accuracy_vs_budget(  # the held-out split is one of its points
            candidates, X, y, split_kind=split, seeds=(seed,), done={(train_fraction, seed): table},
            progress=typer.echo)
    whole = None
    if trace is not None:
        first = configs_from_frame(X.iloc[:1])[0]
        measured = dict(zip(configs_from_frame(X), y, strict=True))
        run = _sweep_run(plan, str(network))
        if run.get("keep") and width_multiple is None:  # a lattice swept for `latlab prune --keep`
            from pruning.graph import trace_keeping

            trace = trace_keeping(str(network), trace.input_size, run["keep"])
        group_sizes, multiple = _width_rule(run, trace, width_multiple)
        settings = {"batch": first.batch, "dtype": first.dtype, "layout": first.layout, "op": first.op}

        def truth(widths):  # type: ignore[no-untyped-def]
            return lattice_sum(measured, trace.layers, widths, **settings)

        timed = f", timing them on {measure_backend}" if measure_backend is not None else ""
        typer.echo(f"{network}: pricing the dense network and {pruned} random prunings with {len(fitted)} "
                   f"models{timed}")
        measure = other = None
        if measure_backend is not None:
            from profiler.backends import get_backend, with_protocol
            from profiler.other_ops import measure_other_ops

            backend = with_protocol(get_backend(measure_backend), **sweep_threads)
            measure = measure_pruned(backend, module, trace, batch=first.batch, dtype=first.dtype,
                                     layout=first.layout)
            ops_backend = with_protocol(backend, **sweep_cache)
            other = measure_other_ops(ops_backend, module, trace, batch=first.batch, dtype=first.dtype, op=first.op,
                                      layout=first.layout).latency
        whole = whole_network_eval(fitted, trace, pruned, seed, measure=measure, truth=truth, other=other,
                                   group_sizes=group_sizes, multiple=multiple, **settings)
    claim_output_folder(out, "evaluate", writes=WRITES)
    report = write_report(out, tables, predictions, whole,
                          title=f"Latency models on sweep {sweep_id} ({hw_name})")
    config = {"sweep": sweep_id, "hardware": hw_name, "split": split, "train_fraction": train_fraction,
              "batch": batch, "dtype": dtype, "layout": layout, "op": op, "budget_curve": budget_curve,
              "network": network, "pruned": pruned,
              "input_size": None if trace is None else size_value(trace.input_size), "width_multiple": width_multiple,
              "measure_backend": measure_backend, "threads": threads, "strict": strict, "seed": seed,
              "models": {kind: model.get_params() for kind, model in candidates.items()},
              "command": command_line(), "provenance": provenance()}
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str))
    cols = ["model", "n_train", "n_test", "missing", "mape", "within_5", "within_10", "max_ape"]
    echo_rows(table[cols].to_dict(orient="records"), "table", title="held-out accuracy")  # 4 digits, as report.md
    typer.echo(f"report: {report}")
