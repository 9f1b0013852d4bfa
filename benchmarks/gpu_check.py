"""Is the full-size recipe ready for a GPU? One command, a time budget, every figure in one JSON file.

On the GPU machine this runs through `benchmarks/gpu_run.sh` (the wheels the image lacks installed offline first; the
README's "GPU check" says how to call it with the `device` tool). Phases, each under its own cap (a share of the budget):

1. data        a synthetic mini SIIM-ACR at 1024 px (`make_mini_siim`), cached at every checked size (`build_cache`), 5 folds;
2. train       the 1st-place recipe's own settings (`load_config('siim-1st-place')`: UNet/ResNet34, combo loss, the
               `siim-1st` augmentations, the positive-rate sampler, a frozen-encoder stage then an unfrozen one) through
               `train_fold` at each size, eager: end-to-end training images/s per stage (loader included), peak GPU
               memory, whether the loss fell;
3. appetite    the GPU's own rate: the recipe's training step (mixed precision, channels-last, `cudnn.benchmark`) on
               batches already on the device, eager and `torch.compile`d (the compiler reset before each size, static
               shapes): images/s, and the compile time measured apart (the first step);
4. inference   the fold ensemble of each eager run (`load_fold_models`, channels-last) over the test DICOMs with the
               config's TTA, through `predict_dicoms`: images/s;
5. precision   the trained model's float32 forward pass (TF32 off) against float16 and bfloat16 autocast: agreement and
               images/s of each, channels-last;
6. loader      the training loader `siim_dataloaders` builds (its worker count, persistent workers), timed after its first
               batch: images/s, against the appetite of 3 (`gpu_starved` compares two independent rates);
7. batch       the largest batch that fits at each size (a doubling search; any allocation failure ends it);
8. ddp         `pneumokit train CONFIG ... --distributed` as a user types it, over every visible GPU (NCCL process group
               with two GPUs or more; one GPU: a world of one; `--tiny`: the CPU);
9. cuda        `nbdev-test --flags cuda` on the notebooks that hold `#| cuda` cells, each within the cap or reported not run.

A watchdog ends each phase at its cap (SIGALRM; the phase records `stopped: phase cap`), and a phase that does not answer
within a grace after it ends the run with the report written. SIGTERM and SIGINT write the report, end the child
process groups (the DDP launch, nbdev-test) and exit 143/130. The JSON is rewritten (atomically) after every phase;
what did not run says why (`skipped: budget`, `skipped: no CUDA`, `stopped: ...`); a value that would be NaN is written
null with the reason under `nulls`. Nothing is downloaded: the encoder trains from scratch (`weights: null`).

`--tiny` runs the same phases on the CPU at toy sizes (32 and 64 px, batch 4, a few steps); tests/test_gpu_check.py runs it.
Tests inject hangs with GPU_CHECK_HANG=phase,... (the phase sleeps) and GPU_CHECK_HANG_HARD=phase (it also blocks the
watchdog's signal) and an allocation failure in the batch search with GPU_CHECK_ALLOC_FAIL_AT=BS.

Not yet run on a GPU: no machine was lent to the sessions that wrote it; `--tiny` has run on 2 shared CPU cores, and the
whole offline path (gpu_run.sh in a fresh Python 3.12 venv with torch 2.11, `--no-index`) has run here on the CPU.

Run: `python benchmarks/gpu_check.py [--budget-s 480] [--tiny] [--out reports/gpu-check.json] [--sizes 512 1024] [--phases ...]`
"""
from __future__ import annotations
import argparse, json, math, os, platform, re, shutil, signal, subprocess, sys, tempfile, threading, time, traceback
from dataclasses import replace
from pathlib import Path

import fastai
import numpy as np
import torch
import yaml
from fastai.callback.core import Callback, CancelFitException, CancelTrainException

from pneumokit.config import load_config
from pneumokit.core import default_workers, seed_everything, write_bytes_atomic
from pneumokit.data import _loader_workers, epoch_length, pos_frac_at, siim_dataloaders
from pneumokit.dicom import build_cache
from pneumokit.folds import make_folds, save_folds
from pneumokit.inference import DicomDataset, dicom_files, load_fold_models, normalise, predict_dicoms
from pneumokit.layout import RunDir, SiimDir
from pneumokit.losses import get_loss
from pneumokit.models import build_model
from pneumokit.synthetic import make_mini_siim
from pneumokit.cli import train_command
from pneumokit.recipe import Recipe, Stage
from pneumokit.train import train_fold

ROOT = Path(__file__).resolve().parents[1]
CONFIG = 'siim-1st-place'
SKIP_BUDGET, SKIP_CUDA, STOPPED_CAP = 'skipped: budget', 'skipped: no CUDA', 'stopped: phase cap'
# Each phase's cap, as a share of the whole budget (a phase also never runs past what is left of it). Estimates for an
# H100 at 512/1024 px (cold inductor compiles of the UNet's training step take most of `appetite`), not yet measured.
# The last phase, the `#| cuda` cells, takes whatever the others left (at least its tenth when they kept to their caps).
SHARES = dict(data=0.08, train=0.09, appetite=0.16, inference=0.04, precision=0.03, loader=0.05, batch=0.06, ddp=0.09, cuda=1.0)
TINY_SHARES = dict(train=0.12, appetite=0.10, ddp=0.25, cuda=0.1)  # on a CPU, starting Python weighs more than the work
GRACE_S = float(os.environ.get('GPU_CHECK_GRACE_S', 20))  # a phase still running this long after its cap ends the run
ALLOC_ERRORS = ('out of memory', 'alloc', 'cudnn_status_not_enough_workspace', 'cudnn_status_internal_error',
                'cublas_status_not_initialized', 'cuda error: an illegal memory access', 'canuse32bitindexmath')


# ---------------------------------------------------------------------------------------------------------------------
# The budget, a report that is always complete, and the watchdog

class Budget:
    "Seconds left of the whole run (what was `spent` before the check, e.g. installing wheels, counted); a phase's cap is its share."
    def __init__(self, seconds: float, spent: float = 0.): self.t0, self.total, self.spent = time.monotonic(), seconds, spent
    def left(self) -> float: return self.total - self.spent - (time.monotonic() - self.t0)
    def cap(self, share: float) -> float: return max(0., min(share * self.total, self.left()))


