"""Is the full-size recipe ready for a GPU? One command, a time budget, every figure in one JSON file.

`make gpu-check` (or `.venv/bin/python benchmarks/gpu_check.py`) on a machine with the repo and a CUDA GPU:

1. data      a synthetic mini SIIM-ACR at 1024 px (`make_mini_siim`), cached at every checked size (`build_cache`), 5 folds;
2. train     the 1st-place recipe's own settings (`load_config('siim-1st-place')`: UNet/ResNet34, combo loss, the
             `siim-1st` augmentations, the positive-rate sampler, a frozen-encoder stage then an unfrozen one, its batch
             size and accumulation at each size) through `train_fold` — mixed precision and channels-last are what it
             switches on by itself on CUDA — at 512 and 1024 px, without and with `torch.compile`: training images/s
             per stage, the peak GPU memory, and whether the loss fell;
3. inference the fold ensemble of each eager run (`load_fold_models`) over the test DICOMs with the config's TTA
             (hflip), through `predict_dicoms`: images/s;
4. fp16      the trained model's fp32 forward pass against its autocast one (float16 on CUDA, bfloat16 on a CPU);
5. loader    the training loader `siim_dataloaders` builds by default (its worker count) at each size: images/s,
             against the model's appetite measured in 2 (is the GPU starved?);
6. batch     the largest batch that fits at each size (a doubling search from the configured batch, mixed precision,
             channels-last, out-of-memory caught);
7. ddp       `pneumokit train CONFIG ... --distributed` as a user types it, over every visible GPU (one GPU: a world of
             one; `--tiny`: one gloo process on the CPU);
8. cuda      `nbdev-test --flags cuda` on the notebooks that hold `#| cuda` cells.

Every phase has a cap (a share of `--budget-min`, default 8 minutes) and the run stops cleanly when the budget is
spent: the JSON (written after every phase) then says `"skipped: budget"` for what did not run, `"skipped: no CUDA"` for
what needs a GPU, and `"error: ..."` for a phase that failed (the exit status is then 1). Nothing is downloaded: the
encoder trains from scratch, as the shipped config says (`weights: null`).

`--tiny` runs the same phases on the CPU at toy sizes (32 and 64 px, batch 4, a few steps) in a minute or two;
`make test` runs it (tests/test_gpu_check.py), so the script cannot rot between GPU visits.

Not yet run on a GPU: no machine was lent to the session that wrote it; only `--tiny` has run (2 shared CPU cores).

Run: `.venv/bin/python benchmarks/gpu_check.py [--budget-min 8] [--tiny] [--out reports/gpu-check.json] [--sizes 512 1024]`
"""
from __future__ import annotations
import argparse, json, math, os, platform, shutil, signal, subprocess, sys, tempfile, time, traceback
from dataclasses import replace
from pathlib import Path

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
SKIP_BUDGET, SKIP_CUDA = 'skipped: budget', 'skipped: no CUDA'
TINY_ONCE = 'skipped: --tiny compiles at the first size only'
# Each phase's cap, as a share of the whole budget (a phase also never runs past what is left of it).
SHARES = dict(data=0.08, eager=0.08, compiled=0.15, inference=0.04, fp16=0.02, loader=0.04, batch=0.06, ddp=0.10, cuda=0.20)
TINY_SHARES = dict(eager=0.15, compiled=0.15, fp16=0.03, ddp=0.25)  # on a CPU, starting Python and tracing weigh more than the work
SETTINGS = ('eager', 'compiled')


# ---------------------------------------------------------------------------------------------------------------------
# The budget, and a report that is always complete

class Budget:
    "Seconds left of the whole run; a phase's cap is its share of the total, never more than what is left."
    def __init__(self, minutes: float): self.t0, self.total = time.monotonic(), minutes * 60
    def left(self) -> float: return self.total - (time.monotonic() - self.t0)
    def cap(self, share: float) -> float: return max(0., min(share * self.total, self.left()))


