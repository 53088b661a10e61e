"""Packages for setuptools: the top-level ones, plus the training presets in configs/ as ``latlab.configs``."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["latlab*", "db*", "profiler*", "latency_models*", "pruning*", "training*"]),
              "latlab.configs"],
    package_dir={"latlab.configs": "configs"},
)
