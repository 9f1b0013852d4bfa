import os, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope='session')
def real_data():
    "The real SIIM files; skipped with a message when absent, an error on CI (find_real_data raises there)."
    from pneumokit.core import find_real_data
    p = find_real_data()
    if p is None: pytest.skip('real SIIM data not found (../shared/data/siim or $PNEUMOKIT_REAL_DATA)')
    return p


def run_cli(*args, cwd=None, check=True, env=None):
    "Run the installed `pneumokit` console script; returns the CompletedProcess."
    res = subprocess.run([str(BIN/'pneumokit'), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                         env={**os.environ, **(env or {})}, timeout=900)
    if check and res.returncode != 0:
        raise AssertionError(f'pneumokit {args} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}')
    return res


def cli_run(name: str, *argv):
    "Run `pneumokit <name> argv...` in this process, parsed exactly as the console script parses it (no second torch start-up)."
    from pneumokit.cli import run_command
    return run_command(name, [str(a) for a in argv])


def cli_fails(name: str, *argv, needles=()) -> str:
    "The command must end as one line `pneumokit <name>: <reason>` holding every needle (a CliError, never a traceback)."
    from fastcore.script import CliError
    with pytest.raises(CliError) as e: cli_run(name, *argv)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and msg.startswith(f'pneumokit {name}: '), msg
    for n in needles: assert n in msg, msg
    return msg


@pytest.fixture
def small_fs(tmp_path):
    "`make(options)`: a small tmpfs mounted under tmp_path (unmounted afterwards), for full and read-only disks; skipped with a message where mounting is not allowed (it needs root with CAP_SYS_ADMIN)."
    import shutil
    mounted = []
    def make(options: str) -> Path:
        d = tmp_path/f'fs{len(mounted)}'
        d.mkdir()
        if shutil.which('mount') is None: pytest.skip('no `mount` command: cannot make a small read-only or full disk')
        r = subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(d)], capture_output=True, text=True)
        if r.returncode: pytest.skip(f'cannot mount a small tmpfs here (needs root with CAP_SYS_ADMIN): {r.stderr.strip()}')
        mounted.append(d)
        return d
    yield make
    for d in reversed(mounted): subprocess.run(['umount', str(d)], check=False)


GROW_CONFIG = '''base: siim-1st-place.cpu-smoke
name: grow-test
model:
  encoder: mobilenet_v2
  kwargs: {decoder_channels: [16, 8, 8, 8, 8]}
train: {top_k: 1, min_area: 5}
stages:
  - {size: 32, epochs: 1, bs: 8, lr: 1.0e-2, pos_frac: 0.5, loss: combo, aug: none}
data: {n_splits: 2, folds: [0, 1]}
inference: {bs: 8, tta: none}
thresholds: {tops: [0.3, 0.5], areas: [0], bottoms: [0.3], default: {top: 0.5, area: 0, bottom: 0.3}}
'''


@pytest.fixture(scope='session')
def grown_run(tmp_path_factory):
    """A tiny real run on grown folds: 50 patients' synthetic images (of 80) split in 2 folds, then the other images added as
    training-only (`split --extend --train-only`, through the CLI); 2 folds x 1 epoch at 32 px, searched."""
    from types import SimpleNamespace
    d = shared_folder(tmp_path_factory, 'grown', _grow)  # trained once per session, whichever xdist worker asks first
    return SimpleNamespace(root=d, mini=d/'mini', cfg=d/'cfg.yaml', cache=d/'cache', folds0=d/'folds0.csv', folds=d/'folds.csv',
                           run=d/'run', first=(d/'first.txt').read_text().split(), n=80)


def _grow(d: Path):
    import pandas as pd
    from pneumokit import pipeline
    (d/'cfg.yaml').write_text(GROW_CONFIG)
    mini = pipeline.synth(d/'mini', n_train=80, n_test=2, size=256, progress=False)
    from pneumokit.dicom import dicom_metadata
    lab = pd.read_csv(mini/'train-rle.csv')
    meta = dicom_metadata(mini/'dicom-images-train', n_workers=0, progress=False).sort_values('ImageId')
    pats = meta.PatientID.drop_duplicates().tolist()[:50]  # whole patients: a training-only image's patient validates nowhere
    first = meta.ImageId[meta.PatientID.isin(pats)].tolist()
    lab[lab.ImageId.isin(first)].to_csv(d/'first.csv', index=False)
    lab[~lab.ImageId.isin(first)].to_csv(d/'more.csv', index=False)
    pipeline.prepare(mini/'dicom-images-train', d/'cache', d/'cfg.yaml', labels=mini/'train-rle.csv', n_workers=0, progress=False)
    cli_run('split', d/'first.csv', d/'folds0.csv', '--config', d/'cfg.yaml', '--dicoms', mini/'dicom-images-train', '--workers', 0)
    cli_run('split', d/'more.csv', d/'folds.csv', '--config', d/'cfg.yaml', '--dicoms', mini/'dicom-images-train', '--workers', 0,
            '--extend', d/'folds0.csv', '--train-only')
    pipeline.train(d/'cfg.yaml', d/'cache', d/'folds.csv', d/'run', tensorboard=False, n_workers=0)
    pipeline.search(d/'run')
    (d/'first.txt').write_text('\n'.join(first))


