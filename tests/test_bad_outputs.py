"""Issue 23's hostile outputs, by cause: no command writes over its own input; options taking a size or count name
themselves when out of range; files are written with the mode the user's umask gives; a command killed with `kill -9`
leaves no half-written file under a final name and no worker processes behind; damaged run files are named."""
import os, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import BIN, cli_fails as fails, cli_run as run
from test_bad_inputs import world  # noqa: F401  (the shared untrained run: no training here)

TRIPLET = ('--top', .5, '--area', 0, '--bottom', .5)

def maps(d: Path, n: int = 3) -> Path:
    np.save(d/'p.npy', np.zeros((n, 8, 8), np.uint8))
    pd.DataFrame(dict(ImageId=[f'i{k}' for k in range(n)])).to_csv(d/'p_ids.csv', index=False)
    return d/'p.npy'

# ------------------------------------------------------------------------------------------ no command writes over its input

def test_submit_does_not_replace_its_maps(tmp_path):
    p = maps(tmp_path)
    before = p.read_bytes(), (tmp_path/'p_ids.csv').read_bytes()
    fails('submit', p, p, *TRIPLET, needles=[f"submission '{p}' is also an input"])
    fails('submit', p, tmp_path/'p_ids.csv', *TRIPLET, needles=['p_ids.csv', 'is also an input'])
    os.link(p, tmp_path/'hard.npy')  # another name of the same file
    fails('submit', p, tmp_path/'hard.npy', *TRIPLET, needles=['hard.npy', 'is also an input'])
    assert (p.read_bytes(), (tmp_path/'p_ids.csv').read_bytes()) == before

def test_split_audit_and_prepare_do_not_replace_their_inputs(world, tmp_path):
    labels = world/'mini'/'train-rle.csv'
    before = labels.read_bytes()
    fails('split', labels, labels, needles=['folds file', 'train-rle.csv', 'is also an input'])
    fails('audit', labels, world/'mini'/'dicom-images-train', '--out', labels, needles=['--out', 'is also an input'])
    fails('prepare', world/'mini'/'dicom-images-train', world/'mini'/'dicom-images-train', '--sizes', 32,
          needles=['PNG cache', 'is also an input'])
    assert labels.read_bytes() == before

# ------------------------------------------------------------------------------------------ sizes and counts name their option

@pytest.mark.parametrize('v', [-5, 0])
def test_out_size_out_of_range_names_the_option(tmp_path, v):
    msg = fails('submit', maps(tmp_path), tmp_path/'s.csv', *TRIPLET, '--out-size', v, needles=['--out-size', f'got {v}'])
    assert 'factor' not in msg and not (tmp_path/'s.csv').exists()

def test_slice_workers_out_of_range_names_the_option(tmp_path):
    from pneumokit.volumes import make_synthetic_spine
    make_synthetic_spine(tmp_path/'spine', n_cases=2, seed=0)
    fails('slice', tmp_path/'spine', tmp_path/'cache', '--size', 32, '--workers', -1, needles=['n_workers', 'got -1'])

# ------------------------------------------------------------------------------------------ written files follow the umask

@pytest.mark.parametrize('umask', [0o022, 0o077])
def test_written_files_have_the_umasks_mode(world, tmp_path, umask):
    old = os.umask(umask)
    try:
        run('submit', maps(tmp_path), tmp_path/'s.csv', *TRIPLET)
        run('audit', world/'mini'/'train-rle.csv', world/'mini'/'dicom-images-train', '--expected-size', 64, '--workers', 0,
            '--out', tmp_path/'audit.csv')
        open(tmp_path/'plain.txt', 'w').close()
    finally: os.umask(old)
    modes = {f: (tmp_path/f).stat().st_mode & 0o777 for f in ('s.csv', 'audit.csv', 'plain.txt')}
    assert modes == dict.fromkeys(modes, 0o666 & ~umask), modes

# ------------------------------------------------------------------------------------------ kill -9

