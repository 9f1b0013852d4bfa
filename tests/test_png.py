"""PNG/JPG conversions of SIIM (issue 12): each of the three layouts through the `pneumokit` command gives the cache,
labels and folds the DICOMs give, the smoke recipe runs from a PNG set to a validated submission, masks written from
official RLE rows round-trip exactly, the real JPG masks agree with the official RLE (and their transpose does not), and
every bad PNG input ends in one line naming the file."""
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from pneumokit.dicom import image_id_of, list_dicoms, read_dicom
from pneumokit.layout import CacheDir
from pneumokit.rle import group_labels, masks_from_rles, read_labels, rle_decode
from pneumokit.submission import validate_submission
from conftest import cli_fails as fails, cli_run as run

CONFIG = '''base: fastai-baseline.cpu-smoke
stages:
  - {size: 64, epochs: 1, bs: 8, lr: 1.0e-2, frozen: true, loss: bce, aug: none}
  - {size: 64, epochs: 1, bs: 8, lr: [2.0e-3, 1.0e-2], loss: bce, aug: none}
data: {n_splits: 2, folds: [0]}
'''


def _write(path: Path, a: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), a), path
    return path


def _small(m: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST)


@pytest.fixture(scope='module')
def mini(tmp_path_factory):
    "A synthetic SIIM (DICOMs at 256 px), its images at 128 px and masks (0/255, 128 px) in memory, by ImageId."
    d = tmp_path_factory.mktemp('png')
    run('synth', '--dest', d/'mini', '--n-train', 32, '--n-test', 4, '--size', 256, '--seed', 5)
    g = group_labels(read_labels(d/'mini'/'train-rle.csv'))
    dcm = {image_id_of(p): p for p in list_dicoms(d/'mini'/'dicom-images-train')}
    imgs = {i: read_dicom(dcm[i], 128) for i in g.ImageId}
    masks = {i: _small(masks_from_rles(r, (256, 256)), 128) * np.uint8(255) for i, r in zip(g.ImageId, g.rles)}
    tests = {image_id_of(p): read_dicom(p, 128) for p in list_dicoms(d/'mini'/'dicom-images-test')}
    return d, imgs, masks, tests


def by_id(root: Path, imgs: dict, masks: dict, tests: dict | None = None, ext: str = 'png') -> Path:
    for i, a in imgs.items(): _write(root/'train'/f'{i}.{ext}', a)
    for i, m in masks.items(): _write(root/'masks'/f'{i}.png', m)
    for i, a in (tests or {}).items(): _write(root/'test'/f'{i}.png', a)
    return root


def id_map(root: Path, imgs: dict, masks: dict) -> Path:
    rows = []
    for k, i in enumerate(imgs):
        _write(root/'png_images'/f'{k}_train_{int(masks[i].any())}_.png', imgs[i])
        _write(root/'png_masks'/f'{k}_train_{int(masks[i].any())}_.png', masks[i])
        rows.append(dict(new_filename=f'{k}_train_{int(masks[i].any())}_.png', ImageId=i, has_pneumo=int(masks[i].any())))
    pd.DataFrame(rows).to_csv(root/'stage_1_train_images.csv', index=False)
    return root


def plain(root: Path, imgs: dict, labels: Path) -> Path:
    for i, a in imgs.items(): _write(root/f'{i}.png', a)
    shutil.copy(labels, root/'train-rle.csv')
    return root


# ------------------------------------------------------------------------------------------ the smoke recipe

