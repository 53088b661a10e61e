"""Where latlab finds its database when none is named (a light module: the command line reads it without
importing SQLAlchemy)."""

DEFAULT_DB = "latlab.db"
ENV_VAR = "LATLAB_DB"  # a path or SQLAlchemy URL; --db overrides it
