"""Prune-while-training on ImageNet (torchrun, AMP) — not built yet: see issue #6."""
