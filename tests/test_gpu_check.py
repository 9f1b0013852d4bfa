"""The GPU check's CPU twin: `benchmarks/gpu_check.py --tiny` runs every phase on the CPU at toy sizes and its JSON names
every figure the GPU run reports (so the script cannot rot between GPU visits); injected hangs end each phase at its cap;
SIGTERM writes the summary and ends the child process group; and, where `make gpu-image-venv` built the stand-in of the GPU
image (Python 3.12, torch 2.11), the carried wheels install offline and run `--tiny` there. No timing is asserted
beyond a phase ending at the cap it was given."""
import importlib.util, json, os, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch

from pneumokit.data import _loader_workers

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT/'benchmarks'/'gpu_check.py'
IMAGE_PYTHON = Path(os.environ.get('GPU_IMAGE_PYTHON', Path.home()/'.cache'/'pneumokit'/'gpu-image-venv'/'bin'/'python'))


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT/'benchmarks'/f'{name}.py')
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    return m


def _env(**kw) -> dict:
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(ROOT), **kw}
    for k in ('GPU_CHECK_HANG', 'GPU_CHECK_HANG_HARD', 'GPU_CHECK_ALLOC_FAIL_AT'):
        if k not in kw: env.pop(k, None)
    return env


def _no_nan(text: str) -> dict:
    "The report parsed strictly: a bare NaN/Infinity (invalid JSON) fails."
    def bad(c): raise AssertionError(f'{c} in the JSON report')
    return json.loads(text, parse_constant=bad)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp('gpu_check')/'gpu-check.json'
    res = subprocess.run([sys.executable, str(CHECK), '--tiny', '--out', str(out)],
                         capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=900)
    assert out.is_file(), res.stdout[-3000:] + res.stderr[-3000:]
    return res, _no_nan(out.read_text())


def test_every_phase_ran(tiny):
    res, rep = tiny
    status = {k: v['status'] for k, v in rep['phases'].items()}
    assert res.returncode == 0, (status, res.stdout[-3000:], res.stderr[-3000:])
    for phase in ('data', 'train_32', 'train_64', 'appetite_32', 'appetite_64', 'inference', 'precision', 'loader', 'batch', 'ddp'):
        assert status[phase] == 'ok', (phase, status)
    assert status['cuda'] == 'skipped: no CUDA'  # said, not silently absent
    assert all(v['seconds'] <= v['cap_s'] + 20 for k, v in rep['phases'].items() if k != 'cuda'), rep['phases']  # + the grace


def test_json_names_every_figure(tiny):
    _, rep = tiny
    fig = rep['figures']
    assert set(fig) == {'train_images_per_s', 'loss_fell', 'gpu_images_per_s', 'compile_s', 'peak_memory_gb', 'train_batch_size',
                        'largest_batch', 'inference_images_per_s', 'loader_images_per_s', 'loader_workers', 'gpu_starved',
                        'precision', 'ddp', 'cuda_cells'}
    for s in ('32', '64'):
        assert all(isinstance(v, float) and v > 0 for v in fig['train_images_per_s'][s].values()), fig['train_images_per_s']
        assert isinstance(fig['loss_fell'][s], bool)
        gpu = fig['gpu_images_per_s'][s]
        assert isinstance(gpu['eager'], float) and isinstance(gpu['compiled'], float) and fig['compile_s'][s] >= 0
        assert rep['details'][f'appetite_{s}']['compiled']['dynamic'] is False
        assert fig['inference_images_per_s'][s] > 0 and fig['loader_images_per_s'][s] > 0
        assert fig['loader_workers'][s] == _loader_workers(None, torch.device('cpu'))  # what `siim_dataloaders` picks here
        assert rep['details'][f'loader_{s}']['timed'] == 'after the first batch'
        # starved compares two independent rates: the loader's and the model's own on batches already on the device
        st = fig['gpu_starved'][s]
        assert st['loader'] == fig['loader_images_per_s'][s] and st['gpu'] == max(gpu.values()) and st['starved'] == (st['loader'] < st['gpu'])
        assert fig['peak_memory_gb'][s] == 'skipped: no CUDA'
        assert fig['largest_batch'][s] == 16 and rep['details'][f'batch_{s}']['stopped'] == 'cap (16)'  # --tiny's ceiling
    prec = fig['precision']
    for dtype in ('float16', 'bfloat16'):
        assert isinstance(prec[dtype]['agree'], bool) and 0 <= prec[dtype]['mean_abs_diff'] < 1 and prec[dtype]['images_per_s'] > 0
    assert prec['float32']['images_per_s'] > 0 and prec['channels_last'] is True
    assert fig['ddp']['status'] == 'ok' and fig['ddp']['world_size'] == 1 and '--distributed' in fig['ddp']['command']
    assert fig['cuda_cells']['status'] == 'skipped: no CUDA' and 'nbs/21_distributed.ipynb' in fig['cuda_cells']['notebooks']


