"""The volumes workflow through its public entry points, as an outside user calls them: synthetic spine → slice cache →
reassembled NIfTI volumes, exact for every axis and size; scans without labels; slicing in worker processes; splits by case;
per-class metrics and the per-case score table by hand."""
import inspect
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pneumokit.metrics import per_class_scores
from pneumokit.volumes import (SPINE_CODES, case_folds, case_scores, find_volume_pairs, make_synthetic_spine, read_slice_cache,
                               read_volume_pair, reassemble, slice_volumes, split_cases, unlabelled_cases, write_nifti)


@pytest.fixture(scope='module')
def spine(tmp_path_factory) -> Path:
    return make_synthetic_spine(tmp_path_factory.mktemp('spine'), n_cases=3, seed=1)


def _labels_back(slices: pd.DataFrame, meta: dict, case: str) -> np.ndarray:
    rows = slices[slices.case == case].sort_values('index')
    return np.asarray(reassemble(np.stack([cv2.imread(p, cv2.IMREAD_UNCHANGED) for p in rows.label]), meta[case]).dataobj)


def test_entry_point_signatures():
    "External checks call these names with these defaults."
    sig = lambda f: {k: v.default for k, v in inspect.signature(f).parameters.items()}
    assert list(sig(make_synthetic_spine))[:3] == ['dest', 'n_cases', 'seed']
    assert (sig(make_synthetic_spine)['n_cases'], sig(make_synthetic_spine)['seed']) == (6, 0)
    assert list(sig(slice_volumes))[:4] == ['folder', 'dest', 'axis', 'size']
    assert (sig(slice_volumes)['axis'], sig(slice_volumes)['size']) == (2, 256)
    assert list(sig(reassemble)) == ['slice_preds', 'case_meta']
    assert list(sig(per_class_scores)) == ['pred', 'targ', 'n_classes', 'codes']
    assert list(sig(case_folds)) == ['slices', 'n_splits', 'seed'] and (sig(case_folds)['n_splits'], sig(case_folds)['seed']) == (5, 0)


def test_synthetic_layout_and_determinism(spine, tmp_path):
    assert sorted(p.relative_to(spine).as_posix() for p in spine.rglob('*.nii.gz')) == \
        ['MR/Case1.nii.gz', 'MR/Case2.nii.gz', 'MR/Case3.nii.gz',
         'Mask/mask_case1.nii.gz', 'Mask/mask_case2.nii.gz', 'Mask/mask_case3.nii.gz']
    assert not list(spine.rglob('.*'))  # no temporary file left behind
    again = make_synthetic_spine(tmp_path, n_cases=1, seed=1)
    for sub in ('MR/Case1.nii.gz', 'Mask/mask_case1.nii.gz'):
        assert np.array_equal(np.asarray(nib.load(again/sub).dataobj), np.asarray(nib.load(spine/sub).dataobj))
    lab = np.asarray(nib.load(spine/'Mask'/'mask_case2.nii.gz').dataobj)
    assert sorted(np.unique(lab)) == list(range(20))


@pytest.mark.parametrize('axis,size,drop', [(2, 256, False), (2, 64, True), (1, 80, True), (0, None, False), (0, 64, True)])
def test_round_trip_is_exact(spine, tmp_path, axis, size, drop):
    "Slicing along any axis, at the slice's size or larger, then reassembling, gives back the label volume and affine."
    slices = slice_volumes(spine, tmp_path, axis=axis, size=size, drop_empty_edges=drop)
    assert list(slices.columns[:4]) == ['case', 'index', 'image', 'label']
    _, meta = read_slice_cache(tmp_path)
    for case, pair in find_volume_pairs(spine).set_index('case').iterrows():
        _, lab, aff = read_volume_pair(pair.image, pair.label)
        assert len(slices[slices.case == case]) <= lab.shape[axis]
        back = _labels_back(slices, meta, case)
        assert back.shape == lab.shape and np.array_equal(back, lab)
        assert np.array_equal(np.array(meta[case]['affine']), aff)


