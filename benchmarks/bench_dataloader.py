"""Can the data loader feed a GPU? (pneumokit.data) Images/s per CPU core at 512 and 1024 px, and the cores one GPU needs.

For each size, on the PNG cache with the 1st-place training augmentations ('siim-1st'), on one core (one torch and one
OpenCV thread, no loader process):
- the naive reference, measured in the same run: a bare Python loop that reads the cached PNGs with OpenCV and applies
  the same albumentations pipeline (no fastai, no collation, no normalisation);
- `siim_dataloaders` as a GPU run uses it: what a loader process does (read, augment, collate into uint8 batches), the
  batch transforms (uint8 -> float, 3 channels, ImageNet normalisation) left out because on a GPU they run there;
- `siim_dataloaders` on a CPU run: the same plus the batch transforms on this CPU;
- the loader with 1 and 2 processes (what it gives on this machine, CPU batch transforms included).
Then the GPU's appetite -- an estimate, see `APPETITE` -- divided by the per-core rate gives the cores one GPU needs.

"One core" is measured twice: images per second of wall clock, and images per CPU-second of this (single-threaded)
process. On a shared machine the wall clock counts the time other processes took the core; the CPU seconds do not, so
they are the per-core figure the cores-needed estimate uses.

Data: a synthetic mini SIIM-ACR at 1024 px (`make_mini_siim`) cached at 512 and 1024 px by `build_cache`, in a
temporary folder.

Measured here (2 shared cores, load average 5-6 from other jobs; torch 2.14.1, OpenCV 4.14.0), images per CPU-second:

| size | naive loop | loader work of a GPU run | same, vs naive | CPU run (+ batch transforms) | CPU ms/image: image PNG, mask PNG, augment |
|---|---|---|---|---|---|
| 512 px | 95.9 | 80.9 | 0.84x | 42.3 | 3.5, 1.6, 5.3 |
| 1024 px | 28.9 | 24.5 | 0.85x | 14.0 | 12.1, 5.2, 17.2 |

fastai's loader adds ~18% to the bare loop's work per image (PIL round trips, the 0/1 mask threshold, collation); the
rest is PNG decoding (half of it) and the augmentations (the elastic transform, at p = 0.1, is their largest share).
Against the estimated H100 appetite -- 81-199 images/s at 1024 px, 325-796 at 512 px -- one GPU needs **3-8 loader cores
at 1024 px and 4-10 at 512 px**: within a 16-core box, so the loader was left as it is (no before/after). Two caveats,
which `make gpu-check` settles on the GPU (its `loader_images_per_s` and `gpu_starved` figures): the appetite is an
estimate, and `siim_dataloaders` gives a single GPU at most 8 workers, under the 10 cores the high estimate wants at 512 px.
The wall-clock figures of the same run were 2-5x lower: the other jobs' share of the cores.
Run: `.venv/bin/python benchmarks/bench_dataloader.py [--n-images 48] [--epochs 2] [--sizes 512 1024] [--workers 1 2]`
"""
from __future__ import annotations
import argparse, os, shutil, tempfile, time
from pathlib import Path

import cv2
import torch
from fasttransform import Pipeline

from pneumokit.core import default_workers, seed_everything
from pneumokit.data import get_augs, siim_dataloaders
from pneumokit.dicom import build_cache
from pneumokit.folds import make_folds
from pneumokit.synthetic import make_mini_siim

BS = {512: 16, 1024: 4}  # the 1st-place config's batch sizes (`siim-1st-place.yaml`)

# Training images/s of one H100 on ResNet34-UNet at 1024 px with mixed precision: an ESTIMATE (no GPU measured it here;
# `make gpu-check` measures it). Its derivation, as in nbs/21_distributed.ipynb: NVIDIA's published ResNet-50 v1.5
# mixed-precision training throughput on an A100 80GB is 2,470 img/s (DeepLearningExamples, PyTorch, NGC 21.03); an H100
# SXM is taken as 1.7-2.5x an A100 (its memory bandwidth ratio to its float16 peak ratio); a 1024 px ResNet34-UNet
# training image costs ~745 GFLOP against ResNet-50's ~24 GFLOP at 224 px (FLOP counts measured in 21_distributed), and
# the UNet turns FLOPs into images at 0.6-1.0x ResNet-50's rate. FLOPs scale with the pixels: 512 px costs a quarter.
_H100_1024 = tuple(2470 * g * 24 / 745 * e for g, e in ((1.7, 0.6), (2.5, 1.0)))  # ≈ (81, 199) images/s
APPETITE = {s: tuple(v * (1024 / s) ** 2 for v in _H100_1024) for s in (512, 1024)}
TYPICAL_CORES = 16  # CPU cores of a typical one-GPU box


def make_data(tmp: Path, n_images: int, sizes: list[int]) -> tuple[Path, object]:
    "Mini SIIM at 1024 px, cached at `sizes`; returns (cache, folds)."
    mini = make_mini_siim(tmp/'mini', n_train=n_images, n_test=0, size=1024, n_workers=default_workers(), progress=False)
    build_cache(mini/'dicom-images-train', tmp/'cache', sizes=sizes, labels=mini/'train-rle.csv',
                n_workers=default_workers(), progress=False)
    return tmp/'cache', make_folds(mini/'train-rle.csv', n_splits=5, seed=0, n_bins=1)


