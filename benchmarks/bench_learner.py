"""How much does fastai's `Learner` add to a training step? (target: Learner overhead <= 10%)

One training step of the same smp model on the same in-memory batch, two ways:
- plain PyTorch (the reference, measured in the same run): `model.train()`, then per step
  `loss = get_loss('combo')(model(x), y); loss.backward(); opt.step(); opt.zero_grad()`;
- fastai: `Learner(dls, model, loss_func=get_loss('combo'), opt_func=partial(OptimWrapper, opt=torch.optim.AdamW))`
  with fastai's default callbacks (TrainEvalCallback, Recorder, CastToTensor, ProgressCallback), driven by `learn.fit(1)`.
Both use the very same torch optimizer (`torch.optim.AdamW`, lr 1e-3, torch's defaults otherwise), so only the Learner's
loop differs: event dispatch through the callbacks, loss clone and smoothing, the progress bar, fastai's DataLoader.
The fastai DataLoader serves the one batch as is (`bs=None`: no collation, no copy), so data loading stays out of it;
validation is cancelled (a callback raises `CancelValidException`); the progress bar and the epoch table go to /dev/null.

A step is one full loop iteration: from the end of one step to the end of the next (for the first step of an epoch,
from the start of the loop), i.e. fetch the batch + forward + loss + backward + step + zero_grad (+ the callbacks).
Epoch wall time per step also counts what `learn.fit(1)` does once per call (before_fit, progress bar set-up, the
epoch's log line); it is printed with the per-call cost it implies.
Methods are interleaved in rounds (ABBA order) so background load hits both alike; figures are medians over all timed
steps (the minimum is printed too: on a loaded machine it is the least disturbed figure). Timings are never asserted.

Configurations:
- resnet34: `build_model('Unet', 'resnet34', None)`, batch 4 at 256 px (seconds per step on 2 cores);
- mobilenet: `build_model('Unet', 'mobilenet_v2', None, decoder_channels=(128, 64, 32, 16, 8))`, batch 16 at 128 px
  (a fast step, where fixed per-step costs weigh most);
- floor: one 3x3 conv, batch 2 at 32 px, always on 1 torch thread: the step is almost free, so the difference is the
  Learner's fixed (Python) cost per step in ms, away from the thread-contention swings of multi-threaded kernels; that
  cost over the plain step time of the other configs is printed as their expected overhead.
With 2 threads on 2 busy cores, torch's OpenMP threads wait on each other and a step can take several times its
unloaded time: compare the load averages printed; `--threads 1` gives steadier figures on a shared machine.

Run: .venv/bin/python benchmarks/bench_learner.py [--threads 2] [--configs resnet34 mobilenet floor] [--scale 1]
"""
from __future__ import annotations
import argparse, contextlib, copy, math, os, statistics, time, warnings
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

import fastai

from fastai.callback.core import Callback, CancelValidException
from fastai.callback.progress import ProgressCallback  # noqa: F401  (registers it in fastai's default callbacks)
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.optimizer import OptimWrapper

from pneumokit.core import seed_everything
from pneumokit.losses import get_loss
from pneumokit.models import build_model

LR = 1e-3


@dataclass
class Config:
    name: str
    build: callable  # () -> nn.Module
    bs: int
    size: int
    warmup: int  # steps per method, discarded
    rounds: int  # timed rounds; each round runs both methods
    steps: int  # steps per method per round (one `learn.fit(1)` epoch for fastai)
    max_s: float  # no new round after this many seconds (a loaded machine), once 2 rounds are done
    threads: int | None = None  # torch threads for this config (None: --threads)

CONFIGS = {
    'resnet34': Config('Unet resnet34, bs 4 @ 256', lambda: build_model('Unet', 'resnet34', None), 4, 256, 3, 4, 2, 80),
    'mobilenet': Config('Unet mobilenet_v2 (small decoder), bs 16 @ 128',
                        lambda: build_model('Unet', 'mobilenet_v2', None, decoder_channels=(128, 64, 32, 16, 8)),
                        16, 128, 3, 6, 4, 50),
    'floor': Config('one 3x3 conv, bs 2 @ 32 (fixed costs)', lambda: nn.Conv2d(3, 1, 3, padding=1), 2, 32, 10, 6, 25, 20,
                    threads=1),
}


def _now() -> tuple[float, float]: return time.perf_counter(), time.process_time()
def _lap(a, b) -> tuple[float, float]: return b[0] - a[0], b[1] - a[1]


