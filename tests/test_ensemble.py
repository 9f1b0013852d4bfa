"Ensembles of runs through the console commands: `search RUN RUN --weights --dest`, `predict` and `submit` of the ensemble folder."
import shutil
from types import SimpleNamespace

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import cli_fails, cli_run, GROW_CONFIG


@pytest.fixture(scope='session')
def two_runs(grown_run):
    "The shared grown run (32 px) and a second run at 64 px trained on the same cache and folds file."
    from pneumokit import pipeline
    d = grown_run.root
    cfg = d/'cfg64.yaml'
    cfg.write_text(GROW_CONFIG.replace('name: grow-test', 'name: grow-64').replace('{size: 32,', '{size: 64,'))
    pipeline.prepare(grown_run.mini/'dicom-images-train', grown_run.cache, cfg, labels=grown_run.mini/'train-rle.csv',
                     n_workers=0, progress=False)
    pipeline.train(cfg, grown_run.cache, grown_run.folds, d/'run64', tensorboard=False, n_workers=0)
    return SimpleNamespace(g=grown_run, a=grown_run.run, b=d/'run64', d=d)


def test_search_predict_submit_ensemble(two_runs, tmp_path):
    from pneumokit.layout import EnsembleDir, RunDir, read_maps
    from pneumokit.pipeline import run_config
    from pneumokit.runs import Ensemble
    t, ens = two_runs, EnsembleDir(tmp_path/'ens')
    best = cli_run('search', t.a, t.b, '--weights', '1,3', '--dest', ens.root)
    test = Ensemble([t.a, t.b], [0.25, 0.75])
    ids, maps, truths = test.oof()
    assert best['size'] == 64 and best['n_images'] == len(ids) and best == ens.read_thresholds()
    cfg = run_config(t.a).thresholds
    assert best['dice'] == pytest.approx(cfg.rule_type.search(maps, truths, cfg.grid()).dice.iloc[0], abs=1e-12)
    assert ens.read_spec()['weights'] == [0.25, 0.75]
    probs = cli_run('predict', ens.root, t.g.mini/'dicom-images-test')
    got, names = read_maps(probs)
    assert got.dtype == np.float32 and got.shape == (2, 64, 64)
    want = np.zeros_like(got)
    for i, w in enumerate((0.25, 0.75)):  # each member's own maps (32 and 64 px), brought to 64 px
        m, n = read_maps(ens.member_probs(i))
        assert n == names and m.shape[-1] == (32, 64)[i]
        want += np.float32(w) * np.stack([cv2.resize(x.astype(np.float32) / 255, (64, 64), interpolation=cv2.INTER_LINEAR) for x in m])
    assert np.abs(got - want).max() < 1e-6
    sub = cli_run('submit', probs, tmp_path/'sub.csv', '--thresholds', ens.root, '--sample', t.g.mini/'sample_submission.csv')
    assert sorted(pd.read_csv(sub).ImageId) == sorted(pd.read_csv(t.g.mini/'sample_submission.csv').ImageId)
    df = cli_run('runs', t.a, t.b, ens.root)  # the ensemble is a row beside its members
    assert df.kind.tolist() == ['run', 'run', 'ensemble'] and df.members.iloc[-1] == 'run×0.25, run64×0.75'
    e = df.iloc[-1]
    assert e.oof_dice == best['dice'] and e.sizes == '64'
    n = ids.groupby('fold').size()  # each fold's Dice under the searched rule, weighted by its images, is the overall Dice
    assert (e.dice_f0 * n[0] + e.dice_f1 * n[1]) / n.sum() == pytest.approx(best['dice'], abs=1e-9)


def test_ensemble_refuses_other_folds(two_runs, tmp_path):
    "A member whose folds 0 and 1 swapped places (with a folds file that says so) is refused in one line naming an image and its two folds."
    from pneumokit.folds import load_folds, save_folds
    from pneumokit.layout import RunDir
    t, sw = two_runs, tmp_path/'swapped'
    shutil.copytree(t.b, sw)
    for a, b in (('fold0', 'tmp'), ('fold1', 'fold0'), ('tmp', 'fold1')): (sw/a).rename(sw/b)
    f = load_folds(t.g.folds)
    f['fold'] = f.fold.map({0: 1, 1: 0}).fillna(f.fold).astype(int)
    save_folds(f, tmp_path/'swapped.csv')
    RunDir(sw).write_info(t.g.cache, tmp_path/'swapped.csv')
    first = RunDir(t.a).load_oof()[0].ImageId.iloc[0]
    cli_fails('search', t.a, sw, '--dest', tmp_path/'e', needles=[f'image {first} is in fold 0 of {t.a}', f'but in fold 1 of {sw}'])


def test_ensemble_bad_arguments(two_runs, tmp_path):
    t = two_runs
    cli_fails('search', needles=['give a run folder'])
    cli_fails('search', t.a, t.b, needles=['needs --dest'])
    cli_fails('search', t.a, t.b, '--dest', tmp_path/'e', '--weights', 'a,b', needles=["--weights must be comma-separated numbers"])
    cli_fails('search', t.a, t.b, '--dest', tmp_path/'e', '--weights', '1', needles=['expected 2 number(s) >= 0, one per run'])
    cli_fails('search', t.a, t.a, '--dest', tmp_path/'e', needles=['is named twice'])
    cli_fails('search', t.a, tmp_path/'none', '--dest', tmp_path/'e', needles=['run folder not found'])