def _kill_when(cmd: list, ready, timeout: float = 300) -> subprocess.Popen:
    "Start the console script `cmd`, SIGKILL it as soon as `ready()` is true (or it ends); returns the process."
    p = subprocess.Popen([str(BIN/'pneumokit'), *map(str, cmd)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env={**os.environ, 'OMP_NUM_THREADS': '1'})
    t = time.time()
    while p.poll() is None and not ready(p) and time.time() - t < timeout: time.sleep(0.05)
    if p.poll() is None: os.kill(p.pid, signal.SIGKILL)
    p.wait()
    return p

def test_kill_during_export_leaves_no_half_written_file(world, tmp_path):
    dest = tmp_path/'export'
    writing = lambda p: any(f.name.endswith('.tmp') for f in dest.glob('.*')) if dest.is_dir() else False
    p = _kill_when(['export', world/'run', dest], writing)
    assert p.returncode == -signal.SIGKILL, p.stderr.read()[-2000:]
    from pneumokit.layout import ExportDir
    ed = ExportDir(dest)
    for f in (ed.model, ed.sidecar, ed.kernel):  # each is absent or whole
        if f.exists() and f == ed.model:
            import torch
            torch.export.load(str(f))
    assert not ed.sidecar.exists() or ed.read_sidecar()

def test_kill_during_slice_leaves_no_half_written_file(tmp_path):
    import cv2
    from pneumokit.volumes import make_synthetic_spine
    make_synthetic_spine(tmp_path/'spine', n_cases=4, seed=3)
    cache = tmp_path/'cache'
    started = lambda p: cache.is_dir() and sum(1 for _ in cache.rglob('*.png')) >= 20
    p = _kill_when(['slice', tmp_path/'spine', cache, '--size', 64], started)
    assert p.returncode == -signal.SIGKILL
    pngs = [f for f in cache.rglob('*.png')]
    assert pngs and all(cv2.imread(str(f), cv2.IMREAD_UNCHANGED) is not None for f in pngs)
    from pneumokit.layout import SliceCacheDir
    assert not SliceCacheDir(cache).manifest.exists()  # the manifest is written last, whole: the cache is not taken as done

def test_kill_during_prepare_leaves_no_workers(tmp_path):
    from pneumokit.synthetic import make_mini_siim
    make_mini_siim(tmp_path/'mini', n_train=40, n_test=1, size=512, progress=False, n_workers=0)
    kids = set()
    def working(p):
        try: kids.update(int(c) for c in Path(f'/proc/{p.pid}/task/{p.pid}/children').read_text().split())
        except OSError: return False
        return len(kids) >= 2 and any((tmp_path/'cache').rglob('*.png'))
    p = _kill_when(['prepare', tmp_path/'mini'/'dicom-images-train', tmp_path/'cache', '--sizes', '256,128', '--workers', 2], working)
    assert p.returncode == -signal.SIGKILL and len(kids) >= 2
    def alive(k):
        try: return Path(f'/proc/{k}/stat').read_text().split()[2] != 'Z'
        except OSError: return False
    t = time.time()
    while any(alive(k) for k in kids) and time.time() - t < 10: time.sleep(0.1)
    left = [k for k in kids if alive(k)]
    for k in left: os.kill(k, signal.SIGKILL)
    assert not left, f'workers {left} of the killed prepare still run'

# ------------------------------------------------------------------------------------------ damaged run files

@pytest.mark.parametrize('how', ['short', 'garbage'])
def test_short_or_corrupt_oof_is_named(world, tmp_path, how):
    import shutil
    from pneumokit.layout import RunDir
    r = RunDir(shutil.copytree(world/'run', tmp_path/'run'))
    f = r.fold(0)
    np.save(f.oof_maps, np.zeros((4, 32, 32), np.uint8))
    pd.DataFrame(dict(ImageId=[f'i{k}' for k in range(4)], has_mask=False, dice=1.0)).to_csv(f.oof_ids, index=False)
    data = f.oof_maps.read_bytes()
    f.oof_maps.write_bytes(data[:len(data) // 2] if how == 'short' else b'garbage' * 10)
    fails('search', r.root, needles=['oof.npy', 'fold 0'])
