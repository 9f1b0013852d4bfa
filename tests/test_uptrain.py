"""Uptraining fold by fold (#20 point 2): a child run's fold k starts from its parent's fold k, a parent that split the images
otherwise is refused, a stage starts from the previous stage's best epoch, and top-k never mixes stages of other sizes."""
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from fastai.callback.core import Callback

from conftest import cli_fails, cli_run

PARENT = '''base: siim-1st-place.cpu-smoke
name: part0
model:
  encoder: mobilenet_v2
  kwargs: {decoder_channels: [16, 8, 8, 8, 8]}
train: {top_k: 1, min_area: 5}
stages:
  - {size: 32, epochs: 1, bs: 8, lr: 1.0e-2, loss: combo, aug: none}
data: {n_splits: 2, folds: [0, 1]}
inference: {bs: 8, tta: none}
'''
CHILD = '''base: {parent_cfg}
name: part1
model:
  init: {{run: {parent}, checkpoint: {checkpoint}}}
stages:
  - {{size: 32, epochs: 1, bs: 8, lr: 1.0e-3, loss: combo, aug: none}}
'''


@pytest.fixture(scope='module')
def parent(tmp_path_factory):
    "A tiny parent run: 40 synthetic images in 2 folds, 1 epoch at 32 px per fold, its cache also holding 48 px."
    from pneumokit import pipeline
    d = tmp_path_factory.mktemp('uptrain')
    (d/'part0.yaml').write_text(PARENT)
    mini = pipeline.synth(d/'mini', n_train=40, n_test=2, size=256, progress=False)
    pipeline.prepare(mini/'dicom-images-train', d/'cache', sizes=(32, 48), labels=mini/'train-rle.csv', n_workers=0, progress=False)
    cli_run('split', mini/'train-rle.csv', d/'folds.csv', '--config', d/'part0.yaml', '--dicoms', mini/'dicom-images-train',
            '--workers', 0)
    pipeline.train(d/'part0.yaml', d/'cache', d/'folds.csv', d/'part0', tensorboard=False, n_workers=0)
    return SimpleNamespace(root=d, cache=d/'cache', folds=d/'folds.csv', run=d/'part0', cfg=d/'part0.yaml')


def child_cfg(parent, name='part1.yaml', checkpoint='best'):
    f = parent.root/name
    f.write_text(CHILD.format(parent_cfg=parent.cfg, parent=parent.run, checkpoint=checkpoint))
    return f


class FirstWeights(Callback):
    "Test probe: the model's weights when each stage's fit begins (after the trainer loaded its start)."
    order = 0
    def __init__(self): self.snaps = []
    def before_fit(self): self.snaps.append({k: v.detach().clone().cpu() for k, v in self.learn.model.state_dict().items()})


def same(a: dict, b: dict) -> bool: return a.keys() == b.keys() and all(torch.equal(a[k], b[k].to(a[k].dtype)) for k in a)


def test_fold_k_starts_from_parents_fold_k(parent, tmp_path):
    from pneumokit.folds import load_folds
    from pneumokit.layout import RunDir
    from pneumokit.models import read_state_dict
    from pneumokit.pipeline import as_config
    from pneumokit.runs import parent_weights
    from pneumokit.train import train_kfold
    cfg, folds = as_config(child_cfg(parent)), load_folds(parent.folds)
    init = parent_weights(cfg.recipe.init['run'], folds, [0, 1], cfg.recipe.init['checkpoint'], recipe=cfg.recipe)
    best = {k: read_state_dict(RunDir(parent.run).fold(k).root/RunDir(parent.run).fold(k).read_summary()['checkpoints'][0])
            for k in (0, 1)}
    assert not same(best[0], best[1])  # the two parent folds learned different weights
    for k in (0, 1):
        probe = FirstWeights()
        train_kfold(cfg.recipe, parent.cache, folds, tmp_path/'child', fold_ids=[k], init=init, cbs=[probe], tensorboard=False,
                    n_workers=0)
        assert same(probe.snaps[0], best[k]), f'fold {k} did not start from the parent fold {k} best checkpoint'
        assert not same(probe.snaps[0], best[1 - k]), f'fold {k} started from the parent fold {1 - k}'


def test_topk_average_start(parent, tmp_path):
    "`checkpoint: topk` starts from the mean of the parent fold's top-k files (here top-1: that file)."
    from pneumokit.folds import load_folds
    from pneumokit.runs import parent_weights
    from pneumokit.train import average_weights
    w = parent_weights(parent.run, load_folds(parent.folds), [1], 'topk')
    assert [p.parent.name for p in w[1]] == ['fold1']
    from pneumokit.models import read_state_dict
    assert same(average_weights(w[1]), read_state_dict(w[1][0]))


