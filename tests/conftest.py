import os, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope='session')
def real_data():
    "The real SIIM files; skipped with a message when absent, an error on CI (find_real_data raises there)."
    from pneumokit.core import find_real_data
    p = find_real_data()
    if p is None: pytest.skip('real SIIM data not found (../shared/data/siim or $PNEUMOKIT_REAL_DATA)')
    return p


def run_cli(*args, cwd=None, check=True, env=None):
    "Run the installed `pneumokit` console script; returns the CompletedProcess."
    res = subprocess.run([str(BIN/'pneumokit'), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                         env={**os.environ, **(env or {})}, timeout=900)
    if check and res.returncode != 0:
        raise AssertionError(f'pneumokit {args} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}')
    return res
