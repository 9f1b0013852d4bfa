"""`pneumokit export`: a trained run's ensemble as one `.pt2` whose maps equal `pneumokit predict`'s, and the kernel it
writes beside it, run in a fresh virtual environment holding only torch, numpy, pandas, pydicom (+ its JPEG plugin) and
OpenCV — no pneumokit, fastai or smp — writes the submission `pneumokit submit` writes, which the validator accepts."""
import json, os, subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli

ENV = {'OMP_NUM_THREADS': '1'}
CONFIG = '''base: siim-1st-place.cpu-smoke
name: export-test
model:
  encoder: mobilenet_v2
  kwargs: {decoder_channels: [16, 16, 8, 8, 8]}
train: {top_k: 2, min_area: 5}
stages:
  - {size: 64, epochs: 1, bs: 8, lr: 1.0e-2, frozen: true, pos_frac: 0.8, loss: combo, aug: none}
  - {size: 64, epochs: 1, bs: 8, lr: 2.0e-3, pos_frac: 0.5, loss: combo, aug: none}
data: {n_splits: 2, folds: [0]}
inference: {bs: 4, tta: hflip}
'''
# what the kernel may import, and what it must not find
KERNEL_PACKAGES = ['torch', 'numpy', 'pandas', 'pydicom', 'pylibjpeg', 'pylibjpeg-libjpeg', 'opencv-python-headless', 'opencv-python']
FORBIDDEN = ['pneumokit', 'fastai', 'fastcore', 'segmentation_models_pytorch', 'timm', 'albumentations', 'accelerate']


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "A searched one-fold run (two checkpoints) on a small synthetic set, its test maps from `pneumokit predict` and its export."
    from pneumokit import pipeline
    d = tmp_path_factory.mktemp('export')
    (d/'cfg.yaml').write_text(CONFIG)
    mini = pipeline.synth(d/'mini', n_train=40, n_test=5, size=256, progress=False)
    pipeline.prepare(mini/'dicom-images-train', d/'cache', d/'cfg.yaml', labels=mini/'train-rle.csv', n_workers=0, progress=False)
    pipeline.split(mini/'train-rle.csv', d/'folds.csv', d/'cfg.yaml')
    pipeline.train(d/'cfg.yaml', d/'cache', d/'folds.csv', d/'run', tensorboard=False)
    pipeline.search(d/'run')
    run_cli('predict', d/'run', mini/'dicom-images-test', '--dest', d/'probs.npy', '--device', 'cpu', env=ENV)
    run_cli('submit', d/'probs.npy', d/'submission.csv', '--thresholds', d/'run', '--sample', mini/'sample_submission.csv', env=ENV)
    out = run_cli('export', d/'run', d/'export', env=ENV).stdout
    assert 'largest difference' in out and 'pneumokit_kernel.py' in out
    return d, mini


def test_export_maps_equal_predict(trained):
    "The kernel's maps from the `.pt2` are `pneumokit predict`'s uint8 maps exactly; as floats they equal the ensemble's."
    import torch
    from pneumokit import kernel
    from pneumokit.inference import load_fold_models, normalise, tta_outputs
    from pneumokit.layout import ExportDir, maps_ids
    d, mini = trained
    ed = ExportDir(d/'export')
    meta = ed.read_sidecar()
    assert (meta['size'], meta['tta'], meta['n_models'], meta['outputs']) == (64, 'hflip', 2, ['maps'])
    assert meta['rule']['rule'] == 'triplet' and meta['source']['folds'] == [0]
    model = kernel.Ensemble(ed.sidecar, device='cpu')
    ids, maps, cls = kernel.predict(model, mini/'dicom-images-test', bs=meta['bs'])  # predict's batches
    assert ids == pd.read_csv(maps_ids(d/'probs.npy')).ImageId.tolist() and cls is None
    np.testing.assert_array_equal(maps, np.load(d/'probs.npy'))  # uint8 levels: largest difference 0
    imgs = np.stack([kernel.read_image(f, 64)[0] for f in sorted((mini/'dicom-images-test').rglob('*.dcm'))])
    models, program = load_fold_models(d/'run', device='cpu'), torch.export.load(str(ed.model)).module()
    for n in (1, 3, len(imgs)):  # a dynamic batch; the same batch through both (CPU convolutions may round a batch of 1 and of 5 apart by an ulp)
        x = torch.from_numpy(imgs[:n])
        with torch.no_grad(): p, = program(x)
        assert np.abs(p.numpy() - tta_outputs(models, normalise(x), 'hflip')[0].numpy()).max() == 0  # float32: largest difference 0
    assert meta['max_abs_diff'] == 0 and meta['bs'] == 4  # the config's batch size: the kernel batches as `predict` does


def _requirements(dist: str, seen: set) -> set:
    "The installed distribution `dist` and everything it needs to run (no extras)."
    from importlib.metadata import PackageNotFoundError, distribution
    from packaging.requirements import Requirement
    try: dd = distribution(dist)
    except PackageNotFoundError: return seen
    name = dd.metadata['Name'].lower().replace('_', '-')
    if name in seen: return seen
    seen.add(name)
    for r in dd.requires or []:
        req = Requirement(r)
        if req.marker is None or req.marker.evaluate({'extra': ''}): _requirements(req.name, seen)
    return seen


