"""``latlab measure``: whole-network latency on a backend, stored in the database."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any

import typer

from db.errors import LatlabError
from latlab.cli._options import (
    MODEL_HELP,
    DbOption,
    FormatOption,
    GpuOption,
    MaskOption,
    MgpOption,
    NumClassesOption,
    TrustCheckpointOption,
    WeightsOption,
    check_stored_name,
    command_line,
    echo_rows,
    gpu_options,
    parse_input_size,
    size_text,
    size_value,
)


def _predictions(database, names: list[str], net, input_size: tuple[int, int], batch: int, dtype: str,  # type: ignore[no-untyped-def]
                 layout: str) -> dict[str, float]:
    """Conv latency (ms) each stored latency model predicts for ``net`` as it is (its real cin and cout), at the
    op (conv, conv_bn_relu) the model was fitted on; its batch, dtype and layout must be the measurement's."""
    from latency_models.network import predict_network
    from latency_models.resolve import model_settings
    from latency_models.store import load_model as load_latency_model

    priced = {}
    for name in names:
        model = load_latency_model(database, name)
        settings = model_settings(model, f"stored model {name!r}")
        if (settings.batch, settings.dtype, settings.layout) != (batch, dtype, layout):
            raise LatlabError(
                f"stored model {name!r} was fitted on batch {settings.batch} {settings.dtype} {settings.layout} "
                f"({settings.op}) rows; this measurement is batch {batch} {dtype} {layout}: measure with --batch "
                f"{settings.batch} --dtype {settings.dtype} --layout {settings.layout}, or fit a model on this setting")
        priced[name] = (model, settings)
    labels = {name: f"model{i}" for i, name in enumerate(priced)}  # a model may be named "cout", a table column
    table = predict_network(net, input_size, {labels[name]: entry for name, entry in priced.items()})
    return {name: float(table[labels[name]].sum()) for name in names}