class one_core:
    "One torch thread and one OpenCV thread inside the block (what a loader process gets)."
    def __enter__(self): self.t, self.c = torch.get_num_threads(), cv2.getNumThreads(); torch.set_num_threads(1); cv2.setNumThreads(1)
    def __exit__(self, *_): torch.set_num_threads(self.t); cv2.setNumThreads(self.c)


class clock:
    "Wall and CPU seconds of a block (the CPU seconds of this process: one core's work, whatever else the machine runs)."
    def __enter__(self): self.w, self.c = time.perf_counter(), time.process_time(); return self
    def __exit__(self, *_): self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c


def naive_rate(cache: Path, size: int, ids: list[str], epochs: int) -> tuple[dict, dict]:
    "Images/s (wall, CPU) of a bare loop: cv2.imread image and mask, then the same albumentations pipeline; and CPU ms per image of each part."
    aug, n, parts = get_augs('siim-1st', size, seed=0), 0, dict(image_png=0., mask_png=0., augment=0.)
    with clock() as c:
        for _ in range(epochs):
            for i in ids:
                t0 = time.process_time()
                img = cv2.imread(str(cache/str(size)/'images'/f'{i}.png'), cv2.IMREAD_GRAYSCALE)
                t1 = time.process_time()
                msk = cv2.imread(str(cache/str(size)/'masks'/f'{i}.png'), cv2.IMREAD_GRAYSCALE) // 255
                t2 = time.process_time()
                aug(image=img, mask=msk); n += 1
                for k, v in zip(parts, (t1 - t0, t2 - t1, time.process_time() - t2)): parts[k] += v
    return dict(wall=n / c.wall, cpu=n / c.cpu), {k: 1000 * v / n for k, v in parts.items()}


def loader_rate(cache: Path, size: int, folds, n_workers: int, epochs: int, batch_tfms: bool = True) -> float:
    "Images/s over `epochs` passes of the training loader (worker start-up included: it is paid every epoch)."
    dls = siim_dataloaders(cache, size, folds, fold=0, bs=BS.get(size, 8), aug='siim-1st', n_workers=n_workers, device='cpu')
    if not batch_tfms: dls.train.after_batch = Pipeline([])  # uint8 batches, as a GPU run's loader processes hand them over
    n = 0
    with clock() as c:
        for _ in range(epochs):
            for xb, _ in dls.train: n += len(xb)
    return dict(wall=n / c.wall, cpu=n / c.cpu) if n_workers == 0 else n / c.wall


def measure(cache: Path, size: int, folds, epochs: int, workers: list[int]) -> dict:
    "Every rate at `size` (images/s)."
    ids = folds.ImageId[folds.fold != 0].tolist()
    with one_core():
        naive, parts = naive_rate(cache, size, ids, epochs)
        r = dict(naive=naive, parts=parts, worker=loader_rate(cache, size, folds, 0, epochs, batch_tfms=False),
                 cpu_run=loader_rate(cache, size, folds, 0, epochs))
    for w in workers: r[f'{w} processes'] = loader_rate(cache, size, folds, w, epochs)
    return r


def report(size: int, r: dict):
    naive, worker, cpu_run = r['naive'], r['worker'], r['cpu_run']
    lo, hi = APPETITE[size]
    print(f"\n{size} px, batch {BS.get(size, 8)}, one core -- images/s by the wall clock | per CPU-second of this process:")
    row = lambda name, v: print(f"  {name:<60} {v['wall']:6.1f} | {v['cpu']:6.1f}   ({v['cpu'] / naive['cpu']:.2f}x the naive loop per CPU-second)")
    row("naive loop (cv2.imread + albumentations 'siim-1st')", naive)
    row("siim_dataloaders, a GPU run's loader work (uint8 batches)", worker)
    row("siim_dataloaders, CPU run (+ float, 3 channels, normalise)", cpu_run)
    print("  CPU ms per image in the naive loop: " + ', '.join(f'{k} {v:.1f}' for k, v in r['parts'].items()))
    for k, v in r.items():
        if k.endswith('processes'): print(f"  siim_dataloaders, {k} (CPU run): {v:6.1f} images/s by the wall clock ({v / int(k.split()[0]):.1f} per process)")
    per_core = worker['cpu']
    print(f"  H100 appetite (estimate): {lo:.0f}-{hi:.0f} images/s -> {lo / per_core:.1f}-{hi / per_core:.1f} loader cores keep it busy "
          f"at {per_core:.1f} images per CPU-second ({'within' if hi / per_core <= TYPICAL_CORES else 'more than'} a {TYPICAL_CORES}-core box)")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--n-images', type=int, default=48)
    p.add_argument('--epochs', type=int, default=2)
    p.add_argument('--sizes', type=int, nargs='+', default=[512, 1024])
    p.add_argument('--workers', type=int, nargs='*', default=[1, 2])
    a = p.parse_args()
    seed_everything(0)
    print(f"torch {torch.__version__}, OpenCV {cv2.__version__}, {default_workers()} cores, load average {os.getloadavg()[0]:.1f}")
    tmp = Path(tempfile.mkdtemp(prefix='bench_dataloader_'))
    try:
        t0 = time.perf_counter(); cache, folds = make_data(tmp, a.n_images, a.sizes)
        print(f"data: {a.n_images} synthetic DICOMs at 1024 px cached at {a.sizes} px in {time.perf_counter() - t0:.0f} s; "
              f"{(folds.fold != 0).sum()} training images x {a.epochs} epochs per measurement")
        for size in a.sizes: report(size, measure(cache, size, folds, a.epochs, a.workers))
        print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (other processes on this machine slow every figure alike)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
