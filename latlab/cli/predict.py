"""``latlab predict``: a network's conv latency on a hardware profile from its LUT, without that hardware."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from db.errors import LatlabError, LUTMissError
from latlab.cli._options import (
    MODEL_HELP,
    DbOption,
    FormatOption,
    HardwareOption,
    MaskOption,
    MgpOption,
    NumClassesOption,
    SweepOption,
    echo_rows,
    parse_input_size,
    size_text,
    unseen_shape_error,
)


def predict(
    model: Annotated[str | None, typer.Option(help=f"{MODEL_HELP}.")] = None,
    module: Annotated[Path | None, typer.Option(
        help="A saved TorchScript (.pt) or torch.export (.pt2) module, e.g. the pruned.pt2 of `latlab prune`.")
    ] = None,
    mask: MaskOption = None,
    mgp: MgpOption = False,
    latency_model: Annotated[list[str] | None, typer.Option(
        "--latency-model", help="Stored latency model (`latlab models list`); repeatable.")] = None,
    kind: Annotated[str | None, typer.Option(
        help="Kinds to fit on the sweep's LUT, comma-separated (lut = exact lookup; the default without "
        "--latency-model).")] = None,
    sweep: SweepOption = None,
    hardware: HardwareOption = None,
    num_classes: NumClassesOption = None,
    input_size: Annotated[str | None, typer.Option(
        help="Input resolution, N or HxW [default: a .pt2's own, else 224].", show_default=False)] = None,
    per_layer: Annotated[bool, typer.Option("--per-layer", help="Also print every conv's predicted latency "
                                            "(with -f csv: the per-conv CSV on stdout, the totals on stderr).")
                         ] = False,
    fmt: FormatOption = "table",
    db: DbOption = None,
) -> None:
    r"""Predict the conv latency of a network on a hardware profile from its LUT, without that hardware.

    The network is a --model (pruned by --mask, if given) or a saved --module. Each conv is priced at its
    own (cin, cout) by every latency model: stored ones (--latency-model) and/or models of --kind fitted
    now on the profile's LUT (--hardware / --sweep). Batch, dtype and layout are those of the LUT. `lut` looks
    each conv up exactly (a conv the sweep did not measure is an error naming it); `mdlm`, `bilinear`, `rf`
    or `gbdt` also price widths between the measured ones. The sum covers convolutions only, as HALP's and
    MDP's objective does; `latlab measure` times the whole network on the hardware itself.

    Examples:

        latlab predict --model resnet50 --hardware "TITAN V" --per-layer
        latlab predict --model resnet50 --mask layer_masks.pkl --mgp \
            --hardware "NVIDIA H200" --kind lut,mdlm
        latlab predict --module rn50-mdp50/pruned.pt2 --latency-model h200-mdlm
    """
    from torch import nn

    from db.engine import open_database
    from latency_models.base import OutOfRangeError
    from latency_models.network import LAYER_COLUMNS, predict_network
    from latency_models.resolve import resolve_latency_model
    from latlab.cli.models import parse_kinds
    from profiler.measure import load_model, network_input_size
    from pruning.mask_files import apply_mask_file

    kinds = parse_kinds(kind) if kind is not None else [] if latency_model else ["lut"]
    if mask is not None and model is None:
        raise LatlabError("--mask prunes a --model; a saved --module is already pruned")
    database = open_database(db, create=False)
    models, sources = {}, {}
    taken = {*kinds, *LAYER_COLUMNS}  # a stored model named like a kind asked for, or a column, gets a suffix
    stored_labels = {n: f"{n} (stored)" if n in taken else n for n in dict.fromkeys(latency_model or [])}
    for label, stored in [(label, n) for n, label in stored_labels.items()] + [(k, None) for k in kinds]:
        fitted, settings, sources[label] = resolve_latency_model(
            database, latency_model=stored, sweep=sweep, hardware=hardware, kind=label)
        models[label] = (fitted, settings)
    name, net = load_model(model, module_file=module, num_classes=num_classes)
    hw = network_input_size(net, parse_input_size(input_size), module, "predict")
    if mask is not None:
        net, name = apply_mask_file(mask, net, hw, per_layer=mgp), f"{name} + {mask.name}"
    try:
        table = predict_network(net, hw, models)
    except LUTMissError as exc:
        emptied = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d) and not m.weight.any()]
        why = (f"the mask empties {', '.join(emptied)}, which latlab keeps as a zeroed channel per stripe (the "
               "masked network exactly, at any size; HALP's model prices an empty layer at 0); no LUT measures so "
               "few channels, so --kind llm or mdlm prices it" if emptied and mask is not None else
               "the sweep did not measure this conv; --kind mdlm (or rf, gbdt) predicts widths between the "
               "measured ones")
        raise LatlabError(f"{exc} — {why}") from None
    except OutOfRangeError as exc:
        raise unseen_shape_error(exc, hw, "predict") from None
    rows = []
    for label, (_, settings) in models.items():
        ms = float(table[label].sum())
        rows.append({"latency_model": label, "source": sources[label], "batch": settings.batch,
                     "dtype": settings.dtype, "layout": settings.layout, "op": settings.op, "convs": len(table),
                     "conv_ms": ms, "images_per_s": settings.batch / ms * 1e3 if ms > 0 else None})
    title = f"predicted conv latency, {name} at {size_text(hw)} px"
    if not per_layer:
        echo_rows(rows, fmt, title=title)
        return
    first = next(iter(models))
    layers = table.assign(**{f"share[{first}]_pct": 100 * table[first] / (float(table[first].sum()) or 1.0)})
    layers = layers.to_dict("records")
    if fmt == "json":  # one document
        typer.echo(json.dumps({"layers": layers, "totals": rows}, indent=2, default=str))
        return
    echo_rows(layers, fmt, title=f"{title}, per conv (ms)")
    if fmt == "markdown":
        typer.echo("")  # a blank line ends the first table
    echo_rows(rows, fmt, title=title, err=fmt == "csv")  # a CSV on stdout stays one table
