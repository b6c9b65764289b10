# Two commands do everything on a fresh machine (Python >= 3.10 and make):
#   make run    set up .venv if needed, then the built-in baseline-vs-GFSA comparison (CPU, minutes)
#   make test   set up .venv if needed, then the whole test suite
#   make dist   build the wheel into dist/ (`pip install dist/gfsa-*.whl` ships conf/, experiments/, slurm/)
# The venv is (re)installed whenever pyproject.toml or setup.py changes.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml setup.py | cksum | cut -d" " -f1)
EXTRAS := dev

.PHONY: run test setup dist

run: $(STAMP)
	$(BIN)/python run.py

test: $(STAMP)
	$(BIN)/pytest

setup: $(STAMP)

dist: $(STAMP)
	$(BIN)/python -m pip wheel --no-deps --no-build-isolation -w dist .

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-*
	touch $@