def test_smoke_recipe_from_a_png_set_to_a_validated_submission(mini, tmp_path, capsys):
    "Every step through the `pneumokit` command line (in this process: `run_command` parses exactly as the console script)."
    d, imgs, masks, tests = mini
    src = by_id(tmp_path/'siim-png', imgs, masks, tests)
    (cfg := tmp_path/'tiny.yaml').write_text(CONFIG)
    man = run('prepare', src, tmp_path/'cache', '--config', cfg, '--workers', 0)
    assert 'by-id layout' in capsys.readouterr().out and man.status.tolist() == ['written'] * 32
    assert CacheDir(tmp_path/'cache').sizes() == [64] and (tmp_path/'cache'/'labels.csv').is_file()
    assert len(run('audit', src, '--workers', 0)) == 0
    with pytest.warns(UserWarning, match='no demographics figure'): figs = run('eda', src, '--dest', tmp_path/'eda')
    assert [Path(f).name for f in figs] == ['label_summary.png', 'mask_areas.png', 'mask_heatmap.png', 'overlays.png']
    with pytest.warns(UserWarning, match='not grouped by patient'): folds = run('split', src, tmp_path/'folds.csv', '--config', cfg)
    assert sorted(folds.fold.unique()) == [0, 1] and len(folds) == 32
    run('train', cfg, tmp_path/'cache', tmp_path/'folds.csv', tmp_path/'run', '--no-tensorboard', '--workers', 0, '--device', 'cpu')
    run('search', tmp_path/'run')
    assert len(np.load(run('predict', tmp_path/'run', src, '--device', 'cpu'))) == 4
    run('submit', tmp_path/'run'/'test_probs.npy', tmp_path/'sub.csv', '--thresholds', tmp_path/'run',
        '--sample', d/'mini'/'sample_submission.csv')
    sub = validate_submission(tmp_path/'sub.csv', d/'mini'/'sample_submission.csv')
    assert sorted(sub.ImageId) == sorted(tests)


# ------------------------------------------------------------------------------------------ three layouts, one result

def test_three_layouts_give_the_same_cache_labels_and_folds(mini, tmp_path):
    d, imgs, masks, _ = mini
    a = by_id(tmp_path/'by-id', imgs, masks)
    b = id_map(tmp_path/'id-map', imgs, masks)
    out = {}
    for name, src in (('by-id', a), ('id-map', b)):
        out[name] = run('prepare', src, tmp_path/f'cache-{name}', '--sizes', '64,32', '--workers', 0)
    c = plain(tmp_path/'plain', imgs, tmp_path/'cache-by-id'/'labels.csv')  # the labels the masks gave, as an RLE CSV
    out['plain'] = run('prepare', c, tmp_path/'cache-plain', '--sizes', '64,32', '--workers', 0)
    ids = sorted(imgs)
    for name in out:
        assert out[name].status.tolist() == ['written'] * 32, name
        cache = CacheDir(tmp_path/f'cache-{name}')
        for s in (64, 32):
            assert np.array_equal(cache.read_images(s, ids), CacheDir(tmp_path/'cache-by-id').read_images(s, ids)), name
            assert np.array_equal(cache.read_masks(s, ids), CacheDir(tmp_path/'cache-by-id').read_masks(s, ids)), name
        lab = read_labels(cache.labels).sort_values('ImageId').reset_index(drop=True)
        assert lab.equals(read_labels(tmp_path/'cache-by-id'/'labels.csv').sort_values('ImageId').reset_index(drop=True))
        assert len(run('audit', tmp_path/name)) == 0
    # the 128 px masks, enlarged to 1024 with nearest neighbour, come back exactly when cached at 128
    run('prepare', a, tmp_path/'cache-128', '--sizes', 128, '--workers', 0)
    assert np.array_equal(CacheDir(tmp_path/'cache-128').read_masks(128, ids), np.stack([masks[i] > 0 for i in ids]))
    (cfg := tmp_path/'tiny.yaml').write_text(CONFIG)
    folds = [run('split', tmp_path/n, tmp_path/f'folds-{n}.csv', '--config', cfg).sort_values('ImageId').reset_index(drop=True)
             for n in out]
    assert folds[0].equals(folds[1]) and folds[0].equals(folds[2]) and 'PatientID' not in folds[0]


# ------------------------------------------------------------------------------------------ lossless round trip

def test_png_masks_written_from_official_rows_round_trip_exactly(real_data, tmp_path):
    g = group_labels(read_labels(real_data/'stage_2_train.csv.gz'))
    pos = g[g.has_mask]
    pick = pd.concat([pos[pos.n_rows > 2].head(3), pos[pos.n_rows == 2].head(2), pos[pos.n_rows == 1].head(3),
                      g[~g.has_mask].head(1)])
    assert pick.n_rows.max() > 2 and len(pick) == 9
    flat = np.full((1024, 1024), 90, np.uint8)
    for i, r in zip(pick.ImageId, pick.rles):
        _write(tmp_path/'set'/'train'/f'{i}.png', flat)
        _write(tmp_path/'set'/'masks'/f'{i}.png', masks_from_rles(r, (1024, 1024)) * np.uint8(255))
    run('prepare', tmp_path/'set', tmp_path/'cache', '--sizes', 64, '--workers', 0)
    ours = group_labels(read_labels(tmp_path/'cache'/'labels.csv')).set_index('ImageId')
    for i, r in zip(pick.ImageId, pick.rles):
        assert np.array_equal(masks_from_rles(ours.rles[i], (1024, 1024)), masks_from_rles(r, (1024, 1024))), i