def phase_names(sizes: list[int]) -> list[str]:
    "Every phase, in the order they run."
    return ['data', *[f'train_{s}' for s in sizes], *[f'appetite_{s}' for s in sizes],
            'inference', 'precision', 'loader', 'batch', 'ddp', 'cuda']


def _share(name: str) -> float: return SHARES[name.split('_')[0]]


def empty_figures(sizes: list[int], cuda: bool) -> dict:
    "Every figure the check reports, each 'skipped: budget' (or 'skipped: no CUDA') until a phase measures it."
    per = lambda v: {str(s): json.loads(json.dumps(v)) for s in sizes}  # a copy per size: figures are filled in place
    gpu = SKIP_BUDGET if cuda else SKIP_CUDA
    return dict(
        train_images_per_s=per({'frozen': SKIP_BUDGET, 'unfrozen': SKIP_BUDGET}), loss_fell=per(SKIP_BUDGET),
        gpu_images_per_s=per({'eager': SKIP_BUDGET, 'compiled': SKIP_BUDGET}), compile_s=per(SKIP_BUDGET),
        peak_memory_gb=per(gpu), train_batch_size=per(SKIP_BUDGET), largest_batch=per(SKIP_BUDGET),
        inference_images_per_s=per(SKIP_BUDGET),
        loader_images_per_s=per(SKIP_BUDGET), loader_workers=per(SKIP_BUDGET), gpu_starved=per(SKIP_BUDGET),
        precision=SKIP_BUDGET, ddp=SKIP_BUDGET, cuda_cells=SKIP_BUDGET)


def clean(v, path: str = '', nulls: dict | None = None):
    "`v` with every NaN/inf float written None (JSON has no NaN), each such path and why recorded in `nulls`."
    if isinstance(v, dict): return {k: clean(x, f'{path}.{k}' if path else str(k), nulls) for k, x in v.items()}
    if isinstance(v, (list, tuple)): return [clean(x, f'{path}[{i}]', nulls) for i, x in enumerate(v)]
    if isinstance(v, (float, np.floating)):
        if math.isfinite(v): return float(v)
        if nulls is not None: nulls[path] = f'{v} (no finite value: e.g. a Dice with no positive pixel, or a loss that diverged)'
        return None
    if isinstance(v, np.integer): return int(v)
    if isinstance(v, np.bool_): return bool(v)
    return v


class Report:
    "The JSON report: settings, one status per phase, and the figures; rewritten (atomically) after every phase."
    def __init__(self, out: Path, settings: dict, figures: dict, phases: list[str]):
        self.out, self.lock = out, threading.RLock()
        self.data = dict(settings=settings, phases={p: dict(status=SKIP_BUDGET, seconds=0., cap_s=None) for p in phases},
                         figures=figures, details={}, nulls={})
    @property
    def figures(self) -> dict: return self.data['figures']
    @property
    def details(self) -> dict: return self.data['details']
    def phase(self, name: str, status: str, seconds: float = 0., cap: float | None = None):
        self.data['phases'][name] = dict(status=status, seconds=round(seconds, 1), cap_s=None if cap is None else round(cap, 1))
        self.write()
    def write(self):
        with self.lock:
            nulls = {}
            data = clean({k: v for k, v in self.data.items() if k != 'nulls'}, '', nulls)
            data['nulls'] = {**self.data['nulls'], **nulls}
            self.out.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(self.out, json.dumps(data, indent=1, default=str, allow_nan=False).encode())


class PhaseSkipped(Exception):
    "A phase that cannot run here (its message is the status, e.g. 'skipped: no CUDA')."


class PhaseTimeout(BaseException):
    "The watchdog's alarm: the phase reached its cap (a BaseException, so library code that catches Exception lets it by)."


class Stopped(BaseException):
    "SIGTERM or SIGINT: write what was measured, end the children, exit."
    def __init__(self, signum: int): self.signum = signum; super().__init__(signal.Signals(signum).name)


CHILDREN: set[subprocess.Popen] = set()  # child process groups (DDP launch, nbdev-test) to end on a stop


def end_children():
    "End every child process group still running: SIGTERM, then SIGKILL after 5 s."
    for p in list(CHILDREN):
        try: os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError: pass
    for p in list(CHILDREN):
        try: p.wait(5)
        except subprocess.TimeoutExpired:
            try: os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError: pass
        CHILDREN.discard(p)


def _on_alarm(signum, frame): raise PhaseTimeout()
def _on_stop(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN); signal.signal(signal.SIGINT, signal.SIG_IGN)  # once: the summary is being written
    raise Stopped(signum)


class Watchdog:
    "Ends a phase at its cap (SIGALRM raises `PhaseTimeout` in it); a phase still running `GRACE_S` later ends the run."
    def __init__(self, report: Report): self.report, self.done = report, None
    def start(self, name: str, cap: float):
        self.done = threading.Event()
        threading.Thread(target=self._watch, args=(name, cap, self.done), daemon=True).start()
        signal.setitimer(signal.ITIMER_REAL, max(cap, 0.01))
    def stop(self):
        signal.setitimer(signal.ITIMER_REAL, 0)
        if self.done is not None: self.done.set()
    def _watch(self, name: str, cap: float, done: threading.Event):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGTERM, signal.SIGINT})  # they are the main thread's
        if not done.wait(cap + GRACE_S): self._hung(name, cap)
    def _hung(self, name: str, cap: float):
        "The phase ignored its alarm (blocked in native code): record it, end the children, write, exit."
        why = f'hung: no answer {GRACE_S:.0f} s after its {cap:.0f} s cap; the run was ended'
        with self.report.lock:
            self.report.data['phases'][name].update(status=why, seconds=round(cap + GRACE_S, 1), cap_s=round(cap, 1))
            self.report.data['stopped'] = f'{name} hung'
            end_children()
            self.report.write()
        print(f"-- {name}: {why}", flush=True)
        os._exit(3)


