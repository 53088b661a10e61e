"""Packages for setuptools: the top-level ones, plus the training presets in configs/ as ``latlab.configs``."""

import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class FreshBuildPy(build_py):
    """Copy into an empty ``build/lib``: setuptools reuses it from build to build, so a module or a schema migration
    removed from the tree (a ``git pull``, a rename) would still ship in the next wheel from this checkout."""

    def run(self) -> None:
        lib = Path(self.build_lib).resolve()
        here = Path.cwd().resolve()
        if not self.editable_mode and lib.is_dir() and lib != here and not here.is_relative_to(lib):
            shutil.rmtree(lib)
        super().run()


setup(
    packages=[*find_packages(include=["latlab*", "db*", "profiler*", "latency_models*", "pruning*", "training*"]),
              "latlab.configs", "db.migrations", "db.migrations.versions"],  # Alembic's folders (no __init__.py)
    package_dir={"latlab.configs": "configs"},
    cmdclass={"build_py": FreshBuildPy},
)
