"""The session-end check of `conftest` (no fold of a config trained twice on the same folds in one session) has teeth:
two trainings of the same fold are caught, a copy of a run is not a training, another config or folds file is another key."""
import json, os, shutil

import pytest

from conftest import fold_trainings


@pytest.fixture
def root(tmp_path):
    "A folder for fake runs, removed afterwards: the session's own check must not count them."
    yield tmp_path/'runs'
    shutil.rmtree(tmp_path/'runs', ignore_errors=True)


def _run(root, name, cfg='name: smoke\n', folds='ImageId,fold\na,0\n', t=1_000_000_000):
    "A run folder as `pneumokit train` leaves it: config, run.json naming its folds file, a history and a checkpoint per fold."
    run = root/name
    (run/'fold0').mkdir(parents=True)
    (run/'config.yaml').write_text(cfg)
    (f := root/f'{name}-folds.csv').write_text(folds)
    (run/'run.json').write_text(json.dumps(dict(cache=str(root), folds=str(f))))
    (run/'fold0'/'history.csv').write_text('stage,epoch\n0,0\n')  # epochs recorded: a training, not a hand-made fold
    (c := run/'fold0'/'model_0.pth').write_bytes(b'w')
    os.utime(c, ns=(t, t))
    return run


def test_a_fold_trained_twice_is_caught(root):
    _run(root, 'a'); _run(root, 'b', t=2_000_000_000)  # the same config and folds, trained again
    shutil.copytree(root/'a', root/'copy')  # a copy keeps its files' times: not a training
    (twice,) = [v for v in fold_trainings(root).values()]
    assert len(twice) == 2 and sorted(r.split('/')[-1] for rs in twice.values() for r in rs) == ['a', 'b', 'copy']


def test_other_configs_and_folds_are_other_trainings(root):
    _run(root, 'a'); _run(root, 'b', cfg='name: other\n', t=2); _run(root, 'c', folds='ImageId,fold\nb,0\n', t=3)
    assert [len(v) for v in fold_trainings(root).values()] == [1, 1, 1]


def test_a_hand_made_fold_is_no_training(root):
    run = _run(root, 'a'); (run/'fold0'/'history.csv').unlink()  # weights written by a test, no epoch trained
    assert fold_trainings(root) == {}