# ------------------------------------------------------------------------------------------ the real JPG masks

def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def _real_set(real_data: Path, root: Path, transpose: bool = False) -> tuple[Path, list[str]]:
    "The real JPG images that have a mask, as a by-id set (symlinks; the masks transposed into new JPGs when asked)."
    ids = sorted(p.stem for p in (real_data/'extra'/'jpg-mask').glob('*.jpg'))
    (root/'train').mkdir(parents=True); (root/'masks').mkdir()
    for i in ids:
        (root/'train'/f'{i}.jpg').symlink_to(real_data/'extra'/'jpg-image'/f'{i}.jpg')
        m = real_data/'extra'/'jpg-mask'/f'{i}.jpg'
        if transpose: _write(root/'masks'/f'{i}.jpg', np.ascontiguousarray(cv2.imread(str(m), cv2.IMREAD_GRAYSCALE).T))
        else: (root/'masks'/f'{i}.jpg').symlink_to(m)
    return root, ids


def _agreement(real_data: Path, labels: Path, ids: list[str]) -> dict[str, float]:
    official = group_labels(read_labels(real_data/'stage_2_train.csv.gz')).set_index('ImageId')
    ours = group_labels(read_labels(labels)).set_index('ImageId')
    return {i: _dice(masks_from_rles(ours.rles[i], (1024, 1024)), masks_from_rles(official.rles[i], (1024, 1024))) for i in ids}


def test_real_jpg_masks_agree_with_the_official_rle(real_data, tmp_path):
    src, ids = _real_set(real_data, tmp_path/'real')
    assert len(ids) == 3
    run('prepare', src, tmp_path/'cache', '--sizes', 256, '--workers', 0)
    dice = _agreement(real_data, tmp_path/'cache'/'labels.csv', ids)
    assert min(dice.values()) >= 0.95, dice
    # the same masks transposed: the check must fail
    src_t, _ = _real_set(real_data, tmp_path/'transposed', transpose=True)
    run('prepare', src_t, tmp_path/'cache-t', '--sizes', 256, '--workers', 0)
    dice_t = _agreement(real_data, tmp_path/'cache-t'/'labels.csv', ids)
    assert max(dice_t.values()) < 0.95, dice_t


def test_real_image_without_a_mask_is_a_finding(real_data, tmp_path):
    (r := tmp_path/'all').mkdir()
    (r/'train').symlink_to(real_data/'extra'/'jpg-image'); (r/'masks').symlink_to(real_data/'extra'/'jpg-mask')
    f = run('audit', r)
    assert f.check.tolist() == ['image-without-mask'] and f.ImageId.tolist() == ['1.2.276.0.7230010.3.1.4.8323329.307.1517875162.311533']
    fails('prepare', r, tmp_path/'c', '--sizes', 64, needles=['311533.jpg', 'image-without-mask'])


# ------------------------------------------------------------------------------------------ bad input, one line each

@pytest.fixture
def small_set(mini, tmp_path):
    _, imgs, masks, _ = mini
    keep = dict(list(imgs.items())[:6])
    return by_id(tmp_path/'set', keep, {i: masks[i] for i in keep}), list(keep)


def test_non_binary_mask(small_set, tmp_path):
    src, ids = small_set
    _write(src/'masks'/f'{ids[0]}.png', (np.arange(128*128) % 9).astype(np.uint8).reshape(128, 128))
    fails('prepare', src, tmp_path/'c', '--sizes', 64, needles=[f'{ids[0]}.png', 'not binary', '9 grey levels'])
    f = run('audit', src)
    assert f[['check', 'ImageId']].values.tolist() == [['non-binary-mask', ids[0]]]
    assert not list((tmp_path/'c').rglob('*.png'))  # nothing cached


