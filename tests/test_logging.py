"""What a training run reports: through `pneumokit train` with stdout a pipe (not a terminal), one line per epoch and no bar
redraws; TensorBoard's learning rate, batch loss and overlay images; with `--wandb`, an offline W&B run in the fold folder."""
import json, re

import pytest

from conftest import run_cli

# the CPU smoke config (three stages of one epoch each, 64 px, fold 0 only) on two folds of a small set
YAML = 'base: siim-34th-place.cpu-smoke\nname: logging-test\ndata: {n_splits: 2, folds: [0]}\n'


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    "A small synthetic SIIM set, its 64 px cache and folds."
    from pneumokit.pipeline import prepare, split, synth
    d = tmp_path_factory.mktemp('logging')
    (d/'cfg.yaml').write_text(YAML)
    mini = synth(d/'siim', n_train=48, n_test=0, size=128, progress=False)
    prepare(mini/'dicom-images-train', d/'cache', d/'cfg.yaml', labels=mini/'train-rle.csv', n_workers=1, progress=False)
    split(mini/'train-rle.csv', d/'folds.csv', d/'cfg.yaml')
    return d


def test_train_logs(data, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from pneumokit.layout import RunDir
    monkeypatch.delenv('WANDB_MODE', raising=False)  # offline is the default
    res = run_cli('train', data/'cfg.yaml', data/'cache', data/'folds.csv', data/'run', '--wandb', '--workers', 0,
                  env=dict(WANDB_SILENT='true', OMP_NUM_THREADS='1'))
    out = res.stdout + res.stderr
    # one line per epoch (each stage has 1 epoch), and no progress-bar redraws
    epoch_lines = [l for l in res.stdout.splitlines() if re.search(r'\bepoch\b', l)]
    from pneumokit.config import load_config
    n = len(load_config(data/'cfg.yaml').recipe.stages)  # the smoke config's stages, one epoch each
    assert [l.split(':')[0] for l in epoch_lines] == [f'fold 0 stage {s}/{n} epoch 1/1' for s in range(1, n + 1)], res.stdout
    assert all('train_loss' in l and 'valid_loss' in l and 'kaggle_dice' in l for l in epoch_lines)
    assert '\r' not in out and '█' not in out and '|--' not in out, out[:2000]
    fold = RunDir(data/'run').fold(0)
    # TensorBoard: learning rate and loss of every training batch, one overlay picture per epoch
    ea = EventAccumulator(str(fold.tensorboard), size_guidance={'scalars': 0, 'images': 0}).Reload()
    n_batches = json.loads(fold.state.read_text())['batches']
    assert n_batches > 0
    assert len(ea.Scalars('train/lr')) == len(ea.Scalars('train/batch_loss')) == n_batches
    assert {'kaggle_dice', 'valid_loss', 'train_loss'} <= set(ea.Tags()['scalars'])
    assert [i.step for i in ea.Images('valid/overlay')] == list(range(1, n + 1))
    # W&B: an offline run in the fold's wandb folder, holding the run's log and its config
    runs = list((fold.wandb/'wandb').glob('offline-run-*'))
    assert len(runs) == 1, list(fold.wandb.rglob('*'))[:20]
    logs = list(runs[0].glob('run-*.wandb'))
    assert logs and logs[0].stat().st_size > 0
    assert b'batch_loss' in logs[0].read_bytes() or b'raw_loss' in logs[0].read_bytes()


def test_wandb_missing_is_one_line(data, tmp_path):
    fake = tmp_path/'site'
    (fake/'wandb').mkdir(parents=True)
    (fake/'wandb'/'__init__.py').write_text("raise ImportError('No module named wandb')\n")
    import os
    env = dict(PYTHONPATH=os.pathsep.join([str(fake), os.environ.get('PYTHONPATH', '')]))
    res = run_cli('train', data/'cfg.yaml', data/'cache', data/'folds.csv', tmp_path/'run', '--wandb', check=False, env=env)
    assert res.returncode != 0
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "pip install 'pneumokit[wandb]'" in err, err
    assert not (tmp_path/'run').exists()  # refused before anything was written
