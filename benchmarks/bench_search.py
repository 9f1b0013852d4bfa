"""Benchmark pneumokit.postprocess.search_thresholds against brute force (apply_triplet + Dice over all images per triplet).

Run: .venv/bin/python benchmarks/bench_search.py [--n 1000] [--size 1024] [--grid 20] [--n-brute 3] [--n-brute-metrics 1] [--seed 0]

Synthetic out-of-fold maps: --n uint8 maps of --size² (1,000 × 1024² = 1 GB) and their 0/1 truths (another 1 GB) are
generated chunk by chunk into temporary np.memmap files on disk (deleted at the end): random ellipses, about 22% of the
images positive; each map is the blurred truth scaled by a random confidence plus noise and, on 30% of the images, a
false blob (drawn at 1/8 resolution, blurred, and upsampled bilinearly, so generation stays cheap).
The grid is --grid tops × --grid areas × --grid bottoms (20³ = 8,000 triplets). The search is timed as its two parts:
the one-off summary pass (`map_histograms`, one read of every map) and the scoring of the whole grid (`grid_scores`).
Brute force is apply_triplet then the per-image Dice, in chunks of 50 images so that RAM stays bounded (the mean over
all images is `kaggle_dice`), in two flavours: with a plain-numpy Dice on --n-brute grid points, and with
`pneumokit.metrics.dice_per_image` (torch; much slower) on --n-brute-metrics of them. Both are timed in the same run,
checked equal to the search's scores, and extrapolated to the whole grid. One thread everywhere. Not part of the test suite.

Float maps: the same maps as float32 probabilities, `(u + U(-0.5, 0.5)) / 255` clipped to [0, 1] (continuous values whose
uint8 level is `u`), searched exactly on the grid's thresholds; the whole search (`search_thresholds`: summary pass and
grid) on the float maps and on the uint8 maps is timed --repeats times each, interleaved, and the medians' ratio printed;
the float search is checked equal to the numpy brute force at --n-brute grid points. The issue's figure:
`bench_search.py --n 200 --size 512`.
"""
from __future__ import annotations
import os
for _v in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS', 'NUMEXPR_NUM_THREADS'): os.environ[_v] = '1'

import argparse, resource, shutil, tempfile, time, tracemalloc
from pathlib import Path
import cv2
import numpy as np
import torch

from pneumokit.metrics import dice_per_image
from pneumokit.postprocess import apply_triplet, grid_scores, map_histograms, search_thresholds

cv2.setNumThreads(1)
torch.set_num_threads(1)
CHUNK = 50