class StepTimer(Callback):
    "Stamps (wall, CPU) at the end of each training step and at the start of the loop; runs after every other callback."
    order = 1000
    def before_fit(self): self.laps, self.last = [], None
    def before_train(self): self.last = _now()
    def after_batch(self):
        if not self.training: return
        t = _now(); self.laps.append(_lap(self.last, t)); self.last = t


class NoValidation(Callback):
    "Skips the validation pass: only training steps are measured."
    def before_validate(self): raise CancelValidException()


class _OneBatch:
    "A 'dataset' of `n` items, each the whole (x, y) batch: the same tensors every time."
    def __init__(self, batch, n): self.batch, self.n = batch, n
    def __len__(self): return self.n
    def __getitem__(self, i): return self.batch


def _dls(batch, n: int) -> DataLoaders:
    "Train and (unused) valid loaders yielding `batch` `n` times, uncollated, in this process."
    mk = lambda: DataLoader(_OneBatch(batch, n), bs=None, num_workers=0, shuffle=False, device='cpu')
    return DataLoaders(mk(), mk(), device='cpu')


def _batch(cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    "ImageNet-normalised-looking images N x 3 x H x W and 0/1 float masks N x H x W."
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cfg.bs, 3, cfg.size, cfg.size, generator=g)
    y = (torch.rand(cfg.bs, cfg.size, cfg.size, generator=g) > 0.9).float()
    return x, y


def fastai_epoch(learn: Learner, batch, n: int) -> tuple[list[tuple[float, float]], float]:
    "Per-step (wall, CPU) seconds and the wall seconds of one `learn.fit(1)` over `n` copies of `batch`."
    learn.dls = _dls(batch, n)
    with open(os.devnull, 'w') as null, contextlib.redirect_stdout(null):
        t0 = time.perf_counter(); learn.fit(1); wall = time.perf_counter() - t0
    laps = learn.step_timer.laps
    if len(laps) != n: raise RuntimeError(f"expected {n} timed fastai steps, got {len(laps)}")
    return laps, wall


def plain_epoch(model: nn.Module, opt: torch.optim.Optimizer, loss_fn, batch, n: int,
               ) -> tuple[list[tuple[float, float]], float]:
    "Per-step (wall, CPU) seconds and the wall seconds of a plain PyTorch loop over `n` copies of `batch`."
    laps, t0 = [], time.perf_counter()
    model.train()
    last = _now()
    for xb, yb in [batch] * n:
        loss = loss_fn(model(xb), yb); loss.backward(); opt.step(); opt.zero_grad()
        t = _now(); laps.append(_lap(last, t)); last = t
    return laps, time.perf_counter() - t0


def measure(cfg: Config, scale: float) -> dict:
    "Interleaved rounds of both methods on twin copies of one model: per method, (step laps, epoch wall) per round."
    seed_everything(0)
    batch, model = _batch(cfg), cfg.build()
    twin = copy.deepcopy(model)
    opt = torch.optim.AdamW(twin.parameters(), lr=LR)
    learn = Learner(_dls(batch, 1), model, loss_func=get_loss('combo'), lr=LR, cbs=[StepTimer(), NoValidation()],
                    opt_func=partial(OptimWrapper, opt=torch.optim.AdamW))
    runs = {'fastai': lambda n: fastai_epoch(learn, batch, n),
            'plain': lambda n: plain_epoch(twin, opt, get_loss('combo'), batch, n)}
    for f in runs.values(): f(cfg.warmup)
    res, t0 = {k: [] for k in runs}, time.perf_counter()
    for r in range(max(2, math.ceil(cfg.rounds * scale))):
        if r >= 2 and time.perf_counter() - t0 > cfg.max_s * scale: break
        for k in (['fastai', 'plain'] if r % 2 == 0 else ['plain', 'fastai']): res[k].append(runs[k](cfg.steps))  # ABBA
    res['cbs'], res['opt'] = [type(c).__name__ for c in learn.cbs], type(learn.opt.opt).__name__
    return res


def _laps(rounds, clock: int) -> list[float]: return [t[clock] for laps, _ in rounds for t in laps]
def _med_ms(v) -> float: return 1e3 * statistics.median(v)


