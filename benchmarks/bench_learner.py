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
- floor: one 3x3 conv, batch 2 at 32 px: the step is almost free, so the difference is the Learner's fixed cost in ms.

Run: .venv/bin/python benchmarks/bench_learner.py [--threads 2] [--configs resnet34 mobilenet floor] [--scale 1]
"""
from __future__ import annotations
import argparse, contextlib, copy, math, os, statistics, time, warnings
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

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

CONFIGS = {
    'resnet34': Config('Unet resnet34, bs 4 @ 256', lambda: build_model('Unet', 'resnet34', None), 4, 256, 3, 4, 2),
    'mobilenet': Config('Unet mobilenet_v2 (small decoder), bs 16 @ 128',
                        lambda: build_model('Unet', 'mobilenet_v2', None, decoder_channels=(128, 64, 32, 16, 8)),
                        16, 128, 3, 6, 6),
    'floor': Config('one 3x3 conv, bs 2 @ 32 (fixed costs)', lambda: nn.Conv2d(3, 1, 3, padding=1), 2, 32, 10, 6, 25),
}


class StepTimer(Callback):
    "Stamps the end of each training step (and the start of the loop); runs after every other callback."
    order = 1000
    def before_fit(self): self.laps, self.last = [], None
    def before_train(self): self.last = time.perf_counter()
    def after_batch(self):
        if not self.training: return
        t = time.perf_counter(); self.laps.append(t - self.last); self.last = t


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


def fastai_epoch(learn: Learner, batch, n: int) -> tuple[list[float], float]:
    "Per-step seconds and wall seconds of one `learn.fit(1)` over `n` copies of `batch`."
    learn.dls = _dls(batch, n)
    with open(os.devnull, 'w') as null, contextlib.redirect_stdout(null):
        t0 = time.perf_counter(); learn.fit(1); wall = time.perf_counter() - t0
    laps = learn.step_timer.laps
    if len(laps) != n: raise RuntimeError(f"expected {n} timed fastai steps, got {len(laps)}")
    return laps, wall


def plain_epoch(model: nn.Module, opt: torch.optim.Optimizer, loss_fn, batch, n: int) -> tuple[list[float], float]:
    "Per-step seconds and wall seconds of a plain PyTorch loop over `n` copies of `batch`."
    laps, t0 = [], time.perf_counter()
    model.train()
    last = time.perf_counter()
    for xb, yb in [batch] * n:
        loss = loss_fn(model(xb), yb); loss.backward(); opt.step(); opt.zero_grad()
        t = time.perf_counter(); laps.append(t - last); last = t
    return laps, time.perf_counter() - t0


def measure(cfg: Config, scale: float) -> dict:
    "Interleaved rounds of both methods on twin copies of one model; returns per-step laps and epoch walls."
    seed_everything(0)
    batch, model = _batch(cfg), cfg.build()
    twin = copy.deepcopy(model)
    opt = torch.optim.AdamW(twin.parameters(), lr=LR)
    learn = Learner(_dls(batch, 1), model, loss_func=get_loss('combo'), opt_func=partial(OptimWrapper, opt=torch.optim.AdamW),
                    lr=LR, cbs=[StepTimer(), NoValidation()])
    plain = lambda n: plain_epoch(twin, opt, get_loss('combo'), batch, n)
    fast = lambda n: fastai_epoch(learn, batch, n)
    fast(cfg.warmup); plain(cfg.warmup)
    rounds = max(1, math.ceil(cfg.rounds * scale))
    res = {'plain': ([], []), 'fastai': ([], [])}
    for r in range(rounds):
        order = [('fastai', fast), ('plain', plain)]
        for name, f in (order if r % 2 == 0 else order[::-1]):
            laps, wall = f(cfg.steps)
            res[name][0].extend(laps); res[name][1].append(wall / cfg.steps)
    res['cbs'] = [type(c).__name__ for c in learn.cbs]
    res['opt'] = type(learn.opt.opt).__name__
    res['rounds'] = rounds
    return res


def _ms(v: list[float]) -> tuple[float, float]: return 1e3 * statistics.median(v), 1e3 * min(v)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--threads', type=int, default=2, help='torch.set_num_threads')
    p.add_argument('--configs', nargs='+', choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument('--scale', type=float, default=1., help='multiplies the number of timed rounds')
    a = p.parse_args()
    warnings.filterwarnings('ignore', category=FutureWarning)
    torch.set_num_threads(a.threads)
    import fastai
    print(f"torch {torch.__version__}, fastai {fastai.__version__}; {torch.get_num_threads()} torch threads on "
          f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} (shared machine: other processes may run)")
    print("optimizer: torch.optim.AdamW (lr 1e-3) in both; fastai via opt_func=partial(OptimWrapper, opt=torch.optim.AdamW)")
    rows, t_start = [], time.perf_counter()
    for key in a.configs:
        cfg, t0 = CONFIGS[key], time.perf_counter()
        r = measure(cfg, a.scale)
        n = cfg.steps * r['rounds']
        print(f"\n{cfg.name}: {cfg.warmup} warm-up + {n} timed steps per method "
              f"({r['rounds']} interleaved rounds of {cfg.steps}), {time.perf_counter() - t0:.0f} s; "
              f"callbacks {', '.join(r['cbs'])}; fastai opt {r['opt']}")
        rows.append((key, cfg, r))
    print(f"\nload average after the runs: {os.getloadavg()[0]:.2f}; total {time.perf_counter() - t_start:.0f} s")

    print(f"\nper step (ms; median, min in brackets)")
    print(f"{'config':10s} {'plain':>17s} {'fastai':>17s} {'diff ms':>8s} {'overhead':>9s} {'(min)':>7s}  <= 10%?")
    for key, cfg, r in rows:
        (pm, pmin), (fm, fmin) = _ms(r['plain'][0]), _ms(r['fastai'][0])
        ov, ov_min = 100 * (fm / pm - 1), 100 * (fmin / pmin - 1)
        print(f"{key:10s} {pm:9.1f} ({pmin:6.1f}) {fm:9.1f} ({fmin:6.1f}) {fm - pm:8.2f} {ov:+8.1f}% {ov_min:+6.1f}%  "
              f"{'yes' if ov <= 10 else 'NO'}")

    print(f"\nepoch wall time per step (ms; median over rounds) and fastai's cost per fit(1) call")
    print(f"{'config':10s} {'steps/epoch':>11s} {'plain':>9s} {'fastai':>9s} {'overhead':>9s} {'per fit ms':>11s}")
    for key, cfg, r in rows:
        pw, fw = 1e3 * statistics.median(r['plain'][1]), 1e3 * statistics.median(r['fastai'][1])
        # wall of each fit minus the sum of its own steps: what fit(1) costs once per call
        laps = r['fastai'][0]
        per_fit = [1e3 * (w * cfg.steps - sum(laps[i * cfg.steps:(i + 1) * cfg.steps])) for i, w in enumerate(r['fastai'][1])]
        print(f"{key:10s} {cfg.steps:11d} {pw:9.1f} {fw:9.1f} {100 * (fw / pw - 1):+8.1f}% {statistics.median(per_fit):11.1f}")


if __name__ == '__main__':
    main()
