"""Open registries from a config: an albumentations pipeline in albumentations' own serialised form, and a model of your
own as `package.module:Class` (a small real UNet in a package written here and put on the Python path), each trained,
searched, predicted and exported on the smoke data like the built-in ones."""
import json, sys, textwrap
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import yaml

from conftest import cli_fails, cli_run

UNET = '''
import torch
import torch.nn.functional as F
from torch import nn

def _block(i: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                         nn.Conv2d(o, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

class TinyUNet(nn.Module):
    "A small UNet: `depth` pooling steps down (the encoder), the same up with skip connections (the decoder), logits at the input size."
    def __init__(self, classes: int = 1, in_channels: int = 3, width: int = 8, depth: int = 3):
        super().__init__()
        chs = [width * 2**i for i in range(depth + 1)]
        self.encoder = nn.ModuleList([_block(in_channels, chs[0])] + [_block(a, b) for a, b in zip(chs, chs[1:])])
        self.decoder = nn.ModuleList([_block(a + b, a) for a, b in zip(chs, chs[1:])][::-1])
        self.head = nn.Conv2d(chs[0], classes, 1)

    def forward(self, x):
        skips = []
        for i, blk in enumerate(self.encoder):
            x = blk(x if i == 0 else F.max_pool2d(x, 2)); skips.append(x)
        for blk, s in zip(self.decoder, skips[-2::-1]):
            x = blk(torch.cat([F.interpolate(x, scale_factor=2.0, mode='nearest'), s], 1))
        return self.head(x)
'''

# no `base:`: a base's `model.kwargs` (smp's decoder_channels) would merge into the own model's keywords
BASE = dict(model=dict(encoder='mobilenet_v2', kwargs=dict(decoder_channels=[16, 16, 8, 8, 8])),
            train=dict(top_k=1, min_area=5), data=dict(n_splits=2, folds=[0]), inference=dict(bs=4, tta='hflip'),
            thresholds=dict(tops=[0.3, 0.5], areas=[0, 5], bottoms=[0.3, 0.5]))
AUG = A.Compose([A.HorizontalFlip(p=0.5), A.Affine(rotate=(-10, 10), border_mode=cv2.BORDER_CONSTANT, p=0.5),
                 A.RandomBrightnessContrast(p=0.3)])


def _stages(aug, frozen: bool = True) -> list[dict]:
    return [dict(size=64, epochs=1, bs=8, lr=1e-2, frozen=frozen, pos_frac=0.8, loss='combo', aug=aug),
            dict(size=64, epochs=1, bs=8, lr=2e-3, loss='combo', aug=aug)]


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    "A 40-image synthetic set cached at 64 px with 2 folds, and the package `tinynets` on the Python path."
    from pneumokit import pipeline
    d = tmp_path_factory.mktemp('open')
    (d/'pkg'/'tinynets').mkdir(parents=True)
    (d/'pkg'/'tinynets'/'__init__.py').write_text('')
    (d/'pkg'/'tinynets'/'unet.py').write_text(textwrap.dedent(UNET))
    sys.path.insert(0, str(d/'pkg'))
    (d/'base.yaml').write_text(yaml.safe_dump(dict(BASE, name='base', stages=_stages('none'))))
    mini = pipeline.synth(d/'mini', n_train=40, n_test=4, size=256, progress=False)
    pipeline.prepare(mini/'dicom-images-train', d/'cache', d/'base.yaml', labels=mini/'train-rle.csv', n_workers=0, progress=False)
    pipeline.split(mini/'train-rle.csv', d/'folds.csv', d/'base.yaml')
    yield d, mini
    sys.path.remove(str(d/'pkg'))


def _config(d: Path, name: str, **over) -> Path:
    f = d/f'{name}.yaml'
    f.write_text(yaml.safe_dump({**BASE, 'name': name, **over}, sort_keys=False))
    return f


def _train_predict_export(d: Path, mini: Path, cfg: Path) -> Path:
    "train → search → predict → export through the command functions (in this process: the package is on its path)."
    run = d/f'run-{cfg.stem}'
    cli_run('train', cfg, d/'cache', d/'folds.csv', run, '--no-tensorboard', '--workers', 0, '--device', 'cpu')
    cli_run('search', run)
    cli_run('predict', run, mini/'dicom-images-test', '--device', 'cpu')
    cli_run('export', run, d/f'export-{cfg.stem}')
    return run


