"""``python -m latlab`` runs the command line."""

import sys
from pathlib import Path

# `python -m` puts the working directory first on sys.path, where a folder named like one of latlab's packages
# (training/, db/, profiler/) would shadow it; the `latlab` command never looks there, and neither does this
if sys.path and Path(sys.path[0] or ".").resolve() != Path(__file__).resolve().parents[1]:
    del sys.path[0]

from latlab.cli import main  # noqa: E402

main()