def empty_figures(sizes: list[int], cuda: bool) -> dict:
    "Every figure the check reports, each 'skipped: budget' (or 'skipped: no CUDA') until a phase measures it."
    per = lambda v: {str(s): v for s in sizes}
    gpu = SKIP_BUDGET if cuda else SKIP_CUDA
    return dict(
        train_images_per_s={str(s): {k: {'frozen': SKIP_BUDGET, 'unfrozen': SKIP_BUDGET} for k in SETTINGS} for s in sizes},
        loss_fell={str(s): {k: SKIP_BUDGET for k in SETTINGS} for s in sizes},
        peak_memory_gb=per(gpu), train_batch_size=per(SKIP_BUDGET), largest_batch=per(gpu),
        inference_images_per_s=per(SKIP_BUDGET),
        loader_images_per_s=per(SKIP_BUDGET), loader_workers=per(SKIP_BUDGET), gpu_starved=per(SKIP_BUDGET),
        fp16_fp32_agree=SKIP_BUDGET, ddp=SKIP_BUDGET, cuda_cells=SKIP_BUDGET)


class Report:
    "The JSON report: settings, one status per phase, and the figures; rewritten (atomically) after every phase."
    def __init__(self, out: Path, settings: dict, figures: dict):
        self.out, self.data = out, dict(settings=settings, phases={}, figures=figures, details={})
    @property
    def figures(self) -> dict: return self.data['figures']
    @property
    def details(self) -> dict: return self.data['details']
    def phase(self, name: str, status: str, seconds: float = 0.):
        self.data['phases'][name] = dict(status=status, seconds=round(seconds, 1))
        self.write()
    def write(self):
        self.out.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(self.out, json.dumps(self.data, indent=1, default=str).encode())


class PhaseSkipped(Exception):
    "A phase that cannot run here (its message is the status, e.g. 'skipped: no CUDA')."


def run_phase(report: Report, budget: Budget, name: str, fn, min_s: float = 3.):
    "Run `fn(deadline)` under the phase's cap; record 'ok', the skip, or the error (the run goes on)."
    cap = budget.cap(SHARES[name])
    if cap < min_s: return report.phase(name, SKIP_BUDGET)
    print(f"\n== {name} (cap {cap:.0f} s, {budget.left():.0f} s left in the budget)", flush=True)
    t0 = time.monotonic()
    try: fn(t0 + cap); status = 'ok'
    except PhaseSkipped as e: status = str(e)
    except Exception as e:
        traceback.print_exc()
        status = f'error: {type(e).__name__}: {e}'.splitlines()[0][:400]
    report.phase(name, status, time.monotonic() - t0)
    print(f"-- {name}: {status} ({time.monotonic() - t0:.0f} s)", flush=True)


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


# ---------------------------------------------------------------------------------------------------------------------
# The phases

