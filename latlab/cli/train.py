"""``latlab train``: prune-while-training from a YAML preset (one process, or N through torchrun)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from db.errors import LatlabError
from latlab.cli._options import echo_rows


def train(
    config: Annotated[Path | None, typer.Option(
        help="YAML config file, or a bundled preset by name from any directory: mdp_resnet50, mgp_resnet50, "
             "mdlm_resnet50, halp_resnet50, demo_resnet18_digits (configs/NAME.yaml works too).")] = None,
    data: Annotated[Path | None, typer.Option(help="ImageFolder root with train/ and val/ (sets data.path).")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (sets run.out).")] = None,
    weights: Annotated[Path | None, typer.Option(help="Local pretrained state dict (sets model.weights).")] = None,
    db: Annotated[str | None, typer.Option(help="LUT database for pruning (sets prune.db).")] = None,
    hardware: Annotated[str | None, typer.Option(help="Hardware profile to prune for (sets prune.hardware).")] = None,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="Override any config key, e.g. --set optim.epochs=30 --set prune.ratio=0.5.")] = None,
    nproc_per_node: Annotated[int, typer.Option(
        help="Processes (GPUs) on this machine; > 1 launches torchrun --standalone.")] = 1,
    tensorboard: Annotated[bool, typer.Option(
        "--tensorboard", help="Also write TensorBoard scalars to OUT/tensorboard (sets run.tensorboard).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    print_config: Annotated[bool, typer.Option(
        "--print-config", help="Print the resolved config (every key, with what it means) as YAML and exit.")] = False,
) -> None:
    r"""Train (and prune on the schedule of the config's method) with DDP/AMP; checkpoint and resume.

    The resolved config is saved as OUT/config.resolved.yaml; per-epoch metrics go to OUT/metrics.csv,
    OUT/checkpoint_last.pt is written every epoch (rerunning the same command resumes from it), and at
    the end the slim network (pruned.pt2), masks.pt and result.json; with --tensorboard, the same metrics
    plus loss, LR and pruning targets as TensorBoard scalars in OUT/tensorboard. Unknown config keys, a
    missing dataset or weights that do not match the model stop the run before any work.

    Multi-node: run `torchrun --nnodes N --nproc_per_node G --rdzv_endpoint HOST:PORT -m training --config …`
    on every node.

    Examples:

        latlab train --config configs/mdp_resnet50.yaml --data /data/imagenet \
            --weights rn50.pth --hardware "H200"
        latlab train --config configs/halp_resnet50.yaml --data /data/imagenet \
            --nproc-per-node 8 --out runs/halp70
        latlab train --config configs/mdp_resnet50.yaml --set prune.ratio=0.5 \
            --print-config > my_run.yaml
    """
    sets = list(overrides or []) + (["run.tensorboard=true"] if tensorboard else [])
    for key, value in (("data.path", data), ("run.out", out), ("model.weights", weights), ("prune.db", db),
                       ("prune.hardware", hardware)):
        if value is not None:
            sets.append(f"{key}={value}")
    from training.config import describe_config, load_config

    cfg = load_config(config, sets)  # validate here, before any process is started
    if print_config:
        typer.echo(describe_config(cfg), nl=False)
        return
    if nproc_per_node > 1:
        from training.config import config_path
        from training.data import check_layout

        check_layout(cfg.data.path, cfg.data.train_dir, cfg.data.val_dir)  # once, not in every process

        # `python -P -m training`: not a training/ package in the working directory (-P: no cwd on sys.path)
        _torchrun(["--standalone", f"--nproc_per_node={nproc_per_node}", "--no-python", sys.executable, "-P", "-m",
                   "training", *(["--config", str(config_path(config).resolve())] if config else []),
                   *[a for s in sets for a in ("--set", s)], *(["--no-progress"] if quiet else [])])
        return
    from training.trainer import train as run_training

    result = run_training(cfg, progress=not quiet)
    final = {k: result.metrics.get(k) for k in ("epoch", "top1", "top5", "predicted_ms", "removed_blocks")}
    echo_rows([final | {"finished": result.finished}], "table", title="training", record=True)
    typer.echo(f"run directory: {result.out_dir}")


def _torchrun(argv: list[str]) -> None:
    """torchrun ``argv`` with this process as its agent: a worker that fails or is interrupted ends in one line
    (the workers print their own error), not the agent's traceback."""
    import logging
    import signal

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    agent_logs = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)
                  if n.startswith("torch.distributed.elastic")]  # each has a level of its own
    levels = [log.level for log in agent_logs]
    for log in agent_logs:
        log.setLevel(logging.CRITICAL)  # its failure report repeats what the workers printed
    try:
        run(parse_args(argv))
    except SignalException:
        raise KeyboardInterrupt from None
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode
        how = (f"was killed by {signal.Signals(-code).name} (out of memory?)" if code < 0 and -code in
               signal.valid_signals() else f"exited with status {code} (its error is above)")
        raise LatlabError(f"training stopped: process {rank} {how}") from None
    finally:
        for log, level in zip(agent_logs, levels, strict=True):
            log.setLevel(level)
