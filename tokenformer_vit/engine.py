"""The training loop's parts, under the run (run.py) that the job and every study train with: the
optimizer, the learning-rate schedule, the loss, one training epoch and one evaluation pass.

`train_one_epoch` runs the optimizer steps of an epoch, from a given step on, and stops early at a
step boundary when `should_stop()` says so (a preemption signal, agreed by all ranks). Each step is
seeded from (seed, rank, global step), so a job resumed at any step draws the same random numbers
(mixup, drop path) as the run it continues, with nothing to save.
"""
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from .errors import DivergedError
from .transforms import normalize_batch

__all__ = ['seed_step', 'build_optimizer', 'schedule_lr', 'build_loss', 'LRSchedule', 'StepParts', 'train_one_epoch',
           'evaluate']


def seed_step(seed: int, rank: int, step: int) -> None:
    """Seed torch, numpy and Python for one optimizer step of one rank."""
    s = ((seed * 1_000_003 + rank) * 1_000_003 + step) % 2 ** 32
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95),
                    device: Optional[torch.device] = None,
                    layer_decay: Optional[float] = None) -> torch.optim.Optimizer:
    """timm's AdamW: no weight decay on biases, norms and the embeddings (1-D parameters and the
    model's `no_weight_decay`); the parameter tokens decay, as in the paper (τ is a buffer, not a
    parameter: nothing trains it). With `layer_decay`, timm's param_groups_layer_decay: one group per
    block of the model's `group_matcher` (the embeddings first, the head last), each learning rate
    scaled by layer_decay^(depth + 1 - layer), with the same weight-decay exclusions. Fused kernels on
    CUDA."""
    from timm.optim import create_optimizer_v2
    extra = dict(fused=True) if device is not None and device.type == 'cuda' else {}
    return create_optimizer_v2(model, 'adamw', lr=lr, weight_decay=weight_decay, betas=tuple(betas),
                               layer_decay=layer_decay, **extra)


def schedule_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate the schedule sets now: a group's, undone of its layer-decay scale (timm's `lr_scale`)."""
    group = optimizer.param_groups[0]
    return group['lr'] / group.get('lr_scale', 1.0)


def build_loss(mixup_active: bool, smoothing: float) -> torch.nn.Module:
    """Soft-target cross-entropy under mixup/cutmix (the mixed targets carry the smoothing), else
    label-smoothed or plain cross-entropy."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    if mixup_active:
        return SoftTargetCrossEntropy()
    return LabelSmoothingCrossEntropy(smoothing) if smoothing else torch.nn.CrossEntropyLoss()