def measure(
    model: Annotated[str | None, typer.Option(help=f"{MODEL_HELP} (random init).")] = None,
    module: Annotated[Path | None, typer.Option(help="Saved TorchScript (.pt) or torch.export (.pt2) module.")] = None,
    weights: WeightsOption = None,
    trust_checkpoint: TrustCheckpointOption = False,
    mask: MaskOption = None,
    mgp: MgpOption = False,
    latency_model: Annotated[list[str] | None, typer.Option(
        "--latency-model", help="Stored latency model (`latlab models list`) to predict this network's conv "
        "latency with; repeatable; the predictions are printed and stored with the measurement.")] = None,
    num_classes: NumClassesOption = None,
    backend: Annotated[str, typer.Option(help="cuda | cpu | fake")] = "cpu",
    gpu: GpuOption = None,
    batch: Annotated[int, typer.Option(help="Batch size.")] = 1,
    input_size: Annotated[str | None, typer.Option(
        help="Input resolution, N or HxW [default: a .pt2's own, else 224].", show_default=False)] = None,
    dtype: Annotated[str, typer.Option(help="fp32 | fp16 | bf16")] = "fp32",
    layout: Annotated[str, typer.Option(help="nchw | nhwc")] = "nchw",
    warmup: Annotated[int, typer.Option(help="Untimed forward passes.")] = 20,
    repeats: Annotated[int, typer.Option(help="Timed forward passes.")] = 50,
    timer: Annotated[str, typer.Option(help="auto | cuda_events | cuda_graph")] = "auto",
    threads: Annotated[int | None, typer.Option(help="CPU threads for --backend cpu.")] = None,
    variant: Annotated[str, typer.Option(
        help="Label stored with the row, e.g. 'halp70'. Default: dense for a --model, mask:FILE with --mask; for "
             "a --module the label latlab wrote into it (prune, train, export: e.g. halp50), else module:FILE.")
    ] = "dense",
    speedup: Annotated[bool, typer.Option(
        help="With --mask: also time the unpruned --model, in turns with the pruned one, and report the speed-up.")
    ] = False,
    rounds: Annotated[int, typer.Option(
        help="With --speedup: interleaved rounds (pruned, dense, then dense, pruned, ...) that share the "
             "--repeats passes of each network.")] = 25,
    hardware_name: Annotated[str | None, typer.Option(help="Name the hardware profile yourself.")] = None,
    store: Annotated[bool, typer.Option(help="Store the result in the database.")] = True,
    fmt: FormatOption = "table",
    db: DbOption = None,
) -> None:
    r"""Time one forward pass of a whole network (eval, inference mode) and store median/IQR.

    The network is a torchvision/timm --model (optionally with --weights and pruned by a --mask file) or
    a saved --module, e.g. the pruned.pt2 of `latlab prune`. The row is stored under the network's name (a
    pruned.pt2 of latlab's carries the name of the network it was pruned from) and --variant, with the
    hardware profile and the timing protocol; with --latency-model, each model's prediction is stored too.

    Examples:

        latlab measure --model resnet50 --backend cuda --batch 256 \
            --dtype fp16 --layout nhwc
        latlab measure --model resnet50 --backend cuda --gpu 1 --batch 256
        latlab measure --model resnet18 --backend cpu --batch 1 --threads 2
        latlab measure --module pruned.pt2 --backend cuda --batch 256 \
            --variant halp55
        latlab measure --model resnet50 --mask layer_masks.pkl --mgp \
            --backend cuda --batch 256
        latlab measure --model resnet18 --mask masks.pt --speedup \
            --rounds 25 --repeats 50 --threads 1
    """
    from db.engine import open_database
    from db.keys import check_exec_settings
    from profiler.backends import get_backend
    from profiler.measure import (
        load_model,
        measure_models_interleaved,
        module_labels,
        network_input_size,
        paired_speedup,
    )
    from profiler.protocol import TimingProtocol
    from pruning.mask_files import apply_mask_file
    check_exec_settings(dtype, layout)
    device = gpu_options(backend, gpu)
    if speedup and mask is None:
        raise LatlabError("--speedup compares a --mask-pruned --model with the dense one; give --mask")
    if rounds < 1:
        raise LatlabError(f"--rounds must be >= 1, got {rounds}")
    name, net = load_model(model, weights=weights, module_file=module, num_classes=num_classes,
                           trust_checkpoint=trust_checkpoint)
    hw = network_input_size(net, parse_input_size(input_size), module, "measure")
    nets = {}
    if module is not None and variant == "dense":  # a saved module is a pruned one unless it says otherwise
        variant = module_labels(module)["variant"]
    if mask is not None:
        if model is None:
            raise LatlabError("--mask prunes a --model; a saved --module is already pruned")
        if speedup:
            nets["dense"] = net
        net = apply_mask_file(mask, net, hw, per_layer=mgp)
        variant = variant if variant != "dense" else f"mask:{mask.name}"
    nets = {variant: net, **nets}
    for option, value in (("the model name", name), ("--variant", variant), ("--hardware-name", hardware_name)):
        if store:
            check_stored_name(value, option)  # before the timing: PostgreSQL would refuse it after
    per_round = max(1, repeats // rounds) if speedup else repeats
    protocol = TimingProtocol(warmup=warmup, repeats=per_round, min_repeats=min(10, per_round), timer=timer,
                              num_threads=threads)
    timing_backend = get_backend(backend, protocol, **device)
    database = open_database(db) if store or latency_model else None
    predicted = _predictions(database, latency_model, net, hw, batch, dtype, layout) if latency_model else {}
    details: dict[str, Any] = {"input_size": size_value(hw), "command": command_line()}
    if predicted:
        details["predicted_conv_ms"] = predicted
    for what, path in (("mask", mask), ("module", module), ("weights", weights)):
        if path is not None:  # which file: two masks.pt are told apart by their digest
            details[what] = {"path": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    timed = measure_models_interleaved(
        database if store else None, timing_backend, nets, name=name, rounds=rounds if speedup else 1,
        input_shape=(batch, 3, *hw), dtype=dtype, layout=layout, hardware_name=hardware_name,
        extra_details={variant: details},
    )
    result = timed[variant]
    row = {
        "model": result.model, "variant": result.variant, "hardware": result.hardware, "backend": result.backend,
        "batch": batch, "input_size": size_text(hw), "dtype": dtype, "layout": layout, "status": result.status,
        "median_ms": result.median_ms, "iqr_ms": result.iqr_ms, "n": result.n,
        "images_per_s": result.images_per_s, "gmacs_per_image": (result.details.get("macs_per_image") or 0) / 1e9,
        "params_m": result.details.get("params", 0) / 1e6,
    }
    for lat_name, ms in predicted.items():
        row[f"predicted_conv_ms[{lat_name}]"] = ms
    if speedup:
        row.update(dense_median_ms=timed["dense"].median_ms, speedup=paired_speedup(timed["dense"], result))
    if result.message:
        row["message"] = result.message
    echo_rows([row], fmt, title="whole-model latency", record=True)
