"""Two DDP processes (gloo on the CPU) launched by `accelerate launch`: synchronised weights, disjoint shards of one
positive-rate epoch, only rank 0 writes, and the validation metric equals a single-process run on the same images."""
import json

import numpy as np
import pandas as pd
import pytest
import torch


SCRIPT = '''
import json, sys
from pathlib import Path
import pandas as pd, torch
from fastai.callback.core import Callback
from fastai.torch_core import rank_distrib
from pneumokit.recipe import Recipe, Stage
from pneumokit.train import train_fold

class Probe(Callback):
    "Each rank's weights after its first optimizer step and at the end, its training shard's indices, its metrics."
    order = 70
    def after_step(self):
        if not hasattr(self, 'first'): self.first = self._weights()
    def after_train(self): self.shard = list(getattr(self.dl, '_DataLoader__idxs'))
    def after_fit(self):
        self.final, self.is_pos = self._weights(), getattr(self.dls.train, 'dl', self.dls.train).is_pos
        self.metrics = dict(zip(self.recorder.metric_names[1:-1], self.recorder.values[-1]))
    def _weights(self): return torch.cat([p.detach().flatten() for p in self.model.parameters()])

d, probe = Path(sys.argv[1]), Probe()
recipe = Recipe([Stage(size=64, epochs=1, bs=4, lr=1e-2, loss='bce', aug='siim-1st', pos_frac=0.5)], arch='Unet',
                encoder='mobilenet_v2', model_kwargs=dict(decoder_channels=(128, 64, 32, 16, 8)), top_k=1, min_area=5)
res = train_fold(recipe, d/'cache', pd.read_csv(d/'folds.csv'), 0, d/'run', distributed=True, cbs=[probe], n_workers=0)
torch.save(dict(first=probe.first, final=probe.final, shard=probe.shard, res=res, is_pos=probe.is_pos, metrics=probe.metrics),
           d/f'rank{rank_distrib()}.pt')
'''


@pytest.fixture(scope='module')
def ddp_run(tmp_path_factory):
    from pneumokit.dicom import build_cache
    from pneumokit.folds import make_folds, save_folds
    from pneumokit.synthetic import make_mini_siim
    from pneumokit.ddp import launch
    d = tmp_path_factory.mktemp('ddp')
    mini = make_mini_siim(d/'mini', n_train=41, n_test=0, size=128, progress=False)
    build_cache(mini/'dicom-images-train', d/'cache', sizes=(64,), labels=mini/'train-rle.csv', progress=False)
    folds = make_folds(mini/'train-rle.csv', n_splits=4, n_bins=1)
    save_folds(folds, d/'folds.csv')
    (d/'ddp_train.py').write_text(SCRIPT)
    res = launch([d/'ddp_train.py', d], num_processes=2, env={'OMP_NUM_THREADS': '1'}, capture=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return d, folds, [torch.load(d/f'rank{r}.pt', weights_only=False) for r in range(2)]


def test_weights_in_sync(ddp_run):
    _, _, ranks = ddp_run
    assert torch.equal(ranks[0]['first'], ranks[1]['first'])  # after one DDP step
    assert torch.equal(ranks[0]['final'], ranks[1]['final'])


def test_positive_rate_epoch_sharded(ddp_run):
    _, folds, ranks = ddp_run
    a, b = (r['shard'] for r in ranks)
    assert len(a) == len(b) and not set(a) & set(b)  # disjoint halves of one epoch
    is_pos = ranks[0]['is_pos']
    seen = np.array(a + b)
    assert is_pos[seen].sum() == is_pos.sum()  # every positive training image once in the epoch...
    assert abs(is_pos[seen].mean() - 0.5) < 0.06  # ...at the positive fraction asked for


def test_only_rank0_writes(ddp_run):
    d, folds, ranks = ddp_run
    fold = d/'run'/'fold0'
    assert ranks[0]['res'] == ranks[1]['res']  # every rank returns rank 0's summary
    assert len(list((fold/'tb').glob('events.*'))) == 1
    assert len(list(fold.glob('last_*.pth'))) == 1 and len(list(fold.glob('model_*.pth'))) == 1
    assert not list(fold.glob('.*.tmp'))
    hist = pd.read_csv(fold/'history.csv')
    assert len(hist) == 1
    ids = pd.read_csv(fold/'oof_ids.csv')
    assert sorted(ids.ImageId) == sorted(folds.ImageId[folds.fold == 0])
    assert np.load(fold/'oof.npy').shape == (len(ids), 64, 64)


def test_metric_equals_single_process(ddp_run):
    "The DDP run's gathered validation metrics equal a single process validating the same weights on the same images."
    from fastai.learner import Learner
    from pneumokit.data import siim_dataloaders
    from pneumokit.losses import get_loss
    from pneumokit.recipe import Recipe, load_checkpoints
    from pneumokit.train import _metrics
    d, folds, ranks = ddp_run
    assert (folds.fold == 0).sum() % 2 == 1  # an odd validation fold: the second shard is padded
    from pneumokit.layout import RunDir
    recipe = Recipe.from_dict(RunDir(d/'run').read_config())
    model = load_checkpoints(recipe, [d/'run'/'fold0'/ranks[0]['res']['checkpoints'][0]], device='cpu')[0]
    dls = siim_dataloaders(d/'cache', 64, folds, 0, bs=4, aug='none', n_workers=0, device='cpu')
    learn = Learner(dls, model, loss_func=get_loss('bce'), metrics=_metrics(recipe))
    with learn.no_bar(), learn.no_logging(): single = learn.validate()[1:]
    for r in ranks:
        got = [r['metrics'][n] for n in ('kaggle_dice', 'dice_pos', 'dice_neg')]
        np.testing.assert_allclose(got, single, atol=1e-6)
    # the comparison has teeth: counting the padded repeat of the first image, or rank 0's shard alone, would differ
    s = torch.cat(learn.metrics[0].scores).numpy()
    assert len(s) == len(dls.valid.dataset)
    padded, rank0_only = (s.sum() + s[0]) / (len(s) + 1), s[:(len(s) + 1) // 2].mean()
    assert abs(padded - single[0]) > 1e-4 and abs(rank0_only - single[0]) > 1e-4, (padded, rank0_only, single[0])
    print('DDP', got, 'single', single, 'padded', padded, 'rank 0 only', rank0_only)


def test_cli_train_distributed(ddp_run, tmp_path):
    "`pneumokit train CONFIG --distributed` starts the DDP processes itself; one set of run files comes out."
    from conftest import run_cli
    d = ddp_run[0]
    cfg = tmp_path/'ddp.yaml'
    cfg.write_text('base: siim-1st-place.cpu-smoke\nname: ddp-smoke\nstages:\n'
                   '  - {size: 64, epochs: 1, bs: 4, lr: 1.0e-2, frozen: true, pos_frac: 0.5, loss: combo, aug: none}\n')
    res = run_cli('train', cfg, d/'cache', d/'folds.csv', tmp_path/'run', '--fold', 1, '--distributed',
                  '--processes', 2, '--no-tensorboard', '--workers', 0, env={'OMP_NUM_THREADS': '1'})
    assert res.stdout.count('run folder:') == 1  # printed by rank 0 only
    fold = tmp_path/'run'/'fold1'
    assert len(pd.read_csv(fold/'history.csv')) == 1 and (fold/'oof.npy').exists()
    assert json.loads((tmp_path/'run'/'fold1'/'summary.json').read_text())['fold'] == 1
    assert (tmp_path/'run'/'config.yaml').exists() and len(pd.read_csv(tmp_path/'run'/'summary.csv')) == 1
