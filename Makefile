# pneumokit: two commands on a fresh machine — `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.pneumokit-installed
# This pair is served from local disk here (a newer pin fails; torch 2.13 has no matching torchvision).
TORCH := torch==2.14.1 torchvision==0.29.1
NB_WORKERS ?= 2

.PHONY: install demo test check-nbdev nbtest pytest bench gpu-check gpu-wheels gpu-image-venv gpu-check-cpu readme clean browser-deps test-browser test-fresh screenshots test-old-torch docs docs-screenshots
# Python Playwright drives Debian's Chromium (apt); it never downloads a browser.
PLAYWRIGHT := playwright==1.65.2
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# On CI (CI=true) `make test` installs the browser first, so the JupyterLab browser test runs (it skips without Chromium locally).
CI_BROWSER := $(if $(filter 1 true yes on True TRUE Yes YES On ON,$(CI)),browser-deps)

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
test: $(STAMP) $(CI_BROWSER) check-nbdev nbtest pytest

check-nbdev: $(STAMP)
	$(BIN)/python tests/check_nbdev.py

# nbdev-test on a fresh copy of the tracked files (no state from `make demo` or earlier runs), two notebooks at a time;
# the notebooks that pass are kept with their outputs in build/executed, which `make docs` (and tests/test_docs.py) reads.
nbtest: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python tests/run_notebooks.py --n-workers $(NB_WORKERS) --timing --save-executed build/executed

# The documentation site in _docs/ (Sphinx + myst-nb + pydata theme, offline): the executed notebooks of build/executed,
# tutorials first, then one page per module and the API reference; notebooks missing there (or changed since) run first.
docs: $(STAMP)
	OMP_NUM_THREADS=1 NB_WORKERS=$(NB_WORKERS) $(BIN)/python docs/build_site.py

# Retake the README's screenshots of the site (docs/screenshots/docs_*.png) with the docs browser test.
docs-screenshots: browser-deps
	OMP_NUM_THREADS=1 PNEUMOKIT_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest tests/test_docs.py -k screenshots

# Two test processes, one torch thread each (two busy processes with two threads each on two cores run several times slower).
pytest: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(NB_WORKERS) --dist loadfile --durations=10 tests --ignore=tests/test_fresh_kernel.py

# Headless Chromium (Debian's package) and Playwright for tests/test_browser.py; skipped when already there.
browser-deps: $(STAMP)
	command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }
	$(BIN)/python -c 'import playwright' 2>/dev/null || $(BIN)/python -m pip install -q '$(PLAYWRIGHT)'

test-browser: browser-deps
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests/test_browser.py

# Every notebook in a real Jupyter kernel (not nbdev-test's shell), in a fresh copy of the repo: slower, not in `make test`.
test-fresh: $(STAMP)
	OMP_NUM_THREADS=1 NB_WORKERS=$(NB_WORKERS) PNEUMOKIT_FRESH_ALL=1 $(BIN)/python -m pytest tests/test_fresh_kernel.py

# Retake the README's screenshots (docs/screenshots) with the browser test; commit them with the change that moved them.
screenshots: browser-deps
	OMP_NUM_THREADS=1 PNEUMOKIT_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest tests/test_browser.py -k tutorial

# The exported kernel on an older torch, as a Kaggle image may hold: a venv outside the repository (reused by later runs)
# with torch $(OLD_TORCH) from the package index (about 2.5 GB to download with its CUDA libraries, 5.6 GB installed) and
# the kernel's other packages only, then tests/test_export.py::test_kernel_on_old_torch. Not part of `make test`.
OLD_TORCH ?= 2.6.0
OLD_TORCH_VENV ?= $(HOME)/.cache/pneumokit/kernel-torch-$(OLD_TORCH)
KERNEL_PACKAGES := numpy pandas pydicom pylibjpeg pylibjpeg-libjpeg opencv-python-headless

test-old-torch: $(STAMP)
	test -f $(OLD_TORCH_VENV)/.pneumokit-kernel-installed || { rm -rf $(OLD_TORCH_VENV) && $(PYTHON) -m venv $(OLD_TORCH_VENV) \
	  && $(OLD_TORCH_VENV)/bin/python -m pip install -q 'torch==$(OLD_TORCH)' $(KERNEL_PACKAGES) \
	  && touch $(OLD_TORCH_VENV)/.pneumokit-kernel-installed; }
	OMP_NUM_THREADS=1 PNEUMOKIT_OLD_TORCH_PYTHON=$(OLD_TORCH_VENV)/bin/python $(BIN)/python -m pytest tests/test_export.py -k old_torch

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

# The GPU check (benchmarks/gpu_check.py): the 1st-place recipe at 512 and 1024 px within an 8-minute budget, figures in
# reports/gpu-check.json (README, "GPU check"). The GPU machine's image has torch but not pneumokit's stack, and no index:
# `make gpu-wheels` gathers here what it lacks (.gpu-wheels/, carried with the `run` call); on the GPU machine
# `make gpu-check` (= bash benchmarks/gpu_run.sh) installs them offline beside the image's torch and runs the check.
# `make gpu-check-cpu` proves that path here: a stand-in of the image (Python 3.12, torch 2.11; cached outside the repo)
# installs the wheels with --no-index and runs --tiny. `make test` runs the CPU twin (--tiny) in the project's venv.
GPU_IMAGE_VENV ?= $(HOME)/.cache/pneumokit/gpu-image-venv

gpu-wheels: $(STAMP)
	$(BIN)/python benchmarks/gpu_wheels.py

gpu-image-venv: $(STAMP)
	PROJECT_PYTHON=$(BIN)/python bash benchmarks/gpu_image_venv.sh $(GPU_IMAGE_VENV)

gpu-check:
	bash benchmarks/gpu_run.sh $(GPU_CHECK_ARGS)

gpu-check-cpu: gpu-wheels gpu-image-venv
	OMP_NUM_THREADS=1 GPU_IMAGE_PYTHON=$(GPU_IMAGE_VENV)/bin/python $(BIN)/python -m pytest tests/test_gpu_check.py -k offline -rs

readme: $(STAMP)
	$(BIN)/python tests/render_readme.py --write

clean:
	rm -rf $(VENV) build dist *.egg-info reports _docs
