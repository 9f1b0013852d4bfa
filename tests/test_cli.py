"""The `pneumokit` console script: help, a real run of each command, and one bad input each."""
import pandas as pd
import pytest

from conftest import run_cli

COMMANDS = ['synth', 'prepare', 'slice', 'audit', 'eda', 'split', 'train', 'search', 'predict', 'score', 'submit', 'export',
            'lr-find', 'configs', 'demo']


def test_usage_lists_commands():
    out = run_cli('--help').stdout
    for c in COMMANDS: assert f'  {c}' in out


@pytest.mark.parametrize('cmd', COMMANDS)
def test_help_explains_every_option(cmd):
    out = run_cli(cmd, '--help').stdout
    assert f'pneumokit {cmd}' in out
    from pneumokit.cli import COMMANDS as fns
    from fastcore.docments import docments
    for name, doc in docments(fns[cmd].__wrapped__).items():
        if name == 'return': continue
        assert doc, f'{cmd}: option {name} has no help text'
        assert doc.split()[0] in out, f'{cmd}: help for {name} not shown'


def _one_line_failure(res, *needles):
    assert res.returncode != 0
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1, f'expected a one-line reason, got:\n{err}'
    for n in needles: assert n in err, err


def test_unknown_command():
    _one_line_failure(run_cli('trian', check=False), "unknown command 'trian'", 'valid:')


def test_bad_inputs(tmp_path):
    _one_line_failure(run_cli('synth', '--dest', tmp_path/'s', '--n-train', 0, check=False), 'pneumokit synth', 'n_train')
    _one_line_failure(run_cli('prepare', tmp_path/'nope', tmp_path/'c', check=False), 'DICOM folder not found')
    _one_line_failure(run_cli('prepare', tmp_path, tmp_path/'c', '--sizes', '256,big', check=False), '--sizes')
    _one_line_failure(run_cli('prepare', tmp_path, tmp_path/'c', check=False), 'needs a config')
    _one_line_failure(run_cli('audit', tmp_path/'missing.csv', tmp_path, check=False), 'label CSV not found')
    _one_line_failure(run_cli('eda', tmp_path/'missing.csv', tmp_path, check=False), 'label CSV not found')
    _one_line_failure(run_cli('demo', '--config', 'siim-99th', '--data', tmp_path/'d', '--report', tmp_path/'r',
                              check=False), "config 'siim-99th' not found")
    _one_line_failure(run_cli('split', tmp_path/'missing.csv', check=False), 'label CSV not found')
    _one_line_failure(run_cli('train', 'demo', tmp_path/'nocache', tmp_path/'f.csv', tmp_path/'run', check=False), 'PNG cache not found')
    _one_line_failure(run_cli('search', tmp_path/'norun', check=False), 'run folder not found')
    _one_line_failure(run_cli('predict', tmp_path, tmp_path, check=False), 'config.yaml not found')
    _one_line_failure(run_cli('submit', tmp_path/'p.npy', check=False), 'give --thresholds')
    bad = tmp_path/'bad.yaml'
    bad.write_text('base: demo\nstages:\n  - {size: 64, epoch: 2}\n')
    _one_line_failure(run_cli('train', bad, tmp_path, tmp_path, tmp_path/'run', check=False), 'bad.yaml: unknown key `stages[0].epoch`')


def test_commands_end_to_end(tmp_path):
    d = tmp_path/'mini'
    run_cli('synth', '--dest', d, '--n-train', 16, '--n-test', 4, '--size', 256, '--seed', 3)
    assert (d/'train-rle.csv').read_text().startswith('ImageId, EncodedPixels')
    # refusing to overwrite an existing set is bad input too
    _one_line_failure(run_cli('synth', '--dest', d, '--n-train', 4, '--size', 256, check=False), 'pneumokit synth')
    out = run_cli('prepare', d/'dicom-images-train', tmp_path/'cache', '--labels', d/'train-rle.csv',
                  '--sizes', '64,128').stdout
    assert '16 written' in out
    assert len(list((tmp_path/'cache'/'128'/'masks').glob('*.png'))) == 16
    assert '16 skipped' in run_cli('prepare', d/'dicom-images-train', tmp_path/'cache', '--labels',
                                   d/'train-rle.csv', '--sizes', '64,128').stdout
    res = run_cli('audit', d/'train-rle.csv', d/'dicom-images-train', '--expected-size', 256, '--out', tmp_path/'a.csv')
    assert '0 finding' in res.stdout and len(pd.read_csv(tmp_path/'a.csv')) == 0
    res = run_cli('audit', d/'train-rle.csv', d/'dicom-images-train', '--out', tmp_path/'b.csv')  # expects 1024
    assert (pd.read_csv(tmp_path/'b.csv')['check'] == 'unexpected-size').sum() == 16
    run_cli('eda', d/'train-rle.csv', d/'dicom-images-train', '--dest', tmp_path/'eda')
    assert len(list((tmp_path/'eda').glob('*.png'))) >= 4
