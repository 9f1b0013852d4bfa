"""Benchmark `pneumokit.dicom.read_dicom` on the real SIIM DICOMs (10 training samples + 24 stage-2 test files).

(a) `read_dicom(path)` (1024x1024) vs a bare `cv2.imdecode` of the same embedded JPEG bytes, already in memory.
    Target: at most 1.5x the bare decode (file reading and parsing are the only overhead).
(b) `read_dicom(path, 256)` vs the naive reference `pydicom.dcmread(path).pixel_array` + `cv2.resize(INTER_AREA)`.
    Target: at least 4x faster.
Also printed: the reference at 1024 (`pixel_array` alone) and a breakdown of read_dicom's steps.

Each method is timed once per image per repeat, methods interleaved (so background load hits them alike); a method's
figure is the mean over images of the per-image median over repeats, in ms per image. Wall-clock time is the headline;
CPU time of this process (`time.process_time`, all threads) is printed beside it because it barely moves when other jobs
share the machine.

Run: .venv/bin/python benchmarks/bench_dicom.py [--repeats 7]
"""
from __future__ import annotations
import argparse, time, warnings

import cv2
import numpy as np
import pydicom
from pydicom.encaps import generate_frames
from pydicom.pixels import get_decoder
from pydicom.uid import JPEGBaseline8Bit

from pneumokit.core import find_real_data
from pneumokit.dicom import list_dicoms, read_dicom


def _frame(path) -> bytes:
    return next(generate_frames(pydicom.dcmread(path).PixelData, number_of_frames=1))


def _methods(path, jpeg: np.ndarray) -> dict:
    "name -> zero-argument callable, for one image."
    return {
        'bare cv2.imdecode (1024)': lambda: cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE),
        'read_dicom(path)': lambda: read_dicom(path),
        'read_dicom(path, 256)': lambda: read_dicom(path, 256),
        'ref pixel_array (1024)': lambda: pydicom.dcmread(path).pixel_array,
        'ref pixel_array + resize 256': lambda: cv2.resize(pydicom.dcmread(path).pixel_array, (256, 256),
                                                           interpolation=cv2.INTER_AREA),
        'step: pydicom.dcmread': lambda: pydicom.dcmread(path),
        'step: cv2.imdecode 1/4 scale': lambda: cv2.imdecode(jpeg, cv2.IMREAD_REDUCED_GRAYSCALE_4),
    }


def _time(f) -> tuple[float, float]:
    "(wall, cpu) milliseconds of one call."
    w0, c0 = time.perf_counter(), time.process_time(); f()
    return (time.perf_counter() - w0) * 1e3, (time.process_time() - c0) * 1e3


def bench(paths, repeats: int) -> dict[str, np.ndarray]:
    "For each method, (n_images, 2) medians over `repeats` of (wall, cpu) ms."
    jpegs = [np.frombuffer(_frame(p), np.uint8) for p in paths]
    per_image = [_methods(p, j) for p, j in zip(paths, jpegs)]
    names = list(per_image[0])
    times = {n: np.zeros((repeats, len(paths), 2)) for n in names}
    for ms in per_image:  # warm-up: imports, caches, plugin selection
        for f in ms.values(): f()
    for r in range(repeats):
        for i, ms in enumerate(per_image):
            order = names[r % len(names):] + names[:r % len(names)]  # rotate who goes first
            for n in order: times[n][r, i] = _time(ms[n])
    return {n: np.median(t, axis=0) for n, t in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--repeats', type=int, default=7)
    args = ap.parse_args()
    real = find_real_data(required=True)
    paths = list_dicoms(real/'sample-images') + list_dicoms(real/'stage_2_images')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # stage-2 `ID_*` UIDs
        res = bench(paths, args.repeats)
    print(f"{len(paths)} real DICOMs (1024x1024 JPEG Baseline), {args.repeats} repeats; OpenCV {cv2.__version__} "
          f"({cv2.getNumThreads()} threads), pydicom {pydicom.__version__} "
          f"(JPEG Baseline plugins: {', '.join(get_decoder(JPEGBaseline8Bit).available_plugins)})")
    print(f"\n{'method':32s} {'wall ms/image':>13s} {'(min':>6s} {'max)':>6s} {'cpu ms/image':>13s}")
    for n, v in res.items():
        print(f"{n:32s} {v[:, 0].mean():13.2f} {v[:, 0].min():6.2f} {v[:, 0].max():6.2f} {v[:, 1].mean():13.2f}")
    for k, clock in enumerate(('wall', 'cpu')):
        ms = {n: float(v[:, k].mean()) for n, v in res.items()}
        a = ms['read_dicom(path)'] / ms['bare cv2.imdecode (1024)']
        b = ms['ref pixel_array + resize 256'] / ms['read_dicom(path, 256)']
        c = ms['ref pixel_array (1024)'] / ms['read_dicom(path)']
        print(f"\n[{clock}] (a) read_dicom(path) / bare cv2.imdecode        = {a:5.2f}x  "
              f"(target <= 1.5x) {'OK' if a <= 1.5 else 'MISSED'}")
        print(f"[{clock}] (b) reference 256 / read_dicom(path, 256)       = {b:5.2f}x faster "
              f"(target >= 4x) {'OK' if b >= 4 else 'MISSED'}")
        print(f"[{clock}]     reference 1024 / read_dicom(path)           = {c:5.2f}x faster")


if __name__ == '__main__': main()
