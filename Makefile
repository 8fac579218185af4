# Set-up and entry points. Every target creates .venv and installs into it when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install repro cold-repro test test-fast bench lock s3-local s3-stop clean-cache

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

## The main job: every stage of dvc.yaml on the embedded models (first run converts their weights once).
repro: install
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro

## Every stage fully cold (`dvc repro -f`), timed: each stage's wall time and the total (tools/timed_repro.py).
cold-repro: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python tools/timed_repro.py --log repro-cold.log --table repro-cold.txt

## The test suite (a tiny random-weights model for most tests, the embedded models for a few end-to-end checks).
test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

bench: install
	for f in bench/bench_*.py; do $(BIN)/python $$f || exit 1; done

lock: install
	{ grep '^#' requirements.lock; $(BIN)/python -m pip freeze --exclude-editable | sed 's/+cpu$$//'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

## A local S3 stand-in (moto on 127.0.0.1) for trying `dvc push` / `dvc pull`; this checkout only.
s3-local: install
	$(BIN)/python tools/s3_local.py start

s3-stop: install
	$(BIN)/python tools/s3_local.py stop
