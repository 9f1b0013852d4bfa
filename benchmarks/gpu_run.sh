#!/usr/bin/env bash
# The GPU check on the GPU machine, as one command: install the wheels `benchmarks/gpu_wheels.py` gathered (.gpu-wheels/)
# beside the image's own torch, offline (pip --no-index --target), then run benchmarks/gpu_check.py within one budget
# (default 8 minutes, the install included). Extra arguments go to gpu_check.py (e.g. --tiny).
# On the device tool: carry ['.gpu-wheels'], command `bash benchmarks/gpu_run.sh`, timeout_s 540 (README, "GPU check").
# Here, the same path on the CPU: GPU_PYTHON=<a Python 3.12 with torch 2.11> bash benchmarks/gpu_run.sh --tiny
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${GPU_PYTHON:-python3}                       # the image's Python (the one that holds torch)
WHEELS=${GPU_WHEELS:-$ROOT/.gpu-wheels}
SITE=${GPU_SITE:-${TMPDIR:-/tmp}/pneumokit-gpu-site}
BUDGET_S=${GPU_BUDGET_S:-480}                   # the whole command's budget, the install included
OUTFILE=${GPU_OUT:-${OUT:+$OUT/gpu-check.json}} # the device tool's $OUT comes back to the caller
t0=$(date +%s.%N)

[ -f "$WHEELS/MANIFEST.txt" ] || { echo "gpu_run: no $WHEELS/MANIFEST.txt: gather the wheels first (make gpu-wheels) and carry .gpu-wheels"; exit 2; }
"$PY" -c 'import torch' 2>/dev/null || { echo "gpu_run: $PY cannot import torch: set GPU_PYTHON to the Python that holds the image's torch"; exit 2; }
rm -rf "$SITE"
if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
        --target "$SITE" "$WHEELS"/*.whl; then
    echo "gpu_run: pip could not install the wheels in $WHEELS into $SITE (offline, --no-deps): regather them with make gpu-wheels"; exit 2
fi
install_s=$("$PY" -c "import time; print(round(time.time() - $t0, 1))")
echo "gpu_run: $(wc -l < "$WHEELS/MANIFEST.txt") wheels installed into $SITE in ${install_s} s"
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# exec: the check is this process, so SIGTERM/SIGINT reach its handler (it writes the summary and ends its children)
exec "$PY" "$ROOT/benchmarks/gpu_check.py" --budget-s "$BUDGET_S" --started-at "$t0" --install-s "$install_s" ${OUTFILE:+--out "$OUTFILE"} "$@"
