# pneumokit: two commands on a fresh machine — `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.pneumokit-installed
# This pair is served from local disk here (a newer pin fails; torch 2.13 has no matching torchvision).
TORCH := torch==2.14.1 torchvision==0.29.1
NB_WORKERS ?= 2

.PHONY: install demo test check-nbdev nbtest pytest bench readme clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/pneumokit demo

# CI order: notebooks clean, library in sync, notebook tests, pytest.
test: $(STAMP) check-nbdev nbtest pytest

check-nbdev: $(STAMP)
	$(BIN)/python tests/check_nbdev.py

nbtest: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/nbdev-test --n-workers $(NB_WORKERS) --timing

# Two test processes, one torch thread each (two busy processes with two threads each on two cores run several times slower).
pytest: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(NB_WORKERS) --dist loadfile --durations=10 tests

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

readme: $(STAMP)
	$(BIN)/python tests/render_readme.py --write

clean:
	rm -rf $(VENV) build dist *.egg-info reports