def _injected_hang(name: str):
    "Tests: GPU_CHECK_HANG=a,b makes those phases sleep (the alarm ends them); GPU_CHECK_HANG_HARD=a also blocks the alarm."
    hard = name in os.environ.get('GPU_CHECK_HANG_HARD', '').split(',')
    if hard: signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    if hard or name in os.environ.get('GPU_CHECK_HANG', '').split(','):
        print(f"{name}: hanging (injected)", flush=True); time.sleep(10**6)


def run_phase(report: Report, budget: Budget, dog: Watchdog, name: str, fn, min_s: float = 3.):
    "Run `fn(deadline)` under the phase's cap and the watchdog; record 'ok', the skip, the stop or the error (the run goes on)."
    cap = budget.cap(_share(name))
    if cap < min_s: return report.phase(name, SKIP_BUDGET, cap=cap)
    print(f"\n== {name} (cap {cap:.0f} s, {budget.left():.0f} s left in the budget)", flush=True)
    t0 = time.monotonic()
    report.phase(name, 'running', cap=cap)
    dog.start(name, cap)
    try:
        try:
            _injected_hang(name)
            fn(t0 + 0.95 * cap); status = 'ok'  # the phase aims to end a little before the alarm
        finally: dog.stop()
    except PhaseSkipped as e: status = str(e)
    except PhaseTimeout: status = STOPPED_CAP
    except Exception as e:
        traceback.print_exc()
        status = f'error: {type(e).__name__}: {e}'.splitlines()[0][:400]
    report.phase(name, status, time.monotonic() - t0, cap)
    print(f"-- {name}: {status} ({time.monotonic() - t0:.0f} s)", flush=True)


def is_alloc_failure(e: BaseException) -> bool:
    "An allocation failure of any kind: the caching allocator's, cuBLAS's or cuDNN's workspace, 32-bit indexing limits."
    return isinstance(e, torch.cuda.OutOfMemoryError) or (isinstance(e, RuntimeError) and any(k in str(e).lower() for k in ALLOC_ERRORS))


# ---------------------------------------------------------------------------------------------------------------------
# What is checked: the 1st-place recipe at one size

def recipe_at(size: int, bs: int | None = None, encoder: str | None = None) -> Recipe:
    "The 1st-place recipe's stages at `size`: its frozen-encoder stage, then its unfrozen stage (with its batch, accumulation, lr, sampler)."
    r = load_config(CONFIG).recipe
    at = [s for s in r.stages if s.size == size] or [replace(r.stages[-1], size=size)]
    unfrozen = next((s for s in at if not s.frozen), replace(at[-1], frozen=False))
    # the config freezes the encoder at its first size only; elsewhere its first stage's frozen settings at this size
    frozen = next((s for s in at if s.frozen), replace(r.stages[0], size=size, bs=unfrozen.bs, accum=unfrozen.accum))
    stages = [replace(s, bs=bs or s.bs, accum=1 if bs else s.accum) for s in (frozen, unfrozen)]
    return replace(r, stages=stages, encoder=encoder or r.encoder)


