"""``python -m training --config X.yaml [--set a.b=c ...]`` (also ``torchrun --nproc_per_node=N -m training ...``)."""

from __future__ import annotations

import argparse
import os
import sys

from db.errors import LatlabError


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, train, print the final metrics; a :class:`LatlabError` is one line on stderr, exit 2."""
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("--config", help="YAML config (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set run.out=runs/x --set optim.epochs=1")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        from training.config import load_config  # inside: a Ctrl-C while importing is one line too
        from training.trainer import train

        result = train(load_config(args.config, args.overrides), progress=not args.no_progress)
    except LatlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the launcher (latlab train) says so once
        return 130
    if result.metrics and os.environ.get("RANK", "0") == "0":  # one line per run, not per process
        print({k: result.metrics[k] for k in ("epoch", "top1", "top5", "predicted_ms") if k in result.metrics})
    return 0


if __name__ == "__main__":
    sys.exit(main())
