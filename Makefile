# The README's two commands: `make repro` (the main job) and `make test`. Both set up .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup test test-all repro bench study clean-venv

# make setup: create .venv and install the project (a no-op when pyproject.toml has not changed)
setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# fast suite (what CI runs); `make test-all` includes tests marked slow
test: setup
	$(PY) -m pytest -q -m "not slow"

test-all: setup
	$(PY) -m pytest -q

# the whole DVC pipeline: data -> event stores -> frame caches -> models -> report
repro: setup
	$(VENV)/bin/dvc repro

bench: setup
	$(PY) -m bench

clean-venv:
	rm -rf $(VENV)
