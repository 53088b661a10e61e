"""How held-out LUT keys can be chosen (a light module: the command line lists them without importing pandas)."""

SPLIT_KINDS = ("random", "family", "extrapolate", "grid")