class Check:
    "State shared by the phases: arguments, device, folders, and what earlier phases left (run folders, rates)."
    def __init__(self, a, report: Report, budget: Budget, tmp: Path):
        self.a, self.report, self.budget, self.tmp = a, report, budget, tmp
        self.device = torch.device('cuda' if torch.cuda.is_available() and not a.tiny else 'cpu')
        self.cuda = self.device.type == 'cuda'
        self.fig, self.runs, self.train_rate, self.folds = report.figures, {}, {}, None

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

    # 2. train
    def train(self, size: int, setting: str, deadline: float):
        self.need_data()
        compile = (self.a.compile_backend if setting == 'compiled' else False)
        r = with_steps(self.recipe(size), self.folds, self.a.steps)
        now = time.monotonic()
        reserve = 0.15 * (deadline - now)  # the out-of-fold maps at the end of the fold
        meter = Meter([now + 0.4 * (deadline - now), deadline - reserve], warmup=self.a.warmup)
        if self.cuda: torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
        run = self.tmp/f'run_{size}_{setting}'
        print(f"{size} px, {setting}: stages {[(s.epochs, s.bs, s.accum, 'frozen' if s.frozen else 'unfrozen') for s in r.stages]} "
              f"(epochs, bs, accum), ~{self.a.steps} steps", flush=True)
        seed_everything(0)
        try: summary = train_fold(r, self.tmp/'cache', self.folds, 0, run, device=str(self.device), tensorboard=False,
                                  cbs=[meter], compile=compile, n_workers=self.a.workers)
        finally: self._record_train(size, setting, meter)
        self.runs[(size, setting)] = run
        self.report.details[f'train_{size}_{setting}'] = dict(summary=summary, stages=meter.stats, n_losses=len(meter.losses))

    def _record_train(self, size: int, setting: str, meter: Meter):
        s = str(size)
        rates = {k: meter.rate(i) for i, k in enumerate(('frozen', 'unfrozen'))}
        self.fig['train_images_per_s'][s][setting] = rates
        self.fig['loss_fell'][s][setting] = loss_fell(meter.losses)
        self.fig['train_batch_size'][s] = self.recipe(size).stages[-1].bs
        if setting == 'eager' and isinstance(rates['unfrozen'], float): self.train_rate[size] = rates['unfrozen']
        if self.cuda and setting == 'eager': self.fig['peak_memory_gb'][s] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if self.cuda: self.report.details[f'peak_memory_gb_{size}_{setting}'] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        print(f"{size} px, {setting}: images/s {rates}, loss fell: {self.fig['loss_fell'][s][setting]}"
              + (f", peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GB" if self.cuda else ''), flush=True)
        self.report.write()

    # 3. inference
    def inference(self, deadline: float):
        self.need_data()
        cfg, files = load_config(CONFIG), dicom_files(self.siim.test_dicoms)
        for size in self.a.sizes:
            if time.monotonic() > deadline: break
            if (size, 'eager') not in self.runs: self.fig['inference_images_per_s'][str(size)] = 'skipped: no trained run'; continue
            models = load_fold_models(self.runs[(size, 'eager')], device=self.device)
            warm = files[:cfg.inference.bs]
            predict_dicoms(models, warm, size, self.tmp/f'warm_{size}.npy', tta=cfg.inference.tta, bs=cfg.inference.bs,
                           device=self.device, n_workers=self._workers(size))
            if self.cuda: torch.cuda.synchronize()
            t0 = time.perf_counter()
            predict_dicoms(models, files, size, self.tmp/f'test_{size}.npy', tta=cfg.inference.tta, bs=cfg.inference.bs,
                           device=self.device, n_workers=self._workers(size))
            if self.cuda: torch.cuda.synchronize()
            rate = len(files) / (time.perf_counter() - t0)
            self.fig['inference_images_per_s'][str(size)] = round(rate, 2)
            self.report.details[f'inference_{size}'] = dict(models=len(models), tta=cfg.inference.tta, bs=cfg.inference.bs,
                                                            images=len(files), workers=self._workers(size))
            print(f"{size} px: {len(models)} checkpoints x {cfg.inference.tta} TTA, {len(files)} test DICOMs: {rate:.1f} images/s")

    # 4. fp16
    def fp16(self, deadline: float):
        self.need_data()
        size = self.a.sizes[0]
        if (size, 'eager') not in self.runs: raise PhaseSkipped('skipped: no trained run')
        model = load_fold_models(self.runs[(size, 'eager')], device=self.device)[0]
        files = dicom_files(self.siim.test_dicoms)[:4]
        x = normalise(torch.stack([DicomDataset(files, size)[i][0] for i in range(len(files))]).to(self.device))
        dtype = torch.float16 if self.cuda else torch.bfloat16
        with torch.no_grad(), _no_tf32():  # a true float32 reference: CUDA convolutions default to TF32
            p32 = torch.sigmoid(model(x).float())
        with torch.no_grad(), torch.autocast(self.device.type, dtype=dtype): p16 = torch.sigmoid(model(x).float())
        diff = (p32 - p16).abs()
        # float16 keeps 11 significant bits, bfloat16 8: tolerances on the probabilities scale with them
        tol = dict(mean_abs=1e-3, max_abs=0.05) if self.cuda else dict(mean_abs=1e-2, max_abs=0.2)
        same = ((p32 > 0.5) == (p16 > 0.5)).float().mean().item()
        res = dict(dtype=str(dtype).replace('torch.', ''), size=size, images=len(files), max_abs_diff=round(diff.max().item(), 5),
                   mean_abs_diff=round(diff.mean().item(), 6), pixels_same_mask=round(same, 6), tolerance=tol,
                   agree=bool(diff.mean().item() <= tol['mean_abs'] and diff.max().item() <= tol['max_abs']))
        self.fig['fp16_fp32_agree'] = res
        print(res)

    # 5. loader
    def _workers(self, size: int) -> int:
        return _loader_workers(self.a.workers, self.device)

    def loader(self, deadline: float):
        self.need_data()
        sizes = self.a.sizes
        for i, size in enumerate(sizes):
            end = time.monotonic() + (deadline - time.monotonic()) / (len(sizes) - i)
            st = self.recipe(size).stages[-1]
            dls = siim_dataloaders(self.tmp/'cache', size, self.folds, 0, bs=st.bs, aug=st.aug, pos_frac=st.pos_frac,
                                   n_workers=self.a.workers, device=self.device)
            n, t0 = 0, time.perf_counter()
            for _ in range(self.a.loader_passes):
                if time.monotonic() > end: break
                for xb, yb in dls.train:
                    n += len(xb)
                    if time.monotonic() > end: break
            if self.cuda: torch.cuda.synchronize()
            rate = n / (time.perf_counter() - t0)
            w = self._workers(size)
            self.fig['loader_images_per_s'][str(size)] = round(rate, 2)
            self.fig['loader_workers'][str(size)] = w
            print(f"{size} px: siim_dataloaders with {w} workers (its default here), bs {st.bs}: {rate:.1f} images/s")

    # 6. batch
    def batch(self, deadline: float):
        if not self.cuda: raise PhaseSkipped(SKIP_CUDA)
        for i, size in enumerate(self.a.sizes):
            end = time.monotonic() + (deadline - time.monotonic()) / (len(self.a.sizes) - i)
            self.fig['largest_batch'][str(size)] = self.largest_batch(size, end)

    def largest_batch(self, size: int, end: float):
        "Doubling search from the configured batch: one mixed-precision, channels-last training step per batch size."
        r = self.recipe(size)
        model = build_model(r.arch, r.encoder, None, **r.model_kwargs, classes=r.classes).to(self.device)
        model = model.to(memory_format=torch.channels_last).train()
        opt, loss_fn, scaler = torch.optim.Adam(model.parameters(), 1e-4), get_loss('combo'), torch.amp.GradScaler('cuda')
        bs, ok, peaks = r.stages[-1].bs, None, {}
        while time.monotonic() < end and bs <= 4096:
            try:
                torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
                x = torch.randn(bs, 3, size, size, device=self.device).to(memory_format=torch.channels_last)
                y = (torch.rand(bs, size, size, device=self.device) > 0.9).long()
                with torch.autocast('cuda', dtype=torch.float16): loss = loss_fn(model(x), y)
                scaler.scale(loss).backward(); scaler.step(opt); scaler.update(); opt.zero_grad(set_to_none=True)
                torch.cuda.synchronize()
                ok, peaks[bs] = bs, round(torch.cuda.max_memory_allocated() / 2**30, 2)
                bs *= 2
            except torch.cuda.OutOfMemoryError:
                break
            finally:
                x = y = loss = None
        del model, opt
        torch.cuda.empty_cache()
        self.report.details[f'batch_{size}'] = dict(peak_gb_by_bs=peaks, stopped='out of memory' if bs <= 4096 and time.monotonic() < end else 'cap')
        print(f"{size} px: peak GB by batch {peaks}; largest that fits {ok}")
        return ok if ok is not None else 'error: the configured batch does not fit'

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
        out = dict(world_size=n, bs_per_process=[st['bs'] for st in stages], backend='nccl' if self.cuda and n > 1 else ('gloo' if n > 1 else 'world of one'),
                   command=' '.join(['pneumokit', *cmd[3:]]), seconds=secs, exit=res['exit'])
        if res['exit'] == 0:
            summary = RunDir(self.tmp/'run_ddp').collect_summary()
            out.update(status='ok', oof_dice=round(float(summary.oof_dice.iloc[0]), 4))
        else: out.update(status=res['status'], tail=res['tail'])
        self.fig['ddp'] = out
        print({k: v for k, v in out.items() if k != 'tail'})
        if out['status'] != 'ok': raise RuntimeError(f"pneumokit train --distributed: {out['status']}")

    # 8. cuda cells
    def cuda_cells(self, deadline: float):
        nbs = cuda_notebooks()
        self.report.details['cuda_cells_not_run'] = {nb: 'a how-to on the Kaggle download (hours of training), not a check'
                                                     for nb in sorted(set(cuda_notebooks(tutorials=True)) - set(nbs))}
        if not self.cuda:
            self.fig['cuda_cells'] = dict(status=SKIP_CUDA, notebooks=nbs)
            raise PhaseSkipped(SKIP_CUDA)
        nbdev_test = Path(sys.executable).with_name('nbdev-test')
        results = {}
        for nb in nbs:
            left = deadline - time.monotonic()
            if left < 5: results[nb] = SKIP_BUDGET; continue
            res = _run([str(nbdev_test), '--flags', 'cuda', nb], timeout=left, cwd=ROOT)
            results[nb] = 'pass' if res['exit'] == 0 else res['status']
            print(f"{nb}: {results[nb]}")
            if res['exit'] != 0: print(res['tail'])
        self.fig['cuda_cells'] = dict(status='pass' if all(v == 'pass' for v in results.values()) else 'fail', notebooks=results)


