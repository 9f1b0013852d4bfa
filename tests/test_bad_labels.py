"""Issue 15, "one reader of labels, one rule": bad label files through the library and the CLI (in-process, `run_command`).

Each case ends as one line naming the file, the line or the argument, or as the right result; none may pass silently.
"""
import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import cli_fails, cli_run
from pneumokit.dicom import build_cache, image_id_of, list_dicoms, rles_by_id
from pneumokit.eda import audit, describe_findings
from pneumokit.folds import load_folds, make_folds
from pneumokit.layout import CacheDir
from pneumokit.rle import check_labels, read_labels

SIZE = 256


@pytest.fixture(scope='module')
def mini(tmp_path_factory):
    "A 12-image synthetic SIIM at 256 px: (its folder, its labels as a DataFrame)."
    from pneumokit.synthetic import make_mini_siim
    d = make_mini_siim(tmp_path_factory.mktemp('bad_labels')/'mini', n_train=12, n_test=2, size=SIZE, seed=1, progress=False)
    return d, read_labels(d/'train-rle.csv')


def _write(df: pd.DataFrame, path) -> str:
    "Write labels with a header: row j is on line j + 2."
    df.to_csv(path, index=False)
    return str(path)


def _with(lab: pd.DataFrame, image_id: str, rle: str) -> pd.DataFrame:
    "`lab` with every row of `image_id` replaced by one row `rle`, at the end."
    return pd.concat([lab[lab.ImageId != image_id], pd.DataFrame({'ImageId': [image_id], 'EncodedPixels': [rle]})],
                     ignore_index=True)


def _run(name: str, argv: list): return cli_run(name, *argv)
def _cli_fails(name: str, argv: list, *needles: str) -> str: return cli_fails(name, *argv, needles=needles)


def _ids(lab: pd.DataFrame) -> tuple[str, str]:
    "A negative and a positive single-row ImageId of `lab`."
    n = lab.groupby('ImageId').size()
    single = lab[lab.ImageId.map(n) == 1]
    return single.ImageId[single.EncodedPixels == '-1'].iloc[0], single.ImageId[single.EncodedPixels != '-1'].iloc[0]


# ---- a blank EncodedPixels cell is an error naming the file and line, everywhere but where it is a finding

def test_blank_cell_is_an_error_in_split_and_prepare(mini, tmp_path):
    d, lab = mini
    neg, _ = _ids(lab)
    csv = _write(_with(lab, neg, ''), tmp_path/'blank.csv')
    where = f"Label file {csv} line {len(lab) + 1}: blank EncodedPixels for image {neg!r}"
    _cli_fails('split', [csv, tmp_path/'folds.csv'], where)
    assert not (tmp_path/'folds.csv').exists()
    _cli_fails('prepare', [d/'dicom-images-train', tmp_path/'cache', '--labels', csv, '--sizes', 32], where)
    assert not (tmp_path/'cache'/'32').exists()  # checked before any image is decoded
    with pytest.raises(ValueError, match='blank EncodedPixels'): rles_by_id(csv)  # what `dicom_dataloaders` reads with
    assert read_labels(csv, allow_blank=True).EncodedPixels.eq('').sum() == 1  # only when asked


def test_blank_cell_is_an_audit_finding(mini, tmp_path):
    d, lab = mini
    neg, _ = _ids(lab)
    csv = _write(_with(lab, neg, ''), tmp_path/'blank.csv')
    found = _run('audit', [csv, d/'dicom-images-train', '--expected-size', SIZE])
    row = found[found.check == 'blank-label']
    assert row[['ImageId', 'file']].values.tolist() == [[neg, csv]]
    assert row.reason.item().startswith(f'line {len(lab) + 1}: blank EncodedPixels')


# ---- one RLE rule: what the cache and the audit reject, the folds reject too

@pytest.mark.parametrize('rle,why', [('5 0', 'run length 0) is not positive'), ('-3 4', 'start -3) is negative'),
                                     ('1048570 10', 'goes past the end of the image')])
def test_split_rejects_what_prepare_rejects(mini, tmp_path, rle, why):
    d, lab = mini
    _, pos = _ids(lab)
    csv = _write(_with(lab, pos, rle), tmp_path/'bad.csv')
    where = f"Label file {csv} line {len(lab) + 1}: Bad RLE for image {pos!r}"
    _cli_fails('split', [csv, tmp_path/'folds.csv'], where, why)
    _cli_fails('prepare', [d/'dicom-images-train', tmp_path/'cache', '--labels', csv, '--sizes', 32], where, why)
    with pytest.raises(ValueError, match=why.replace('(', r'\(').replace(')', r'\)')): make_folds(csv, n_splits=3, n_bins=1)