def test_budget_spent_says_skipped(tmp_path):
    "A budget too small for anything still writes the whole report: every phase and figure says why it did not run."
    gc = _module('gpu_check')
    out = tmp_path/'gpu-check.json'
    assert gc.main(['--tiny', '--budget-s', '0.06', '--out', str(out)]) == 0
    rep = _no_nan(out.read_text())
    assert {v['status'] for v in rep['phases'].values()} == {gc.SKIP_BUDGET}
    assert rep['figures']['train_images_per_s']['64']['unfrozen'] == gc.SKIP_BUDGET
    assert rep['figures']['ddp'] == rep['figures']['precision'] == rep['figures']['cuda_cells'] == gc.SKIP_BUDGET
    assert rep['figures']['peak_memory_gb']['64'] == 'skipped: no CUDA'


def test_nan_is_written_null_with_its_reason():
    gc, nulls = _module('gpu_check'), {}
    got = gc.clean(dict(a=[1.5, float('nan')], b=dict(c=float('inf'), d='x')), '', nulls)
    assert got == dict(a=[1.5, None], b=dict(c=None, d='x'))
    assert set(nulls) == {'a[1]', 'b.c'} and 'no finite value' in nulls['a[1]']


def test_any_allocation_failure_ends_the_batch_search(tmp_path, monkeypatch):
    "Not only torch's OutOfMemoryError: cuBLAS's failed handle (injected at batch 8) ends the search at the last batch that fit."
    gc = _module('gpu_check')
    assert gc.is_alloc_failure(torch.cuda.OutOfMemoryError('CUDA out of memory'))
    assert gc.is_alloc_failure(RuntimeError('cuDNN error: CUDNN_STATUS_NOT_ENOUGH_WORKSPACE'))
    assert not gc.is_alloc_failure(RuntimeError('shapes cannot be multiplied'))
    monkeypatch.setenv('GPU_CHECK_ALLOC_FAIL_AT', '8')
    out = tmp_path/'gpu-check.json'
    assert gc.main(['--tiny', '--phases', 'data,batch', '--sizes', '32', '--out', str(out)]) == 0
    rep = _no_nan(out.read_text())
    assert rep['figures']['largest_batch']['32'] == 4, rep['details']
    assert rep['details']['batch_32']['stopped'].startswith('allocation failure at 8: RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED')


def test_each_phase_ends_within_its_cap_under_a_hang(tmp_path):
    "Every phase hangs (injected sleep): the watchdog ends each at its cap, records why, and the run goes on to the next."
    gc = _module('gpu_check')
    names = gc.phase_names([32, 64])
    out = tmp_path/'gpu-check.json'
    res = subprocess.run([sys.executable, str(CHECK), '--tiny', '--budget-s', '40', '--min-cap-s', '0.5', '--out', str(out)],
                         capture_output=True, text=True, env=_env(GPU_CHECK_HANG=','.join(names)), cwd=ROOT, timeout=300)
    rep = _no_nan(out.read_text())
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    for n in names:
        ph = rep['phases'][n]
        assert ph['status'] == gc.STOPPED_CAP and 0.5 <= ph['cap_s'] and ph['cap_s'] - 0.2 <= ph['seconds'] <= ph['cap_s'] + 1, (n, ph)
    assert rep['figures']['train_images_per_s']['32']['frozen'] == gc.SKIP_BUDGET  # nothing measured, nothing invented


