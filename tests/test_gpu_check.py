"""The GPU check's CPU twin: `benchmarks/gpu_check.py --tiny` runs every phase on the CPU at toy sizes and its JSON names
every figure the GPU run reports (so the script cannot rot between GPU visits). No timing is asserted."""
import importlib.util, json, os, subprocess, sys
from pathlib import Path

import pytest
import torch

from pneumokit.data import _loader_workers

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp('gpu_check')/'gpu-check.json'
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(ROOT)}
    res = subprocess.run([sys.executable, str(ROOT/'benchmarks'/'gpu_check.py'), '--tiny', '--out', str(out)],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert out.is_file(), res.stdout[-3000:] + res.stderr[-3000:]
    return res, json.loads(out.read_text())


def test_every_phase_ran(tiny):
    res, rep = tiny
    status = {k: v['status'] for k, v in rep['phases'].items()}
    assert res.returncode == 0, (status, res.stdout[-3000:], res.stderr[-3000:])
    for phase in ('data', 'train_32_eager', 'train_64_eager', 'train_32_compiled', 'inference', 'fp16', 'loader', 'ddp'):
        assert status[phase] == 'ok', (phase, status)
    assert status['batch'] == status['cuda'] == 'skipped: no CUDA'  # said, not silently absent
    assert status['train_64_compiled'].startswith('skipped: --tiny')


def test_json_names_every_figure(tiny):
    _, rep = tiny
    fig = rep['figures']
    assert set(fig) == {'train_images_per_s', 'loss_fell', 'peak_memory_gb', 'train_batch_size', 'largest_batch',
                        'inference_images_per_s', 'loader_images_per_s', 'loader_workers', 'gpu_starved',
                        'fp16_fp32_agree', 'ddp', 'cuda_cells'}
    for s in ('32', '64'):
        rates = fig['train_images_per_s'][s]['eager']
        assert all(isinstance(v, float) and v > 0 for v in rates.values()), rates
        assert isinstance(fig['loss_fell'][s]['eager'], bool)
        assert fig['inference_images_per_s'][s] > 0 and fig['loader_images_per_s'][s] > 0
        assert fig['loader_workers'][s] == _loader_workers(None, torch.device('cpu'))  # what `siim_dataloaders` picks here
        assert isinstance(fig['gpu_starved'][s]['starved'], bool)
        assert fig['peak_memory_gb'][s] == fig['largest_batch'][s] == 'skipped: no CUDA'
    assert all(isinstance(v, float) for v in fig['train_images_per_s']['32']['compiled'].values())
    f16 = fig['fp16_fp32_agree']
    assert f16['dtype'] == 'bfloat16' and isinstance(f16['agree'], bool) and 0 <= f16['mean_abs_diff'] < 1
    assert fig['ddp']['status'] == 'ok' and fig['ddp']['world_size'] == 1 and '--distributed' in fig['ddp']['command']
    assert fig['cuda_cells']['status'] == 'skipped: no CUDA' and 'nbs/21_distributed.ipynb' in fig['cuda_cells']['notebooks']


def test_budget_spent_says_skipped(tmp_path):
    "A budget too small for anything still writes the whole report: every phase and figure says why it did not run."
    spec = importlib.util.spec_from_file_location('gpu_check', ROOT/'benchmarks'/'gpu_check.py')
    gc = importlib.util.module_from_spec(spec); spec.loader.exec_module(gc)
    out = tmp_path/'gpu-check.json'
    assert gc.main(['--tiny', '--budget-min', '0.001', '--out', str(out)]) == 0
    rep = json.loads(out.read_text())
    assert {v['status'] for v in rep['phases'].values()} == {gc.SKIP_BUDGET, gc.TINY_ONCE}
    assert rep['phases']['train_32_eager']['status'] == rep['phases']['ddp']['status'] == gc.SKIP_BUDGET
    assert rep['figures']['train_images_per_s']['64']['eager']['unfrozen'] == gc.SKIP_BUDGET
    assert rep['figures']['ddp'] == rep['figures']['fp16_fp32_agree'] == rep['figures']['cuda_cells'] == gc.SKIP_BUDGET
    assert rep['figures']['largest_batch']['64'] == 'skipped: no CUDA'
