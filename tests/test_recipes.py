"""The shipped recipes: each `cpu-smoke` config runs train → search → predict → submit through the CLI, and the CLI
gives the same files as the notebook functions (`pneumokit.pipeline`) for the same config and seed. Every run is the
session's shared one (`conftest.smoke_run`: the smoke demo's set, each recipe trained once)."""
import inspect, json, shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import SMOKE, cli_run

SMOKES = [SMOKE, 'siim-34th-place.cpu-smoke', 'siim-42nd-place.cpu-smoke', 'fastai-baseline.cpu-smoke']


@pytest.fixture(scope='module')
def data(smoke_demo):
    "The smoke demo's synthetic set, its 64 px cache and patient-grouped folds."
    assert len(pd.read_csv(smoke_demo/'mini-folds.csv')) == 100 and pd.read_csv(smoke_demo/'mini-folds.csv').fold.nunique() == 5
    return smoke_demo


@pytest.mark.parametrize('cfg', SMOKES)
def test_smoke_recipe_runs_end_to_end(data, smoke_run, cfg):
    run, sub = smoke_run(cfg)
    best = json.loads((run/'thresholds.json').read_text())
    assert best['rule'] == {'siim-34th-place.cpu-smoke': 'single', 'siim-42nd-place.cpu-smoke': 'ratio'}.get(cfg, 'triplet')
    if best['rule'] == 'single': assert {'threshold', 'area'} <= set(best)
    folds = pd.read_csv(data/'mini-folds.csv')
    assert 0 <= best['dice'] <= 1 and best['n_images'] == folds.fold.isin(best['folds']).sum()
    s = pd.read_csv(sub)
    assert sorted(s.ImageId) == sorted(pd.read_csv(data/'mini'/'sample_submission.csv').ImageId)
    hist = pd.read_csv(run/'fold0'/'history.csv')
    from pneumokit.config import load_config
    c = load_config(cfg)
    assert len(hist) == sum(st.epochs for st in c.recipe.stages)  # every stage ran
    assert len(list((run/'fold0').glob('model_*.pth'))) == min(c.recipe.top_k, len(hist))
    assert (run/'search.png').stat().st_size > 1000


def test_cli_and_notebook_give_the_same_files(data, smoke_run, tmp_path, monkeypatch):
    "Each step both ways: the CLI's `train` hands `pipeline.train` the notebook's arguments (the run is the shared one, not trained again), and split, search, predict and submit, run both ways on copies of the shared run, write the same files."
    from pneumokit import pipeline
    from pneumokit.layout import RunDir
    from pneumokit.pipeline import as_config
    cfg, mini, (shared, _) = SMOKE, data/'mini', smoke_run(SMOKE)
    cli_run('split', mini/'train-rle.csv', tmp_path/'cli-folds.csv', '--config', cfg, '--dicoms', mini/'dicom-images-train', '--workers', 0)
    pipeline.split(mini/'train-rle.csv', tmp_path/'nb-folds.csv', cfg, dicoms=mini/'dicom-images-train', n_workers=0, progress=False)
    assert (tmp_path/'nb-folds.csv').read_text() == (tmp_path/'cli-folds.csv').read_text() == (data/'mini-folds.csv').read_text()
    sig, calls = inspect.signature(pipeline.train), []
    summary = pd.DataFrame([f.read_summary() for f in RunDir(shared).folds('summary')])  # read only: the run is shared
    monkeypatch.setattr(pipeline, 'train', lambda *a, **k: calls.append(sig.bind(*a, **k)) or summary)
    cli_run('train', cfg, data/'mini-cache', data/'mini-folds.csv', tmp_path/'run', '--fold', 0, '--no-tensorboard', '--workers', 0)
    pipeline.train(cfg, data/'mini-cache', data/'mini-folds.csv', tmp_path/'run', fold=0, n_workers=0, tensorboard=False)
    for b in calls: b.apply_defaults()
    cli, nb = [{**b.arguments, 'cfg': as_config(b.arguments['cfg']).to_dict(), **{k: str(b.arguments[k]) for k in ('cache', 'folds', 'run')}}
               for b in calls]
    assert cli == nb, (cli, nb)
    monkeypatch.undo()
    cli_copy, nb_copy = (shutil.copytree(shared, tmp_path/n) for n in ('cli-run', 'nb-run'))
    cli_run('search', cli_copy)
    cli_run('predict', cli_copy, mini/'dicom-images-test')
    cli_run('submit', cli_copy/'test_probs.npy', tmp_path/'cli-sub.csv', '--thresholds', cli_copy, '--sample', mini/'sample_submission.csv')
    pipeline.search(nb_copy)
    probs, = pipeline.predict(nb_copy, mini/'dicom-images-test')[1:]
    pipeline.submit(probs, tmp_path/'nb-sub.csv', nb_copy, sample=mini/'sample_submission.csv', progress=False)
    assert json.loads((nb_copy/'thresholds.json').read_text()) == json.loads((cli_copy/'thresholds.json').read_text())
    assert np.array_equal(np.load(nb_copy/'test_probs.npy'), np.load(cli_copy/'test_probs.npy'))
    assert (tmp_path/'nb-sub.csv').read_text() == (tmp_path/'cli-sub.csv').read_text()


def test_classifier_rule_gates_on_the_image_level_head(data, smoke_run, tmp_path):
    "The 42nd place's image-level head as the gate: its out-of-fold probabilities are searched, its test ones submitted."
    cfg = 'siim-42nd-place.cpu-smoke'
    run = shutil.copytree(smoke_run(cfg)[0], tmp_path/'run')  # the search below replaces the run's rule: not the shared run's
    assert np.load(run/'fold0'/'oof_cls.npy').shape == ((pd.read_csv(data/'mini-folds.csv').fold == 0).sum(),)
    assert np.load(run/'test_probs_cls.npy').shape == (len(np.load(run/'test_probs.npy')),)
    gate = tmp_path/'classifier.yaml'
    gate.write_text(f'base: {cfg}\nthresholds: {{rule: classifier, cls_thresholds: [0.2, 0.5, 0.8], bottoms: [0.3, 0.5], '
                    'default: null}\n')
    assert cli_run('search', run, '--config', gate)['rule'] == 'classifier'
    best = json.loads((run/'thresholds.json').read_text())
    assert best['rule'] == 'classifier' and best['cls_threshold'] in (0.2, 0.5, 0.8)
    cli_run('submit', run/'test_probs.npy', tmp_path/'s.csv', '--thresholds', run, '--sample', data/'mini'/'sample_submission.csv')
    assert len(pd.read_csv(tmp_path/'s.csv')) == len(np.load(run/'test_probs.npy'))
    # maps without image-level probabilities: one line naming the missing file
    (run/'test_probs_cls.npy').unlink()
    from conftest import cli_fails
    cli_fails('submit', run/'test_probs.npy', tmp_path/'t.csv', '--thresholds', run, needles=['test_probs_cls.npy not found'])