def _check_run(d: Path, run: Path, cfg: Path):
    from pneumokit.layout import ExportDir, RunDir, read_maps
    import pandas as pd
    assert len(pd.read_csv(RunDir(run).fold(0).history)) == 2  # both stages ran
    maps, ids = read_maps(RunDir(run).test_probs)
    assert maps.shape == (4, 64, 64) and len(ids) == 4
    meta = ExportDir(d/f'export-{cfg.stem}').read_sidecar()
    assert meta['n_models'] == 1 and meta['max_abs_diff'] < 1e-5  # the exported program computes pneumokit's maps


def test_serialised_augmentations_train_predict_export(data):
    d, mini = data
    cfg = _config(d, 'aug', stages=_stages(A.to_dict(AUG)))
    from pneumokit.config import load_config
    c = load_config(cfg)
    assert c.recipe.stages[0].aug['transform']['transforms'][1]['__class_fullname__'] == 'Affine'
    run = _train_predict_export(d, mini, cfg)
    _check_run(d, run, cfg)
    saved = yaml.safe_load((run/'config.yaml').read_text())
    assert saved['stages'][1]['aug'] == json.loads(json.dumps(A.to_dict(AUG)))  # the run keeps the pipeline as given


def test_serialised_augmentations_bad(data, tmp_path):
    "An argument albumentations 2.0.8 would silently ignore, an unknown transform: one line naming stage, transform and key."
    d, _ = data
    old = A.to_dict(AUG); old['transform']['transforms'][1]['rotate_limit'] = 10  # the 0.x name of `rotate`
    cli_fails('train', _config(tmp_path, 'old', stages=_stages(old)), d/'cache', d/'folds.csv', tmp_path/'run',
              needles=['stage 0: `aug`: albumentations 2.0.8 ignores Affine.rotate_limit'])
    bad = A.to_dict(AUG); bad['transform']['transforms'][0]['__class_fullname__'] = 'HorizontalFlop'
    cli_fails('train', _config(tmp_path, 'bad', stages=_stages(bad)), d/'cache', d/'folds.csv', tmp_path/'run',
              needles=["no transform 'HorizontalFlop'"])
    assert not (tmp_path/'run').exists()


def test_own_model_trains_predicts_exports(data):
    d, mini = data
    cfg = _config(d, 'own', model=dict(arch='tinynets.unet:TinyUNet', kwargs=dict(width=4, depth=2)), stages=_stages('none'))
    run = _train_predict_export(d, mini, cfg)
    _check_run(d, run, cfg)
    import torch
    from pneumokit.inference import load_fold_models
    m, = load_fold_models(run, device='cpu')
    assert type(m).__name__ == 'TinyUNet' and len(m.encoder) == 3  # built from the run's config: depth 2, width 4
    assert m.encoder[0][0].weight.shape == (4, 3, 3, 3)
    with torch.no_grad(): assert m(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_own_model_bad(data, tmp_path):
    "A misspelt keyword (checked against the class's signature), a class that is not there, a frozen stage without an encoder."
    d, _ = data
    def fails(model, *needles, stages=_stages('none')):
        cli_fails('train', _config(tmp_path, 'm', model=model, stages=stages), d/'cache', d/'folds.csv', tmp_path/'run', needles=needles)
    fails(dict(arch='tinynets.unet:TinyUNet', kwargs=dict(widht=4)), "`model.kwargs`: unknown model argument 'widht' for TinyUNet",
          'valid: classes, in_channels, width, depth')
    fails(dict(arch='tinynets.unet:TinyNet'), "`model.arch`: architecture 'tinynets.unet:TinyNet': tinynets.unet has no nn.Module class 'TinyNet'")
    fails(dict(arch='tinynets.nope:TinyUNet'), "cannot import 'tinynets.nope'")
    fails(dict(arch='torch.nn:Conv2d'), 'must take `classes`')
    assert not (tmp_path/'run').exists()
