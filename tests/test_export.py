"""`pneumokit export`: a trained run's ensemble as one `.pt2` (and its TorchScript twin) whose maps equal `pneumokit predict`'s,
and the kernel it writes beside it, run in a fresh virtual environment holding only torch, numpy, pandas, pydicom (+ its
JPEG plugin) and OpenCV — no pneumokit, fastai or smp — writes the submission `pneumokit submit` writes, which the
validator accepts. `make test-old-torch` runs that kernel on an older torch (2.6.0 from the package index)."""
import json, os, subprocess, sys, warnings
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
train: {top_k: 2, min_area: 5, topk_stages: [0, 1]}  # both stages at 64 px rank: two checkpoints to ensemble
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
    res = run_cli('export', d/'run', d/'export', env=ENV)
    assert 'largest difference' in res.stdout and 'pneumokit_kernel.py' in res.stdout and 'loads on torch >= ' in res.stdout
    assert 'jit' not in res.stderr and 'TracerWarning' not in res.stderr, res.stderr[-2000:]  # tracing's deprecation stays quiet
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
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        ts = kernel.Ensemble(ed.sidecar, 'torchscript', device='cpu')  # what an older torch runs
    assert not [w for w in caught if 'jit' in str(w.message)], [str(w.message) for w in caught]
    np.testing.assert_array_equal(kernel.predict(ts, mini/'dicom-images-test', bs=meta['bs'])[1], np.load(d/'probs.npy'))


