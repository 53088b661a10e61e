# latlab: `make demo` runs the main job, `make test` runs the tests. Both install what they need
# into ./.venv first (torch/torchvision pinned below, the rest from pyproject.toml).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: install system-deps demo test test-gpu lint clean

# torch first, on its own (a Docker layer that source edits do not invalidate), then latlab and the rest
$(VENV)/.torch: Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PINS)
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml setup.py
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

system-deps:
	bash scripts/install-system-deps.sh

install: system-deps $(VENV)/.installed

demo: install
	$(BIN)/latlab demo

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-gpu: install
	$(BIN)/python -m pytest -m gpu $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) latlab-demo .pytest_cache .ruff_cache
