"""The `pneumokit` console script: help, a real run of each command, and one bad input each."""
import subprocess, sys

import pandas as pd
import pytest

from conftest import cli_fails, run_cli

COMMANDS = ['synth', 'prepare', 'slice', 'audit', 'eda', 'split', 'train', 'search', 'predict', 'score', 'submit', 'export',
            'runs', 'configs', 'demo', 'lr-find']


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


def test_bad_input_through_the_console_script(tmp_path):
    "The console script turns a command's error into one line on stderr and a non-zero exit (the messages themselves: below, in-process)."
    _one_line_failure(run_cli('search', tmp_path/'norun', check=False), 'pneumokit search: run folder not found')


def test_bad_inputs(tmp_path):
    cli_fails('synth', '--dest', tmp_path/'s', '--n-train', 0, needles=['n_train'])
    cli_fails('prepare', tmp_path/'nope', tmp_path/'c', needles=['DICOM folder not found'])
    cli_fails('prepare', tmp_path, tmp_path/'c', '--sizes', '256,big', needles=['--sizes'])
    cli_fails('prepare', tmp_path, tmp_path/'c', needles=['needs a config'])
    cli_fails('audit', tmp_path/'missing.csv', tmp_path, needles=['label CSV not found'])
    cli_fails('eda', tmp_path/'missing.csv', tmp_path, needles=['label CSV not found'])
    cli_fails('demo', '--config', 'siim-99th', '--data', tmp_path/'d', '--report', tmp_path/'r', needles=["config 'siim-99th' not found"])
    cli_fails('split', tmp_path/'missing.csv', needles=['label CSV not found'])
    cli_fails('train', 'demo', tmp_path/'nocache', tmp_path/'f.csv', tmp_path/'run', needles=['PNG cache not found'])
    cli_fails('search', tmp_path/'norun', needles=['run folder not found'])
    cli_fails('predict', tmp_path, tmp_path, needles=['config.yaml not found'])
    cli_fails('submit', tmp_path/'p.npy', needles=['give --thresholds'])
    bad = tmp_path/'bad.yaml'
    bad.write_text('base: demo\nstages:\n  - {size: 64, epoch: 2}\n')
    cli_fails('train', bad, tmp_path, tmp_path, tmp_path/'run', needles=['bad.yaml: unknown key `stages[0].epoch`'])


HEAVY = ('torch', 'fastai', 'timm', 'segmentation_models_pytorch')


@pytest.mark.parametrize('argv', [['--help'], ['train', '--help'], ['search', '/no/such/run'], ['prepare', '/no/dicoms', '/tmp/c'],
                                  ['submit', 'p.npy', '--top', '0.5'], ['predict', '/no/run', '/no/dicoms', '--folds', 'x'], ['trian']])
def test_answers_without_torch(argv):
    "Help, argument errors and missing paths answer before torch, fastai, timm or smp are imported (checked in a fresh process, from `sys.modules`)."
    code = ('import sys\nfrom pneumokit.__main__ import main\nsys.argv = ["pneumokit", *sys.argv[1:]]\n'
            'try: main(); print("EXIT", 0)\nexcept SystemExit as e: print("EXIT", 0 if e.code in (0, None) else 1)\n'
            f'print("LOADED", [m for m in {HEAVY!r} if m in sys.modules])')
    res = subprocess.run([sys.executable, '-c', code, *argv], capture_output=True, text=True, timeout=120)
    assert res.stdout.splitlines()[-1] == 'LOADED []', res.stdout[-2000:] + res.stderr[-2000:]
    assert ('EXIT 0' in res.stdout) == (argv[-1] == '--help' or argv == ['--help'])  # help exits 0; the rest say why and fail


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
