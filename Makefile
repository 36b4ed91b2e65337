# Two entry points (see README): `make run` sets up and runs the main job, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run test

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The exact pin takes the CPU wheel; anything else pulls several GB of CUDA packages.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

run: setup
	$(BIN)/automtl search search_spaces/multidigits.yaml --run-dir runs/multidigits-$$(date +%Y%m%d-%H%M%S)

test: setup
	$(BIN)/python -m pytest
