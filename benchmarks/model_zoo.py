"""Which networks can latlab prune? Every torchvision classification model, or one timm CNN per family, through
``latlab graph --check``.

For each model (``--models``; default with ``--source torchvision`` all of
``torchvision.models.list_models(module=torchvision.models)``, with ``--source timm`` :data:`TIMM_MODELS`):
the prunable structure (:func:`pruning.graph.build_network_spec`: convs, channel groups, prunable groups,
channel items, removable blocks) and :func:`pruning.check.check_export` (random kept items per prunable group,
every other removable block removed, exported, compared with the masked network with random BatchNorm
parameters and statistics from a random batch, ``torch.export``-ed; with ``--onnx`` also written as ONNX and run
in ONNX Runtime). A model that fails is recorded with its
error, and the rest go on. Writes JSON and Markdown to ``--out``.

    python -m benchmarks.model_zoo --out benchmarks/results/model_zoo
    python -m benchmarks.model_zoo --source timm --out benchmarks/results/model_zoo_timm
    python -m benchmarks.model_zoo --models resnet50,densenet121 --input-size 64 --out /tmp/zoo
    python -m benchmarks.model_zoo --onnx --input-size 64 --out benchmarks/results/model_zoo_onnx
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torchvision
from tqdm import tqdm

from benchmarks._report import machine_line, result_header, write_result
from db.errors import LatlabError
from latlab.tables import render
from profiler.plan import resolve_model
from pruning.check import check_export
from pruning.graph import build_network_spec

# one timm model per family of CNNs (and a few hybrids), the smallest variant where there are several
TIMM_MODELS = (
    "resnet18d", "resnet50d", "resnext50d_32x4d", "seresnext26d_32x4d", "ecaresnet26t", "skresnet18", "resnest14d",
    "res2net50_14w_8s", "resnetv2_50", "resnetrs50", "resnet50_gn", "tresnet_m", "regnetx_002", "regnety_008",
    "regnetz_b16", "efficientnet_b0", "efficientnetv2_rw_t", "tf_efficientnet_b0", "tf_efficientnetv2_b0", "mixnet_s",
    "mnasnet_100", "mobilenetv2_100", "mobilenetv3_large_100", "mobilenetv4_conv_small", "fbnetc_100", "spnasnet_100",
    "lcnet_100", "hardcorenas_a", "tinynet_a", "ghostnet_100", "ghostnetv2_100", "repghostnet_050", "rexnet_100",
    "densenet121", "dla34", "dpn68", "cspresnet50", "cspdarknet53", "cs3darknet_s", "darknet53", "vovnet39a",
    "ese_vovnet19b_dw", "hrnet_w18_small", "selecsls42b", "gernet_s", "repvgg_a0", "mobileone_s0", "xception41",
    "inception_v3", "inception_v4", "hgnet_tiny", "hgnetv2_b0", "nf_resnet50", "convnext_atto", "fastvit_t8",
    "efficientvit_b0", "edgenext_xx_small", "vgg11", "halonet26t",
)


def default_models(source: str) -> list[str]:
    """The models ``--source`` checks when ``--models`` is not given."""
    if source == "timm":
        return [f"timm:{name}" for name in TIMM_MODELS]
    return torchvision.models.list_models(module=torchvision.models)


def _kind_of_reason(fixed_by: str) -> str:
    """``permute in features.1.0`` -> ``permute``; ``ScaledStdConv2d stem.conv1 (its own forward)`` ->
    ``ScaledStdConv2d``; ``network output`` and ``depthwise on …`` stay."""
    if " in " in fixed_by:
        return fixed_by.split(" in ")[0]
    if fixed_by == "network output" or fixed_by.startswith("depthwise"):
        return fixed_by
    return fixed_by.split(" ")[0]


def check_model(name: str, input_size: int, onnx_dir: Path | None = None) -> dict[str, Any]:
    """One row: the model's structure and its export check (or the error that stopped it); with ``onnx_dir``
    also the slim network's ONNX file, run in ONNX Runtime."""
    t0 = time.perf_counter()
    row: dict[str, Any] = {"model": name}
    try:
        with warnings.catch_warnings():  # GoogLeNet / Inception-v3 warn about their weight init
            warnings.simplefilter("ignore")
            _, net = resolve_model(name, num_classes=10)
        spec = build_network_spec(net, input_size, name=name)
        s = spec.summary()
        row.update(convs=s["convs"], groups=s["groups"], prunable=s["prunable"], items=s["items"],
                   blocks=s["blocks"])
        if s["items"] == 0 and not spec.blocks:
            why = sorted({_kind_of_reason(g.fixed_by) for g in spec.groups.values() if g.fixed_by})
            row["status"] = f"nothing to prune (fixed by {', '.join(why)})"
        else:
            onnx = onnx_dir / f"{name.replace(':', '_')}.onnx" if onnx_dir else None
            check = check_export(net, spec, onnx=onnx)
            c = check.counts
            row.update(kept_items=check.kept_items, removed_blocks=len(check.removed_blocks),
                       max_logit_delta=float(f"{check.max_logit_delta:.2g}"),
                       params_kept_pct=round(100 * c["params_pruned"] / c["params_dense"], 1),
                       macs_kept_pct=round(100 * c["macs_pruned"] / c["macs_dense"], 1), status="ok")
            if onnx is not None:
                row.update(onnx_max_delta=float(f"{check.onnx_max_delta:.2g}"),
                           onnx_mb=round(onnx.stat().st_size / 2**20, 1))
                onnx.unlink()
    except LatlabError as exc:
        row["status"] = f"refused: {exc}"
    except Exception as exc:  # a bug of latlab's: recorded, and the other models go on
        row["status"] = f"failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def _onnx_versions() -> str:
    from importlib.metadata import version

    return ", ".join(f"{package} {version(package)}" for package in ("onnx", "onnxscript", "onnxruntime"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=("torchvision", "timm"), default="torchvision",
                        help="default model list: all torchvision classifiers, or one timm CNN per family")
    parser.add_argument("--models", default="", help="comma-separated names (torchvision, or timm:NAME)")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/model_zoo"))
    parser.add_argument("--onnx", action="store_true",
                        help="also write each slim network as ONNX and run it in ONNX Runtime (latlab[onnx])")
    args = parser.parse_args(argv)
    names = [m.strip() for m in args.models.split(",") if m.strip()] or default_models(args.source)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir = Path(tmp) if args.onnx else None
        rows = [check_model(name, args.input_size, onnx_dir) for name in tqdm(names, desc="models", unit="model")]
    elapsed = time.perf_counter() - t0
    counts = {k: sum(r["status"].startswith(k) for r in rows) for k in ("ok", "nothing", "refused", "failed")}
    result = {**result_header("model_zoo", argv), "input_size": args.input_size, "elapsed_s": round(elapsed, 1),
              "counts": counts, "rows": rows}
    onnx_note = (", then written as ONNX by `latlab export`'s exporter and run in ONNX Runtime against the slim "
                 f"network (`onnx_max_delta`, fp32; {_onnx_versions()})") if args.onnx else ""
    md = [
        f"# Which networks latlab prunes: {'timm CNNs' if args.source == 'timm' else 'torchvision classifiers'}", "",
        f"Command: `{result['command']}`  ",
        f"{machine_line(result['machine'])}; {args.input_size}px, 10 classes, untrained weights  ",
        "Per model: the prunable structure `latlab graph` finds, then `latlab graph --check`: random kept channel "
        "items per prunable group, every other removable block removed, exported, compared with the masked "
        "dense network (random BatchNorm parameters, statistics from a random batch, so that a wrongly sliced BN "
        "shows; both run in float64, so the difference is structure, not rounding) and passed through "
        f"`torch.export`{onnx_note}. {counts['ok']} pruned and exported, {counts['nothing']} with "
        f"nothing to prune, {counts['refused']} refused (with the reason), {counts['failed']} failed (a latlab bug); "
        f"{elapsed:.0f} s in all.", "",
        render(rows, "markdown"),
    ]
    write_result(args.out, result, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