def with_steps(r: Recipe, folds, steps: int) -> Recipe:
    "The recipe with epochs set for about `steps` training batches (a quarter frozen, the rest unfrozen)."
    train_pos = folds.has_mask[folds.fold != 0].to_numpy(bool)
    def epochs(st: Stage, n: int) -> int:
        per = epoch_length(train_pos, pos_frac_at(st.pos_frac, 0)) // st.bs
        if per < 1: raise ValueError(f"{len(train_pos)} training images give no batch of {st.bs} at pos_frac {st.pos_frac}: raise --n-train")
        return max(1, math.ceil(n / per))
    f, u = r.stages
    return replace(r, stages=[replace(f, epochs=epochs(f, max(1, steps // 4))), replace(u, epochs=epochs(u, steps - steps // 4))])


class Meter(Callback):
    """Times the training batches of each stage (steady state: after `warmup` of them, and from each epoch's second batch;
    validation excluded), keeps the losses, and ends a stage at its deadline."""
    order = 99  # after the Recorder
    def __init__(self, deadlines: list[float], warmup: int):
        self.deadlines, self.warmup, self.stage = deadlines, warmup, -1
        self.losses, self.stats, self.epochs_done = [], [], 0

    def _stop(self, where: str):
        "At the stage's deadline: end the stage once an epoch has finished (a checkpoint exists), else end this epoch's training."
        if time.monotonic() < self.deadlines[min(self.stage, len(self.deadlines) - 1)]: return
        if self.epochs_done: self.stats[-1]['stopped'] = 'phase cap'; raise CancelFitException()
        if where == 'batch': self.stats[-1]['stopped'] = 'phase cap'; raise CancelTrainException()

    def before_fit(self):
        self.stage += 1
        self.stats.append(dict(batches=0, images=0, seconds=0., stopped=None, bs=self.dls.train.bs))
        self._stop('fit')
    def before_train(self): self.last = None; self._stop('train')  # an epoch's first batch waits for the loader processes to start
    def after_epoch(self): self.epochs_done += 1
    def after_batch(self):
        if not self.training: return
        self.losses.append(float(self.learn.loss.detach()))  # a sync: the clock below sees the GPU's work done
        now, st = time.perf_counter(), self.stats[-1]
        st['batches'] += 1
        if st['batches'] > self.warmup and self.last is not None: st['images'] += len(self.xb[0]); st['seconds'] += now - self.last
        self.last = now
        self._stop('batch')

    def rate(self, i: int):
        "Images/s of stage `i`, or why there is none."
        if i >= len(self.stats): return SKIP_BUDGET
        st = self.stats[i]
        return round(st['images'] / st['seconds'], 2) if st['seconds'] > 0 else f"skipped: {st['stopped'] or 'no batch after warm-up'}"


def loss_fell(losses: list[float]):
    "Mean loss of the last fifth of the steps below that of the first fifth."
    if len(losses) < 4: return f'skipped: {len(losses)} steps'
    k = max(2, len(losses) // 5)
    return bool(np.mean(losses[-k:]) < np.mean(losses[:k]))


def _sync(device: torch.device):
    if device.type == 'cuda': torch.cuda.synchronize(device)


class TrainStep:
    "The recipe's unfrozen training step on batches already on the device: mixed precision (CUDA), channels-last, Adam."
    def __init__(self, r: Recipe, device: torch.device, compile: bool | str = False):
        st, cuda = r.stages[-1], device.type == 'cuda'
        self.device, self.cuda = device, cuda
        self.model = build_model(r.arch, r.encoder, None, **r.model_kwargs, classes=r.classes).to(device)
        self.model = self.model.to(memory_format=torch.channels_last).train()
        self.loss_fn = get_loss(st.loss, mode=r.mode, **st.loss_kwargs)
        self.opt = torch.optim.Adam(self.model.parameters(), 1e-4)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cuda)
        if compile:  # static shapes: one graph per size, recompiled (never widened to a dynamic one) after the reset
            torch._dynamo.reset()
            self.model.compile(dynamic=False, **({} if compile is True else dict(backend=compile)))

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.cuda):
            loss = self.loss_fn(self.model(x), y)
        self.scaler.scale(loss).backward(); self.scaler.step(self.opt); self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        return loss

    def rate(self, batches: list, steps: int, warmup: int, end: float) -> dict:
        "First step's seconds (compile, cuDNN autotuning), then images/s over up to `steps` steady steps before `end`."
        t0 = time.perf_counter(); self(*batches[0]); _sync(self.device)
        first = time.perf_counter() - t0
        for i in range(warmup): self(*batches[(i + 1) % len(batches)])
        _sync(self.device)
        n, t0 = 0, time.perf_counter()
        while n < steps and (time.monotonic() < end or n < 2):
            x, y = batches[n % len(batches)]
            self(x, y); n += 1
        _sync(self.device)
        secs = time.perf_counter() - t0
        return dict(images_per_s=round(n * len(batches[0][0]) / secs, 2), steps=n, first_step_s=round(first, 2),
                    steady_step_s=round(secs / n, 4))


# ---------------------------------------------------------------------------------------------------------------------
# The phases

class Check:
    "State shared by the phases: arguments, device, folders, and what earlier phases left (run folders, rates)."
    def __init__(self, a, report: Report, budget: Budget, tmp: Path):
        self.a, self.report, self.budget, self.tmp = a, report, budget, tmp
        self.device = torch.device('cuda' if torch.cuda.is_available() and not a.tiny else 'cpu')
        self.cuda = self.device.type == 'cuda'
        self.fig, self.runs, self.folds = report.figures, {}, None

    def recipe(self, size: int) -> Recipe: return recipe_at(size, self.a.bs)

    def need_data(self):
        if self.folds is None: raise PhaseSkipped('skipped: no data (the data phase did not finish)')

    # 1. data
    def data(self, deadline: float):
        a, workers = self.a, default_workers()
        t0 = time.monotonic()
        self.siim = SiimDir(make_mini_siim(self.tmp/'mini', n_train=a.n_train, n_test=a.n_test, size=a.dicom_size,
                                           n_workers=workers, progress=False))
        build_cache(self.siim.train_dicoms, self.tmp/'cache', sizes=a.sizes, labels=self.siim.train_labels,
                    n_workers=workers, progress=False)
        self.folds = make_folds(self.siim.train_labels, n_splits=load_config(CONFIG).data.n_splits, seed=0, n_bins=1)
        save_folds(self.folds, self.tmp/'folds.csv')
        self.report.details['data'] = dict(n_train=a.n_train, n_test=a.n_test, dicom_size=a.dicom_size, cached=a.sizes,
                                           positives=int(self.folds.has_mask.sum()), seconds=round(time.monotonic() - t0, 1))
        print(f"{a.n_train} training + {a.n_test} test DICOMs at {a.dicom_size} px, cached at {a.sizes} px "
              f"({int(self.folds.has_mask.sum())} with a pneumothorax)")

    # 2. train (eager, end to end through the loader)
    def train(self, size: int, deadline: float):
        self.need_data()
        r = with_steps(self.recipe(size), self.folds, self.a.steps)
        now = time.monotonic()
        reserve = 0.15 * (deadline - now)  # the out-of-fold maps at the end of the fold
        meter = Meter([now + 0.4 * (deadline - now), deadline - reserve], warmup=self.a.warmup)
        if self.cuda: torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
        run = self.tmp/f'run_{size}'
        print(f"{size} px: stages {[(s.epochs, s.bs, s.accum, 'frozen' if s.frozen else 'unfrozen') for s in r.stages]} "
              f"(epochs, bs, accum), ~{self.a.steps} steps", flush=True)
        seed_everything(0)
        try: summary = train_fold(r, self.tmp/'cache', self.folds, 0, run, device=str(self.device), tensorboard=False,
                                  cbs=[meter], n_workers=self.a.workers)
        finally: self._record_train(size, meter)
        self.runs[size] = run
        self.report.details[f'train_{size}'] = dict(summary=summary, stages=meter.stats, n_losses=len(meter.losses))

    def _record_train(self, size: int, meter: Meter):
        s = str(size)
        self.fig['train_images_per_s'][s] = {k: meter.rate(i) for i, k in enumerate(('frozen', 'unfrozen'))}
        self.fig['loss_fell'][s] = loss_fell(meter.losses)
        self.fig['train_batch_size'][s] = self.recipe(size).stages[-1].bs
        if self.cuda: self.fig['peak_memory_gb'][s] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        print(f"{size} px: images/s {self.fig['train_images_per_s'][s]}, loss fell: {self.fig['loss_fell'][s]}"
              + (f", peak {self.fig['peak_memory_gb'][s]} GB" if self.cuda else ''), flush=True)
        self.report.write()

    # 3. appetite: the GPU's own rate, eager then compiled, on batches already on the device
    def _device_batches(self, size: int, n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
        st = self.recipe(size).stages[-1]
        dls = siim_dataloaders(self.tmp/'cache', size, self.folds, 0, bs=st.bs, aug=st.aug, pos_frac=st.pos_frac,
                               n_workers=0, device=self.device)
        out = []
        for xb, yb in dls.train:
            out.append((xb.as_subclass(torch.Tensor).contiguous(memory_format=torch.channels_last), yb.as_subclass(torch.Tensor)))
            if len(out) == n: break
        return out

    def appetite(self, size: int, deadline: float):
        self.need_data()
        s, r, batches = str(size), self.recipe(size), self._device_batches(size)
        eager_end = time.monotonic() + 0.25 * (deadline - time.monotonic())
        eager = TrainStep(r, self.device).rate(batches, self.a.steps, self.a.warmup, eager_end)
        self.fig['gpu_images_per_s'][s]['eager'] = eager['images_per_s']
        self.report.details[f'appetite_{size}'] = dict(eager=eager, bs=len(batches[0][0]), batches_on_device=len(batches),
                                                        cudnn_benchmark=torch.backends.cudnn.benchmark, channels_last=True,
                                                        mixed_precision='float16' if self.cuda else 'off (CPU: float32)')
        self.report.write()
        print(f"{size} px eager, on the device: {eager}", flush=True)
        step = TrainStep(r, self.device, compile=self.a.compile_backend)  # the compiler reset: a fresh static graph per size
        compiled = step.rate(batches, self.a.steps, self.a.warmup, deadline)
        self.fig['gpu_images_per_s'][s]['compiled'] = compiled['images_per_s']
        self.fig['compile_s'][s] = round(max(0., compiled['first_step_s'] - compiled['steady_step_s']), 2)
        self.report.details[f'appetite_{size}']['compiled'] = dict(compiled, backend=str(self.a.compile_backend), dynamic=False)
        print(f"{size} px compiled, on the device: {compiled}", flush=True)

    # 4. inference
    def inference(self, deadline: float):
        self.need_data()
        cfg, files = load_config(CONFIG), dicom_files(self.siim.test_dicoms)
        for size in self.a.sizes:
            if time.monotonic() > deadline: break
            if size not in self.runs: self.fig['inference_images_per_s'][str(size)] = 'skipped: no trained run'; continue
            models = [m.to(memory_format=torch.channels_last) for m in load_fold_models(self.runs[size], device=self.device)]
            kw = dict(tta=cfg.inference.tta, bs=cfg.inference.bs, device=self.device, n_workers=self._workers())
            predict_dicoms(models, files[:cfg.inference.bs], size, self.tmp/f'warm_{size}.npy', **kw)
            _sync(self.device)
            t0 = time.perf_counter()
            predict_dicoms(models, files, size, self.tmp/f'test_{size}.npy', **kw)
            _sync(self.device)
            rate = len(files) / (time.perf_counter() - t0)
            self.fig['inference_images_per_s'][str(size)] = round(rate, 2)
            self.report.details[f'inference_{size}'] = dict(models=len(models), tta=cfg.inference.tta, bs=cfg.inference.bs,
                                                            images=len(files), workers=self._workers(), channels_last=True)
            print(f"{size} px: {len(models)} checkpoints x {cfg.inference.tta} TTA, {len(files)} test DICOMs: {rate:.1f} images/s")

    # 5. precision: float32 against float16 and bfloat16
    def precision(self, deadline: float):
        self.need_data()
        size = self.a.sizes[0]
        if size not in self.runs: raise PhaseSkipped('skipped: no trained run')
        model = load_fold_models(self.runs[size], device=self.device)[0].to(memory_format=torch.channels_last)
        files = dicom_files(self.siim.test_dicoms)[:4]
        x = normalise(torch.stack([DicomDataset(files, size)[i][0] for i in range(len(files))]).to(self.device))
        x = x.contiguous(memory_format=torch.channels_last)
        bs = load_config(CONFIG).inference.bs
        xb = x.repeat(math.ceil(bs / len(x)), 1, 1, 1)[:bs].contiguous(memory_format=torch.channels_last)
        per = (deadline - time.monotonic()) / 3
        with _no_tf32(): p32, r32 = _forward(model, x, xb, None, time.monotonic() + per)  # a true float32 reference
        res = dict(size=size, images=len(files), bs=bs, channels_last=True, float32=dict(images_per_s=r32))
        # float16 keeps 11 significant bits, bfloat16 8: tolerances on the probabilities scale with them
        for dtype, tol in ((torch.float16, dict(mean_abs=1e-3, max_abs=0.05)), (torch.bfloat16, dict(mean_abs=1e-2, max_abs=0.2))):
            name = str(dtype).replace('torch.', '')
            try: p, rate = _forward(model, x, xb, dtype, time.monotonic() + per)
            except Exception as e: res[name] = f'error: {type(e).__name__}: {e}'.splitlines()[0][:200]; continue
            diff = (p32 - p).abs()
            res[name] = dict(images_per_s=rate, max_abs_diff=round(diff.max().item(), 5), mean_abs_diff=round(diff.mean().item(), 6),
                             pixels_same_mask=round(((p32 > 0.5) == (p > 0.5)).float().mean().item(), 6), tolerance=tol,
                             agree=bool(diff.mean().item() <= tol['mean_abs'] and diff.max().item() <= tol['max_abs']))
        self.fig['precision'] = res
        print(res)

    # 6. loader
    def _workers(self) -> int: return _loader_workers(self.a.workers, self.device)

    def loader(self, deadline: float):
        self.need_data()
        sizes = self.a.sizes
        for i, size in enumerate(sizes):
            end = time.monotonic() + (deadline - time.monotonic()) / (len(sizes) - i)
            st, w = self.recipe(size).stages[-1], self._workers()
            dls = siim_dataloaders(self.tmp/'cache', size, self.folds, 0, bs=st.bs, aug=st.aug, pos_frac=st.pos_frac,
                                   n_workers=self.a.workers, device=self.device, persistent_workers=w > 0)
            n, t0, t_start, first_s = 0, None, time.perf_counter(), None
            for _ in range(self.a.loader_passes):
                for xb, yb in dls.train:
                    if t0 is None:  # the first batch waits for the worker processes to start: timed apart
                        _sync(self.device); t0 = time.perf_counter(); first_s = round(t0 - t_start, 2); continue
                    n += len(xb)
                    if time.monotonic() > end: break
                if time.monotonic() > end: break
            _sync(self.device)
            secs = time.perf_counter() - (t0 or time.perf_counter())
            rate = round(n / secs, 2) if n and secs > 0 else 'skipped: no batch after the first before the cap'
            self.fig['loader_images_per_s'][str(size)] = rate
            self.fig['loader_workers'][str(size)] = w
            self.report.details[f'loader_{size}'] = dict(images=n, seconds=round(secs, 2), first_batch_s=first_s, bs=st.bs, persistent_workers=w > 0,
                                                         passes=self.a.loader_passes, timed='after the first batch')
            del dls
            print(f"{size} px: siim_dataloaders with {w} workers (its default here), bs {st.bs}, after its first batch: {rate} images/s")

    # 7. batch
    def batch(self, deadline: float):
        for i, size in enumerate(self.a.sizes):
            end = time.monotonic() + (deadline - time.monotonic()) / (len(self.a.sizes) - i)
            self.fig['largest_batch'][str(size)] = self.largest_batch(size, end)
            self.report.write()

    def largest_batch(self, size: int, end: float):
        "Doubling search from the configured batch: one training step per batch size; any allocation failure ends it."
        r, fail_at = self.recipe(size), int(os.environ.get('GPU_CHECK_ALLOC_FAIL_AT', 0))
        step = TrainStep(r, self.device)
        bs, ok, peaks, stopped = r.stages[-1].bs, None, {}, f'cap ({self.a.max_bs})'
        while bs <= self.a.max_bs:
            if time.monotonic() > end: stopped = 'phase cap'; break
            x = y = None
            try:
                if self.cuda: torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
                if fail_at and bs >= fail_at: raise RuntimeError('CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)` (injected)')
                x = torch.randn(bs, 3, size, size, device=self.device).contiguous(memory_format=torch.channels_last)
                y = (torch.rand(bs, size, size, device=self.device) > 0.9).long()
                step(x, y); _sync(self.device)
                ok = bs
                peaks[bs] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if self.cuda else None
                bs *= 2
            except Exception as e:
                if not is_alloc_failure(e): raise
                stopped = f'allocation failure at {bs}: {type(e).__name__}: {str(e).splitlines()[0][:160]}'
                break
            finally:
                x = y = None; step.opt.zero_grad(set_to_none=True)
                if self.cuda: torch.cuda.empty_cache()
        del step
        self.report.details[f'batch_{size}'] = dict(peak_gb_by_bs=peaks, stopped=stopped)
        print(f"{size} px: peak GB by batch {peaks}; largest that fits {ok}; stopped: {stopped}")
        return ok if ok is not None else f'error: the configured batch does not fit ({stopped})'

    # 7. ddp
    def ddp(self, deadline: float):
        self.need_data()
        size, a = self.a.sizes[0], self.a
        r, n = self.recipe(size), torch.cuda.device_count() if self.cuda else 1
        train_pos = self.folds.has_mask[self.folds.fold != 0].to_numpy(bool)
        # each process must get a batch of the (small) epoch: many GPUs take smaller batches each
        stages = [dict(_stage_dict(s), epochs=1, bs=max(1, min(s.bs, epoch_length(train_pos, pos_frac_at(s.pos_frac, 0)) // n)))
                  for s in r.stages]
        cfg = dict(base=CONFIG, name='gpu-check-ddp', description='the 1st-place stages at one size, one epoch each',
                   model=dict(encoder=r.encoder), train=dict(top_k=1), stages=stages, data=dict(folds=[0]))
        (self.tmp/'ddp.yaml').write_text(yaml.safe_dump(cfg, sort_keys=False))
        cmd = [sys.executable, *train_command(self.tmp/'ddp.yaml', self.tmp/'cache', self.tmp/'folds.csv', self.tmp/'run_ddp', fold=0,
                                              device=None if self.cuda else 'cpu', workers=a.workers, tensorboard=False, distributed=True,
                                              processes=None if self.cuda else 1)]
        print(' '.join(cmd[1:]), flush=True)
        t0 = time.monotonic()
        res = _run(cmd, timeout=deadline - time.monotonic())
        secs = round(time.monotonic() - t0, 1)
        group = (('nccl' if self.cuda else 'gloo') if n > 1 else
                 'none: a world of one' + (' (one GPU; NCCL takes one rank per GPU)' if self.cuda else ' (the command asks one CPU process)'))
        out = dict(world_size=n, bs_per_process=[st['bs'] for st in stages], process_group=group,
                   command=' '.join(['pneumokit', *cmd[3:]]), seconds=secs, exit=res['exit'])
        if res['exit'] == 0:
            summary = RunDir(self.tmp/'run_ddp').collect_summary()
            out.update(status='ok', oof_dice=round(float(summary.oof_dice.iloc[0]), 4))
        else: out.update(status=res['status'], tail=res['tail'])
        self.fig['ddp'] = out
        print({k: v for k, v in out.items() if k != 'tail'})
        if out['status'] == STOPPED_CAP: raise PhaseSkipped(STOPPED_CAP)
        if out['status'] != 'ok': raise RuntimeError(f"pneumokit train --distributed: {out['status']}")

    # 9. cuda cells
    def cuda_cells(self, deadline: float):
        nbs = cuda_notebooks()
        self.report.details['cuda_cells_not_run'] = {nb: 'a how-to on the Kaggle download (hours of training), not a check'
                                                     for nb in sorted(set(cuda_notebooks(tutorials=True)) - set(nbs))}
        if not self.cuda:
            self.fig['cuda_cells'] = dict(status=SKIP_CUDA, notebooks=nbs)
            raise PhaseSkipped(SKIP_CUDA)
        results = {nb: 'not run: budget' for nb in nbs}
        self.fig['cuda_cells'] = dict(status='running', notebooks=results)
        for nb in nbs:
            left = deadline - time.monotonic()
            if left < 5: continue
            t0 = time.monotonic()
            # nbdev-test through this Python (with --target wheels there is no console script on the PATH)
            # (called from code, nbdev_test takes keywords: fastcore's call_parse parses sys.argv only for a console script)
            res = _run([sys.executable, '-c', "import sys; from nbdev.test import nbdev_test; nbdev_test(path=sys.argv[1], flags='cuda')", nb],
                       timeout=left, cwd=ROOT)
            secs = time.monotonic() - t0
            results[nb] = ('pass' if res['exit'] == 0 else f"not run: phase cap (stopped after {secs:.0f} s)"
                           if res['status'] == STOPPED_CAP else f"fail: {res['status']}")
            print(f"{nb}: {results[nb]}")
            if res['exit'] != 0: print(res['tail'])
            self.report.write()
        vals = list(results.values())
        self.fig['cuda_cells'] = dict(notebooks=results, status='pass' if all(v == 'pass' for v in vals) else
                                      'fail' if any(v.startswith('fail') for v in vals) else 'not run: phase cap')


class _no_tf32:
    "Full float32 matrix products and convolutions inside the block."
    def __enter__(self):
        self.old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    def __exit__(self, *_): torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self.old


@torch.no_grad()
def _forward(model, x: torch.Tensor, xb: torch.Tensor, dtype, end: float, reps: int = 20):
    "Probabilities of `x` under `dtype` autocast (None: float32), and images/s of forward passes over the batch `xb` until `end`."
    ctx = lambda: torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None)
    with ctx(): p = torch.sigmoid(model(x).float())
    with ctx(): model(xb)  # warm: cuDNN's autotuning for this shape and type
    _sync(x.device)
    n, t0 = 0, time.perf_counter()
    while n < reps and (time.monotonic() < end or n < 1):
        with ctx(): model(xb)
        n += 1
    _sync(x.device)
    return p, round(n * len(xb) / (time.perf_counter() - t0), 2)


def _stage_dict(s: Stage) -> dict:
    "A stage as a config's YAML writes it."
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(s).items() if k != 'loss_kwargs' or v}


def cuda_notebooks(tutorials: bool = False) -> list[str]:
    "The notebooks (relative to the repo) with a `#| cuda` cell; the tutorials' (a Kaggle download and hours of training) only with `tutorials`."
    out = []
    for nb in sorted((ROOT/'nbs').rglob('*.ipynb') if tutorials else (ROOT/'nbs').glob('*.ipynb')):
        if '.ipynb_checkpoints' in nb.parts: continue
        cells = json.loads(nb.read_text()).get('cells', [])
        if any(c['cell_type'] == 'code' and ''.join(c['source']).lstrip().startswith('#| cuda') for c in cells):
            out.append(str(nb.relative_to(ROOT)))
    return out


def _run(cmd: list[str], timeout: float, cwd: Path | None = None) -> dict:
    "Run `cmd` in its own process group (ended at `timeout`, or on a stop); returns its exit, a status and its output's tail."
    p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    CHILDREN.add(p)
    try:
        out, _ = p.communicate(timeout=max(1., timeout))
        status = 'ok' if p.returncode == 0 else f'error: exit {p.returncode}'
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGTERM)
        try: out, _ = p.communicate(timeout=10)
        except subprocess.TimeoutExpired: os.killpg(p.pid, signal.SIGKILL); out, _ = p.communicate()
        status = STOPPED_CAP
    finally:
        if p.returncode is None: end_children()  # a stop (SIGTERM, the alarm) while waiting: the group ends with us
        CHILDREN.discard(p)
    lines = [l.rsplit('\r', 1)[-1] for l in (out or '').splitlines() if '%' not in l]  # progress bars left out
    return dict(exit=p.returncode if status != STOPPED_CAP else None, status=status, tail='\n'.join(lines[-15:]))


# ---------------------------------------------------------------------------------------------------------------------

def settings(a, device: torch.device) -> dict:
    "What ran where: versions, the device, the budget and the sizes."
    cuda = device.type == 'cuda'
    return dict(config=CONFIG, tiny=a.tiny, budget_s=a.budget_s, spent_before_s=a.spent_s, install_s=a.install_s, sizes=a.sizes,
                steps_per_run=a.steps, warmup=a.warmup, phases=a.phases,
                device=torch.cuda.get_device_name(0) if cuda else platform.processor() or 'cpu',
                gpus=torch.cuda.device_count() if cuda else 0, cpu_cores=default_workers(),
                torch=torch.__version__, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if cuda else None,
                cudnn_benchmark=torch.backends.cudnn.benchmark,
                mixed_precision='float16 autocast + GradScaler' if cuda else 'off (CPU: float32)',
                channels_last=True, compile_backend=str(a.compile_backend), compile_dynamic=False, python=platform.python_version(),
                fastai_from=str(Path(fastai.__file__).resolve().parents[1]))


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--budget-s', type=float, default=None, help='whole-run time budget in seconds (default 480; --tiny 600: a shared CPU is slow)')
    p.add_argument('--spent-s', type=float, default=0., help='seconds of the budget already spent (e.g. installing the wheels)')
    p.add_argument('--started-at', type=float, default=None, help='Unix time the budget started (gpu_run.sh: before the install); overrides --spent-s')
    p.add_argument('--install-s', type=float, default=None, help='seconds the wheels took to install (recorded)')
    p.add_argument('--tiny', action='store_true', help='the same phases on the CPU at toy sizes (what the tests run)')
    p.add_argument('--out', type=Path, default=ROOT/'reports'/'gpu-check.json', help='JSON report')
    p.add_argument('--phases', default=None, help='comma-separated phases or groups to run (default: all), e.g. data,loader')
    p.add_argument('--sizes', type=int, nargs='+', default=None, help='training sizes (default 512 1024; --tiny 32 64)')
    p.add_argument('--steps', type=int, default=None, help='training batches per size (default 60; --tiny 6)')
    p.add_argument('--warmup', type=int, default=None, help='batches per stage left out of the timing (default 5; --tiny 1)')
    p.add_argument('--n-train', type=int, default=None, help='synthetic training DICOMs (default 320; --tiny 40)')
    p.add_argument('--n-test', type=int, default=None, help='synthetic test DICOMs (default 32; --tiny 4)')
    p.add_argument('--bs', type=int, default=None, help="batch size for every size (default: the config's; --tiny 4)")
    p.add_argument('--max-bs', type=int, default=None, help="largest batch the batch search tries (default 4096; --tiny 16)")
    p.add_argument('--workers', type=int, default=None, help="loader processes (default: what siim_dataloaders chooses)")
    p.add_argument('--compile-backend', default=None, help="torch.compile backend (default inductor; --tiny eager)")
    p.add_argument('--loader-passes', type=int, default=None, help='passes over the training loader to time (default 3; --tiny 2)')
    p.add_argument('--min-cap-s', type=float, default=None, help='start a phase only with this much of a cap (default 10 s for training, DDP and appetite, else 3)')
    p.add_argument('--keep', type=Path, default=None, help='work in this folder and keep it (default: a temporary one)')
    a = p.parse_args(argv)
    tiny = dict(budget_s=600, sizes=[32, 64], steps=6, warmup=1, n_train=40, n_test=4, bs=4, compile_backend='eager',
                dicom_size=64, loader_passes=2, max_bs=16)
    full = dict(budget_s=480, sizes=[512, 1024], steps=60, warmup=5, n_train=320, n_test=32, bs=None, compile_backend='inductor',
                dicom_size=1024, loader_passes=3, max_bs=4096)
    for k, v in (tiny if a.tiny else full).items():
        if getattr(a, k, None) is None: setattr(a, k, v)
    a.dicom_size = max(a.dicom_size, max(a.sizes))
    if a.compile_backend == 'inductor': a.compile_backend = True
    names = phase_names(a.sizes)
    want = None if a.phases is None else [w.strip() for w in a.phases.split(',') if w.strip()]
    if want is not None:
        bad = [w for w in want if w not in names and w not in {n.split('_')[0] for n in names}]
        if bad: p.error(f"--phases: unknown {bad}; choose from {names} or their groups")
    a.phases = [n for n in names if want is None or n in want or n.split('_')[0] in want]
    return a


def main(argv=None) -> int:
    a = parse(argv)
    if a.started_at is not None: a.spent_s = round(max(0., time.time() - a.started_at), 1)  # the install and the imports
    budget = Budget(a.budget_s, a.spent_s)
    if a.tiny: SHARES.update(TINY_SHARES)
    device = torch.device('cuda' if torch.cuda.is_available() and not a.tiny else 'cpu')
    if device.type == 'cuda': torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN picks each convolution's fastest kernel
    report = Report(a.out, settings(a, device), empty_figures(a.sizes, device.type == 'cuda'), phase_names(a.sizes))
    for n in phase_names(a.sizes):
        if n not in a.phases: report.data['phases'][n]['status'] = 'skipped: not selected (--phases)'
    report.write()
    print(json.dumps(report.data['settings']))
    tmp = a.keep or Path(tempfile.mkdtemp(prefix='gpu_check_'))
    tmp.mkdir(parents=True, exist_ok=True)
    chk, dog, code = Check(a, report, budget, tmp), Watchdog(report), None
    old = {s: signal.signal(s, h) for s, h in ((signal.SIGALRM, _on_alarm), (signal.SIGTERM, _on_stop), (signal.SIGINT, _on_stop))}
    steps = dict(data=chk.data, inference=chk.inference, precision=chk.precision, loader=chk.loader, batch=chk.batch,
                 ddp=chk.ddp, cuda=chk.cuda_cells,
                 **{f'train_{s}': (lambda d, s=s: chk.train(s, d)) for s in a.sizes},
                 **{f'appetite_{s}': (lambda d, s=s: chk.appetite(s, d)) for s in a.sizes})
    try:
        for name in a.phases:
            min_s = a.min_cap_s if a.min_cap_s is not None else 10 if name.startswith(('train', 'ddp', 'appetite')) else 3
            run_phase(report, budget, dog, name, steps[name], min_s=min_s)
    except Stopped as e:
        code = 128 + e.signum
        print(f'\n{e}: writing what was measured, ending the child processes', flush=True)
        for v in report.data['phases'].values():
            if v['status'] == 'running': v['status'] = f'stopped: {e}'
            elif v['status'] == SKIP_BUDGET: v['status'] = f'skipped: {e}'
        report.data['stopped'] = str(e)
    finally:
        dog.stop()
        end_children()
        finish(report, chk)
        for s, h in old.items(): signal.signal(s, h)
        if a.keep is None: shutil.rmtree(tmp, ignore_errors=True)
    if code is not None: return code
    errors = [k for k, v in report.data['phases'].items() if v['status'].startswith('error')]
    return 1 if errors else 0


def finish(report: Report, chk: Check):
    "Starved or not (the loader's rate against the GPU's own, two independent measurements), the table, and the final JSON."
    fig = report.figures
    for s in map(str, chk.a.sizes):
        load, gpu = fig['loader_images_per_s'][s], fig['gpu_images_per_s'][s]
        if not isinstance(load, float): continue
        best = max((v for v in gpu.values() if isinstance(v, float)), default=None)
        fig['gpu_starved'][s] = (dict(starved=load < best, loader=load, gpu=best, gpu_eager=gpu['eager'], gpu_compiled=gpu['compiled'],
                                      ratio=round(load / best, 2)) if best else 'skipped: no GPU rate (appetite did not run)')
    report.data['seconds'] = round(time.monotonic() - chk.budget.t0 + chk.budget.spent, 1)
    report.write()
    print(f"\n{'figure':<34} value")
    for k, v in flat(fig):
        print(f"{k:<34} {v}")
    print(f"\nphases: " + ', '.join(f"{k} {v['status']}" for k, v in report.data['phases'].items()))
    print(f"report: {report.out} ({report.data['seconds']:.0f} s)", flush=True)


def flat(d: dict, prefix: str = '') -> list[tuple[str, object]]:
    "Nested figures as (dotted name, value) rows, dicts of measurements kept whole."
    rows = []
    for k, v in d.items():
        name = f'{prefix}{k}'
        if isinstance(v, dict) and k not in ('precision', 'ddp', 'cuda_cells') and not {'starved'} & set(v):
            rows += flat(v, name + '.')
        else: rows.append((name, json.dumps(v, default=str) if isinstance(v, (dict, list)) else v))
    return rows


if __name__ == '__main__':
    sys.exit(main())