def test_rle_bounds_are_each_images_real_size(mini, tmp_path):
    "Past the end of a 256 x 256 image but inside 1024 x 1024: audit and prepare both see it, whatever --expected-size says."
    d, lab = mini
    _, pos = _ids(lab)
    csv = _write(_with(lab, pos, f'{SIZE*SIZE + 5} 10'), tmp_path/'wide.csv')
    found = _run('audit', [csv, d/'dicom-images-train', '--out', tmp_path/'a.csv'])  # --expected-size 1024
    bad = found[found.check == 'invalid-rle']
    assert bad.ImageId.tolist() == [pos] and f'({SIZE*SIZE} pixels)' in bad.reason.item(), bad
    _cli_fails('prepare', [d/'dicom-images-train', tmp_path/'cache', '--labels', csv, '--sizes', 32],
               f"Label file {csv} line {len(lab) + 1}", f'({SIZE*SIZE} pixels)')
    # and the labels alone (no DICOM headers) are checked against SIIM's 1024 x 1024: this one fits
    assert len(check_labels(csv)) == len(lab)


# ---- a cache knows which labels built it

def test_prepare_rebuilds_masks_whose_labels_changed(mini, tmp_path):
    d, lab = mini
    _, pos = _ids(lab)
    cache, src = CacheDir(tmp_path/'cache'), d/'dicom-images-train'
    _run('prepare', [src, cache.root, '--labels', d/'train-rle.csv', '--sizes', 32])
    assert cv2.imread(str(cache.mask(32, pos)), cv2.IMREAD_GRAYSCALE).any()
    gone = next(i for i in lab.ImageId if i != pos)
    fixed = _write(_with(lab, pos, '-1').pipe(lambda f: f[f.ImageId != gone]), tmp_path/'fixed.csv')
    man = _run('prepare', [src, cache.root, '--labels', fixed, '--sizes', 32]).set_index('ImageId')
    assert sorted(man.index[man.status == 'written']) == sorted([pos, gone])
    assert not cv2.imread(str(cache.mask(32, pos)), cv2.IMREAD_GRAYSCALE).any()  # relabelled -1: empty mask
    assert not cache.mask(32, gone).exists()  # no longer labelled: no mask
    assert set(_run('prepare', [src, cache.root, '--labels', fixed, '--sizes', 32]).status) == {'skipped'}
    assert set(build_cache(src, cache, sizes=32, labels=fixed, progress=False, force=True).status) == {'written'}


# ---- empty work is an error

def test_prepare_with_nothing_to_do(mini, tmp_path):
    d, lab = mini
    (empty := tmp_path/'empty').mkdir()
    _cli_fails('prepare', [empty, tmp_path/'cache', '--labels', d/'train-rle.csv', '--sizes', 32], f'No DICOM files', str(empty))
    csv = _write(lab.assign(ImageId='other.' + lab.ImageId), tmp_path/'others.csv')
    _cli_fails('prepare', [d/'dicom-images-train', tmp_path/'cache', '--labels', csv, '--sizes', 32],
               f"None of the 12 DICOM(s) in {d/'dicom-images-train'} has a row in {csv}")
    assert not (tmp_path/'cache'/'32').exists()


def test_eda_on_a_folder_without_dicoms(mini, tmp_path):
    d, _ = mini
    (empty := tmp_path/'empty').mkdir()
    _cli_fails('eda', [d/'train-rle.csv', empty, '--dest', tmp_path/'eda'], f'No DICOM files (*.dcm, *.dicom) under {empty}')


# ---- clear messages

def test_split_names_labelled_ids_missing_on_disk(mini, tmp_path):
    d, lab = mini
    some = tmp_path/'some'
    some.mkdir()
    files = list_dicoms(d/'dicom-images-train')
    for p in files[:9]: (some/p.name).write_bytes(p.read_bytes())
    missing = sorted({image_id_of(p) for p in files[9:]})
    msg = _cli_fails('split', [d/'train-rle.csv', tmp_path/'f.csv', '--dicoms', some],
                     '3 of 12 labelled image(s) have no DICOM among the 9 DICOM header(s) under', str(some))
    assert all(i in msg for i in missing), msg


@pytest.mark.parametrize('text,why', [('', 'is empty'), ('ImageId,fold\n', 'has a header but no rows'),
                                      ('ImageId,fold\na,x\n', "line 2: fold must be a whole number >= 0, got 'x'"),
                                      ('ImageId,fold\n"a,0\n', 'is not a CSV'), ('id,k\na,0\n', 'needs columns ImageId and fold')])
def test_bad_folds_file_is_named(tmp_path, text, why):
    (p := tmp_path/'folds.csv').write_text(text)
    with pytest.raises(ValueError) as e: load_folds(p)
    assert str(p) in str(e.value) and why in str(e.value), str(e.value)


def test_audit_findings_can_be_listed(mini, tmp_path):
    d, lab = mini
    neg, pos = _ids(lab)
    csv = _write(_with(_with(lab, neg, ''), pos, '1 2 3'), tmp_path/'two.csv')
    found = audit(csv, d/'dicom-images-train', expected_size=SIZE, n_workers=0, progress=False)
    text = describe_findings(found, n=1).splitlines()
    assert text[0] == 'audit: 2 finding(s) (blank-label 1, invalid-rle 1)'
    assert text[1].startswith(f'blank-label  {neg}  {csv}  line ') and text[2] == '… and 1 more'