class _no_tf32:
    "Full float32 matrix products and convolutions inside the block."
    def __enter__(self):
        self.old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    def __exit__(self, *_): torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self.old


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
    "Run `cmd` in its own process group; at `timeout` the group is ended. Returns its exit, a status and its output's tail."
    p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=max(1., timeout))
        status = 'ok' if p.returncode == 0 else f'error: exit {p.returncode}'
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGTERM)
        try: out, _ = p.communicate(timeout=20)
        except subprocess.TimeoutExpired: os.killpg(p.pid, signal.SIGKILL); out, _ = p.communicate()
        status = 'stopped: phase cap'
    lines = [l.rsplit('\r', 1)[-1] for l in (out or '').splitlines() if '%' not in l]  # progress bars left out
    return dict(exit=p.returncode if status != 'stopped: phase cap' else None, status=status, tail='\n'.join(lines[-15:]))


# ---------------------------------------------------------------------------------------------------------------------

def settings(a, device: torch.device) -> dict:
    "What ran where: versions, the device, the budget and the sizes."
    cuda = device.type == 'cuda'
    return dict(config=CONFIG, tiny=a.tiny, budget_min=a.budget_min, sizes=a.sizes, steps_per_run=a.steps, warmup=a.warmup,
                device=torch.cuda.get_device_name(0) if cuda else platform.processor() or 'cpu',
                gpus=torch.cuda.device_count() if cuda else 0, cpu_cores=default_workers(),
                torch=torch.__version__, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if cuda else None,
                mixed_precision='fastai MixedPrecision (float16 autocast + GradScaler)' if cuda else 'off (CPU: float32)',
                channels_last=cuda, compile_backend=a.compile_backend, python=platform.python_version())


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--budget-min', type=float, default=None, help='whole-run time budget in minutes (default 8; --tiny 4)')
    p.add_argument('--tiny', action='store_true', help='the same phases on the CPU at toy sizes (what `make test` runs)')
    p.add_argument('--out', type=Path, default=ROOT/'reports'/'gpu-check.json', help='JSON report')
    p.add_argument('--sizes', type=int, nargs='+', default=None, help='training sizes (default 512 1024; --tiny 32 64)')
    p.add_argument('--steps', type=int, default=None, help='training batches per size and setting (default 60; --tiny 6)')
    p.add_argument('--warmup', type=int, default=None, help='batches per stage left out of the timing (default 5; --tiny 1)')
    p.add_argument('--n-train', type=int, default=None, help='synthetic training DICOMs (default 320; --tiny 40)')
    p.add_argument('--n-test', type=int, default=None, help='synthetic test DICOMs (default 32; --tiny 4)')
    p.add_argument('--bs', type=int, default=None, help="batch size for every size (default: the config's; --tiny 4)")
    p.add_argument('--workers', type=int, default=None, help="loader processes (default: what siim_dataloaders chooses)")
    p.add_argument('--compile-backend', default=None, help="torch.compile backend (default inductor; --tiny eager)")
    p.add_argument('--loader-passes', type=int, default=None, help='passes over the training loader to time (default 3; --tiny 1)')
    p.add_argument('--keep', type=Path, default=None, help='work in this folder and keep it (default: a temporary one)')
    a = p.parse_args(argv)
    tiny = dict(budget_min=4, sizes=[32, 64], steps=6, warmup=1, n_train=40, n_test=4, bs=4, compile_backend='eager',
                dicom_size=64, loader_passes=1)
    full = dict(budget_min=8, sizes=[512, 1024], steps=60, warmup=5, n_train=320, n_test=32, bs=None, compile_backend='inductor',
                dicom_size=1024, loader_passes=3)
    for k, v in (tiny if a.tiny else full).items():
        if getattr(a, k, None) is None: setattr(a, k, v)
    a.dicom_size = max(a.dicom_size, max(a.sizes))
    if a.compile_backend == 'inductor': a.compile_backend = True
    return a