class LRSchedule:
    """timm's cosine schedule with linear warmup, stepped per optimizer step, over a run that may grow.

    `continue`: one schedule over the whole run, whatever grows.
    `restart` (the job's default): at each growth (`grown(step)`, called by
    growth.grow_training_state) the warmup and the cosine start again, and decay to `min_lr` by the
    next planned growth or the end of the run, as the official code's separate training stages do.
    The segment ends come from the growth plan, the restarts from the growths that happened: both
    are in the checkpoint (`state_dict`).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: float,
                 warmup_lr: float, min_lr: float, policy: str = 'continue', planned: Iterable[int] = ()):
        if policy not in ('continue', 'restart'):
            raise ValueError(f"unknown schedule policy {policy!r}: use 'continue' or 'restart'")
        self.optimizer, self.total_steps, self.policy = optimizer, int(total_steps), policy
        self.warmup_steps, self.warmup_lr, self.min_lr = warmup_steps, warmup_lr, min_lr
        restarts = {int(s) for s in planned if 0 < s < total_steps} if policy == 'restart' else set()
        self.ends = sorted(restarts | {self.total_steps})
        self.starts = [0]
        self._segments = {}
        self.step_update(0)

    def _segment(self, start: int):
        if start not in self._segments:
            from timm.scheduler import CosineLRScheduler
            end = next((e for e in self.ends if e > start), max(self.total_steps, start + 1))
            self._segments[start] = CosineLRScheduler(
                self.optimizer, t_initial=end - start, lr_min=self.min_lr, warmup_t=min(self.warmup_steps, end - start),
                warmup_lr_init=self.warmup_lr, t_in_epochs=False)
        return self._segments[start]

    def step_update(self, num_updates: int, metric=None) -> None:
        """Set the learning rate for the step after `num_updates` optimizer steps."""
        start = max(s for s in self.starts if s <= num_updates)
        self._segment(start).step_update(num_updates - start, metric)

    def grown(self, step: int) -> None:
        """A growth at optimizer step `step`: under `restart` a new warmup and cosine begin here."""
        if self.policy == 'restart' and step > self.starts[-1]:
            self.starts.append(int(step))
            self.step_update(step)

    def state_dict(self) -> Dict:
        return dict(starts=list(self.starts), policy=self.policy)

    def load_state_dict(self, state: Dict) -> None:
        self.starts = [int(s) for s in state['starts']]


def _autocast(device: torch.device, amp_dtype: Optional[torch.dtype]):
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()


@dataclass(frozen=True)
class StepParts:
    """What each optimizer step of an epoch uses besides the model and the batch: the optimizer and
    the schedules stepped after it (the learning rate's, a growth's τ ramp), the loss, the input's
    normalisation (`mean`, `std`), its erasing (timm's RandomErasing) and mixing on the device, the
    precision, the EMA (following `raw_model`, the module inside DDP and torch.compile), gradient
    clipping, the seeds (`seed`, `rank`), and whether the model replays CUDA graphs (torch.compile's
    reduce-overhead), whose steps are then marked as new ones."""
    optimizer: torch.optim.Optimizer
    schedules: Sequence
    loss_fn: Callable
    device: torch.device
    mean: Sequence[float]
    std: Sequence[float]
    seed: int = 0
    rank: int = 0
    amp_dtype: Optional[torch.dtype] = None
    scaler: Optional[object] = None
    erasing: Optional[Callable] = None
    mixup: Optional[Callable] = None
    ema: Optional[torch.nn.Module] = None
    raw_model: Optional[torch.nn.Module] = None
    clip_grad: Optional[float] = None
    cuda_graph_steps: bool = False


def train_one_epoch(model: torch.nn.Module, batches: Iterable, parts: StepParts, step: int,
                    should_stop: Callable[[], bool] = lambda: False,
                    on_step: Callable[[int, float, float, int], None] = lambda *a: None) -> Dict:
    """Train on `batches` from global step `step`; returns the new step, the mean loss, the images
    seen by this rank and whether it stopped early for a preemption. Each batch is normalised, erased
    and mixed on the device, in timm's order; each of the schedules is stepped after every optimizer
    step. `model` may be wrapped (DDP, torch.compile)."""
    p = parts  # fixed for the epoch; the names below are the ones every step uses
    device, optimizer, scaler, clip_grad = p.device, p.optimizer, p.scaler, p.clip_grad
    model.train()
    loss_sum, loss_count, images, stopped = torch.zeros((), device=device), 0, 0, False
    for x, y in batches:
        seed_step(p.seed, p.rank, step)
        x = normalize_batch(x.to(device, non_blocking=True), p.mean, p.std)
        x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        if p.erasing is not None:  # timm's order: erase the normalised images, then mix them
            x = p.erasing(x)
        if p.mixup is not None:
            x, y = p.mixup(x, y)
        if p.cuda_graph_steps:
            torch.compiler.cudagraph_mark_step_begin()
        with _autocast(device, p.amp_dtype):
            loss = p.loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            optimizer.step()
        step += 1
        for schedule in p.schedules:
            schedule.step_update(num_updates=step)
        if p.ema is not None:
            p.ema.update(p.raw_model if p.raw_model is not None else model, step=step)
        loss_sum += loss.detach().float()
        loss_count += 1
        images += len(y)
        on_step(step, loss.detach(), schedule_lr(optimizer), len(y))
        if should_stop():
            stopped = True
            break
    mean_loss = (loss_sum / max(1, loss_count)).item()
    if not math.isfinite(mean_loss):
        raise DivergedError(f'the training loss became {mean_loss} by step {step}: lower --lr (or --blr) or set '
                            f'--clip-grad, and start a new --output (the last save is from before this epoch)')
    return dict(step=step, loss=mean_loss, images=images, stopped=stopped)


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable, *, device: torch.device, mean, std,
             amp_dtype: Optional[torch.dtype] = None, distributed: bool = False) -> Dict[str, float]:
    """Loss, top-1 and top-5 (in %) over every sample of `batches`, summed over ranks."""
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top1, top5, count
    t0 = time.perf_counter()
    for x, y in batches:
        x = normalize_batch(x.to(device, non_blocking=True), mean, std).contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        with _autocast(device, amp_dtype):
            logits = model(x)
        logits = logits.float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit = top.eq(y[:, None])
        totals += torch.stack([F.cross_entropy(logits, y, reduction='sum').double(), hit[:, :1].sum().double(),
                               hit.sum().double(), torch.tensor(float(len(y)), dtype=torch.float64, device=device)])
    if distributed:
        dist.all_reduce(totals)
    loss, top1, top5, n = totals.tolist()
    d = max(n, 1)  # no images: no figures (NaN), and `images` says 0
    nan = float('nan') if not n else 0.0
    return dict(loss=loss / d + nan, top1=100 * top1 / d + nan, top5=100 * top5 / d + nan, images=int(n),
                seconds=time.perf_counter() - t0)
