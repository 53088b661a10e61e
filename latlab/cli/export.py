"""``latlab export``: a physically smaller network from a model, its weights and a mask file, as pt2 and ONNX."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from db.errors import LatlabError
from latlab.cli._options import (
    INPUT_SIZE_HELP,
    MODEL_HELP,
    MaskOption,
    MgpOption,
    NumClassesOption,
    TrustCheckpointOption,
    WeightsOption,
    command_line,
    echo_rows,
    parse_input_size,
)

FORMATS = ("pt2", "onnx")
WRITES = ("masks.pt", "pruned.pt2", "pruned.onnx", "result.json")


def _formats(text: str) -> list[str]:
    chosen = [f.strip().lower() for f in text.split(",") if f.strip()]
    if not chosen or any(f not in FORMATS for f in chosen):
        raise LatlabError(f"--format takes a comma-separated list of {', '.join(FORMATS)}, got {text!r}")
    return list(dict.fromkeys(chosen))


def export(
    out: Annotated[Path, typer.Option(help="Directory for pruned.pt2 / pruned.onnx, masks.pt and result.json.")],
    model: Annotated[str | None, typer.Option(
        help=f"{MODEL_HELP} (random init without --weights).")] = None,
    weights: WeightsOption = None,
    trust_checkpoint: TrustCheckpointOption = False,
    mask: MaskOption = None,
    mgp: MgpOption = False,
    module: Annotated[Path | None, typer.Option(
        help="A saved torch.export program (.pt2, e.g. the pruned.pt2 of `latlab prune`) to convert instead.")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="Comma-separated: pt2 (torch.export) | onnx.")] = "pt2",
    num_classes: NumClassesOption = None,
    input_size: Annotated[str, typer.Option(help=f"{INPUT_SIZE_HELP[:-1]}, for --model.")] = "224",
    opset: Annotated[int | None, typer.Option(help="ONNX opset (default: the exporter's).")] = None,
) -> None:
    r"""Write the physically pruned network that a mask file describes, checked against the masked one.

    HALP and MDP train masked dense networks: give their checkpoint as --weights and their group_mask.pkl
    (or layer_masks.pkl with --mgp) as --mask; latlab's own masks.pt works the same way. The slim network is
    compared with the masked dense one (max |Δ logits|) before anything is written, and saved as
    torch.export (pruned.pt2, any batch size; `latlab measure --module` times it) and/or ONNX (pruned.onnx
    with a dynamic batch, for TensorRT, ONNX Runtime or OpenVINO; checked in ONNX Runtime when it is
    installed). Without --mask, the network is exported as it is.

    Examples:

        latlab export --model resnet50 --weights mdp_checkpoint.pth.tar \
            --mask layer_masks.pkl --mgp --format pt2,onnx --out rn50-mdp
        latlab export --module rn50-mdp50/pruned.pt2 --format onnx --out rn50-onnx
        trtexec --onnx=rn50-onnx/pruned.onnx --shapes=x:256x3x224x224 --fp16
    """
    import torch

    from db.files import claim_output_folder, staged_folder
    from profiler.measure import count_params_and_macs, load_model, load_program, module_labels, save_program
    from profiler.runner import provenance
    from pruning.export import export_checked, export_program, save_masks
    from pruning.mask_files import load_masks
    from pruning.onnx_export import onnx_input_name, onnx_max_delta, require_onnx, save_onnx

    formats = _formats(fmt)
    if "onnx" in formats:
        require_onnx()
    if (model is None) == (module is None):
        raise LatlabError("give either --model (with --weights and --mask) or a saved --module, not both")
    if module is not None and (mask or weights):
        raise LatlabError("--mask and --weights apply to --model; a saved --module is exported as it is")
    claim_output_folder(out, "export", writes=WRITES, create=False)  # before any work; created when written
    row: dict[str, Any]
    if module is not None:
        program, size = load_program(module)
        slim, row = program.module(), {"source": str(module)}
        labels = module_labels(module)
    else:
        name, net = load_model(model, weights=weights, num_classes=num_classes, trust_checkpoint=trust_checkpoint)
        size = parse_input_size(input_size)
        slim, row = net, {"source": name + (f" + {weights.name}" if weights else "")}
        labels = {"model": name, "variant": f"mask:{mask.name}" if mask else "dense"}
        if mask is not None:
            masks, removed = load_masks(mask, net, size, per_layer=mgp)
            slim, delta, counts = export_checked(net, size, masks, removed)
            row.update(mask=mask.name, removed_blocks=len(removed), **counts, max_abs_delta_logits=delta)
        slim = slim.eval()
        program = export_program(slim, size)
    if mask is None:
        counts = count_params_and_macs(slim, (1, 3, *size))
        row.update(params=counts["params"], macs=counts["macs_per_image"])
    files: dict[str, str] = {}
    claim_output_folder(out, "export", writes=WRITES)  # again: a run may have taken the folder meanwhile
    with staged_folder(out) as stage:  # all files or none: a stopped run leaves a previous export whole
        if mask is not None:
            files["masks"] = save_masks(stage / "masks.pt", masks, removed).name
        if "pt2" in formats:
            files["pt2"] = save_program(program, stage / "pruned.pt2", **labels).name
        if "onnx" in formats:
            onnx_file = save_onnx(program, stage / "pruned.onnx", opset=opset)
            files["onnx"] = onnx_file.name
            example = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
            checked = onnx_max_delta(onnx_file, slim, example)
            row["onnx_max_abs_delta"] = "onnxruntime not installed" if checked is None else checked
            row["onnx_input"] = onnx_input_name(onnx_file)
        files = {kind: str(out / name) for kind, name in files.items()}
        result = {"input_size": list(size), "formats": formats, **row, "files": files, "command": command_line(),
                  "provenance": provenance()}
        (stage / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    shown = [{"": k, "value": v} for k, v in {**result, **files}.items() if k != "files"]
    echo_rows(shown, "table", title=f"export → {out}")
