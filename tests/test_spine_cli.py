"""The spine-MRI workflow from the `pneumokit` command line with the shipped `spine-mri.cpu-smoke` config: slice a folder
of NIfTI scans (one without a label file) into a slice cache, split by case, train, predict every scan (the unlabelled
one too) as label volumes with the scans' shape, affine and header, and score them per class and case. The same calls
from Python give the same files. Bad volumes end as one line naming the case or file, never a traceback."""
import contextlib, io
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from conftest import run_cli
from pneumokit import pipeline
from pneumokit.cli import run_command
from pneumokit.layout import RunDir, VolumeDir
from pneumokit.volumes import SPINE_CODES, make_synthetic_spine, write_nifti
from conftest import cli_fails as _fails

CONFIG = 'spine-mri.cpu-smoke'


def _cli(*argv) -> str:
    "Run a `pneumokit` command as the console script does (`run_command`, in this process: no second torch start-up); its stdout."
    out = io.StringIO()
    with contextlib.redirect_stdout(out): run_command(argv[0], [str(a) for a in argv[1:]])
    return out.getvalue()


@pytest.fixture(scope='module')
def spine_run(tmp_path_factory):
    "Five synthetic cases, Case5 without its label file, taken through slice, split, train, predict and score by the CLI."
    d = tmp_path_factory.mktemp('spine')
    spine = make_synthetic_spine(d/'spine', n_cases=5, seed=0)
    (spine/'Mask'/'mask_case5.nii.gz').unlink()
    out = {c: _cli(*a) for c, a in dict(
        slice=('slice', spine, d/'slices', '--config', CONFIG),
        split=('split', d/'slices', d/'folds.csv', '--config', CONFIG),
        train=('train', CONFIG, d/'slices', d/'folds.csv', d/'run', '--no-tensorboard', '--device', 'cpu'),
        predict=('predict', d/'run', spine, '--dest', d/'pred', '--device', 'cpu'),
        score=('score', d/'pred', spine)).items()}
    return d, spine, out


def test_cli_trains_predicts_and_scores_the_spine(spine_run):
    d, spine, out = spine_run
    assert 'without a label volume (to predict, not to train on): Case5' in out['slice']
    folds = pd.read_csv(d/'folds.csv')
    assert sorted(folds.case.unique()) == ['Case1', 'Case2', 'Case3', 'Case4']  # the unlabelled scan is in no fold
    assert (folds.groupby('case').fold.nunique() == 1).all()
    assert out['train'].count('finding: ') == 1 and 'finding: case Case5: no label volume' in out['train']
    run = RunDir(d/'run')
    assert run.fold(0).checkpoints() and run.fold(0).finished
    for i in range(1, 6):  # every scan predicted, with its shape, affine and voxel sizes
        p, s = nib.load(VolumeDir(d/'pred').mask(f'Case{i}')), nib.load(spine/'MR'/f'Case{i}.nii.gz')
        assert (p.shape, p.get_data_dtype()) == (s.shape, np.uint8)
        assert np.allclose(p.affine, s.affine) and p.header.get_zooms() == s.header.get_zooms()
        assert set(np.unique(np.asarray(p.dataobj))) <= set(range(len(SPINE_CODES)))
    tab = pd.read_csv(VolumeDir(d/'pred').scores)
    assert list(tab.columns) == ['case', 'class', 'dice', 'iou', 'pixel_acc', 'tp', 'fp', 'fn']
    assert sorted(tab.case.unique()) == ['Case1', 'Case2', 'Case3', 'Case4']
    assert tab.dice.between(0, 1).all() and tab.iou.le(tab.dice + 1e-12).all()
    assert tab[tab['class'] != 'background'].dice.mean() > 0.1  # learned something; not an accuracy test
    assert 'mean class Dice' in out['score']


def test_cli_and_python_give_the_same_files(spine_run, tmp_path):
    d, spine, _ = spine_run
    rows, dest = pipeline.predict(d/'run', spine, tmp_path/'pred', device='cpu')
    assert rows.case.tolist() == [f'Case{i}' for i in range(1, 6)]
    for p in rows.path: assert Path(p).read_bytes() == (d/'pred'/Path(p).name).read_bytes()
    pipeline.score(dest, spine)
    assert VolumeDir(dest).scores.read_bytes() == VolumeDir(d/'pred').scores.read_bytes()


# ------------------------------------------------------------------------------------------------ bad volumes

def _volume(path: Path, a: np.ndarray) -> Path: return write_nifti(nib.Nifti1Image(a, np.eye(4)), path)


def _pair(folder: Path, case: str, img: np.ndarray, lab: np.ndarray | None):
    _volume(folder/f'{case}.nii.gz', img)
    if lab is not None: _volume(folder/f'mask_{case.lower()}.nii.gz', lab)
    return folder