def main(argv=None) -> int:
    a = parse(argv)
    budget = Budget(a.budget_min)
    if a.tiny: SHARES.update(TINY_SHARES)
    device = torch.device('cuda' if torch.cuda.is_available() and not a.tiny else 'cpu')
    report = Report(a.out, settings(a, device), empty_figures(a.sizes, device.type == 'cuda'))
    report.write()
    print(json.dumps(report.data['settings']))
    tmp = a.keep or Path(tempfile.mkdtemp(prefix='gpu_check_'))
    tmp.mkdir(parents=True, exist_ok=True)
    chk = Check(a, report, budget, tmp)
    try:
        run_phase(report, budget, 'data', chk.data)
        for setting in SETTINGS:
            for i, size in enumerate(a.sizes):
                name = f'train_{size}_{setting}'
                SHARES[name] = SHARES[setting]
                if a.tiny and setting == 'compiled' and i > 0:  # tracing costs the same at every size: once is enough here
                    report.figures['train_images_per_s'][str(size)][setting] = {k: TINY_ONCE for k in ('frozen', 'unfrozen')}
                    report.figures['loss_fell'][str(size)][setting] = TINY_ONCE
                    report.phase(name, TINY_ONCE); continue
                run_phase(report, budget, name, lambda d, s=size, k=setting: chk.train(s, k, d), min_s=10)
        run_phase(report, budget, 'inference', chk.inference)
        run_phase(report, budget, 'fp16', chk.fp16)
        run_phase(report, budget, 'loader', chk.loader)
        run_phase(report, budget, 'batch', chk.batch)
        run_phase(report, budget, 'ddp', chk.ddp, min_s=10)
        run_phase(report, budget, 'cuda', chk.cuda_cells)
    except KeyboardInterrupt:
        print('interrupted: writing what was measured')
    finally:
        finish(report, chk)
        if a.keep is None: shutil.rmtree(tmp, ignore_errors=True)
    errors = [k for k, v in report.data['phases'].items() if v['status'].startswith('error')]
    return 1 if errors else 0


