"""`pneumokit lr-find CONFIG CACHE FOLDS --stage N`: fastai's LR finder on exactly one stage of a smoke config, its plot,
curve and suggested rates written where `pneumokit.layout.LrFindDir` says; the same from Python (`pipeline.lr_find`)."""
import json

import pandas as pd
import pytest
import yaml

from conftest import cli_fails, cli_run

CONFIG = dict(base='siim-1st-place.cpu-smoke', name='lr-test', train=dict(top_k=1),
              model=dict(encoder='mobilenet_v2', kwargs=dict(decoder_channels=[16, 16, 8, 8, 8])),
              stages=[dict(size=64, epochs=1, bs=8, lr=1e-2, frozen=True, loss='combo', aug='none'),
                      dict(size=64, epochs=1, bs=4, lr=[1e-3, 1e-2], loss='lovasz', aug='none')],
              data=dict(n_splits=2, folds=[0]))


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from pneumokit import pipeline
    d = tmp_path_factory.mktemp('lrfind')
    (d/'cfg.yaml').write_text(yaml.safe_dump(CONFIG))
    mini = pipeline.synth(d/'mini', n_train=40, n_test=2, size=256, progress=False)
    pipeline.prepare(mini/'dicom-images-train', d/'cache', d/'cfg.yaml', labels=mini/'train-rle.csv', n_workers=0, progress=False)
    pipeline.split(mini/'train-rle.csv', d/'folds.csv', d/'cfg.yaml')
    return d


def test_lr_find_cli_writes_plot_and_suggestion(data, capsys):
    from pneumokit.layout import LrFindDir
    d = data
    res = cli_run('lr-find', d/'cfg.yaml', d/'cache', d/'folds.csv', '--stage', 1, '--dest', d/'lr', '--num-it', 50,
                  '--workers', 0, '--device', 'cpu')
    out = LrFindDir(d/'lr')
    assert f"stage 1: suggested lr {res['valley']:.2e}" in capsys.readouterr().out
    assert json.loads(out.suggestion(1).read_text()) == res
    assert (res['config'], res['stage'], res['fold'], res['plot']) == ('lr-test', 1, 0, str(out.plot(1)))
    assert all(1e-7 <= res[k] <= 10 for k in ('valley', 'slide', 'minimum', 'steep'))
    assert out.plot(1).read_bytes()[:4] == b'\x89PNG' and out.plot(1).stat().st_size > 5000
    curve = pd.read_csv(out.curve(1))
    assert len(curve) == res['n_batches'] and 20 < len(curve) <= 50 and curve.lr.is_monotonic_increasing
    assert not list((d/'lr').glob('.*.tmp'))  # written atomically: no temporary file left


def test_lr_find_runs_on_the_stage(data, tmp_path, monkeypatch):
    "The finder's Learner is the trainer's for that stage: its batch size, frozen encoder and loss; the weights come back."
    from fastai.learner import Learner
    from pneumokit import pipeline
    seen = {}
    real = Learner.lr_find
    def spy(self, *a, **k):
        seen.update(bs=self.dls.train.bs, loss=type(self.loss_func).__name__,
                    trainable=[all(p.requires_grad for p in ps) for ps in self.opt.param_lists],
                    before={k: v.clone() for k, v in self.model.state_dict().items()})
        r = real(self, *a, **k)
        seen['restored'] = all((v == seen['before'][k]).all() for k, v in self.model.state_dict().items())
        return r
    monkeypatch.setattr(Learner, 'lr_find', spy)
    pipeline.lr_find(data/'cfg.yaml', data/'cache', data/'folds.csv', stage=0, dest=tmp_path, num_it=50, n_workers=0, device='cpu')
    assert (seen['bs'], seen['loss'], seen['trainable'], seen['restored']) == (8, 'ComboLoss', [False, True], True)
    pipeline.lr_find(data/'cfg.yaml', data/'cache', data/'folds.csv', stage=1, dest=tmp_path, num_it=50, n_workers=0, device='cpu')
    assert (seen['bs'], seen['loss'], seen['trainable']) == (4, 'LovaszLoss', [True, True])
    assert sorted(p.name for p in tmp_path.iterdir()) == [f'lr_find_stage{s}.{e}' for s in (0, 1) for e in ('csv', 'json', 'png')]
    # from a checkpoint (the previous stage's weights): the finder starts from them
    import torch
    from pneumokit.config import load_config
    from pneumokit.models import build_model
    from pneumokit.recipe import model_kwargs
    r = load_config(data/'cfg.yaml').recipe
    m = build_model(r.arch, r.encoder, None, **model_kwargs(r))
    with torch.no_grad(): m.segmentation_head[0].bias.fill_(0.123)
    torch.save(m.state_dict(), tmp_path/'prev.pth')
    res = pipeline.lr_find(data/'cfg.yaml', data/'cache', data/'folds.csv', stage=1, dest=tmp_path/'ck', checkpoint=tmp_path/'prev.pth',
                           num_it=50, n_workers=0, device='cpu')
    assert seen['before']['segmentation_head.0.bias'].item() == pytest.approx(0.123) and res['checkpoint'] == str(tmp_path/'prev.pth')


def test_lr_find_bad_input(data, tmp_path):
    d = data
    cli_fails('lr-find', d/'cfg.yaml', d/'cache', d/'folds.csv', '--stage', 2, '--dest', tmp_path/'lr',
              needles=['`stage` is 2: the recipe has 2 stage(s), numbered 0 to 1'])
    cli_fails('lr-find', d/'cfg.yaml', tmp_path/'nope', d/'folds.csv', needles=['PNG cache not found'])
    cli_fails('lr-find', d/'cfg.yaml', d/'cache', d/'folds.csv', '--num-it', 10, needles=['`num_it`'])
    cli_fails('lr-find', d/'cfg.yaml', d/'cache', d/'folds.csv', '--checkpoint', tmp_path/'none.pth', needles=['checkpoint not found'])
    import torch
    torch.save({'encoder.conv.weight': torch.zeros(1)}, tmp_path/'other.pth')  # another model's weights
    cli_fails('lr-find', d/'cfg.yaml', d/'cache', d/'folds.csv', '--checkpoint', tmp_path/'other.pth', '--dest', tmp_path/'lr',
              needles=[f"{tmp_path/'other.pth'}: weights do not fit the config's model"])
    assert not (tmp_path/'lr').exists()