def _step_row(key: str, r: dict, clock: int) -> str:
    "Per-step medians and mins, their overheads, and the median over rounds of the paired (same round) ratio."
    p, f = _laps(r['plain'], clock), _laps(r['fastai'], clock)
    pm, fm, pmin, fmin = _med_ms(p), _med_ms(f), 1e3 * min(p), 1e3 * min(f)
    paired = statistics.median(_med_ms(_laps([fr], clock)) / _med_ms(_laps([pr], clock))
                               for fr, pr in zip(r['fastai'], r['plain']))
    ov = 100 * (fm / pm - 1)
    return (f"{key:10s} {pm:9.1f} ({pmin:7.1f}) {fm:9.1f} ({fmin:7.1f}) {fm - pm:+8.2f} {ov:+8.1f}% "
            f"{100 * (fmin / pmin - 1):+7.1f}% {100 * (paired - 1):+7.1f}%  {'yes' if ov <= 10 else 'NO'}")


def _epoch_row(key: str, cfg: Config, r: dict) -> str:
    "Epoch wall per step for both, and what one `fit(1)` call costs beyond its steps."
    pw, fw = (_med_ms([w / cfg.steps for _, w in r[k]]) for k in ('plain', 'fastai'))
    per_fit = _med_ms([w - sum(t[0] for t in laps) for laps, w in r['fastai']])
    return f"{key:10s} {cfg.steps:11d} {pw:9.1f} {fw:9.1f} {100 * (fw / pw - 1):+8.1f}% {per_fit:11.1f}"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--threads', type=int, default=2, help='torch.set_num_threads')
    p.add_argument('--configs', nargs='+', choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument('--scale', type=float, default=1., help='multiplies the timed rounds and the time caps')
    a = p.parse_args()
    warnings.filterwarnings('ignore', category=FutureWarning)
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, fastai {fastai.__version__}; {torch.get_num_threads()} torch threads on "
          f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} (a shared machine: other processes may run)")
    print("optimizer in both: torch.optim.AdamW(lr=1e-3); "
          "fastai gets it as opt_func=partial(OptimWrapper, opt=torch.optim.AdamW)")
    rows, t_start = [], time.perf_counter()
    for key in a.configs:
        cfg, t0 = CONFIGS[key], time.perf_counter()
        torch.set_num_threads(cfg.threads or a.threads)
        r = measure(cfg, a.scale)
        torch.set_num_threads(a.threads)
        print(f"{key}: {cfg.name}, {cfg.threads or a.threads} thread(s); {cfg.warmup} warm-up + "
              f"{cfg.steps * len(r['plain'])} timed steps per method ({len(r['plain'])} interleaved rounds of {cfg.steps}); "
              f"{time.perf_counter() - t0:.0f} s; load average {os.getloadavg()[0]:.2f}")
        rows.append((key, cfg, r))
    print(f"fastai callbacks: {', '.join(rows[0][2]['cbs'])}; fastai optimizer: OptimWrapper({rows[0][2]['opt']}); "
          f"total {time.perf_counter() - t_start:.0f} s")

    head = (f"{'config':10s} {'plain':>19s} {'fastai':>19s} {'diff ms':>8s} {'overhead':>9s} {'(min)':>8s} {'paired':>8s}  <= 10%?")
    for clock, what in enumerate(('wall-clock', 'CPU (process_time, all threads)')):
        print(f"\nper training step, {what} ms: median (min); overhead = fastai / plain - 1 of the medians, of the mins, "
              f"and paired\n(median over rounds of the same-round ratio); the verdict is on the medians")
        print(head)
        for key, cfg, r in rows: print(_step_row(key, r, clock))
    fixed = {k: r for k, _, r in rows}.get('floor')
    if fixed is not None and len(rows) > 1:
        ms = _med_ms(_laps(fixed['fastai'], 1)) - _med_ms(_laps(fixed['plain'], 1))
        # a fixed single-threaded cost adds to the wall time; over the least disturbed plain step: an upper estimate
        est = '; '.join(f"{100 * ms / (1e3 * min(_laps(r['plain'], 0))):.2f}% for {k}" for k, _, r in rows if k != 'floor')
        print(f"\nthe Learner's fixed cost per step (floor, CPU medians): {ms:.2f} ms; over the fastest plain step, "
              f"an expected overhead of {est}")
    print("\nepoch wall time per step, ms (median over rounds; one learn.fit(1) per round), and fastai's cost per fit(1) "
          "call\nbeyond its steps (before/after_fit, progress bar, epoch log line), ms")
    print(f"{'config':10s} {'steps/epoch':>11s} {'plain':>9s} {'fastai':>9s} {'overhead':>9s} {'per fit ms':>11s}")
    for key, cfg, r in rows: print(_epoch_row(key, cfg, r))


if __name__ == '__main__':
    main()