def test_written_volume_reads_back(spine, tmp_path):
    slices = slice_volumes(spine, tmp_path/'cache', size=128)
    _, meta = read_slice_cache(tmp_path/'cache')
    rows = slices[slices.case == 'Case3'].sort_values('index')
    img = reassemble(np.stack([cv2.imread(p, cv2.IMREAD_UNCHANGED) for p in rows.label]), meta['Case3'])
    assert isinstance(img, nib.Nifti1Image)
    out = write_nifti(img, tmp_path/'pred'/'mask_case3.nii.gz')
    back = nib.load(out)
    truth = nib.load(spine/'Mask'/'mask_case3.nii.gz')
    assert np.array_equal(np.asarray(back.dataobj), np.asarray(truth.dataobj))
    assert np.allclose(back.affine, truth.affine)


def test_slicing_in_worker_processes_matches_serial(spine, tmp_path):
    serial = slice_volumes(spine, tmp_path/'a', size=64)
    para = slice_volumes(spine, tmp_path/'b', size=64, n_workers=2)
    assert serial.drop(columns=['image', 'label']).equals(para.drop(columns=['image', 'label']))
    for a, b in zip(serial.image, para.image): assert np.array_equal(cv2.imread(a), cv2.imread(b))


def test_flat_folder_and_bad_cases(tmp_path):
    "A flat MRSpineSeg folder pairs by name; a shape mismatch names the case when slicing."
    aff = np.eye(4)
    write_nifti(nib.Nifti1Image(np.zeros((16, 16, 8), np.int16), aff), tmp_path/'Case10.nii.gz')
    write_nifti(nib.Nifti1Image(np.zeros((16, 16, 8), np.uint8), aff), tmp_path/'mask_case10.nii.gz')
    write_nifti(nib.Nifti1Image(np.zeros((16, 16, 8), np.int16), aff), tmp_path/'Case2.nii.gz')
    write_nifti(nib.Nifti1Image(np.zeros((16, 16, 9), np.uint8), aff), tmp_path/'mask_case2.nii.gz')
    assert find_volume_pairs(tmp_path).case.tolist() == ['Case2', 'Case10']
    with pytest.raises(ValueError, match=r'case Case2: image shape \(16, 16, 8\) differs from label shape \(16, 16, 9\)'):
        slice_volumes(tmp_path, tmp_path/'cache', size=16)


def test_per_class_scores_by_hand():
    "Classes absent from both prediction and truth in a slice are left out of that slice's scores."
    targ = np.array([[[0, 1, 1, 2]], [[0, 0, 0, 0]]])
    pred = np.array([[[0, 1, 2, 2]], [[0, 0, 3, 0]]])
    tab = per_class_scores(pred, targ, 4)
    assert len(tab) == 4
    assert np.allclose(tab.dice.values, [(1 + 6 / 7) / 2, 2 / 3, 2 / 3, 0.0])
    assert tab.n_slices.tolist() == [2, 1, 1, 1]
    assert tab.fp.tolist() == [0, 0, 1, 1] and tab.fn.tolist() == [1, 1, 0, 0]
    named = per_class_scores(pred, targ, 4, codes=['bg', 'a', 'b', 'c'])
    assert named.index.tolist() == ['bg', 'a', 'b', 'c']
    assert np.isnan(per_class_scores(targ, targ, len(SPINE_CODES)).dice[5])  # never present: not scored, not 1


def test_splits_keep_cases_whole(spine, tmp_path):
    "Both splits write a `fold` column that never puts one case's slices in two folds."
    slices = slice_volumes(spine, tmp_path, size=32)
    for split in (case_folds(slices, n_splits=3, seed=2), split_cases(slices, valid_pct=0.34, seed=2)):
        assert (split.groupby('case').fold.nunique() == 1).all()
    assert sorted(case_folds(slices, n_splits=3, seed=2).groupby('case').fold.first()) == [0, 1, 2]
    assert (split_cases(slices, valid_cases=['Case2']).groupby('case').fold.first() == [1, 0, 1]).all()
    with pytest.raises(ValueError, match='more than the 3 cases'): case_folds(slices, n_splits=4)


def test_scans_without_labels_are_cached_and_reassembled(spine, tmp_path):
    "An unlabelled scan keeps every slice (no label PNG) and reassembles to its own shape and affine."
    pairs = find_volume_pairs(spine).assign(label=None)
    slices = slice_volumes(pairs.iloc[:1], tmp_path, size=64, drop_empty_edges=True)
    _, meta = read_slice_cache(tmp_path)
    assert len(slices) == nib.load(pairs.image[0]).shape[2] and slices.label.isna().all()
    assert unlabelled_cases(meta) == ['Case1'] and not (tmp_path/'labels').exists()
    vol = reassemble(np.zeros((len(slices), 64, 64), np.uint8), meta['Case1'])
    assert vol.shape == nib.load(pairs.image[0]).shape and np.allclose(vol.affine, nib.load(pairs.image[0]).affine)