def _blob(rng, s: int) -> np.ndarray:
    m = np.zeros((s, s), np.float32)
    c = tuple(int(v) for v in rng.integers(s // 5, s - s // 5, 2))
    ax = tuple(int(v) for v in rng.integers(s // 32 + 1, s // 6, 2))
    return cv2.ellipse(m, c, ax, float(rng.uniform(0, 180)), 0, 360, 1., -1)

def _fake_image(rng, size: int) -> tuple[np.ndarray, np.ndarray]:
    "One (uint8 map, 0/1 truth) pair: blobs drawn at size/8, blurred, upsampled."
    s = size // 8
    t = _blob(rng, s) if rng.random() < 0.22 else np.zeros((s, s), np.float32)
    p = t * rng.uniform(0.5, 1) + (_blob(rng, s) * rng.uniform(0.2, 0.8) if rng.random() < 0.3 else 0)
    p = cv2.GaussianBlur(p, (0, 0), 1.5) + rng.normal(0, 0.05, (s, s)).astype(np.float32)
    p = cv2.resize(np.clip(p, 0, 1), (size, size), interpolation=cv2.INTER_LINEAR)
    t = cv2.resize(t, (size, size), interpolation=cv2.INTER_NEAREST)
    return np.round(p * 255).astype(np.uint8), t.astype(np.uint8)

def make_maps(folder: Path, n: int, size: int, seed: int) -> tuple[np.memmap, np.memmap]:
    "uint8 maps and truths as disk memmaps, written chunk by chunk."
    rng = np.random.default_rng(seed)
    probs = np.lib.format.open_memmap(folder/'oof.npy', 'w+', np.uint8, (n, size, size))
    targs = np.lib.format.open_memmap(folder/'targs.npy', 'w+', np.uint8, (n, size, size))
    for s in range(0, n, CHUNK):
        pairs = [_fake_image(rng, size) for _ in range(min(CHUNK, n - s))]
        probs[s:s + len(pairs)] = [p for p, _ in pairs]; targs[s:s + len(pairs)] = [t for _, t in pairs]
    probs.flush(); targs.flush()
    return np.load(folder/'oof.npy', mmap_mode='r'), np.load(folder/'targs.npy', mmap_mode='r')

def brute_force(probs, targs, top: float, area: int, bottom: float) -> float:
    "Kaggle Dice of one triplet: apply_triplet + per-image Dice over all images (chunked), then the mean."
    d = [dice_per_image(apply_triplet(np.asarray(probs[s:s + CHUNK]), top, area, bottom), np.array(targs[s:s + CHUNK]))
         for s in range(0, len(probs), CHUNK)]
    return float(np.concatenate(d).mean())

def _np_dice(m: np.ndarray, t: np.ndarray) -> np.ndarray:
    "Per-image Dice of 0/1 uint8 masks in plain numpy (1 where both are empty)."
    m, t = m.reshape(len(m), -1), t.reshape(len(t), -1)
    inter, total = (m & t).sum(1, dtype=np.int64), m.sum(1, dtype=np.int64) + t.sum(1, dtype=np.int64)
    return np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)

def brute_force_np(probs, targs, top: float, area: int, bottom: float) -> float:
    "The same with the Dice in numpy: a faster, fairer reference than pneumokit.metrics' torch Dice."
    d = [_np_dice(apply_triplet(np.asarray(probs[s:s + CHUNK]), top, area, bottom), np.asarray(targs[s:s + CHUNK]))
         for s in range(0, len(probs), CHUNK)]
    return float(np.concatenate(d).mean())

def _mb(nbytes: float) -> str: return f"{nbytes / 2**20:,.1f} MiB"

def _rss() -> str:
    "Current resident memory split into anonymous (heap) and file-backed (memmap pages, reclaimable) parts."
    st = dict(l.split(':', 1) for l in Path('/proc/self/status').read_text().splitlines() if ':' in l)
    return ', '.join(f"{k} {st[k].strip()}" for k in ('RssAnon', 'RssFile') if k in st)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--n', type=int, default=1000); ap.add_argument('--size', type=int, default=1024)
    ap.add_argument('--grid', type=int, default=20); ap.add_argument('--n-brute', type=int, default=3)
    ap.add_argument('--n-brute-metrics', type=int, default=1)
    ap.add_argument('--seed', type=int, default=0); ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--no-float', action='store_true', help='skip the float-map search')
    a = ap.parse_args()
    print(f"load average before: {os.getloadavg()}; threads: torch {torch.get_num_threads()}, OMP {os.environ['OMP_NUM_THREADS']}")
    print(f"RSS after imports (torch, fastai via pneumokit.metrics): {_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}")
    tmp = Path(tempfile.mkdtemp(prefix='bench_search_'))
    try: run(a, tmp)
    finally: shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average after: {os.getloadavg()}")

def run(a, tmp: Path):
    t0 = time.perf_counter()
    probs, targs = make_maps(tmp, a.n, a.size, a.seed)
    print(f"generated {a.n} maps {a.size}² uint8 ({_mb(probs.nbytes)} maps + {_mb(targs.nbytes)} truths on disk) "
          f"in {time.perf_counter() - t0:.1f} s; positives {np.mean([t.any() for t in targs]):.1%}")
    tops, bottoms = np.linspace(0.3, 0.9, a.grid).round(4), np.linspace(0.1, 0.6, a.grid).round(4)
    areas = np.unique(np.geomspace(1, a.size**2 / 50, a.grid).astype(int)).tolist()
    areas = [0] + areas[:a.grid - 1]
    n_grid = len(tops) * len(areas) * len(bottoms)

    tracemalloc.start()
    t0 = time.perf_counter(); hist, hist_pos = map_histograms(probs, targs); t_pass = time.perf_counter() - t0
    t0 = time.perf_counter(); res = grid_scores(hist, hist_pos, tops, areas, bottoms); t_grid = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory(); tracemalloc.stop()
    print(f"search: summary pass {t_pass:.2f} s ({t_pass / a.n * 1e3:.2f} ms/image), grid of {n_grid:,} triplets {t_grid:.3f} s, "
          f"total {t_pass + t_grid:.2f} s")
    print(f"summaries {_mb(hist.nbytes + hist_pos.nbytes)}; tracemalloc peak during search {_mb(peak)}; "
          f"ru_maxrss so far {_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)} (counts the memmap pages "
          f"written and read, which are file-backed); now {_rss()}")
    print("best triplets:\n" + res.head(3).to_string(index=False))

    rng = np.random.default_rng(a.seed)
    idx = [0] + list(rng.choice(np.arange(1, len(res)), a.n_brute - 1, replace=False))  # the best and random points
    for name, f, pts in [('apply_triplet + numpy Dice', brute_force_np, idx), ('apply_triplet + pneumokit.metrics Dice', brute_force, idx[:a.n_brute_metrics])]:
        if pts: _compare(name, f, probs, targs, res, pts, n_grid, t_pass, t_grid)
    if not a.no_float: _float_vs_uint8(a, tmp, probs, targs, tops, areas, bottoms, rng)
    print(f"peak RSS (ru_maxrss, whole run incl. brute force) {_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}; now {_rss()}")

def make_float_maps(folder: Path, probs, seed: int) -> np.memmap:
    "The same maps as float32 probabilities, continuous: `(u + U(-0.5, 0.5)) / 255` clipped to [0, 1]."
    rng = np.random.default_rng(seed + 1)
    out = np.lib.format.open_memmap(folder/'oof_float.npy', 'w+', np.float32, probs.shape)
    for s in range(0, len(probs), CHUNK):
        u = np.asarray(probs[s:s + CHUNK], np.float32)
        out[s:s + len(u)] = np.clip((u + rng.uniform(-0.5, 0.5, u.shape).astype(np.float32)) / 255, 0, 1)
    out.flush()
    return np.load(folder/'oof_float.npy', mmap_mode='r')

def _float_vs_uint8(a, tmp: Path, probs, targs, tops, areas, bottoms, rng):
    "The whole search on float32 maps against the same search on the uint8 maps, medians of --repeats interleaved runs."
    fprobs = make_float_maps(tmp, probs, a.seed)
    tu, tf = [], []
    for _ in range(a.repeats):
        t0 = time.perf_counter(); search_thresholds(probs, targs, tops, areas, bottoms); tu.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); res = search_thresholds(fprobs, targs, tops, areas, bottoms); tf.append(time.perf_counter() - t0)
    mu, mf = float(np.median(tu)), float(np.median(tf))
    print(f"float32 maps ({_mb(fprobs.nbytes)}): whole search {mf:.2f} s (runs {', '.join(f'{t:.2f}' for t in tf)}) against uint8 "
          f"{mu:.2f} s (runs {', '.join(f'{t:.2f}' for t in tu)}): float/uint8 = {mf / mu:.2f}× (medians of {a.repeats})")
    idx = [0] + list(rng.choice(np.arange(1, len(res)), max(0, a.n_brute - 1), replace=False))
    for i in idx[:a.n_brute]:
        r = res.iloc[i]
        d = brute_force_np(fprobs, targs, r.top, int(r.area), r.bottom)
        assert abs(d - r.dice) < 1e-12, f"float brute force {d} differs from search {r.dice} at {tuple(r[['top', 'area', 'bottom']])}"
        print(f"[float maps, apply_triplet + numpy Dice] (top={r.top}, area={int(r.area)}, bottom={r.bottom}): dice {d:.6f} == search")

def _compare(name, f, probs, targs, res, idx, n_grid, t_pass, t_grid):
    "Time brute force `f` at the grid points `idx`, check it equals the search, extrapolate to the grid."
    times = []
    for i in idx:
        r = res.iloc[i]
        t0 = time.perf_counter(); d = f(probs, targs, r.top, int(r.area), r.bottom); times.append(time.perf_counter() - t0)
        assert abs(d - r.dice) < 1e-12, f"brute force {d} differs from search {r.dice} at {tuple(r[['top', 'area', 'bottom']])}"
        print(f"[{name}] (top={r.top}, area={int(r.area)}, bottom={r.bottom}): dice {d:.6f} == search, {times[-1]:.2f} s")
    per = float(np.mean(times))
    print(f"[{name}] {per:.2f} s per triplet → {per * n_grid / 3600:.1f} h for {n_grid:,} triplets (extrapolated); "
          f"search {t_pass + t_grid:.2f} s in all → {per * n_grid / (t_pass + t_grid):,.0f}× faster; "
          f"grid step alone {per * n_grid / t_grid:,.0f}×")

if __name__ == '__main__': main()
