"""The real-data finder: found here, required on CI, a clear skip elsewhere."""
import os, subprocess, sys

from conftest import BIN


def _find(env):
    code = 'from pneumokit.core import find_real_data; print(find_real_data())'
    return subprocess.run([str(BIN/'python'), '-c', code], capture_output=True, text=True,
                          env={**os.environ, **env})


def test_ci_requires_real_data():
    res = _find({'PNEUMOKIT_REAL_DATA': '/nonexistent', 'CI': 'true'})
    assert res.returncode != 0 and 'CI=true requires' in res.stderr


def test_absent_real_data_warns_and_returns_none():
    res = _find({'PNEUMOKIT_REAL_DATA': '/nonexistent', 'CI': ''})
    assert res.returncode == 0 and res.stdout.strip() == 'None' and 'not found' in res.stderr


def test_real_data_layout(real_data):
    for f in ['stage_2_train.csv.gz', 'train-rle-sample.csv', 'sample-images', 'stage_2_images']:
        assert (real_data/f).exists(), f