def _loose(d: Path, ed, tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    "The small run's searched rule empties every image: a copy of the sidecar with a looser rule (files named absolutely), and `submit`'s submission under that rule."
    from pneumokit.postprocess import rule_from_dict
    rule = dict(rule='triplet', top=0.5, area=20, bottom=0.49, size=64)
    (tmp_path/'rule.json').write_text(json.dumps(rule))
    run_cli('submit', d/'probs.npy', tmp_path/'ref-loose.csv', '--thresholds', tmp_path/'rule.json', env=ENV)
    loose = tmp_path/'loose.json'
    loose.write_text(json.dumps({**ed.read_sidecar(), 'model': str(ed.model), 'torchscript': str(ed.torchscript),
                                 'rule': rule_from_dict(rule).scaled(16 ** 2).to_dict()}))
    ref = pd.read_csv(tmp_path/'ref-loose.csv', dtype=str, keep_default_na=False)
    assert (ref.EncodedPixels != '-1').sum() >= 2, ref
    return loose, ref


def _same_submission(path: Path, ref: pd.DataFrame, sample: Path):
    from pneumokit.submission import validate_submission
    sub = validate_submission(path, sample)
    pd.testing.assert_frame_equal(sub.sort_values('ImageId', ignore_index=True), ref.sort_values('ImageId', ignore_index=True))


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
    assert '5 images' in r.stdout and f'({ed.model.name} on torch ' in r.stdout  # this torch runs the .pt2
    _same_submission(tmp_path/'sub.csv', pd.read_csv(d/'submission.csv', dtype=str, keep_default_na=False), mini/'sample_submission.csv')
    loose, ref = _loose(d, ed, tmp_path)  # masks drawn through the same path
    r = subprocess.run([str(py), str(ed.kernel), str(loose), str(mini/'dicom-images-test'), str(tmp_path/'loose.csv')],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    _same_submission(tmp_path/'loose.csv', ref, mini/'sample_submission.csv')


def test_kernel_on_a_torch_too_old(trained, tmp_path):
    "A torch older than every file's floor: the kernel ends on one line naming its torch, the torch each file needs and the fix."
    import torch
    from pneumokit import kernel
    from pneumokit.layout import ExportDir
    d, mini = trained
    ed = ExportDir(d/'export')
    meta = ed.read_sidecar()
    old = tmp_path/'future.json'  # as if exported by a future torch whose files need more than this one
    old.write_text(json.dumps({**meta, 'model': str(ed.model), 'torchscript': str(ed.torchscript), 'oldest_torch': {'pt2': '99.1', 'torchscript': '99.0'}}))
    with pytest.raises(SystemExit) as e: kernel.main([str(old), str(mini/'dicom-images-test'), str(tmp_path/'sub.csv')])
    msg = str(e.value.code)
    assert len(msg.splitlines()) == 1 and f"this kernel's torch {torch.__version__} cannot load this export" in msg, msg
    assert 'model.pt2 needs torch >= 99.1' in msg and 'model.torchscript.pt needs torch >= 99.0' in msg and 'torch==99.0` first' in msg, msg
    assert not (tmp_path/'sub.csv').exists()


OLD_TORCH_PYTHON = os.environ.get('PNEUMOKIT_OLD_TORCH_PYTHON')


@pytest.mark.skipif(not OLD_TORCH_PYTHON, reason='opt-in: `make test-old-torch` (a venv with torch 2.6.0 from the package index, ~2.5 GB)')
def test_kernel_on_old_torch(trained, tmp_path):
    """The kernel in a venv holding an older torch (`make test-old-torch`: torch 2.6.0, numpy, pandas, pydicom + pylibjpeg and
    OpenCV only) runs the TorchScript file, gives `predict`'s maps and `submit`'s submission, cannot load the `.pt2`, and
    this torch is the one `MEASURED_OLDEST_TORCH` records; an export without the TorchScript file ends on one line."""
    from pneumokit.export import MEASURED_OLDEST_TORCH
    from pneumokit.layout import ExportDir, maps_ids
    d, mini = trained
    ed, dicoms, sample = ExportDir(d/'export'), mini/'dicom-images-test', mini/'sample_submission.csv'
    meta = ed.read_sidecar()
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'VIRTUAL_ENV')} | ENV
    run = lambda *a: subprocess.run([OLD_TORCH_PYTHON, *map(str, a)], capture_output=True, text=True, env=env, cwd=tmp_path)
    r = run('-c', 'import torch; print(torch.__version__)')
    assert r.returncode == 0, r.stderr[-2000:]
    old = r.stdout.split()[-1].split('+')[0]
    for mod in FORBIDDEN: assert 'ModuleNotFoundError' in run('-c', f'import {mod}').stderr, mod
    r = run('-c', f'import torch; torch.export.load({str(ed.model)!r})')
    assert r.returncode != 0, f'torch {old} loads a torch {meta["torch"]} .pt2: its floor in MEASURED_OLDEST_TORCH may be lowered'
    assert meta['oldest_torch']['torchscript'] == old, (
        f"torch {old} ran the kernel below: record it in pneumokit.export.MEASURED_OLDEST_TORCH for torch {meta['torch'].split('+')[0]}")
    assert MEASURED_OLDEST_TORCH[meta['torch'].split('+')[0]]['torchscript'] == old
    r = run(ed.kernel, ed.sidecar, dicoms, tmp_path/'sub.csv')
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert '5 images' in r.stdout and f'({ed.torchscript.name} on torch {old}' in r.stdout, r.stdout  # the TorchScript file
    assert r.stderr.strip() == '', r.stderr[-3000:]  # no deprecation or other noise
    _same_submission(tmp_path/'sub.csv', pd.read_csv(d/'submission.csv', dtype=str, keep_default_na=False), sample)
    code = (f'import sys, numpy as np; sys.path.insert(0, {str(ed.root)!r}); import pneumokit_kernel as K; '
            f'm = K.Ensemble({str(ed.sidecar)!r}, device="cpu"); ids, maps, cls = K.predict(m, {str(dicoms)!r}, {meta["bs"]}); '
            f'np.save({str(tmp_path/"maps.npy")!r}, maps); print(m.program, "|".join(ids))')
    r = run('-c', code)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[0] == 'torchscript' and r.stdout.split()[1].split('|') == pd.read_csv(maps_ids(d/'probs.npy')).ImageId.tolist()
    np.testing.assert_array_equal(np.load(tmp_path/'maps.npy'), np.load(d/'probs.npy'))  # uint8 levels: largest difference 0
    loose, ref = _loose(d, ed, tmp_path)
    r = run(ed.kernel, loose, dicoms, tmp_path/'loose.csv')
    assert r.returncode == 0, r.stderr[-3000:]
    _same_submission(tmp_path/'loose.csv', ref, sample)
    before = tmp_path/'before.json'  # an export from before the TorchScript file: nothing this torch can load
    before.write_text(json.dumps({k: v for k, v in {**meta, 'model': str(ed.model)}.items() if k not in ('torchscript', 'oldest_torch')}))
    r = run(ed.kernel, before, dicoms, tmp_path/'none.csv')
    assert r.returncode == 1 and r.stdout == '' and len(r.stderr.strip().splitlines()) == 1, r.stderr[-3000:]
    assert f"this kernel's torch {old}" in r.stderr and f'model.pt2 needs torch >= {meta["torch"]}' in r.stderr, r.stderr
    assert not (tmp_path/'none.csv').exists()


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