# ------------------------------------------------------------------------------------ trained runs, shared by the session
# A trained run costs minutes on a CPU: each is built once per session, in a folder every xdist worker of the session sees
# (the workers' base temp folders sit inside the controller's), under a file lock, and read (or copied) by every test
# that needs one. `pytest_sessionfinish` below checks that no fold of a config was trained twice on the same folds.
SMOKE = 'siim-1st-place.cpu-smoke'
DEMO_ARGS = ['--n-train', 100, '--n-test', 8, '--size', 256, '--workers', 0]  # the smoke demo: its set is every smoke run's set


def _session_root(factory) -> Path:
    "The folder shared by every process of this pytest session: the controller's base temp folder."
    base = factory.getbasetemp()
    return base.parent if base.name.startswith('popen-gw') else base


def shared_folder(factory, name: str, build) -> Path:
    "`<session>/shared/<name>`, made by `build(folder)` exactly once per session whichever worker asks first."
    import fcntl
    d = _session_root(factory)/'shared'/name
    d.parent.mkdir(parents=True, exist_ok=True)
    with open(d.parent/f'{name}.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (d/'.built').exists(): return d
            if (d/'.failed').exists(): pytest.fail(f'building the shared {name} failed earlier in this session: {d/".failed"}')
            d.mkdir(exist_ok=True)
            try: build(d)
            except BaseException as e:
                (d/'.failed').write_text(repr(e)); raise
            (d/'.built').touch()
            return d
        finally: fcntl.flock(lock, fcntl.LOCK_UN)


def _run_demo(d: Path):
    "`pneumokit demo` of the CPU smoke recipe through the console script, stdout a pipe; its output kept in demo.log."
    res = run_cli('demo', '--data', d/'mini', '--report', d/'report', '--config', SMOKE, *DEMO_ARGS, env={'OMP_NUM_THREADS': '1'})
    (d/'demo.log').write_text(res.stdout + res.stderr)


@pytest.fixture(scope='session')
def smoke_demo(tmp_path_factory) -> Path:
    "The smoke demo, run once per session: `mini/` (the synthetic set), `mini-cache`, `mini-folds.csv`, `mini-run` (the smoke recipe's folds 0 and 1, searched and predicted), `report/`, `demo.log`. Read it; copy it to change it."
    return shared_folder(tmp_path_factory, 'smoke-demo', _run_demo)


@pytest.fixture(scope='session')
def smoke_run(tmp_path_factory, smoke_demo):
    "`get(config)`: a shipped config's fold 0 trained on the smoke demo's set and folds, searched, predicted and submitted through the CLI (in this process), once per session; the smoke recipe itself is the demo's run."
    def build(cfg: str, run: Path):
        mini = smoke_demo/'mini'
        cli_run('train', cfg, smoke_demo/'mini-cache', smoke_demo/'mini-folds.csv', run/'run', '--fold', 0, '--no-tensorboard', '--workers', 0)
        cli_run('search', run/'run')
        cli_run('predict', run/'run', mini/'dicom-images-test')
        cli_run('submit', run/'run'/'test_probs.npy', run/'submission.csv', '--thresholds', run/'run', '--sample', mini/'sample_submission.csv')
    def get(cfg: str) -> tuple[Path, Path]:
        "(run folder, submission CSV)"
        if cfg == SMOKE: return smoke_demo/'mini-run', smoke_demo/'report'/'submission.csv'
        d = shared_folder(tmp_path_factory, f'run-{cfg}', lambda d: build(cfg, d))
        return d/'run', d/'submission.csv'
    return get


def fold_trainings(root: Path) -> dict:
    "Every fold trained under `root`: (config text, folds CSV content, fold) → the distinct trainings (copies of a run, whose files keep their times, count once)."
    import hashlib, json
    from pneumokit.layout import FoldDir
    out = {}
    for info in Path(root).rglob('run.json'):
        run = info.parent
        try: folds = Path(json.loads(info.read_text())['folds']).read_bytes()
        except (OSError, ValueError, KeyError): continue
        cfg = (run/'config.yaml').read_bytes() if (run/'config.yaml').exists() else b''
        key = hashlib.sha1(cfg).hexdigest()[:12], hashlib.sha1(folds).hexdigest()[:12]
        for fold in run.glob('fold*'):
            if FoldDir(fold, 0).history.is_file() and (ckpts := list(fold.glob('model_*.pth'))):  # trained: epochs recorded, weights kept
                out.setdefault((*key, fold.name), {}).setdefault(max(c.stat().st_mtime_ns for c in ckpts), []).append(str(run))
    return out


def pytest_sessionfinish(session, exitstatus):
    "No config's fold is trained twice on the same folds in one session (the controller checks every worker's folders)."
    if hasattr(session.config, 'workerinput') or not hasattr(session.config, '_tmp_path_factory'): return
    try: root = _session_root(session.config._tmp_path_factory)
    except Exception: return
    twice = {k: v for k, v in fold_trainings(root).items() if len(v) > 1}
    if twice:
        rep = session.config.pluginmanager.get_plugin('terminalreporter')
        for (cfg, folds, fold), runs in twice.items():
            msg = f'trained {len(runs)} times in this session (config {cfg}, folds {folds}, {fold}): {sorted(r for rs in runs.values() for r in rs)}'
            if rep: rep.write_line(f'ERROR shared runs: {msg}', red=True)
            else: print(msg)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope='module')
def browser():
    "Headless Chromium (Debian's), shared by a module's tests (the JupyterLab test, the docs site); skipped without it, an error on CI."
    from browser.lab_page import launch, missing_browser
    from pneumokit.core import in_ci
    if (reason := missing_browser()):
        if in_ci(): pytest.fail(f'{reason}: CI must run the browser tests')
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()
