# The README's two commands: `make repro` (the main job) and `make test`. Both set up .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup test test-all repro check-raw bench study study-plan clean-venv

# stages call `python`: put the venv first so they run with the project's interpreter
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

# make setup: create .venv and install the project (a no-op when pyproject.toml and this file have not changed)
setup: $(STAMP)

# PEERS: readers we did not write, run by tests/test_conformance.py only (never imported by pipeline/ or models/).
# --no-deps: spikingjelly's requirements (torchvision, torchaudio, tensorboard, ...) would pull another torch;
# the test needs only loguru besides what the project already installs (numpy, torch, scipy, h5py, tqdm).
PEERS := spikingjelly==2.0.0 loguru==0.7.3

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps $(PEERS)
	touch $(STAMP)

# fast suite (what CI runs); `make test-all` includes tests marked slow
test: setup
	$(PY) -m pytest -q -m "not slow"

test-all: setup
	$(PY) -m pytest -q

# the whole DVC pipeline: data -> event stores -> frame caches -> models -> report
repro: setup check-raw
	dvc repro

# the real datasets are downloaded by hand: say what is missing, and where it goes, before DVC starts
check-raw: setup
	$(PY) -m pipeline.download --check-params params.yaml

# both embedded datasets (digits_dvs: the static-shape control; orbit_digits: the temporal benchmark) x baseline / multi_T / tsd / ssd / tssd x 10 seeds + the switch ablations
# (pipeline.study), then the report with its paired statistics. Resumable: finished runs are skipped. Hours on a CPU:
# `make study-plan` prints the runs left and their estimated time; STUDY_ARGS passes any other option,
# e.g. STUDY_ARGS="--datasets digits_dvs --seeds 0 1 --no-ablations".
STUDY_ARGS ?= --datasets digits_dvs orbit_digits
study: setup
	dvc repro --glob 'generate@*' 'bin@*'
	$(PY) -m pipeline.study $(STUDY_ARGS)
	$(PY) -m pipeline.report

study-plan: setup
	$(PY) -m pipeline.study --plan $(STUDY_ARGS)

bench: setup
	$(PY) -m bench

clean-venv:
	rm -rf $(VENV)