def test_case_scores_by_hand(tmp_path):
    "Per case and class in either volume: Dice, IoU, pixel accuracy, TP/FP/FN; a class in neither is left out."
    t = np.zeros((2, 2, 2), np.uint8); t[0] = 1
    p = t.copy(); p[0, 0, 0] = 2
    truth = write_nifti(nib.Nifti1Image(t, np.eye(4)), tmp_path/'mask_case1.nii.gz')
    pred = write_nifti(nib.Nifti1Image(p, np.eye(4)), tmp_path/'pred'/'mask_case1.nii.gz')
    tab = case_scores(pd.DataFrame(dict(case=['Case1'], path=[str(pred)])), pd.DataFrame(dict(case=['Case1'], label=[str(truth)])),
                      ['bg', 'a', 'b', 'c']).set_index('class')
    assert tab.index.tolist() == ['bg', 'a', 'b']  # 'c' is in neither volume
    assert tab.loc['a', ['tp', 'fp', 'fn']].tolist() == [3, 0, 1]
    assert np.isclose(tab.loc['a', 'dice'], 6 / 7) and np.isclose(tab.loc['a', 'iou'], 3 / 4) and np.isclose(tab.loc['a', 'pixel_acc'], 3 / 4)
    assert tab.loc['b', ['dice', 'fp', 'fn']].tolist() == [0.0, 1, 0] and np.isnan(tab.loc['b', 'pixel_acc'])


# ------------------------------------------------------------------------------------------ volumes checked like images (issue 23)

def _hostile_copy(spine: Path, dest: Path, case: int = 2) -> tuple[Path, Path]:
    "A copy of the synthetic spine folder; returns case `case`'s scan and label paths in the copy."
    import shutil
    shutil.copytree(spine, dest)
    return dest/'MR'/f'Case{case}.nii.gz', dest/'Mask'/f'mask_case{case}.nii.gz'

def _audit(folder: Path) -> pd.DataFrame:
    from conftest import cli_run
    return cli_run('audit', folder)

def test_nan_voxels_are_refused_by_name(spine, tmp_path):
    from conftest import cli_fails
    scan, _ = _hostile_copy(spine, tmp_path/'v')
    img = nib.load(scan)
    a = np.asarray(img.dataobj, np.float32); a[10:12, 10:12, 3] = np.nan
    write_nifti(nib.Nifti1Image(a, img.affine), scan)
    cli_fails('slice', tmp_path/'v', tmp_path/'cache', '--size', 32, needles=['case Case2', 'Case2.nii.gz', '4 NaN or infinite voxel(s)'])
    assert _audit(tmp_path/'v')[['check', 'ImageId']].values.tolist() == [['voxels', 'Case2']]

@pytest.mark.parametrize('how', ['flip', 'shift', 'spacing'])
def test_label_affine_that_disagrees_with_its_scan_is_refused(spine, tmp_path, how):
    from conftest import cli_fails
    _, label = _hostile_copy(spine, tmp_path/'v')
    lab = nib.load(label)
    aff = np.array(lab.affine)
    if how == 'flip': aff[:, 0] = -aff[:, 0]
    elif how == 'shift': aff[:3, 3] += 50
    else: aff[2, 2] *= 2
    write_nifti(nib.Nifti1Image(np.asarray(lab.dataobj), aff), label)
    cli_fails('slice', tmp_path/'v', tmp_path/'cache', '--size', 32, needles=['case Case2', 'mask_case2.nii.gz', 'tolerance'])
    assert _audit(tmp_path/'v')[['check', 'ImageId']].values.tolist() == [['geometry', 'Case2']]

def test_truncated_volume_is_refused_by_name(spine, tmp_path):
    from conftest import cli_fails
    scan, _ = _hostile_copy(spine, tmp_path/'v')
    scan.write_bytes(scan.read_bytes()[:len(scan.read_bytes()) // 2])
    cli_fails('slice', tmp_path/'v', tmp_path/'cache', '--size', 32, needles=['case Case2', 'Case2.nii.gz', 'truncated'])
    assert _audit(tmp_path/'v')[['check', 'ImageId']].values.tolist() == [['voxels', 'Case2']]
