"""Issue 15, one validator of maps: maps that are not probabilities, an exact search on float maps, duplicate ImageIds,
full / read-only / folder destinations of `predict`, and bad rule files. Each case fails with one line naming the file,
map, value or argument (through the CLI's `run_command` where the CLI is involved), or gives the exact result."""
import json, shutil, subprocess
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
from torch import nn

from pneumokit.cli import CliError, run_command
from pneumokit.inference import predict_dicoms
from pneumokit.layout import maps_ids
from pneumokit.metrics import dice_per_image, kaggle_dice
from pneumokit.postprocess import THRESHOLD_RULES, check_maps, rule_from_dict, search_thresholds

# ---------------------------------------------------------------- maps that are not probabilities, through `submit`

def _maps_file(folder: Path, maps: np.ndarray) -> Path:
    "`maps` saved as `predict` would, with their ids beside them."
    p = folder/'probs.npy'
    np.save(p, maps)
    pd.DataFrame(dict(ImageId=[f'img{i}' for i in range(len(maps))])).to_csv(maps_ids(p), index=False)
    return p

def _submit_fails(probs: Path, dest: Path, *args) -> str:
    with pytest.raises(CliError) as e: run_command('submit', [str(probs), str(dest), *map(str, args)])
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and msg.startswith('pneumokit submit: '), msg
    assert not dest.exists(), 'a refused submission must not be written'
    return msg

GOOD = np.random.default_rng(0).random((5, 16, 16)).astype(np.float32)

@pytest.mark.parametrize('bad, shown', [
    (GOOD * 255, 'map 0 holds'),                                   # floats 0-255
    (np.where(np.arange(5)[:, None, None] == 3, np.nan, GOOD), 'map 3 holds nan'),
    (np.where(np.arange(5)[:, None, None] == 4, np.inf, GOOD), 'map 4 holds inf'),
    (np.where(np.arange(5)[:, None, None] == 1, -np.inf, GOOD), 'map 1 holds -inf'),
    (GOOD - 0.5, 'map 0 holds -'),                                 # negatives
    (np.log(GOOD / (1 - GOOD)), 'map 0 holds'),                    # raw logits
])
def test_submit_refuses_maps_that_are_not_probabilities(tmp_path, bad, shown):
    p = _maps_file(tmp_path, bad)
    msg = _submit_fails(p, tmp_path/'sub.csv', '--top', 0.5, '--area', 0, '--bottom', 0.5)
    assert f'in {p}: {shown}' in msg and 'float maps must be probabilities' in msg, msg

@pytest.mark.parametrize('dtype', [np.int64, np.int8, np.float128 if hasattr(np, 'float128') else np.complex64])
def test_submit_refuses_other_dtypes(tmp_path, dtype):
    p = _maps_file(tmp_path, (GOOD > 0.5).astype(dtype))
    msg = _submit_fails(p, tmp_path/'sub.csv', '--top', 0.5, '--area', 0, '--bottom', 0.5)
    assert f'{p} must be uint8 (0-255) or float in [0, 1]' in msg and 'dtype' in msg, msg

def test_submit_takes_uint8_and_float_probabilities(tmp_path):
    for maps in (GOOD, GOOD.astype(np.float16), (GOOD * 255).round().astype(np.uint8)):
        p = _maps_file(tmp_path, maps)
        run_command('submit', [str(p), str(tmp_path/'sub.csv'), '--top', '0.5', '--area', '0', '--bottom', '0.5'])
        assert len(pd.read_csv(tmp_path/'sub.csv')) == 5

def test_check_maps_reads_a_memmap_chunk_by_chunk(tmp_path):
    "A bad value in the last of 16 maps of 4 MiB: found and named, with memory bounded by the chunk, not the file."
    import tracemalloc
    mm = np.lib.format.open_memmap(tmp_path/'m.npy', 'w+', np.float32, (16, 1024, 1024))
    mm[15, 1000, 2] = 7.5
    mm.flush(); del mm
    tracemalloc.start()
    with pytest.raises(ValueError, match=r'maps in .*m\.npy: map 15 holds 7\.5'): check_maps(np.load(tmp_path/'m.npy', mmap_mode='r'), chunk_mb=4)
    peak = tracemalloc.get_traced_memory()[1]; tracemalloc.stop()
    assert peak < 3 * 2**20, peak  # one map's worth of bool flags (1 MiB), not the file's 16

# ---------------------------------------------------------------- an exact search on float maps

def _brute(R, rule_res, probs, targs, cls):
    pos, out = targs.any((1, 2)), []
    for i in range(len(rule_res)):
        m = R.best(rule_res.iloc[[i]]).apply(probs, cls)
        d = dice_per_image(m, targs)
        out.append([kaggle_dice(m, targs), d[pos].mean(), d[~pos].mean(), m.any((1, 2)).sum()])
    return np.array(out)

