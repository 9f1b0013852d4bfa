"""Data that grows: a folds file extended by `split --extend` keeps every assignment; training-only images train every
fold and never reach a validation set, an out-of-fold file or `search`; the 1st place's own folds files are read as
they are, and their second-stage file is what extending their first-stage file with the stage-2 labels gives."""
import numpy as np
import pandas as pd
import pytest

from conftest import cli_fails, cli_run


def test_extending_keeps_every_assignment(grown_run):
    from pneumokit.folds import TRAIN_ONLY, load_folds
    old, new = load_folds(grown_run.folds0), load_folds(grown_run.folds)
    pd.testing.assert_frame_equal(new.iloc[:len(old)], old)  # every existing row, every column
    added = new.iloc[len(old):]
    assert len(added) == grown_run.n - len(old) and not set(added.ImageId) & set(old.ImageId)
    assert (added.fold == TRAIN_ONLY).all()


def test_extending_in_place_adds_only_new_images(grown_run, tmp_path):
    "`--extend F` onto F itself, with labels of old and new images alike: old rows unchanged, new ones stratified into the folds."
    from pneumokit.folds import load_folds, validation_folds
    f = tmp_path/'folds.csv'
    f.write_bytes(grown_run.folds0.read_bytes())
    out = cli_run('split', grown_run.mini/'train-rle.csv', f, '--extend', f, '--config', grown_run.cfg,
                  '--dicoms', grown_run.mini/'dicom-images-train', '--workers', 0)
    old = load_folds(grown_run.folds0)
    pd.testing.assert_frame_equal(out.iloc[:len(old)], old)
    assert validation_folds(out) == [0, 1] and len(out) == grown_run.n
    assert out.groupby('PatientID').fold.nunique().max() == 1  # no patient in two folds, old or new
    assert load_folds(f).fold.tolist() == out.fold.tolist()


def test_training_only_images_never_validate(grown_run):
    "Through the real trainer: each fold's loaders and out-of-fold files hold exactly its fold's images, none training-only."
    from pneumokit.data import siim_dataloaders
    from pneumokit.folds import TRAIN_ONLY, load_folds
    from pneumokit.layout import RunDir
    folds, run = load_folds(grown_run.folds), RunDir(grown_run.run)
    only = set(folds.ImageId[folds.fold == TRAIN_ONLY])
    assert len(only) == grown_run.n - len(grown_run.first) > 0
    assert run.fold_ids('oof') == [0, 1]
    for k in (0, 1):
        ids = set(pd.read_csv(run.fold(k).oof_ids).ImageId)
        assert ids == set(folds.ImageId[folds.fold == k])  # the out-of-fold file: its fold's images, all of them
        assert not ids & only
        dls = siim_dataloaders(grown_run.cache, 32, folds, k, bs=8, n_workers=0)
        assert only <= set(dls.train.items) and not only & set(dls.valid.items)  # trained on, never validated
    best = RunDir(grown_run.run).read_thresholds()
    assert best['n_images'] == (folds.fold != TRAIN_ONLY).sum() and best['folds'] == [0, 1]


def test_a_training_only_fold_cannot_be_trained_or_searched(grown_run, tmp_path):
    cli_fails('train', grown_run.cfg, grown_run.cache, grown_run.folds, tmp_path/'r', '--fold', '-1',
              needles=[f'fold -1 is not in {grown_run.folds} (folds: [0, 1])'])
    # the folds file changed under the run: an image fold 0 validated is now training-only -> search refuses, naming it
    from pneumokit.folds import TRAIN_ONLY, load_folds, save_folds
    from pneumokit.layout import RunDir
    import shutil
    run = RunDir(shutil.copytree(grown_run.run, tmp_path/'run'))  # a copy (the shared run stays as it is for other tests)
    img = pd.read_csv(run.fold(0).oof_ids).ImageId[0]
    f = load_folds(grown_run.folds)
    save_folds(f.assign(fold=f.fold.where(f.ImageId != img, TRAIN_ONLY)), tmp_path/'changed.csv')
    run.write_info(grown_run.cache, tmp_path/'changed.csv')
    cli_fails('search', run.root, needles=[f'out-of-fold image {img} of fold 0 is training-only in'])


