"""``python -m latlab`` runs the command line."""

from latlab.cli import main

main()