@pytest.mark.parametrize('dtype', [np.float16, np.float32, np.float64])
def test_float_search_equals_brute_force(dtype):
    rng = np.random.default_rng(7)
    probs = rng.random((20, 12, 12)).astype(dtype)
    probs[3, :2] = dtype(0.45); probs[4] = 0                    # pixels exactly on a threshold, an empty map
    targs = (probs > rng.uniform(0.3, 0.9, (20, 1, 1))).astype(np.uint8); targs[:6] = 0
    cls = rng.random(20)
    grid = dict(tops=[0.2, 0.45, 0.5, 0.777, 1], areas=[0, 1, 7, 30], bottoms=[0, 0.1, 0.45, 0.6131],
                ratios=[0, 0.3, 0.6, 1], cls_thresholds=[0, 0.4, 0.8])
    for name, R in THRESHOLD_RULES.items():
        res = R.search(probs, targs, grid, cls_probs=cls)
        brute = _brute(R, res, probs, targs, cls)
        np.testing.assert_allclose(res[['dice', 'dice_pos', 'dice_neg']].values, brute[:, :3], atol=1e-9, rtol=0, err_msg=name)
        np.testing.assert_array_equal(res.n_pred_pos.values, brute[:, 3], err_msg=name)
    res = search_thresholds(probs, targs, grid['tops'], grid['areas'], grid['bottoms'])
    np.testing.assert_allclose(res.dice.values, _brute(THRESHOLD_RULES['triplet'], res, probs, targs, None)[:, 0], atol=1e-9, rtol=0)

# ---------------------------------------------------------------- bad rule files and arguments

@pytest.mark.parametrize('rule, shown', [
    (dict(rule='triplet', top='0.6', area=5, bottom=0.4), "`top` must be a number ≥ 0 and ≤ 1, got '0.6'"),
    (dict(rule='triplet', top=0.6, bottom=0.4), "the triplet rule needs 'area', missing from ['bottom', 'rule', 'top']"),
    (dict(rule='triplet', top=0.6, area=5, bottom=0.4, size='64'), "`size` must be an int ≥ 1, got '64'"),
    (dict(rule='ratio', ratio=[0.2], bottom=0.4), '`ratio` must be a number ≥ 0 and ≤ 1, got [0.2]'),
])
def test_bad_rule_files(tmp_path, rule, shown):
    f = tmp_path/'thresholds.json'
    f.write_text(json.dumps(rule))
    with pytest.raises(ValueError) as e: rule_from_dict(json.loads(f.read_text()), f)
    assert str(e.value) == f'{f}: {shown}'
    msg = _submit_fails(_maps_file(tmp_path, GOOD), tmp_path/'sub.csv', '--thresholds', f)  # one line, no TypeError
    assert shown in msg, msg

def test_negative_area_is_reported_as_given(tmp_path):
    msg = _submit_fails(_maps_file(tmp_path, GOOD), tmp_path/'sub.csv', '--top', 0.5, '--area', -5, '--bottom', 0.4)
    assert '`area` must be an int ≥ 0, got -5' in msg and '-1280' not in msg, msg

# ---------------------------------------------------------------- predict: duplicate ids, destinations

@pytest.fixture(scope='module')
def dicoms(tmp_path_factory):
    from pneumokit.dicom import list_dicoms
    from pneumokit.synthetic import make_mini_siim
    d = make_mini_siim(tmp_path_factory.mktemp('mini'), n_train=4, n_test=4, size=64, seed=0, n_workers=0, progress=False)
    return list_dicoms(d/'dicom-images-test')

class _Untouched(nn.Conv2d):
    "A model that must not run: the destination is refused before any work."
    def __init__(self): super().__init__(3, 1, 1)
    def forward(self, x): raise AssertionError('the model ran although the destination is refused')

def test_duplicate_image_ids_are_refused(tmp_path, dicoms):
    copy = tmp_path/'again.dcm'
    shutil.copy(dicoms[2], copy)
    with pytest.raises(ValueError) as e: predict_dicoms([_Untouched()], [*dicoms, copy], 64, tmp_path/'p.npy', device='cpu')
    assert str(e.value).startswith(f'{dicoms[2]} and {copy} have the same ImageId'), e.value
    assert not (tmp_path/'p.npy').exists()

def test_a_folder_is_not_a_destination(tmp_path, dicoms):
    (tmp_path/'p.npy').mkdir()
    with pytest.raises(ValueError, match='is a folder'): predict_dicoms([_Untouched()], dicoms, 64, tmp_path/'p.npy', device='cpu')

def test_read_only_destination_is_refused_before_any_work(small_fs, dicoms):
    ro = small_fs('ro,size=1m')
    with pytest.raises(ValueError) as e: predict_dicoms([_Untouched()], dicoms, 64, ro/'p.npy', device='cpu')
    assert str(e.value).startswith(f"maps {str(ro/'p.npy')!r}: the folder {str(ro)!r} is not writable"), e.value

def test_full_disk_is_refused_before_the_memory_map(small_fs, dicoms):
    full = small_fs('size=1m')
    with pytest.raises(ValueError) as e:
        predict_dicoms([nn.Conv2d(3, 1, 1)], dicoms, 64, full/'p.npy', out_size=512, device='cpu')  # 4 × 512² = 1 MiB + margin
    assert str(e.value).startswith(f"maps {str(full/'p.npy')!r}: needs 1.0 MB (+1.0 MB margin) but"), e.value
    assert not list(full.iterdir())

def test_full_disk_while_reserving_is_one_line(small_fs, dicoms):
    "Even when the free space looks sufficient (a race with another writer), the blocks are reserved: no SIGBUS."
    full = small_fs('size=1m')
    roomy = shutil._ntuple_diskusage(2**40, 0, 2**40)
    with mock.patch('shutil.disk_usage', return_value=roomy), pytest.raises(ValueError) as e:
        predict_dicoms([nn.Conv2d(3, 1, 1)], dicoms, 64, full/'p.npy', out_size=512, device='cpu')
    assert str(e.value) == f"writing {full/'p.npy'} failed: No space left on device", e.value
    assert not list(full.iterdir())
