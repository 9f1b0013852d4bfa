"""A training run killed with SIGKILL (no clean-up of any kind) resumes from its last finished epoch, with every batch's
learning rate that of torch's reference scheduler stepped the same way (one-cycle per batch, then reduce-on-plateau
replayed over the epochs done before the kill)."""
import json, os, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import torch
from torch.optim.lr_scheduler import OneCycleLR, ReduceLROnPlateau

from conftest import BIN

SCRIPT = '''
import json, sys
from pathlib import Path
import pandas as pd
from fastai.callback.core import Callback
from pneumokit.recipe import Recipe, Stage
from pneumokit.train import train_fold
d = Path(sys.argv[1])

class LrLog(Callback):
    "Each training batch's rates (every parameter group), appended to lrs.jsonl as they are used."
    def before_fit(self): self.base = [h['lr'] for h in self.opt.hypers]  # the stage's rates, as `fit` set them
    def after_batch(self):
        if self.training:
            with open(d/'lrs.jsonl', 'a') as f:  # stage 0 is the frozen one
                f.write(json.dumps(dict(stage=int(not self.opt.frozen_idx), epoch=self.epoch, iter=self.iter, base=self.base,
                                        lrs=[h['lr'] for h in self.opt.hypers])) + '\\n')

recipe = Recipe([Stage(size=64, epochs=2, bs=8, lr=3e-3, frozen=True, loss='bce', aug='none'),
                 Stage(size=64, epochs=4, bs=8, lr=(1e-4, 1e-3), loss='combo', aug='siim-1st', pos_frac=0.5,
                       sched='plateau', sched_kwargs=dict(factor=0.5, patience=0, threshold=1.0))],
                arch='Unet', encoder='mobilenet_v2', model_kwargs=dict(decoder_channels=(128, 64, 32, 16, 8)), top_k=2)
res = train_fold(recipe, d/'cache', pd.read_csv(d/'folds.csv'), 0, d/'run', resume=sys.argv[2] == 'resume',
                 tensorboard=False, cbs=[LrLog()])
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
    _check_lrs(tmp_path, hist)


def _check_lrs(d: Path, hist: list):
    "Each batch's rates (the resumed run's where it redid a batch) equal torch's schedulers stepped the same way."
    recs = {}
    for line in (d/'lrs.jsonl').read_text().splitlines():
        r = json.loads(line)
        recs[r['stage'], r['epoch'], r['iter']] = r
    scores = [h['score'] for h in hist if h['stage'] == 1]
    for stage, n_ep in ((0, 2), (1, 4)):
        rows = [recs[k] for k in sorted(recs) if k[0] == stage]
        n = len(rows) // n_ep
        assert n > 0 and len(rows) == n * n_ep
        base = rows[0]['base']
        opt = torch.optim.SGD([dict(params=[torch.zeros(1, requires_grad=True)], lr=lr) for lr in base], lr=base[0], momentum=0.9)
        sched = (OneCycleLR(opt, base, total_steps=n_ep * n, pct_start=0.25, div_factor=25, final_div_factor=1e5 / 25) if stage == 0
                 else ReduceLROnPlateau(opt, 'max', factor=0.5, patience=0, threshold=1.0))
        opt.step()
        ref = []
        for e in range(n_ep):
            for _ in range(n):
                ref.append([g['lr'] for g in opt.param_groups])
                if stage == 0: sched.step()
            if stage == 1: sched.step(scores[e])
        assert np.allclose([r['lrs'] for r in rows], ref, rtol=1e-9, atol=0), (stage, [r['lrs'] for r in rows], ref)
    assert len({r['lrs'][0] for r in rows}) > 1  # the plateau did cut the rate: a flat schedule would not pass by chance
