#!/usr/bin/env bash
# Wheels for an offline GPU box that already has Python, torch, torchvision, numpy, pandas, scikit-learn,
# nvidia-ml-py and pytest (an NGC container, a lent benchmark machine): everything else latlab and its
# gpu-marked tests import, for that box's Python, downloaded here where PyPI is reachable.
#
#   bash scripts/device_wheels.sh [DIR] [PYTHON_VERSION]      # default: dist/device-wheels 3.12
#
# On the box, from the checkout (nothing is fetched there):
#   python3 -m pip install --no-index --find-links DIR --no-deps DIR/*.whl
#   export PYTHONPATH=$PWD      # or: python3 -m pip install --no-deps --no-build-isolation -e .
#   bash benchmarks/gpu_session.sh OUTDIR
set -euo pipefail
DIR=${1:-dist/device-wheels}
PY=${2:-3.12}
mkdir -p "$DIR"
# What latlab imports at run time and in its tests, with their own dependencies, minus what the box has.
# Left out: PuLP (16 MB with its bundled CBC), SCIP, ONNX, timm, psycopg; no GPU step needs them and the
# tests that do skip without them. The whole set is about 44 MB: within what a device call may carry.
PACKAGES=(
  sqlalchemy greenlet typing_extensions alembic mako markupsafe
  typer click shellingham pydantic pydantic-core annotated-types typing-inspection annotated-doc
  rich markdown-it-py mdurl pygments tqdm psutil pyyaml safetensors threadpoolctl
  matplotlib contourpy cycler fonttools kiwisolver pillow pyparsing
  highspy pyomo ply
  hypothesis sortedcontainers attrs pytest-timeout
)
# The versions latlab's tests ran with here (the project's .venv), where it has them.
VENV_PY=${VENV_PY:-.venv/bin/python}
PINNED=()
for pkg in "${PACKAGES[@]}"; do
  version=$("$VENV_PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$pkg" 2>/dev/null) \
    && PINNED+=("$pkg==$version") || PINNED+=("$pkg")
done
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$DIR" \
  --python-version "$PY" --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any "${PINNED[@]}" 2> >(grep -v "is ignored: it is neither" >&2)
du -sh "$DIR"
ls "$DIR"
