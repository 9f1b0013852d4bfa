#!/usr/bin/env bash
# A stand-in for the GPU machine's image on a CPU machine, cached outside the repository (`make gpu-image-venv`):
# Python 3.12 with torch 2.11.0 and torchvision 0.26.0 (the image's pair) and the image's other packages pneumokit needs
# (`gpu_wheels.py --image-requirements`: the versions KINDS.md gives, else the index's). Nothing of pneumokit's own stack
# (fastai, smp, albumentations, pydicom, nibabel, nbdev) goes in: tests/test_gpu_check.py installs those from .gpu-wheels
# with pip --no-index --target, as benchmarks/gpu_run.sh does on the GPU machine.
# The only torch 2.11 build pip can get here for Linux x86_64 is PyPI's CUDA wheel (531 MB); it imports only with its
# CUDA libraries (libcudnn...) beside it, so they come too (~4 GB in all; it runs on the CPU).
# Usage: bash benchmarks/gpu_image_venv.sh [VENV]   (default ~/.cache/pneumokit/gpu-image-venv)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${1:-$HOME/.cache/pneumokit/gpu-image-venv}
PY312=${PYTHON312:-$(command -v python3.12 || ls -d "$HOME"/.pyenv/versions/3.12*/bin/python 2>/dev/null | tail -1 || true)}
[ -n "$PY312" ] && "$PY312" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null \
    || { echo "gpu_image_venv: no Python 3.12 found (the GPU image's): set PYTHON312 to one"; exit 2; }
[ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import torch; assert torch.__version__.startswith("2.11.")' 2>/dev/null \
    && { echo "gpu_image_venv: $VENV already holds torch 2.11"; exit 0; }
REQS=$(mktemp); trap 'rm -f "$REQS"' EXIT
"${PROJECT_PYTHON:-$ROOT/.venv/bin/python}" "$ROOT/benchmarks/gpu_wheels.py" --image-requirements > "$REQS"
rm -rf "$VENV"; "$PY312" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r "$REQS"
"$VENV/bin/python" -c 'import torch; print(f"gpu_image_venv: {torch.__version__} on Python 3.12 in '"$VENV"'")'
