"""Issue 15's catalogue of hostile input, one representative case of every kind, through the `pneumokit` command in one
process (`run_command`): each ends as one line `pneumokit <command>: <reason>` naming the file, row or argument (never a
traceback, never exit 0 with nothing done), or gives the correct result. The per-cause tests, with every variant, are
`test_bad_labels.py`, `test_bad_maps.py` and `test_bad_configs.py`; this file keeps the whole list in one place.
Issue 23's second pass, by cause: damaged images, images of other sizes and the kernel in `test_bad_images.py`; outputs
that are inputs, out-of-range sizes and counts, the umask, `kill -9` and damaged run files in `test_bad_outputs.py`;
volumes in `test_volumes.py`; PNG sets in `test_png.py` (the sections marked "issue 23")."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import cli_fails as fails, cli_run as run


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """A tiny synthetic SIIM cached at 32 px, its folds, and a run folder of an untrained model (one finished fold and
    one killed before finishing): enough for every command, with no training."""
    from pneumokit.config import load_config
    from pneumokit.layout import RunDir
    from pneumokit.models import build_model
    d = tmp_path_factory.mktemp('hostile')
    run('synth', '--dest', d/'mini', '--n-train', 16, '--n-test', 3, '--size', 64, '--seed', 2)
    mini = d/'mini'
    run('prepare', mini/'dicom-images-train', d/'cache', '--labels', mini/'train-rle.csv', '--sizes', 32, '--workers', 0)
    cfg = load_config('siim-1st-place.cpu-smoke')
    for st in cfg.recipe.stages: st.size = 32
    (d/'cfg.yaml').write_text(__import__('yaml').safe_dump(cfg.to_dict()))
    from pneumokit.folds import make_folds, save_folds
    save_folds(make_folds(mini/'train-rle.csv', n_splits=2, n_bins=1), d/'folds.csv')  # 16 images: one area bin
    r = RunDir(d/'run')
    r.start(load_config(d/'cfg.yaml').to_dict()); r.write_info(d/'cache', d/'folds.csv')
    m = build_model(cfg.recipe.arch, cfg.recipe.encoder, **cfg.recipe.model_kwargs)
    for k, finished in ((0, True), (1, False)):
        f = r.fold(k); f.root.mkdir(parents=True)
        torch.save(m.state_dict(), f.root/f.model_name(0, 0))
        f.state.write_text(json.dumps(dict(stage=0, epoch=1, last=None, history=[], topk=[])))
        if finished: f.write_json(f.summary, dict(fold=k))
    return d


# ------------------------------------------------------------------------------------------ silent wrong results

def test_relabelled_image_gets_its_new_mask(world, tmp_path):
    mini, labels = world/'mini', pd.read_csv(world/'mini'/'train-rle.csv', dtype=str)
    pos = labels.ImageId[labels.iloc[:, 1].str.strip() != '-1'].iloc[0]
    fixed = pd.concat([labels[labels.ImageId != pos], pd.DataFrame({'ImageId': [pos], labels.columns[1]: ['-1']})])
    fixed.to_csv(tmp_path/'fixed.csv', index=False)
    run('prepare', mini/'dicom-images-train', world/'cache', '--labels', tmp_path/'fixed.csv', '--sizes', 32, '--workers', 0)
    from pneumokit.layout import CacheDir
    assert CacheDir(world/'cache').read_masks(32, [pos]).sum() == 0  # not the stale mask
    run('prepare', mini/'dicom-images-train', world/'cache', '--labels', mini/'train-rle.csv', '--sizes', 32, '--workers', 0)

def test_maps_that_are_not_probabilities(world, tmp_path):
    np.save(tmp_path/'p.npy', np.full((3, 8, 8), np.nan, np.float32))
    pd.DataFrame(dict(ImageId=['a', 'b', 'c'])).to_csv(tmp_path/'p_ids.csv', index=False)
    fails('submit', tmp_path/'p.npy', tmp_path/'s.csv', '--top', .5, '--area', 0, '--bottom', .5, needles=['map 0 holds nan'])
    assert not (tmp_path/'s.csv').exists()

def test_blank_label_and_bad_rle(world, tmp_path):
    (tmp_path/'blank.csv').write_text('ImageId,EncodedPixels\nx,\n')
    fails('split', tmp_path/'blank.csv', tmp_path/'f.csv', needles=['blank.csv', 'line 2'])
    (tmp_path/'rle.csv').write_text('ImageId,EncodedPixels\nx,5 0\n')
    fails('split', tmp_path/'rle.csv', tmp_path/'f.csv', needles=['rle.csv'])

def test_unfinished_fold_is_not_ensembled(world, tmp_path):
    from pneumokit.inference import load_fold_models
    assert len(load_fold_models(world/'run', device='cpu')) == 1  # fold 1 never finished: only fold 0's checkpoint
    with pytest.warns(UserWarning, match=r'folds \[1\] .* have not finished training'):  # used only when asked, and said so
        assert len(load_fold_models(world/'run', folds=[0, 1], device='cpu')) == 2

def test_stale_search_is_refused(world, tmp_path):
    from pneumokit.layout import RunDir
    r = RunDir(world/'run')
    r.write_json(r.thresholds, dict(rule='triplet', top=.5, area=0, bottom=.5, size=32, folds=[0, 1, 2]))
    np.save(tmp_path/'p.npy', np.zeros((3, 8, 8), np.uint8))
    pd.DataFrame(dict(ImageId=['a', 'b', 'c'])).to_csv(tmp_path/'p_ids.csv', index=False)
    fails('submit', tmp_path/'p.npy', tmp_path/'s.csv', '--thresholds', world/'run', needles=['searched on folds [0, 1, 2]'])
    r.forget_search()

def test_config_typos_fail_before_anything_is_written(world, tmp_path):
    (tmp_path/'typo.yaml').write_text('base: siim-1st-place.cpu-smoke\nmodel: {kwargs: {decoder_channelz: [8, 8, 8, 8, 8]}}\n')
    fails('train', tmp_path/'typo.yaml', world/'cache', world/'folds.csv', tmp_path/'run', needles=['decoder_channelz'])
    (tmp_path/'grid.yaml').write_text('base: siim-1st-place.cpu-smoke\nthresholds: {tops: [0.5, 1.5]}\n')
    fails('train', tmp_path/'grid.yaml', world/'cache', world/'folds.csv', tmp_path/'run', needles=['thresholds.tops'])
    assert not (tmp_path/'run').exists()

def test_empty_work_is_an_error(world, tmp_path):
    (tmp_path/'empty').mkdir()
    fails('prepare', tmp_path/'empty', tmp_path/'c', '--sizes', 32, needles=['empty'])
    (tmp_path/'other.csv').write_text('ImageId,EncodedPixels\nnobody,-1\n')
    fails('prepare', world/'mini'/'dicom-images-train', tmp_path/'c', '--labels', tmp_path/'other.csv', '--sizes', 32,
          '--workers', 0, needles=['other.csv'])

def test_thresholds_and_a_triplet_are_not_both_taken(world, tmp_path):
    fails('submit', tmp_path/'p.npy', '--thresholds', world/'run', '--top', .5, '--area', 0, '--bottom', .5, needles=['not both'])

# ------------------------------------------------------------------------------------------ crashes

def test_folder_and_read_only_destinations(world, tmp_path):
    (tmp_path/'dest.npy').mkdir()
    fails('predict', world/'run', world/'mini'/'dicom-images-test', '--dest', tmp_path/'dest.npy', '--device', 'cpu',
          needles=['dest.npy'])

def test_bad_devices(world, tmp_path):
    for dev in ('banana', 'cuda:3'):
        fails('predict', world/'run', world/'mini'/'dicom-images-test', '--dest', tmp_path/'p.npy', '--device', dev,
              needles=[dev])

def test_garbage_checkpoint(world, tmp_path):
    import shutil
    run_dir = Path(shutil.copytree(world/'run', tmp_path/'run'))
    ckpt = next((run_dir/'fold0').glob('model_*.pth'))
    ckpt.write_bytes(b'not a checkpoint')
    fails('predict', run_dir, world/'mini'/'dicom-images-test', '--device', 'cpu', needles=[ckpt.name])

def test_eda_without_dicoms(world, tmp_path):
    (tmp_path/'none').mkdir()
    fails('eda', world/'mini'/'train-rle.csv', tmp_path/'none', '--dest', tmp_path/'eda', needles=['none'])

def test_rule_file_with_strings(world, tmp_path):
    (tmp_path/'t.json').write_text(json.dumps(dict(rule='triplet', top='0.5', area=0, bottom=0.5)))
    np.save(tmp_path/'p.npy', np.zeros((3, 8, 8), np.uint8))
    pd.DataFrame(dict(ImageId=['a', 'b', 'c'])).to_csv(tmp_path/'p_ids.csv', index=False)
    fails('submit', tmp_path/'p.npy', tmp_path/'s.csv', '--thresholds', tmp_path/'t.json', needles=['t.json', '`top`'])

# ------------------------------------------------------------------------------------------ unclear errors

def test_audit_names_its_findings(world, tmp_path):
    labels = pd.read_csv(world/'mini'/'train-rle.csv', dtype=str)
    pd.concat([labels, pd.DataFrame({labels.columns[0]: ['ghost'], labels.columns[1]: ['-1']})]).to_csv(tmp_path/'l.csv', index=False)
    res = run('audit', tmp_path/'l.csv', world/'mini'/'dicom-images-train', '--expected-size', 64, '--workers', 0)
    assert 'ghost' in res.ImageId.tolist()

def test_garbage_maps_and_count_mismatch_name_the_files(world, tmp_path):
    (tmp_path/'g.npy').write_bytes(b'garbage')
    fails('submit', tmp_path/'g.npy', tmp_path/'s.csv', '--top', .5, '--area', 0, '--bottom', .5, needles=['g.npy'])
    np.save(tmp_path/'p.npy', np.zeros((3, 8, 8), np.uint8))
    pd.DataFrame(dict(ImageId=['a'])).to_csv(tmp_path/'p_ids.csv', index=False)
    fails('submit', tmp_path/'p.npy', tmp_path/'s.csv', '--top', .5, '--area', 0, '--bottom', .5, needles=['p_ids.csv', 'p.npy'])

def test_bad_folds_file_is_named(world, tmp_path):
    (tmp_path/'folds.csv').write_text('')
    fails('train', world/'cfg.yaml', world/'cache', tmp_path/'folds.csv', tmp_path/'run', needles=['folds.csv'])

def test_negative_area_as_given(world, tmp_path):
    np.save(tmp_path/'p.npy', np.zeros((3, 8, 8), np.uint8))
    pd.DataFrame(dict(ImageId=['a', 'b', 'c'])).to_csv(tmp_path/'p_ids.csv', index=False)
    msg = fails('submit', tmp_path/'p.npy', tmp_path/'s.csv', '--top', .5, '--area', -5, '--bottom', .5, needles=['got -5'])
    assert '-1280' not in msg
