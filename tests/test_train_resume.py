"""A training run killed with SIGKILL (no clean-up of any kind) resumes from its last finished epoch."""
import json, os, signal, subprocess, sys, time
from pathlib import Path

from conftest import BIN

SCRIPT = '''
import sys
from pathlib import Path
import pandas as pd
from pneumokit.recipe import Recipe, Stage
from pneumokit.train import train_fold
d = Path(sys.argv[1])
recipe = Recipe([Stage(size=64, epochs=2, bs=8, lr=3e-3, frozen=True, loss='bce', aug='none'),
                 Stage(size=64, epochs=4, bs=8, lr=(1e-4, 1e-3), loss='combo', aug='siim-1st', pos_frac=0.5)],
                arch='Unet', encoder='mobilenet_v2', model_kwargs=dict(decoder_channels=(128, 64, 32, 16, 8)), top_k=2)
res = train_fold(recipe, d/'cache', pd.read_csv(d/'folds.csv'), 0, d/'run', resume=sys.argv[2] == 'resume',
                 tensorboard=False)
print('DONE', res['oof_dice'])
'''


def _history(d: Path) -> list:
    f = d/'run'/'fold0'/'state.json'
    return json.loads(f.read_text())['history'] if f.exists() else []


def test_sigkill_then_resume(tmp_path):
    from pneumokit.dicom import build_cache
    from pneumokit.folds import make_folds, save_folds
    from pneumokit.synthetic import make_mini_siim
    mini = make_mini_siim(tmp_path/'mini', n_train=40, n_test=0, size=128, progress=False)
    build_cache(mini/'dicom-images-train', tmp_path/'cache', sizes=(64,), labels=mini/'train-rle.csv', progress=False)
    save_folds(make_folds(mini/'train-rle.csv', n_splits=4, n_bins=1), tmp_path/'folds.csv')
    (tmp_path/'train.py').write_text(SCRIPT)
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    cmd = [str(BIN/'python'), str(tmp_path/'train.py'), str(tmp_path)]
    proc = subprocess.Popen(cmd + ['new'], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while len(_history(tmp_path)) < 3 and proc.poll() is None and time.time() - t0 < 600: time.sleep(0.2)
    assert proc.poll() is None, 'the run ended before it could be killed'
    os.kill(proc.pid, signal.SIGKILL); proc.wait()
    done = _history(tmp_path)
    assert 3 <= len(done) < 6
    res = subprocess.run(cmd + ['resume'], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert 'DONE' in res.stdout
    hist = _history(tmp_path)
    assert [(h['stage'], h['epoch']) for h in hist] == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (1, 3)]
    assert hist[:len(done)] == done  # the finished epochs were kept, not redone
    fold = tmp_path/'run'/'fold0'
    assert len(list(fold.glob('model_*.pth'))) == 2 and len(list(fold.glob('last_*.pth'))) == 1
    assert (fold/'oof.npy').exists() and (fold/'oof_ids.csv').exists()
