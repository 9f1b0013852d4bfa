"""Benchmark pneumokit.submission's per-map work (resize to 1024, triplet rule, RLE) against the 1st place's code.

Run: .venv/bin/python benchmarks/bench_submission.py [--n 50] [--n-naive 4] [--seed 0] [--repeats 3]

Synthetic probability maps (smooth noise below 0.35; about 22% carry a confident blob that passes the triplet rule, as
~22% of SIIM-ACR images are positive), in three forms: uint8 1024x1024 (what `predict_dicoms` writes), float32
1024x1024, and float32 256x256 (a network's output, resized inside). Triplet: top=0.75, min_area=1500, bottom=0.3 (the
1st place's final values). The naive reference is the 1st place's `TripletSubmit.py` (RESHAPE_MODE): cv2.resize of the
probability map to 1024 when needed, `prob > top`, empty when fewer than `min_area` pixels, else `prob > bottom`, then
the official per-pixel `mask2rle`; it runs on a few maps only (`--n-naive`, half of them positive). One thread, one core;
each map is timed per call (time.perf_counter) in `--repeats` passes and its fastest time kept; figures are medians over
maps, per class (positive / empty), and the expected cost per map at the data set's 22% positives.
Not part of the test suite.
"""
from __future__ import annotations
import os
for _v in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS', 'NUMEXPR_NUM_THREADS'): os.environ[_v] = '1'

import argparse, sys, tempfile, time
from pathlib import Path
import cv2
import numpy as np
import torch

from pneumokit.core import SIIM_SIZE
from pneumokit.rle import read_labels
from pneumokit.submission import encode_map, make_submission

TOP, MIN_AREA, BOTTOM, POS_FRAC = 0.75, 1500, 0.3, 0.22


from naive_reference import mask2rle  # the official per-pixel encoder the 1st place used

def naive_encode_map(prob: np.ndarray) -> str:
    "The 1st place's post-processing + encoding of one float probability map (TripletSubmit.py, n_objects == 1)."
    if prob.shape[0] != SIIM_SIZE:
        prob = cv2.resize(prob, dsize=(SIIM_SIZE, SIIM_SIZE), interpolation=cv2.INTER_LINEAR)
    crazy_mask = (prob > TOP).astype(np.uint8)
    if crazy_mask.sum() < MIN_AREA: return '-1'
    mask = (prob > BOTTOM).astype(np.uint8)
    reshaped_mask = (mask * 255 > 127).astype(int) * 255
    return mask2rle(reshaped_mask.T, SIIM_SIZE, SIIM_SIZE) or '-1'


def one_core() -> str:
    "Pin this process and every library we use to a single thread on a single core."
    torch.set_num_threads(1); cv2.setNumThreads(1)
    if hasattr(os, 'sched_setaffinity'): os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    return f"cpu {sorted(os.sched_getaffinity(0))}" if hasattr(os, 'sched_getaffinity') else 'cpu ?'

def make_maps(n: int, seed: int, side: int = 256) -> tuple[np.ndarray, np.ndarray]:
    "`n` float32 (side, side) probability maps and whether each carries a blob (~22%)."
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side].astype(np.float32)
    pos = rng.random(n) < POS_FRAC
    pos[:2] = True, False  # both classes present even for tiny n
    maps = np.empty((n, side, side), np.float32)
    for i in range(n):
        p = cv2.GaussianBlur(rng.random((side, side), dtype=np.float32), (0, 0), 4)
        p = 0.35 * (p - p.min()) / (p.max() - p.min())
        if pos[i]:
            cy, cx = rng.uniform(40, side - 40, 2)
            r = rng.uniform(10, 30)
            p = np.maximum(p, 0.95 * np.exp(-((yy - cy)**2 + (xx - cx)**2) / (2 * r * r)))
        maps[i] = p
    return maps, pos

def upsample(maps: np.ndarray, dtype) -> np.ndarray:
    "Every map at 1024x1024 (bilinear), as `dtype` (uint8: probabilities x 255), in freshly written memory."
    out = np.empty((len(maps), SIIM_SIZE, SIIM_SIZE), dtype)
    for i, m in enumerate(maps):
        big = cv2.resize(m, (SIIM_SIZE, SIIM_SIZE), interpolation=cv2.INTER_LINEAR)
        out[i] = (big * 255).round() if dtype == np.uint8 else big
    return out

def time_calls(f, items, repeats: int) -> np.ndarray:
    "Per-item seconds of `f`, the fastest of `repeats` passes for each item."
    best = np.full(len(items), np.inf)
    for _ in range(repeats):
        for i, x in enumerate(items):
            t = time.perf_counter(); f(x); best[i] = min(best[i], time.perf_counter() - t)
    return best

def ours(m: np.ndarray) -> str: return encode_map(m, TOP, MIN_AREA, BOTTOM)

