"""Does the data loader keep up with training? (pneumokit.data)

Throughput of `siim_dataloaders` with the 1st-place augmentations ('siim-1st') at 512 px, for 0, 1 and 2 loader
processes, against:
- the naive reference, measured in the same run: a plain Python loop that reads the same PNGs with OpenCV and applies
  the same albumentations pipeline (no fastai, no collation, no normalisation);
- the training step rate of the model it would feed on this machine: smp Unet(resnet34, no pretrained weights),
  batch 4 at 512 px, forward + backward + Adam step.
With `n_workers=0` the batch transforms (uint8 -> float, 3 channels, ImageNet normalisation) and the collation run in
the main process with torch's intra-op threads; on an oversubscribed machine those small parallel ops can stall, so that
case is also measured with one torch thread (what fastai gives its worker processes).

Data: a synthetic mini SIIM-ACR (`make_mini_siim`) cached at 512 px by `build_cache`, in a temporary folder.
Run: `.venv/bin/python benchmarks/bench_dataloader.py [--n-images 64] [--epochs 2] [--steps 3] [--workers 0 1 2]`
"""
from __future__ import annotations
import argparse, os, shutil, tempfile, time
from pathlib import Path

import cv2
import numpy as np
import torch

from pneumokit.core import default_workers, seed_everything
from pneumokit.data import get_augs, siim_dataloaders
from pneumokit.dicom import build_cache
from pneumokit.folds import make_folds
from pneumokit.synthetic import make_mini_siim

SIZE, BS = 512, 4


def make_data(tmp: Path, n_images: int) -> tuple[Path, object]:
    "Mini SIIM at 512 px, cached at 512; returns (cache, folds)."
    mini = make_mini_siim(tmp/'mini', n_train=n_images, n_test=0, size=SIZE, n_workers=default_workers(), progress=False)
    build_cache(mini/'dicom-images-train', tmp/'cache', sizes=(SIZE,), labels=mini/'train-rle.csv',
                n_workers=default_workers(), progress=False)
    return tmp/'cache', make_folds(mini/'train-rle.csv', n_splits=5, seed=0, n_bins=1)


def loader_rate(cache: Path, folds, n_workers: int, epochs: int, threads: int | None = None) -> float:
    "Images/s over `epochs` passes of the training loader (worker start-up included: it is paid every epoch)."
    dls = siim_dataloaders(cache, SIZE, folds, fold=0, bs=BS, aug='siim-1st', n_workers=n_workers, device='cpu')
    old = torch.get_num_threads()
    if threads: torch.set_num_threads(threads)
    try:
        n, t0 = 0, time.perf_counter()
        for _ in range(epochs):
            for xb, _ in dls.train: n += len(xb)
        return n / (time.perf_counter() - t0)
    finally: torch.set_num_threads(old)


def naive_rate(cache: Path, ids: list[str], epochs: int) -> float:
    "Images/s of a plain loop: cv2.imread image and mask, then the same albumentations pipeline."
    aug, n, t0 = get_augs('siim-1st', SIZE, seed=0), 0, time.perf_counter()
    for _ in range(epochs):
        for i in ids:
            img = cv2.imread(str(cache/str(SIZE)/'images'/f'{i}.png'), cv2.IMREAD_GRAYSCALE)
            msk = cv2.imread(str(cache/str(SIZE)/'masks'/f'{i}.png'), cv2.IMREAD_GRAYSCALE) // 255
            aug(image=img, mask=msk); n += 1
    return n / (time.perf_counter() - t0)


def model_rate(steps: int) -> float:
    "Images/s of training steps of smp Unet(resnet34) on CPU, batch 4 at 512 px (after one warm-up step)."
    import segmentation_models_pytorch as smp
    model = smp.Unet('resnet34', encoder_weights=None, classes=1).train()
    opt, loss_fn = torch.optim.Adam(model.parameters(), 1e-4), torch.nn.BCEWithLogitsLoss()
    x, y = torch.randn(BS, 3, SIZE, SIZE), (torch.rand(BS, 1, SIZE, SIZE) > 0.9).float()
    def step():
        opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
    step()
    t0 = time.perf_counter()
    for _ in range(steps): step()
    return BS * steps / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--n-images', type=int, default=64)
    p.add_argument('--epochs', type=int, default=2)
    p.add_argument('--steps', type=int, default=3)
    p.add_argument('--workers', type=int, nargs='+', default=[0, 1, 2])
    a = p.parse_args()
    seed_everything(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {default_workers()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    tmp = Path(tempfile.mkdtemp(prefix='bench_dataloader_'))
    try:
        t0 = time.perf_counter(); cache, folds = make_data(tmp, a.n_images)
        train_ids = folds.ImageId[folds.fold != 0].tolist()
        print(f"data: {a.n_images} synthetic DICOMs at {SIZE} px cached in {time.perf_counter() - t0:.0f} s; "
              f"{len(train_ids)} training images x {a.epochs} epochs per measurement")
        naive = naive_rate(cache, train_ids, a.epochs)
        print(f"naive loop (cv2.imread + albumentations 'siim-1st'): {naive:7.1f} images/s")
        rates = {}
        for w in a.workers:
            rates[w] = loader_rate(cache, folds, w, a.epochs)
            print(f"siim_dataloaders, n_workers={w}:                  {rates[w]:7.1f} images/s "
                  f"({rates[w] / max(w, 1):.1f} per process; {rates[w] / naive:.2f}x the naive loop)")
        one = loader_rate(cache, folds, 0, a.epochs, threads=1)
        print(f"siim_dataloaders, n_workers=0, 1 torch thread:    {one:7.1f} images/s ({one / naive:.2f}x the naive loop)")
        model = model_rate(a.steps)
        print(f"training step, smp Unet(resnet34), bs {BS} at {SIZE} px, CPU: {model:7.2f} images/s "
              f"({BS / model:.1f} s per step)")
        best = max(rates, key=rates.get)
        print(f"loader / model: {rates[best] / model:.1f}x with n_workers={best}, {rates[0] / model:.1f}x with n_workers=0 -> "
              f"{'the loader keeps up' if rates[0] >= model else 'the loader is the bottleneck'} on this machine")
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
