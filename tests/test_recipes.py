"""The shipped recipes: each `cpu-smoke` config runs train → search → predict → submit through the CLI, and the CLI
gives the same files as the notebook functions (`pneumokit.pipeline`) for the same config and seed."""
import json, subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import BIN, run_cli

ENV = {'OMP_NUM_THREADS': '1'}
SMOKES = ['siim-1st-place.cpu-smoke', 'siim-34th-place.cpu-smoke', 'siim-42nd-place.cpu-smoke', 'fastai-baseline.cpu-smoke']


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    "A small synthetic set, cached at 64 px, with patient-grouped folds — made with the CLI."
    d = tmp_path_factory.mktemp('recipes')
    run_cli('synth', '--dest', d/'mini', '--n-train', 100, '--n-test', 6, '--size', 256)
    mini = d/'mini'
    run_cli('prepare', mini/'dicom-images-train', d/'cache', '--labels', mini/'train-rle.csv',
            '--config', 'siim-1st-place.cpu-smoke', '--workers', 0)
    out = run_cli('split', mini/'train-rle.csv', d/'folds.csv', '--config', 'siim-1st-place.cpu-smoke',
                  '--dicoms', mini/'dicom-images-train', '--workers', 0).stdout
    assert '100 images in 5 folds' in out
    return d


def _cli_pipeline(d: Path, cfg: str, run: Path, sub: Path):
    mini = d/'mini'
    run_cli('train', cfg, d/'cache', d/'folds.csv', run, '--fold', 0, '--no-tensorboard', '--workers', 0, env=ENV)
    run_cli('search', run, env=ENV)
    run_cli('predict', run, mini/'dicom-images-test', env=ENV)
    run_cli('submit', run/'test_probs.npy', sub, '--thresholds', run, '--sample', mini/'sample_submission.csv', env=ENV)


@pytest.mark.parametrize('cfg', SMOKES)
def test_smoke_recipe_runs_end_to_end(data, cfg):
    run, sub = data/f'run-{cfg}', data/f'sub-{cfg}.csv'
    _cli_pipeline(data, cfg, run, sub)
    best = json.loads((run/'thresholds.json').read_text())
    assert best['rule'] == {'siim-34th-place.cpu-smoke': 'single', 'siim-42nd-place.cpu-smoke': 'ratio'}.get(cfg, 'triplet')
    if best['rule'] == 'single': assert {'threshold', 'area'} <= set(best)
    assert 0 <= best['dice'] <= 1 and best['n_images'] == (pd.read_csv(data/'folds.csv').fold == 0).sum()
    s = pd.read_csv(sub)
    assert sorted(s.ImageId) == sorted(pd.read_csv(data/'mini'/'sample_submission.csv').ImageId)
    hist = pd.read_csv(run/'fold0'/'history.csv')
    from pneumokit.config import load_config
    c = load_config(cfg)
    assert len(hist) == sum(st.epochs for st in c.recipe.stages)  # every stage ran
    assert len(list((run/'fold0').glob('model_*.pth'))) == min(c.recipe.top_k, len(hist))
    assert (run/'search.png').stat().st_size > 1000


NOTEBOOK = '''
import sys
from pathlib import Path
from pneumokit import pipeline
d, cfg = Path(sys.argv[1]), sys.argv[2]
mini, run = d/'mini', d/'nb-run'
pipeline.split(mini/'train-rle.csv', d/'nb-folds.csv', cfg, dicoms=mini/'dicom-images-train', n_workers=0, progress=False)
pipeline.train(cfg, d/'cache', d/'nb-folds.csv', run, fold=0, n_workers=0, tensorboard=False)
pipeline.search(run)
probs, = pipeline.predict(run, mini/'dicom-images-test')[1:]
pipeline.submit(probs, d/'nb-sub.csv', run, sample=mini/'sample_submission.csv', progress=False)
'''


def test_cli_and_notebook_give_the_same_files(data):
    cfg = SMOKES[0]
    cli_run = data/f'run-{cfg}'
    if not (cli_run/'thresholds.json').exists(): _cli_pipeline(data, cfg, cli_run, data/f'sub-{cfg}.csv')
    res = subprocess.run([str(BIN/'python'), '-c', NOTEBOOK, str(data), cfg], capture_output=True, text=True,
                         env={**__import__('os').environ, **ENV}, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    nb_run = data/'nb-run'
    assert (data/'nb-folds.csv').read_text() == (data/'folds.csv').read_text()
    assert (nb_run/'config.yaml').read_text() == (cli_run/'config.yaml').read_text()
    pd.testing.assert_frame_equal(pd.read_csv(nb_run/'fold0'/'history.csv').drop(columns='time', errors='ignore'),
                                  pd.read_csv(cli_run/'fold0'/'history.csv').drop(columns='time', errors='ignore'))
    assert np.array_equal(np.load(nb_run/'fold0'/'oof.npy'), np.load(cli_run/'fold0'/'oof.npy'))
    assert json.loads((nb_run/'thresholds.json').read_text()) == json.loads((cli_run/'thresholds.json').read_text())
    assert np.array_equal(np.load(nb_run/'test_probs.npy'), np.load(cli_run/'test_probs.npy'))
    assert (data/'nb-sub.csv').read_text() == (data/f'sub-{cfg}.csv').read_text()


def test_classifier_rule_gates_on_the_image_level_head(data, tmp_path):
    "The 42nd place's image-level head as the gate: its out-of-fold probabilities are searched, its test ones submitted."
    import shutil
    cfg = 'siim-42nd-place.cpu-smoke'
    src = data/f'run-{cfg}'
    if not (src/'thresholds.json').exists(): _cli_pipeline(data, cfg, src, data/f'sub-{cfg}.csv')
    run = shutil.copytree(src, tmp_path/'run')  # the search below replaces the run's rule: not the shared run's
    assert np.load(run/'fold0'/'oof_cls.npy').shape == ((pd.read_csv(data/'folds.csv').fold == 0).sum(),)
    assert np.load(run/'test_probs_cls.npy').shape == (len(np.load(run/'test_probs.npy')),)
    gate = tmp_path/'classifier.yaml'
    gate.write_text(f'base: {cfg}\nthresholds: {{rule: classifier, cls_thresholds: [0.2, 0.5, 0.8], bottoms: [0.3, 0.5], '
                    'default: null}\n')
    assert 'best rule classifier:' in run_cli('search', run, '--config', gate, env=ENV).stdout
    best = json.loads((run/'thresholds.json').read_text())
    assert best['rule'] == 'classifier' and best['cls_threshold'] in (0.2, 0.5, 0.8)
    out = run_cli('submit', run/'test_probs.npy', tmp_path/'s.csv', '--thresholds', run,
                  '--sample', data/'mini'/'sample_submission.csv', env=ENV).stdout
    assert 'rows' in out and len(pd.read_csv(tmp_path/'s.csv')) == len(np.load(run/'test_probs.npy'))
    # maps without image-level probabilities: one line naming the missing file
    (run/'test_probs_cls.npy').unlink()
    res = run_cli('submit', run/'test_probs.npy', tmp_path/'t.csv', '--thresholds', run, check=False)
    assert res.returncode != 0 and 'test_probs_cls.npy not found' in res.stderr and len(res.stderr.strip().splitlines()) == 1