def test_a_phase_that_ignores_its_alarm_ends_the_run(tmp_path):
    "A hang in native code (the alarm blocked): the watchdog's thread writes the report, names the phase, and exits 3."
    out = tmp_path/'gpu-check.json'
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, str(CHECK), '--tiny', '--phases', 'loader', '--budget-s', '80', '--out', str(out)],
                         capture_output=True, text=True, env=_env(GPU_CHECK_HANG_HARD='loader', GPU_CHECK_GRACE_S='2'),
                         cwd=ROOT, timeout=120)
    rep = _no_nan(out.read_text())
    assert res.returncode == 3, res.stdout[-2000:] + res.stderr[-2000:]
    assert rep['phases']['loader']['status'].startswith('hung: no answer 2 s after its') and rep['stopped'] == 'loader hung'
    assert time.monotonic() - t0 < 60


def _children(pid: int) -> list[int]:
    "Processes whose parent is `pid` (from /proc)."
    kids = []
    for d in Path('/proc').iterdir():
        try:
            if d.name.isdigit() and int((d/'stat').read_text().rsplit(')', 1)[1].split()[1]) == pid: kids.append(int(d.name))
        except (OSError, IndexError, ValueError): pass
    return kids


def test_sigterm_writes_the_summary_and_ends_the_children(tmp_path):
    "SIGTERM while the DDP child runs: exit 143, the report says what stopped, and the child's process group is gone."
    out = tmp_path/'gpu-check.json'
    p = subprocess.Popen([sys.executable, str(CHECK), '--tiny', '--phases', 'data,ddp,cuda', '--sizes', '32', '--out', str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=ROOT)
    try:
        kids, t0 = [], time.monotonic()
        while not kids and time.monotonic() - t0 < 120 and p.poll() is None:
            time.sleep(0.2)
            kids = [k for k in _children(p.pid) if os.getpgid(k) == k]  # the DDP launch leads its own process group
        assert kids, 'the ddp phase started no child process'
        time.sleep(1)
        p.send_signal(signal.SIGTERM)
        log, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None: p.kill()
    assert p.returncode == 143, log[-3000:]
    rep = _no_nan(out.read_text())
    assert rep['stopped'] == 'SIGTERM' and rep['phases']['data']['status'] == 'ok'
    assert rep['phases']['ddp']['status'] == 'stopped: SIGTERM' and rep['phases']['cuda']['status'] == 'skipped: SIGTERM'
    for k in kids:
        with pytest.raises(ProcessLookupError): os.killpg(k, 0)


@pytest.mark.skipif(not IMAGE_PYTHON.is_file() or not (ROOT/'.gpu-wheels'/'MANIFEST.txt').is_file(),
                    reason='needs `make gpu-wheels gpu-image-venv` (a Python 3.12 venv with torch 2.11, ~4 GB, cached outside the repo)')
def test_carried_wheels_install_offline_and_run_tiny(tmp_path):
    "The device path on the CPU: gpu_run.sh installs .gpu-wheels with pip --no-index --target beside torch 2.11, then --tiny."
    gw, out, site = _module('gpu_wheels'), tmp_path/'gpu-check.json', tmp_path/'site'
    wheels = sum(f.stat().st_size for f in (ROOT/'.gpu-wheels').glob('*.whl'))
    assert (wheels + gw.repo_bytes()) / 2**20 < gw.LIMIT_MIB  # what travels with a `run` call
    env = {k: v for k, v in _env(GPU_PYTHON=str(IMAGE_PYTHON), GPU_SITE=str(site), GPU_OUT=str(out), GPU_BUDGET_S='600').items()
           if k not in ('PYTHONPATH', 'VIRTUAL_ENV')}
    env['PATH'] = os.pathsep.join(p for p in env['PATH'].split(os.pathsep) if '.venv' not in p)  # nothing of the project's venv
    res = subprocess.run(['bash', str(ROOT/'benchmarks'/'gpu_run.sh'), '--tiny'], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=900)
    assert out.is_file(), res.stdout[-3000:] + res.stderr[-3000:]
    rep = _no_nan(out.read_text())
    assert res.returncode == 0, (rep['phases'], res.stdout[-3000:])
    st = rep['settings']
    assert st['torch'].startswith('2.11.') and st['python'].startswith('3.12.') and st['fastai_from'].startswith(str(site))
    assert st['install_s'] > 0 and st['spent_before_s'] >= st['install_s']  # the install counts against the budget
    status = {k: v['status'] for k, v in rep['phases'].items()}
    assert all(v == 'ok' for k, v in status.items() if k != 'cuda') and status['cuda'] == 'skipped: no CUDA', status
