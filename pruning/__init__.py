"""pruning: see README.md (under construction in issues #4-#6)."""
