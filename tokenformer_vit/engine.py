"""One training epoch and one evaluation pass: the inner loops of the training job (train.py).

`train_one_epoch` runs the optimizer steps of an epoch, from a given step on, and stops early at a
step boundary when `should_stop()` says so (a preemption signal, agreed by all ranks). Each step is
seeded from (seed, rank, global step), so a job resumed at any step draws the same random numbers
(mixup, drop path) as the run it continues, with nothing to save.
"""
import math
import random
import time
from contextlib import nullcontext
from typing import Callable, Dict, Iterable, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from .transforms import normalize_batch

__all__ = ['seed_step', 'train_one_epoch', 'evaluate']


def seed_step(seed: int, rank: int, step: int) -> None:
    """Seed torch, numpy and Python for one optimizer step of one rank."""
    s = ((seed * 1_000_003 + rank) * 1_000_003 + step) % 2 ** 32
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


def _autocast(device: torch.device, amp_dtype: Optional[torch.dtype]):
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()


def train_one_epoch(model: torch.nn.Module, batches: Iterable, optimizer: torch.optim.Optimizer, scheduler,
                    loss_fn: Callable, *, device: torch.device, mean, std, step: int, seed: int, rank: int = 0,
                    amp_dtype: Optional[torch.dtype] = None, scaler=None, mixup=None, ema=None,
                    clip_grad: Optional[float] = None, raw_model: Optional[torch.nn.Module] = None,
                    should_stop: Callable[[], bool] = lambda: False,
                    on_step: Callable[[int, float, float, int], None] = lambda *a: None) -> Dict:
    """Train on `batches` from global step `step`; returns the new step, the mean loss, the images
    seen by this rank and whether it stopped early for a preemption. `model` may be wrapped (DDP,
    torch.compile); `raw_model` is the module the EMA follows."""
    model.train()
    loss_sum, loss_count, images, stopped = torch.zeros((), device=device), 0, 0, False
    for x, y in batches:
        seed_step(seed, rank, step)
        x = normalize_batch(x.to(device, non_blocking=True), mean, std).contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        if mixup is not None:
            x, y = mixup(x, y)
        with _autocast(device, amp_dtype):
            loss = loss_fn(model(x), y)
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
        scheduler.step_update(num_updates=step)
        if ema is not None:
            ema.update(raw_model if raw_model is not None else model, step=step)
        loss_sum += loss.detach().float()
        loss_count += 1
        images += len(y)
        on_step(step, loss.detach(), optimizer.param_groups[0]['lr'], len(y))
        if should_stop():
            stopped = True
            break
    mean_loss = (loss_sum / max(1, loss_count)).item()
    if not math.isfinite(mean_loss):
        raise FloatingPointError(f'training loss is {mean_loss} at step {step}: lower --lr or set --clip-grad')
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
    n = max(n, 1)
    return dict(loss=loss / n, top1=100 * top1 / n, top5=100 * top5 / n, images=int(n),
                seconds=time.perf_counter() - t0)
