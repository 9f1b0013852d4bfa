"""The exported kernel's speed: images per second of the `.pt2` that `pneumokit export` writes (what a Kaggle CPU kernel
runs: hflip TTA, 512 px, batches of 8) against `pneumokit predict` on the same DICOMs, in the same run, on the CPU.

A small run is made in a temporary folder: a synthetic set (--n-test test DICOMs of 1024², as SIIM's), a config based
on the CPU smoke recipe trained for one epoch at 64 px (the weights do not change the speed) that predicts at 512 px
with hflip TTA in batches of 8, its export. Then, interleaved, --repeats times each (medians):
- model only: one batch of 8 uint8 images through the `.pt2` (`kernel.Ensemble`, what the kernel calls) and through
  pneumokit's eager ensemble (`inference.tta_outputs` on the normalised batch, what `predict` calls);
- whole prediction in this process: `kernel.predict` (read + resize each DICOM, the program, uint8 maps) and
  `pipeline.predict` (the same DICOMs to its uint8 `.npy`);
- whole commands, each a fresh process: `python pneumokit_kernel.py SIDECAR DICOMS SUB.csv` and
  `pneumokit predict RUN DICOMS --device cpu` (start-up, imports and loading included).
One torch thread unless --threads. Wall time and CPU time (user + system, of this process and of the commands it
waits for) are both printed: on a busy shared machine the images per CPU-second are the steadier figure. Not part of
the test suite.

Run: .venv/bin/python benchmarks/bench_kernel.py [--n-test 32] [--repeats 3] [--threads 1] [--no-commands]
"""
from __future__ import annotations
import os
for _v in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'): os.environ.setdefault(_v, '1')

import argparse, json, resource, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch

CONFIG = '''base: siim-1st-place.cpu-smoke
name: kernel-bench
train: {top_k: 1}
stages:
  - {size: 64, epochs: 1, bs: 8, lr: 1.0e-2, pos_frac: 0.5, loss: combo, aug: none}
data: {n_splits: 2, folds: [0]}
inference: {size: 512, bs: 8, tta: hflip}
'''


def _timed(f) -> tuple[float, float]:
    "Wall seconds and CPU seconds (this process and the children it waited for) of `f()`."
    def cpu():
        r, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime
    t0, c0 = time.perf_counter(), cpu(); f()
    return time.perf_counter() - t0, cpu() - c0


def build(d: Path, n_test: int) -> tuple[Path, Path, Path]:
    "A one-fold run predicting at 512 px, its export and the test DICOMs."
    from pneumokit import pipeline
    (d/'cfg.yaml').write_text(CONFIG)
    mini = pipeline.synth(d/'mini', n_train=40, n_test=n_test, size=1024, progress=False)
    pipeline.prepare(mini/'dicom-images-train', d/'cache', d/'cfg.yaml', labels=mini/'train-rle.csv', n_workers=0, progress=False)
    pipeline.split(mini/'train-rle.csv', d/'folds.csv', d/'cfg.yaml', progress=False)
    pipeline.train(d/'cfg.yaml', d/'cache', d/'folds.csv', d/'run', tensorboard=False, n_workers=0, device='cpu')
    ed = pipeline.export(d/'run', d/'export')
    return d/'run', ed.sidecar, mini/'dicom-images-test'


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--n-test', type=int, default=32); ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--no-commands', action='store_true', help='skip the two whole commands (fresh processes)')
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"load average before: {os.getloadavg()}; torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    tmp = Path(tempfile.mkdtemp(prefix='bench_kernel_'))
    try: run(a, tmp)
    finally: shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average after: {os.getloadavg()}")


def run(a, tmp: Path):
    from pneumokit import kernel, pipeline
    from pneumokit.inference import load_fold_models, normalise, tta_outputs
    t0 = time.perf_counter(); run_dir, sidecar, dicoms = build(tmp, a.n_test)
    meta = json.loads(sidecar.read_text())
    print(f"built the run and its export in {time.perf_counter() - t0:.0f} s: {meta['n_models']} model(s) x {meta['tta']} TTA at "
          f"{meta['size']} px, batches of {meta['bs']}; {a.n_test} test DICOMs of 1024²")
    ens, models = kernel.Ensemble(sidecar, device='cpu'), load_fold_models(run_dir, device='cpu')
    x = np.stack([kernel.read_image(f, meta['size'])[0] for f in kernel.dicom_paths(dicoms)[:meta['bs']]])
    with torch.no_grad():
        p_pt2, p_eager = ens(x)[0], tta_outputs(models, normalise(torch.from_numpy(x)), meta['tta'])[0].numpy()
    print(f"same batch, largest difference .pt2 vs eager: {np.abs(p_pt2 - p_eager).max():.2g}")
    env = {**os.environ, 'OMP_NUM_THREADS': str(a.threads)}
    cases = {
        'model only, one batch: .pt2': (len(x), lambda: ens(x)),
        'model only, one batch: eager (predict)': (len(x), lambda: torch.no_grad()(tta_outputs)(models, normalise(torch.from_numpy(x)), meta['tta'])),
        'in process: kernel.predict': (a.n_test, lambda: kernel.predict(ens, dicoms, meta['bs'])),
        'in process: pipeline.predict': (a.n_test, lambda: pipeline.predict(run_dir, dicoms, tmp/'p.npy', device='cpu')),
        'command: python pneumokit_kernel.py': (a.n_test, lambda: subprocess.run(
            [sys.executable, str(sidecar.parent/'pneumokit_kernel.py'), str(sidecar), str(dicoms), str(tmp/'sub.csv')],
            check=True, capture_output=True, env=env)),
        'command: pneumokit predict': (a.n_test, lambda: subprocess.run(
            [str(Path(sys.executable).parent/'pneumokit'), 'predict', str(run_dir), str(dicoms), '--dest', str(tmp/'q.npy'), '--device', 'cpu'],
            check=True, capture_output=True, env=env)),
    }
    if a.no_commands: cases = {k: v for k, v in cases.items() if not k.startswith('command')}
    for _, f in list(cases.values())[:4]: f()  # warm-up (first calls allocate and pick kernels)
    times = {k: [] for k in cases}
    for _ in range(a.repeats):
        for k, (_, f) in cases.items(): times[k].append(_timed(f))
    med = {k: (statistics.median(w for w, _ in ts), statistics.median(c for _, c in ts)) for k, ts in times.items()}
    print(f"{'':40s} {'images/s':>9s} {'images/CPU-s':>13s} {'wall s':>7s} {'CPU s':>7s}   runs (wall/CPU s)")
    for k, (n, _) in cases.items():
        (w, c), runs = med[k], ', '.join(f'{w:.2f}/{c:.2f}' for w, c in times[k])
        print(f"{k:40s} {n / w:9.2f} {n / c:13.2f} {w:7.2f} {c:7.2f}   {runs}")
    ks = list(cases)
    for i in range(0, len(ks), 2):
        (w1, c1), (w2, c2) = med[ks[i]], med[ks[i + 1]]
        print(f"{ks[i].split(':')[0]}: .pt2 / predict = {w2 / w1:.2f}x images/s, {c2 / c1:.2f}x images per CPU-second")

if __name__ == '__main__': main()