def _kernel_image(root: Path) -> Path:
    "A folder of links to the kernel packages and their runtime dependencies only (their modules and metadata)."
    from importlib.metadata import distribution
    site = Path(np.__file__).parents[1]
    image = root/'image'
    image.mkdir()
    dists = set()
    for p in KERNEL_PACKAGES: _requirements(p, dists)
    assert not dists & {f.replace('_', '-') for f in FORBIDDEN}, dists
    for name in dists:
        dd = distribution(name)
        tops = {Path(str(f)).parts[0] for f in dd.files or [] if not str(f).startswith('..')}
        for t in tops:
            if (site/t).exists() and not (image/t).exists(): (image/t).symlink_to(site/t)
    return image


def test_kernel_runs_without_pneumokit(trained, tmp_path):
    "A fresh venv that sees only the kernel's packages: pneumokit, fastai and smp do not import; the kernel writes `submit`'s submission."
    from pneumokit.layout import ExportDir
    from pneumokit.submission import validate_submission
    d, mini = trained
    ed = ExportDir(d/'export')
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(tmp_path/'venv')], check=True)
    py = tmp_path/'venv'/'bin'/'python'
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'VIRTUAL_ENV')} | ENV
    purelib = subprocess.run([str(py), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                             capture_output=True, text=True, env=env, check=True).stdout.strip()
    (Path(purelib)/'kernel-image.pth').write_text(str(_kernel_image(tmp_path)) + '\n')
    for mod in FORBIDDEN:
        r = subprocess.run([str(py), '-c', f'import {mod}'], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert r.returncode != 0 and 'ModuleNotFoundError' in r.stderr, (mod, r.stderr[-500:])
    r = subprocess.run([str(py), '-c', 'import torch, numpy, pandas, pydicom, cv2; from pydicom.pixels import get_decoder; '
                        'from pydicom.uid import JPEGBaseline8Bit as j; print(torch.__version__, get_decoder(j).is_available)'],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.split()[-1] == 'True', r.stderr[-2000:]  # pydicom's JPEG plugin is there too
    r = subprocess.run([str(py), str(ed.kernel), str(ed.sidecar), str(mini/'dicom-images-test'), str(tmp_path/'sub.csv')],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert '5 images' in r.stdout
    sub = validate_submission(tmp_path/'sub.csv', mini/'sample_submission.csv')
    ref = pd.read_csv(d/'submission.csv', dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(sub.sort_values('ImageId', ignore_index=True), ref.sort_values('ImageId', ignore_index=True))
    # the small run's searched rule empties every image: a looser rule in a copy of the sidecar draws masks through the same path
    from pneumokit.postprocess import rule_from_dict
    rule = dict(rule='triplet', top=0.5, area=20, bottom=0.49, size=64)
    (tmp_path/'rule.json').write_text(json.dumps(rule))
    run_cli('submit', d/'probs.npy', tmp_path/'ref-loose.csv', '--thresholds', tmp_path/'rule.json', env=ENV)
    loose = tmp_path/'loose.json'
    loose.write_text(json.dumps({**ed.read_sidecar(), 'model': str(ed.model), 'rule': rule_from_dict(rule).scaled(16 ** 2).to_dict()}))
    r = subprocess.run([str(py), str(ed.kernel), str(loose), str(mini/'dicom-images-test'), str(tmp_path/'loose.csv')],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    ref = pd.read_csv(tmp_path/'ref-loose.csv', dtype=str, keep_default_na=False)
    assert (ref.EncodedPixels != '-1').sum() >= 2, ref
    pd.testing.assert_frame_equal(validate_submission(tmp_path/'loose.csv', mini/'sample_submission.csv'), ref)


def test_export_bad_input(trained, tmp_path):
    "Each is one line naming what is wrong (the command line turns these errors into it), and nothing is written."
    from pneumokit import pipeline
    d, mini = trained
    out = run_cli('export', tmp_path/'nope', tmp_path/'e', check=False)
    assert out.returncode != 0 and out.stderr.strip().splitlines() == [f'pneumokit export: run folder not found: {tmp_path/"nope"}']
    (tmp_path/'file').write_text('')
    out = run_cli('export', d/'run', tmp_path/'file', check=False)
    assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1 and 'is a file, expected a folder' in out.stderr
    with pytest.raises(FileNotFoundError, match='config.yaml not found'): pipeline.export(mini, tmp_path/'e')  # not a run
    with pytest.raises(FileNotFoundError, match='has no fold 3; its folds: 0'): pipeline.export(d/'run', tmp_path/'e', folds=[3])
    with pytest.raises(ValueError, match='the classifier rule needs image-level probabilities'):
        pipeline.export(d/'run', tmp_path/'e', thresholds=dict(rule='classifier', cls_threshold=0.5, bottom=0.5))
    assert not (tmp_path/'e').exists()
