"""``python -m latlab`` runs the command line."""

import sys
from pathlib import Path

# `python -m` puts the working directory first on sys.path (not under -P), where a folder named like one of
# latlab's packages (training/, db/, profiler/) would shadow it; the `latlab` command never looks there
_first = Path(sys.path[0] or ".").resolve() if sys.path else None
if not sys.flags.safe_path and _first == Path.cwd().resolve() != Path(__file__).resolve().parents[1]:
    del sys.path[0]

from latlab.cli import main  # noqa: E402

main()