def test_training_only_of_a_validated_patient_is_refused(grown_run, tmp_path):
    "A training-only image whose patient validates in a fold would train that fold on its own patient: one line naming it."
    from pneumokit.dicom import dicom_metadata
    from pneumokit.folds import load_folds, save_folds
    old = load_folds(grown_run.folds0)
    meta = dicom_metadata(grown_run.mini/'dicom-images-train', n_workers=0, progress=False).set_index('ImageId')
    newcomer = sorted(set(meta.index) - set(old.ImageId))[0]
    pid = meta.PatientID[newcomer]  # a folds file where an image of fold 1 belongs to the newcomer's patient
    save_folds(old.assign(PatientID=old.PatientID.where(old.fold != 1, pid)), tmp_path/'f.csv')
    cli_fails('split', grown_run.mini/'train-rle.csv', tmp_path/'g.csv', '--extend', tmp_path/'f.csv', '--train-only',
              '--dicoms', grown_run.mini/'dicom-images-train', '--workers', 0,
              needles=['would be training-only but their patient validates in a fold', f'{newcomer} (patient {pid}, fold 1)'])


def test_winners_folds_file_trains(grown_run, tmp_path):
    "The same folds written as the 1st place writes them (`fname,fold,exist_labels`, `.png` names, `stage_2`): `train` reads them."
    from pneumokit import pipeline
    from pneumokit.folds import TRAIN_ONLY, load_folds
    from pneumokit.layout import RunDir
    ours = load_folds(grown_run.folds)
    theirs = pd.DataFrame(dict(fname=ours.ImageId + '.png', fold=ours.fold.astype(str).replace(str(TRAIN_ONLY), 'stage_2'),
                               exist_labels=ours.has_mask.astype(int)))
    theirs.to_csv(tmp_path/'theirs.csv', index=False)
    pd.testing.assert_frame_equal(load_folds(tmp_path/'theirs.csv'), ours[['ImageId', 'fold', 'has_mask']])
    pipeline.train(grown_run.cfg, grown_run.cache, tmp_path/'theirs.csv', tmp_path/'run', fold=1, tensorboard=False, n_workers=0)
    ids = pd.read_csv(RunDir(tmp_path/'run').fold(1).oof_ids).ImageId
    assert sorted(ids) == sorted(ours.ImageId[ours.fold == 1])


def test_the_first_place_folds_files(real_data):
    "Their files load as they are, each image in its own fold; train's check accepts folds 0-4; and extending their stage-1 file\n    with the stage-2 labels as training-only gives their `2nd_stage_folds.csv` on every image it lists."
    from pneumokit.config import load_config
    from pneumokit.folds import TRAIN_ONLY, extend_folds, load_folds
    from pneumokit.pipeline import _train_folds
    from pneumokit.rle import read_labels
    s1, s2 = load_folds(real_data/'extra'/'stage_1_folds_5.csv'), load_folds(real_data/'extra'/'stage_2_folds_5.csv')
    raw = pd.read_csv(real_data/'extra'/'stage_2_folds_5.csv')
    assert s2.ImageId.tolist() == raw.fname.str.replace('.png', '', regex=False).tolist()
    assert s2.fold.tolist() == [TRAIN_ONLY if f == 'stage_2' else int(f) for f in raw.fold]
    assert s2.has_mask.tolist() == raw.exist_labels.astype(bool).tolist()
    cfg = load_config('siim-1st-place')
    assert _train_folds(cfg, s2, real_data/'extra'/'stage_2_folds_5.csv', None) == [0, 1, 2, 3, 4]
    grown = extend_folds(s1, read_labels(real_data/'stage_2_train.csv.gz'), train_only=True)
    pd.testing.assert_frame_equal(grown.iloc[:len(s1)][s1.columns], s1)  # their rows as they were (new columns: empty there)
    m = s2.merge(grown, on='ImageId', how='left', suffixes=('_theirs', '_ours'))
    assert len(m) == len(s2) and (m.fold_theirs == m.fold_ours).all()
    assert (m.fold_ours == TRAIN_ONLY).sum() == 1372