def summary(ts: np.ndarray, pos: np.ndarray) -> tuple[float, float, float, float]:
    "Median ms over all maps, over positive maps, over empty maps, and the expected ms per map at 22% positives."
    ms = ts * 1e3
    p, e = np.median(ms[pos]), np.median(ms[~pos])
    return np.median(ms), p, e, POS_FRAC * p + (1 - POS_FRAC) * e

def end_to_end(maps: np.ndarray, repeats: int) -> float:
    "Seconds per map of `make_submission` on a uint8 memmap (read row by row), CSV writing included; fastest pass."
    d = Path(tempfile.mkdtemp())
    mm = np.lib.format.open_memmap(d/'p.npy', mode='w+', dtype=np.uint8, shape=maps.shape); mm[:] = maps; mm.flush()
    ids, best = [f'img{i}' for i in range(len(maps))], np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        make_submission(np.load(d/'p.npy', mmap_mode='r'), ids, d/'sub.csv', TOP, MIN_AREA, BOTTOM, progress=False)
        best = min(best, time.perf_counter() - t)
    assert len(read_labels(d/'sub.csv')) == len(ids)
    return best / len(maps)

def check(maps: np.ndarray, idx: list[int]) -> None:
    "Our RLEs equal the reference's on the reference maps (float32 at 1024, where both binarise the same values)."
    for i in idx: assert ours(maps[i]) == naive_encode_map(maps[i]), i

def main(n: int = 50, n_naive: int = 4, seed: int = 0, repeats: int = 3) -> None:
    cpu = one_core()
    small, pos = make_maps(n, seed)
    u8, f32 = upsample(small, np.uint8), upsample(small, np.float32)
    k = n_naive // 2
    naive_idx = np.flatnonzero(pos)[:max(k, 1)].tolist() + np.flatnonzero(~pos)[:max(n_naive - k, 1)].tolist()
    check(f32, naive_idx)
    kept = np.array([ours(m) != '-1' for m in f32])
    rows = {'ours  uint8 1024 (no resize)': (time_calls(ours, u8, repeats), kept),
            'ours  float32 1024 (no resize)': (time_calls(ours, f32, repeats), kept),
            'ours  float32 256 -> 1024': (time_calls(ours, small, repeats), kept)}
    ref_f32 = time_calls(naive_encode_map, [f32[i] for i in naive_idx], 1)
    ref_small = time_calls(naive_encode_map, [small[i] for i in naive_idx], 1)
    e2e = end_to_end(u8, repeats)

    load = os.getloadavg() if hasattr(os, 'getloadavg') else (float('nan'),) * 3
    print(f"pneumokit.submission benchmark: {n} synthetic maps ({kept.mean():.0%} kept by the triplet rule "
          f"top={TOP}, min_area={MIN_AREA}, bottom={BOTTOM}), {n_naive} for the naive reference; one thread, {cpu}; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores; "
          f"numpy {np.__version__}, opencv {cv2.__version__}")
    print("ms per map (fastest of the repeats per map, then medians); 'expected' = 22% x positive + 78% x empty")
    print(f"{'':<36}{'maps':>6}{'median':>9}{'positive':>10}{'empty':>8}{'expected':>10}")
    line = lambda name, ts, p: print(f"{name:<36}{len(ts):>6}" + ''.join(f"{v:{w}.3f}" for v, w in
                                                                          zip(summary(ts, p), (9, 10, 8, 10))))
    for name, (ts, p) in rows.items(): line(name, ts, p)
    ref_pos = kept[naive_idx]
    line('naive 1st place, float32 1024', ref_f32, ref_pos)
    line('naive 1st place, float32 256->1024', ref_small, ref_pos)
    print(f"make_submission end to end (uint8 memmap, CSV written): {e2e*1e3:.3f} ms per map")
    exp = lambda ts, p: summary(ts, p)[3]
    r1 = exp(ref_f32, ref_pos) / exp(*rows['ours  float32 1024 (no resize)'])
    r2 = exp(ref_small, ref_pos) / exp(*rows['ours  float32 256 -> 1024'])
    print(f"speed-up (expected per map, naive / ours): float32 1024 {r1:.0f}x; float32 256->1024 {r2:.0f}x; "
          f"positive maps alone: {np.median(ref_f32[ref_pos]) / np.median(rows['ours  float32 1024 (no resize)'][0][kept]):.0f}x")
    worst = max(exp(ts, p) for ts, p in rows.values())
    print(f"target <= 2 ms per 1024x1024 map (expected): worst of our three forms {worst:.3f} ms "
          f"{'OK' if worst <= 2 else 'MISSED'}; our RLEs equal the reference's on the {len(naive_idx)} reference maps.")

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, default=50)
    ap.add_argument('--n-naive', type=int, default=4)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--repeats', type=int, default=3)
    a = ap.parse_args()
    sys.exit(main(a.n, a.n_naive, a.seed, a.repeats))