def finish(report: Report, chk: Check):
    "Starved or not (loader against training images/s), the table, and the final JSON."
    fig = report.figures
    for s in chk.a.sizes:
        load, train = fig['loader_images_per_s'][str(s)], chk.train_rate.get(s)
        if isinstance(load, float) and train: fig['gpu_starved'][str(s)] = dict(starved=load < train, loader=load, train=train,
                                                                                 ratio=round(load / train, 2))
        elif isinstance(load, float): fig['gpu_starved'][str(s)] = 'skipped: no training rate'
    report.data['seconds'] = round(chk.budget.total - chk.budget.left(), 1)
    report.write()
    print(f"\n{'figure':<34} value")
    for k, v in flat(fig):
        print(f"{k:<34} {v}")
    print(f"\nphases: " + ', '.join(f"{k} {v['status']}" for k, v in report.data['phases'].items()))
    print(f"report: {report.out} ({report.data['seconds']:.0f} s)")


def flat(d: dict, prefix: str = '') -> list[tuple[str, object]]:
    "Nested figures as (dotted name, value) rows, dicts of measurements kept whole."
    rows = []
    for k, v in d.items():
        name = f'{prefix}{k}'
        if isinstance(v, dict) and k not in ('fp16_fp32_agree', 'ddp', 'cuda_cells') and not {'starved'} & set(v):
            rows += flat(v, name + '.')
        else: rows.append((name, json.dumps(v, default=str) if isinstance(v, (dict, list)) else v))
    return rows


if __name__ == '__main__':
    sys.exit(main())