def test_mask_of_another_size_than_its_image(small_set, tmp_path):
    src, ids = small_set
    _write(src/'masks'/f'{ids[1]}.png', np.zeros((64, 64), np.uint8))
    fails('prepare', src, tmp_path/'c', '--sizes', 64, needles=[f'{ids[1]}.png', 'mask is 64x64', 'is 128x128'])
    assert run('audit', src).check.tolist() == ['mask-size-mismatch']


def test_mask_without_image_and_image_without_mask(small_set, tmp_path):
    src, ids = small_set
    (src/'masks'/f'{ids[2]}.png').unlink()
    _write(src/'masks'/'9.9.9.png', np.zeros((128, 128), np.uint8))
    f = run('audit', src)
    assert sorted(zip(f.check, f.ImageId)) == [('image-without-mask', ids[2]), ('mask-without-image', '9.9.9')]
    fails('prepare', src, tmp_path/'c', '--sizes', 64, needles=['2 problem(s)'])


def test_cache_larger_than_the_images_is_refused(small_set, tmp_path):
    src, _ = small_set
    fails('prepare', src, tmp_path/'c', '--sizes', '64,256', needles=['is 128x128 px, smaller than the requested cache size 256',
                                                                     'not upsampled'])
    assert not list((tmp_path/'c').rglob('*.png'))  # nothing cached


def test_unknown_folder_shape_names_the_layouts(tmp_path):
    (d := tmp_path/'odd').mkdir(); (d/'notes.txt').write_text('x')
    fails('prepare', d, tmp_path/'c', '--sizes', 64, needles=[str(d), 'id-map: png_images/', 'by-id: train/', 'plain: PNG/JPG images'])


def test_id_map_csv_without_its_columns(mini, tmp_path):
    _, imgs, masks, _ = mini
    keep = dict(list(imgs.items())[:4])
    src = id_map(tmp_path/'set', keep, {i: masks[i] for i in keep})
    csv = src/'stage_1_train_images.csv'
    pd.read_csv(csv).rename(columns={'new_filename': 'file'}).to_csv(csv, index=False)
    fails('prepare', src, tmp_path/'c', '--sizes', 64, needles=[str(csv), 'new_filename, ImageId', "'file'"])


def test_unreadable_image_is_a_finding(small_set, tmp_path):
    src, ids = small_set
    (src/'train'/f'{ids[3]}.png').write_bytes(b'not a png')
    f = run('audit', src)
    assert f[['check', 'ImageId']].values.tolist() == [['unreadable-image', ids[3]]]
    fails('prepare', src, tmp_path/'c', '--sizes', 64, needles=[f'{ids[3]}.png', 'not a readable PNG/JPG image'])


# ------------------------------------------------------------------------------------------ PNG sets that would lose images (issue 23)

def test_two_files_of_one_imageid_are_both_named(mini, tmp_path):
    d, imgs, masks, _ = mini
    few = dict(list(imgs.items())[:4])
    src = id_map(tmp_path/'idmap', few, {i: masks[i] for i in few})
    m = pd.read_csv(src/'stage_1_train_images.csv')
    m.loc[3, 'ImageId'] = m.ImageId[0]  # the id-map gives two files one ImageId: one image would be dropped
    m.to_csv(src/'stage_1_train_images.csv', index=False)
    fails('prepare', src, tmp_path/'cache', '--sizes', 32, '--workers', 0,
          needles=[m.new_filename[0], m.new_filename[3], f'both ImageId {m.ImageId[0]}'])
    twin = by_id(tmp_path/'byid', few, {i: masks[i] for i in few})
    i0 = next(iter(few))
    _write(twin/'train'/f'{i0}.jpg', few[i0])  # one ImageId as .png and .jpg
    fails('audit', twin, needles=[f'{i0}.png', f'{i0}.jpg'])

def test_a_folder_with_two_layouts_names_both(mini, tmp_path):
    d, imgs, masks, _ = mini
    few = dict(list(imgs.items())[:4])
    src = by_id(tmp_path/'both', few, {i: masks[i] for i in few})
    id_map(src, few, {i: masks[i] for i in few})  # an id-map conversion beside it
    fails('prepare', src, tmp_path/'cache', '--sizes', 32, '--workers', 0, needles=['id-map', 'by-id', 'which one'])