def test_cli_train_uptrains(parent, tmp_path):
    "`model.init` works through `pneumokit train`: the child trains both folds; its saved config names the parent."
    from pneumokit.layout import RunDir
    cli_run('train', child_cfg(parent), parent.cache, parent.folds, tmp_path/'child', '--no-tensorboard', '--workers', 0)
    run = RunDir(tmp_path/'child')
    assert run.fold_ids('summary') == [0, 1]
    assert run.read_config()['model']['init'] == dict(run=str(parent.run), checkpoint='best')


def test_parent_with_other_folds_refused(parent, tmp_path):
    "A folds file that moves an image to another fold than the parent's: one line naming the image and its two folds."
    f = pd.read_csv(parent.folds)
    i, k = f.ImageId.iloc[0], int(f.fold.iloc[0])
    f.loc[0, 'fold'] = 1 - k
    f.to_csv(tmp_path/'moved.csv', index=False)
    cli_fails('train', child_cfg(parent), parent.cache, tmp_path/'moved.csv', tmp_path/'child', '--workers', 0,
              needles=['`model.init`', f'image {i} is in fold {k} of parent run {parent.run}', f'but in fold {1 - k} of {tmp_path/"moved.csv"}'])
    assert not list((tmp_path/'child').glob('*'))  # refused before anything is written


def test_parent_unfinished_or_missing_refused(parent, tmp_path):
    bad = parent.root/'bad.yaml'
    bad.write_text(CHILD.format(parent_cfg=parent.cfg, parent=tmp_path/'nope', checkpoint='best'))
    cli_fails('train', bad, parent.cache, parent.folds, tmp_path/'child', needles=['`model.init`', 'parent run not found'])
    cli_fails('train', child_cfg(parent, 'first.yaml', 'first'), parent.cache, parent.folds, tmp_path/'child',
              needles=["`model.init.checkpoint` is 'first'; valid: best, last, topk"])
    # a parent whose fold 1 has not finished
    import shutil
    half = tmp_path/'half'
    shutil.copytree(parent.run, half)
    (half/'fold1'/'summary.json').unlink()
    bad.write_text(CHILD.format(parent_cfg=parent.cfg, parent=half, checkpoint='best'))
    cli_fails('train', bad, parent.cache, parent.folds, tmp_path/'child', needles=[f'parent run {half}: fold 1 has not finished'])


class Scores(Callback):
    "Test probe: replaces the monitored score of each epoch (stage by stage), and snapshots the weights at each fit's start and end."
    order = 55  # after the Recorder (50) stored the epoch's figures, before `FoldCheckpoint` (60) ranks them
    def __init__(self, scores): self.scores, self.stage, self.starts, self.ends = scores, -1, [], []
    def before_fit(self):
        self.stage += 1
        self.starts.append({k: v.detach().clone().cpu() for k, v in self.learn.model.state_dict().items()})
    def after_fit(self): self.ends.append({k: v.detach().clone().cpu() for k, v in self.learn.model.state_dict().items()})
    def after_epoch(self):
        i = self.recorder.metric_names[1:-1].index('kaggle_dice')
        self.recorder.values[-1][i] = self.scores[self.stage][self.epoch]


def test_early_stage_best_never_predicts_and_next_stage_starts_from_best(parent, tmp_path):
    "Stage 0 (32 px) scores highest, yet only stage-1 (48 px) checkpoints are kept, predict the out-of-fold maps and are loaded by `predict`; stage 1 starts from stage 0's best epoch."
    from pneumokit.folds import load_folds
    from pneumokit.inference import _fold_checkpoints
    from pneumokit.layout import RunDir
    from pneumokit.models import read_state_dict
    from pneumokit.recipe import Recipe, Stage
    from pneumokit.train import train_fold
    r = Recipe([Stage(size=32, epochs=2, bs=8, lr=1e-2, aug='none'), Stage(size=48, epochs=2, bs=8, lr=1e-3, aug='none', start='best')],
               encoder='mobilenet_v2', model_kwargs=dict(decoder_channels=(16, 8, 8, 8, 8)), top_k=3, min_area=5)
    probe = Scores([[0.99, 0.9], [0.2, 0.3]])
    res = train_fold(r, parent.cache, load_folds(parent.folds), 0, tmp_path/'run', tensorboard=False, n_workers=0, cbs=[probe])
    assert res['checkpoints'] == ['model_s1_e1.pth', 'model_s1_e0.pth'], res  # the early stage's 0.99 and 0.9 are not ranked
    assert res['best_score'] == 0.3 and res['size'] == 48
    fold = RunDir(tmp_path/'run').fold(0)
    assert [p.name for p in _fold_checkpoints(RunDir(tmp_path/'run'), 0)] == ['model_s1_e0.pth', 'model_s1_e1.pth']  # what predicts
    assert RunDir(tmp_path/'run').load_oof()[1][0].shape[1:] == (48, 48)  # the maps at the last stage's size
    best0 = read_state_dict(fold.root/'best_s0_e0.pth')
    assert same(probe.starts[1], best0)  # stage 1 started from stage 0's best epoch (0), not its last (1)
    assert not same(probe.starts[1], probe.ends[0])
