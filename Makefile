# Two commands do everything on a fresh machine (Python >= 3.10 and make):
#   make run    set up .venv if needed, then the built-in baseline-vs-GFSA comparison (CPU, minutes)
#   make test   set up .venv if needed, then the whole test suite
# The venv is (re)installed whenever pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
EXTRAS := dev

.PHONY: run test setup

run: $(STAMP)
	$(BIN)/python run.py

test: $(STAMP)
	$(BIN)/pytest

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-*
	touch $@