GOOD = np.zeros((16, 32, 32), np.int16), np.zeros((16, 32, 32), np.uint8)


@pytest.mark.parametrize('what,img,lab,needles', [
    ('4D scan', np.zeros((16, 32, 32, 2), np.int16), None, ['case Case2: image Case2.nii.gz has shape (16, 32, 32, 2); expected a 3D volume']),
    ('2D scan', np.zeros((32, 32), np.int16), None, ['case Case2: image Case2.nii.gz has shape (32, 32); expected a 3D volume']),
    ('4D label', GOOD[0], np.zeros((16, 32, 32, 2), np.uint8), ['case Case2: label mask_case2.nii.gz has shape (16, 32, 32, 2)']),
    ('values outside the codes', GOOD[0], np.full((16, 32, 32), 25, np.uint8), ['case Case2: label values [25] are outside the 20 declared codes']),
    ('shapes differ', GOOD[0], np.zeros((16, 32, 31), np.uint8), ['case Case2: image shape (16, 32, 32) differs from label shape (16, 32, 31)']),
])
def test_bad_volumes_name_the_case(tmp_path, what, img, lab, needles):
    folder = _pair(_pair(tmp_path/'vols', 'Case1', *GOOD), 'Case2', img, lab)
    _fails('slice', folder, tmp_path/'cache', '--size', 32, needles=needles)


def test_bad_scan_fails_predict_with_one_line(spine_run, tmp_path):
    d, _, _ = spine_run
    _fails('predict', d/'run', _pair(tmp_path, 'Case9', np.zeros((16, 32, 32, 2), np.int16), None), '--dest', tmp_path/'p',
           needles=['case Case9: image Case9.nii.gz has shape (16, 32, 32, 2)'])


def test_config_classes_differ_from_the_codes(spine_run, tmp_path):
    d, spine, _ = spine_run
    three = tmp_path/'three.yaml'
    three.write_text(f'base: {CONFIG}\nmodel: {{classes: 3}}\n')
    _fails('slice', spine, tmp_path/'c', '--config', three, needles=['three.yaml: `model.classes` is 3 but the codes name 20 classes'])
    _fails('train', three, d/'slices', d/'folds.csv', tmp_path/'run', needles=['three.yaml: `model.classes` is 3 but the slice cache'])
    assert not RunDir(tmp_path/'run').config.exists()  # refused before anything was written


def test_without_any_label_nothing_is_trained(tmp_path):
    folder = _pair(_pair(tmp_path/'vols', 'Case1', GOOD[0], None), 'Case2', GOOD[0], None)
    run_command('slice', [str(folder), str(tmp_path/'cache'), '--size', '32'])
    _fails('split', tmp_path/'cache', tmp_path/'folds.csv', needles=['0 case(s) with a label volume', '2 scan(s) without labels'])


def test_one_line_and_no_traceback_from_the_console_script(tmp_path):
    folder = _pair(_pair(tmp_path/'vols', 'Case1', *GOOD), 'Case2', GOOD[0], np.full((16, 32, 32), 25, np.uint8))
    res = run_cli('slice', folder, tmp_path/'cache', '--size', 32, check=False)
    assert res.returncode != 0 and 'Traceback' not in res.stderr
    assert res.stderr.strip() == 'pneumokit slice: case Case2: label values [25] are outside the 20 declared codes (0..19)'


def test_a_volume_run_has_no_threshold_to_search(spine_run):
    d, _, _ = spine_run
    _fails('search', d/'run', needles=['predicts label maps', 'no threshold to search'])


def test_audit_lists_every_bad_case(spine_run, tmp_path):
    "`pneumokit audit <volume folder>`: one finding per problem, every case named, none fatal (a scan without labels included)."
    import shutil
    _, spine, _ = spine_run
    messy = Path(shutil.copytree(spine, tmp_path/'messy'))
    write_nifti(nib.Nifti1Image(np.zeros((8, 8), np.int16), np.eye(4)), messy/'MR'/'Case2.nii.gz')  # 2D
    lab = nib.load(messy/'Mask'/'mask_case3.nii.gz')
    write_nifti(nib.Nifti1Image(np.asarray(lab.dataobj)[..., :-1], lab.affine), messy/'Mask'/'mask_case3.nii.gz')  # shape
    out = _cli('audit', messy, '--out', tmp_path/'findings.csv')
    assert out.startswith('audit: 3 finding(s)'), out
    found = pd.read_csv(tmp_path/'findings.csv')
    assert found[['check', 'ImageId']].values.tolist() == [['unreadable', 'Case2'], ['shape', 'Case3'], ['no label', 'Case5']]
    assert _cli('audit', spine).startswith('audit: 1 finding(s)')  # the unlabelled scan: fine to predict, not to train
