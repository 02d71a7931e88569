"""The job's processes: ranks and devices from torchrun's or submitit's environment, one verdict for
all ranks, preemption signals agreed at a step boundary, and leaving the process group."""
import os
import signal
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist

from .errors import ConfigError, UserError

__all__ = ['Process', 'setup_distributed', 'on_rank_zero', 'Preemption', 'leave']


@dataclass(frozen=True)
class Process:
    """Where a run trains: this process's rank among `world` processes, its device and precision
    ('bf16', 'fp16' or 'none')."""
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device('cpu')
    amp: str = 'none'


def setup_distributed(device_arg: Optional[str], amp_arg: Optional[str]) -> Process:
    """This process's place: rank and world size from torchrun's or submitit's environment (RANK,
    WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), NCCL on GPUs and gloo on CPUs; the device (default
    cuda if there is one) and precision (default bf16 on CUDA, none elsewhere)."""
    rank, world, local = (int(os.environ.get(k, d)) for k, d in (('RANK', 0), ('WORLD_SIZE', 1), ('LOCAL_RANK', 0)))
    device = torch.device(device_arg or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise ConfigError('--device cuda was asked for but no CUDA GPU is visible: use --device cpu.')
        device = torch.device('cuda', local if device.index is None else device.index)
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo', rank=rank, world_size=world)
    amp = amp_arg or ('bf16' if device.type == 'cuda' else 'none')
    if amp == 'fp16' and device.type != 'cuda':
        raise ConfigError('--amp fp16 needs a CUDA GPU: use --amp bf16 or none on the CPU.')
    return Process(rank, world, device, amp)


def on_rank_zero(rank: int, world: int, check: Callable[[], None]) -> None:
    """Run `check` on rank 0 alone; every rank then raises the error it raised, or none, so that all
    ranks of a job reach one verdict (not rank 0 an error and the others torch's, in a collective)."""
    message = None
    if rank == 0:
        try:
            check()
        except UserError as e:
            message = str(e)
    if world > 1:
        box = [message]
        dist.broadcast_object_list(box, src=0)
        message = box[0]
    if message:
        raise ConfigError(message)


class Preemption:
    """SIGUSR2, SIGTERM and SIGINT (Ctrl-C) set a flag; the loop saves at the next step boundary, all
    ranks together. A second Ctrl-C stops at once, without a save.

    The handlers it replaces (submitit's, which checkpoints and requeues on rank 0) are called after
    the save, so a submitit job is requeued only once its checkpoint is on disk."""

    SIGNALS = (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)

    def __init__(self, world_size: int, device: torch.device, every: int = 10):
        self.signum, self.world_size, self.device, self.every, self.calls = 0, world_size, device, every, 0
        self.previous = {}
        for sig in self.SIGNALS:
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.signum = signum

    def requested(self) -> bool:
        """Whether any rank was signalled; distributed, one all-reduce every `every` calls, so that the
        ranks agree on the step without a device sync at each one."""
        if self.world_size == 1:
            return bool(self.signum)
        self.calls += 1
        if self.calls % self.every:
            return False
        flag = torch.tensor([self.signum], dtype=torch.int32, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.signum = self.signum or int(flag.item())
        return bool(flag.item())

    def hand_over(self) -> int:
        """After the save: let the previous handler (submitit's requeue) act; returns the exit code."""
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        handler = self.previous.get(self.signum)
        if callable(handler) and self.signum and handler is not signal.default_int_handler:
            handler(self.signum, None)  # submitit: rank 0 requeues and exits here
        return 128 + int(self.signum or signal.SIGTERM)


def leave() -> None:
    """All ranks meet, then leave the process group (a no-op in a single process)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
