"""The training job behind `train_imagenet.py` (flags: config.py; launcher: submit.py): train a Tokenformer-ViT on WebDataset shards on one
device, over DDP (torchrun or submitit) or on a Slurm cluster, grow it on a schedule, and survive
preemption without losing work.

    python train_imagenet.py --config configs/demo.yaml
    python train_imagenet.py --config configs/tokenformer_vit_base.yaml --data-dir /data/imagenet-wds --output runs/b
    torchrun --nproc-per-node 8 train_imagenet.py --config configs/tokenformer_vit_base.yaml ...
    python train_imagenet.py --config configs/tokenformer_vit_base.yaml ... --submit --cluster slurm --nodes 4 --gpus-per-node 8

A job whose --output holds `last.pth.tar` resumes from it: model, EMA, optimizer, scaler,
scheduler, step and data position; growth events it has passed are not repeated. On SIGUSR2 or
SIGTERM the job saves at the next step boundary and stops (under submitit rank 0 then requeues).
"""
import argparse
import csv
import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

import torch
import torch.distributed as dist
import yaml

from .checkpoint import CheckpointError, atomic_file, read_checkpoint, save_atomic, validate_command
from .config import ConfigError
from .errors import UserError
from .data import build_loader, read_info
from .engine import LRSchedule, build_loss, build_optimizer, evaluate, train_one_epoch
from .growth import GrowthError, grow_training_state, ramp_tau, token_counts
from .pattention import Pattention, set_pattention_impl
from .triton_env import interpreting

__all__ = ['Run', 'create_model', 'build_model', 'build_run', 'grow_if_scheduled', 'train_epoch', 'main']


# ----------------------------------------------------------------------------------------------------------------
# processes and devices


def setup_distributed(device_arg: Optional[str]):
    """(rank, world size, device): from torchrun's or submitit's environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR/PORT); NCCL on GPUs, gloo on CPUs."""
    rank, world, local = (int(os.environ.get(k, d)) for k, d in (('RANK', 0), ('WORLD_SIZE', 1), ('LOCAL_RANK', 0)))
    device = torch.device(device_arg or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise ConfigError('--device cuda was asked for but no CUDA GPU is visible: use --device cpu.')
        device = torch.device('cuda', local if device.index is None else device.index)
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo', rank=rank, world_size=world)
    return rank, world, device


class Preemption:
    """SIGUSR2 / SIGTERM set a flag; the loop saves at the next step boundary, all ranks together.

    The handlers it replaces (submitit's, which checkpoints and requeues on rank 0) are called after
    the save, so a submitit job is requeued only once its checkpoint is on disk."""

    SIGNALS = (signal.SIGUSR2, signal.SIGTERM)

    def __init__(self, world_size: int, device: torch.device, every: int = 10):
        self.signum, self.world_size, self.device, self.every, self.calls = 0, world_size, device, every, 0
        self.previous = {}
        for sig in self.SIGNALS:
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
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
        if callable(handler) and self.signum:
            handler(self.signum, None)  # submitit: rank 0 requeues and exits here
        return 128 + int(self.signum or signal.SIGTERM)


# ----------------------------------------------------------------------------------------------------------------
# model, checkpoints, logs


def create_model(args, num_classes: int, attn_tokens: Optional[int] = None, ffn_tokens: Optional[int] = None):
    import timm
    kwargs = dict(args.model_kwargs)
    if attn_tokens is not None:
        kwargs.update(attn_tokens=attn_tokens, ffn_tokens=ffn_tokens)
    if args.img_size:
        kwargs['img_size'] = args.img_size
    try:
        model = timm.create_model(args.model, num_classes=num_classes, drop_path_rate=args.drop_path, **kwargs)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f'cannot create --model {args.model} with {kwargs}: {e}') from None
    if args.pattention_impl != 'auto':
        # speed only: not a model argument, so checkpoints and the validate command stay portable
        if not any(isinstance(m, Pattention) for m in model.modules()):
            raise ConfigError(f'--pattention-impl {args.pattention_impl} is for Tokenformer models; '
                              f'--model {args.model} has no Pattention layers: leave it at auto.')
        set_pattention_impl(model, args.pattention_impl)
    return model


def _plain(value):
    """Args as plain Python values (timm loads checkpoints with weights_only=True)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def write_logs(output: Path, log: Dict[str, list], growth_history: List[Dict]) -> None:
    """summary.csv (timm's columns) and curves.png (growth events marked) from the run's log, each
    written atomically."""
    rows = log['epochs']
    if rows:
        with atomic_file(output / 'summary.csv', 'w') as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[-1].keys()))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: row.get(k, '') for k in rows[-1]})
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if log['steps']:
        steps, losses = zip(*[(s['step'], s['loss']) for s in log['steps']])
        ax1.plot(steps, losses, lw=1, label='train loss')
    for key, label in (('eval_top1', 'top-1'), ('eval_ema_top1', 'EMA top-1')):
        points = [(r['step'], r[key]) for r in rows if r.get(key) is not None]
        if points:
            ax2.plot(*zip(*points), marker='o', label=label)
    for ax in (ax1, ax2):
        for g in growth_history:
            ax.axvline(g['step'], color='tab:red', ls='--', lw=1)
            ax.text(g['step'], ax.get_ylim()[1], f" grow {g['attn_tokens'][1]}/{g['ffn_tokens'][1]}",
                    color='tab:red', fontsize=8, va='top')
        ax.set_xlabel('step')
        ax.legend(loc='best')
    ax1.set_ylabel('loss')
    ax2.set_ylabel('top-1 (%)')
    fig.tight_layout()
    with atomic_file(output / 'curves.png') as f:
        fig.savefig(f, format='png', dpi=110)
    plt.close(fig)


def _ensure_shards(args, rank: int, world: int) -> None:
    """Build --data-dir from --shards-from if it has no _info.json: on rank 0, the others waiting for
    its verdict (a missing data set is one sentence on every rank)."""
    root = Path(args.data_dir)
    if (root / '_info.json').is_file() or not args.shards_from:
        return

    def build():
        from .make_shards import make_shards
        for split in (args.train_split, args.val_split):
            print(f'building {args.shards_from} {split} shards in {root}', flush=True)
            try:
                make_shards(args.shards_from, split, root, shard_size=2500, workers=max(1, os.cpu_count() or 1),
                            name=args.shards_from.replace('-', '_'), max_pixels=args.max_image_pixels)
            except OSError as e:
                raise ConfigError(f'cannot write the {args.shards_from} shards to --data-dir {root} ({e.strerror}): '
                                  f'free space there or choose another --data-dir.') from None
    on_rank_zero(rank, world, build)


# ----------------------------------------------------------------------------------------------------------------
# the job


class RunFolder:
    """The job's claim on its --output: the folder (made if missing) and an OS lock on OUTPUT/.lock,
    held for the process's life, so that a second job on the same folder is refused instead of
    resuming the first one's saves under it. flock dies with its process: a killed job's lock never
    blocks, so a requeued task takes it again. Only rank 0 claims; the other ranks of a job follow it.
    `release` undoes what the claim made (the folder, the lock file) when the job is refused."""

    LOCK = '.lock'

    def __init__(self, out: Path):
        self.out, self.lock, self.made = out, None, []

    def claim(self) -> None:
        import fcntl
        import socket
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f'--output {self.out} is a file: pass a folder for the run.')
        missing = [p for p in (self.out, *self.out.parents) if not p.exists()]
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self.made = missing  # deepest first, as they are removed
            path = self.out / self.LOCK
            if not path.exists():
                self.made = [path] + self.made
            f = open(path, 'a+')
        except OSError as e:
            self.release()
            raise ConfigError(f'cannot write to --output {self.out} ({e.strerror}): choose a writable folder with '
                              f'free space.') from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or 'a process that wrote no name'
            f.close()
            raise ConfigError(f'--output {self.out} is in use by another job ({holder}): wait for it to end, or '
                              f'choose another --output.') from None
        f.seek(0)
        f.truncate()
        f.write(f'pid {os.getpid()} on {socket.gethostname()}\n')
        f.flush()
        self.lock = f
        # a forked child (a loader worker) shares the lock: it closes its copy, so that a killed
        # job's lock goes with the job, not with workers that outlive it for a few seconds
        os.register_at_fork(after_in_child=self._close_in_child)

    def _close_in_child(self) -> None:
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def release(self) -> None:
        """Remove the lock file and the folders that the claim made, if nothing else was written there."""
        for path in self.made:
            try:
                path.unlink() if path.name == self.LOCK and path.parent == self.out else path.rmdir()
            except OSError:  # not empty: the job wrote into it, or another one did
                break
        self.made = []
        if self.lock is not None:
            self.lock.close()
            self.lock = None


# what a run writes in its folder (besides checkpoint-EPOCH.pth.tar, and tb/ with --tensorboard)
RUN_FILES = ('last.pth.tar', 'best.pth.tar', 'summary.csv', 'curves.png', 'config.yaml', '.write-test')


def prepare_output(out: Path, overwrite: bool) -> None:
    """Make sure the claimed run folder can be written, clear what killed saves left, and never start
    a new run over an earlier run's results: they are kept unless --overwrite (a run resumes from
    last.pth.tar, so results without it are another run's). --overwrite removes only the files a
    run writes (best.pth.tar, summary.csv, curves.png, checkpoint-N.pth.tar)."""
    try:
        with atomic_file(out / '.write-test'):
            pass
        (out / '.write-test').unlink()
    except OSError as e:
        raise ConfigError(f'cannot write to --output {out} ({e.strerror}): choose a writable folder with free space.') from None
    for stale in out.glob('.*.tmp'):  # atomic_file's temporaries (.NAME.<random>.tmp) of saves killed half-way
        name = stale.name[1:-len('.tmp')].rsplit('.', 1)[0]
        if name in RUN_FILES or re.fullmatch(r'checkpoint-\d+\.pth\.tar', name):
            stale.unlink(missing_ok=True)
    results = [p for p in ('best.pth.tar', 'summary.csv', 'curves.png') if (out / p).exists()]
    results += sorted(p.name for p in out.glob('checkpoint-*.pth.tar'))
    if results and not (out / 'last.pth.tar').exists():
        if not overwrite:
            raise ConfigError(f'--output {out} holds results of an earlier run ({", ".join(results)}) but no '
                              f'last.pth.tar to resume from: choose a new --output, or pass --overwrite to replace them.')
        for name in results:
            (out / name).unlink()


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


def check_resume(args: argparse.Namespace, resume: Dict, world: int) -> None:
    """A run resumes with the global batch it was trained with (the step count, the data position and
    the schedule all depend on it) and with the model it was started with: another width fails to
    load, and other token counts would silently train on at the checkpoint's size."""
    path = Path(args.output) / 'last.pth.tar'
    saved = resume.get('args') or {}
    before = resume.get('global_batch') or (saved.get('batch_size') and saved['batch_size'] * world)
    if before and before != args.batch_size * world:
        raise ConfigError(f'{path} was trained with a global batch of {before}, not '
                          f'{args.batch_size * world} (--batch-size {args.batch_size} x {world} process(es)): resume '
                          f'with the same batch, or start a new --output.')
    started = _start_tokens(saved.get('model'), saved.get('model_kwargs'))
    asked = _start_tokens(args.model, dict(args.model_kwargs))
    if started and asked and started != asked:
        try:
            now = ' (it holds {}/{} tokens now)'.format(*token_counts(resume['state_dict']))
        except GrowthError:
            now = ''
        raise ConfigError(f'{path} was started with attn_tokens={started[0]}, ffn_tokens={started[1]}{now}, but '
                          f'--model {args.model} with --model-kwargs {dict(args.model_kwargs)} starts at '
                          f'{asked[0]}/{asked[1]}: resume with the flags it was started with, or start a new --output.')


def _start_tokens(model: Optional[str], model_kwargs) -> Optional[tuple]:
    """(attn_tokens, ffn_tokens) a run of this --model and --model-kwargs starts with, or None when
    that cannot be told (no record, not a Tokenformer-ViT)."""
    import timm
    if not model or not isinstance(model_kwargs, (dict, type(None))) or not timm.is_model(model):
        return None
    try:
        meta = timm.create_model(model, device='meta', **(model_kwargs or {}))
    except Exception:  # noqa: BLE001 - a record this version cannot build tells nothing
        return None
    return (meta.attn_tokens, meta.ffn_tokens) if hasattr(meta, 'attn_tokens') else None


def check_growth_plan(args: argparse.Namespace, resume: Optional[Dict]) -> None:
    """Every scheduled growth still to come must grow the model as it will be then, not shrink it:
    checked from the resumed checkpoint's token counts, or a meta-device model's, before any work."""
    if not args.grow:
        return
    try:
        start = token_counts(resume['state_dict']) if resume is not None else None
    except GrowthError:  # resuming another timm model: the model check below says so
        start = None
    if start is None:  # config.py has checked that the flags build a model
        start = _start_tokens(args.model, dict(args.model_kwargs))
        if start is None:
            raise ConfigError(f'--grow needs a Tokenformer-ViT; {args.model} has no parameter tokens.')
    history = list(resume.get('growth_history') or []) if resume is not None else []
    attn, ffn = start
    for event in args.grow:
        if any(g.get('epoch') == event['epoch'] for g in history):
            continue
        if event['attn_tokens'] < attn or event['ffn_tokens'] < ffn:
            raise ConfigError(f'--grow at epoch {event["epoch"]} to {event["attn_tokens"]}/{event["ffn_tokens"]} '
                              f'tokens would shrink the model from {attn}/{ffn}: growth only appends tokens.')
        attn, ffn = event['attn_tokens'], event['ffn_tokens']


def load_weights(model: torch.nn.Module, state: Dict[str, torch.Tensor], source: str, args) -> None:
    """load_state_dict, with a mismatch (another width, head count or depth) said in one sentence."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        detail = next((line.strip() for line in str(e).splitlines() if 'size mismatch' in line or 'Missing' in line
                       or 'Unexpected' in line), str(e).splitlines()[0])
        raise CheckpointError(f'{source} does not fit --model {args.model} with --model-kwargs {dict(args.model_kwargs)} '
                              f'({detail.rstrip(".")}): pass the model and kwargs it was trained with.') from None


# ----------------------------------------------------------------------------------------------------------------
# a run: the state that trains, grows and is saved


@dataclass
class Run:
    """Everything a training run carries from step to step; `checkpoint_state` is what a save keeps.

    The job builds one from its flags and shards; a benchmark builds one from the same flags
    (config.job_args) and feeds it batches from memory: both then train with `train_epoch` and grow
    with `grow_if_scheduled`, so an experiment measures what the job does."""
    args: argparse.Namespace
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LRSchedule
    loss_fn: Callable
    device: torch.device
    updates_per_epoch: int
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)
    ema: Optional[torch.nn.Module] = None
    mixup: Optional[Callable] = None
    scaler: Optional[torch.amp.GradScaler] = None
    amp_dtype: Optional[torch.dtype] = None
    rank: int = 0
    world: int = 1
    step: int = 0
    best: Optional[float] = None
    growth_history: List[Dict] = field(default_factory=list)
    log: Dict[str, list] = field(default_factory=lambda: dict(epochs=[], steps=[]))
    train_model: Optional[torch.nn.Module] = None  # the model as trained: compiled, wrapped in DDP
    eval_model: Optional[torch.nn.Module] = None  # the model as evaluated: compiled
    eval_ema: Optional[torch.nn.Module] = None  # the EMA as evaluated: compiled

    def __post_init__(self):
        if self.train_model is None:
            self.wrap()

    def wrap(self) -> None:
        """The modules that train and evaluate: compiled with --compile, the trained one in DDP on
        several ranks; made anew after a growth (`grow_if_scheduled`)."""
        wrap = (lambda m: torch.compile(m, mode=self.args.compile_mode)) if self.args.compile else (lambda m: m)
        self.eval_model = wrap(self.model)
        self.eval_ema = wrap(self.ema.module) if self.ema is not None else None
        self.train_model = self.eval_model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == 'cuda' else None
            self.train_model = torch.nn.parallel.DistributedDataParallel(self.eval_model, device_ids=ids)

    @property
    def cuda_graphs(self) -> bool:
        """Whether the compiled model replays CUDA graphs, whose outputs the next step overwrites."""
        return self.args.compile and self.args.compile_mode in ('reduce-overhead', 'max-autotune') \
            and self.device.type == 'cuda'

    @property
    def global_batch(self) -> int:
        return self.args.batch_size * self.world

    def checkpoint_state(self, epoch_in_progress: int, epoch_done: int) -> Dict:
        """The whole state after optimizer step `self.step`, in timm's checkpoint format."""
        ema, model = self.ema, self.model
        return dict(arch=self.args.model, state_dict=model.state_dict(),
                    state_dict_ema=ema.module.state_dict() if ema else None,
                    optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict() if self.scaler else None,
                    scheduler=self.scheduler.state_dict(), epoch=epoch_done, epoch_in_progress=epoch_in_progress,
                    step=self.step, global_batch=self.global_batch, metric=self.best, version=2,
                    args=_plain(vars(self.args)), growth_history=self.growth_history, log=self.log,
                    model_kwargs=dict(attn_tokens=getattr(model, 'attn_tokens', None),
                                      ffn_tokens=getattr(model, 'ffn_tokens', None)))

    def load(self, resume: Dict) -> None:
        """Continue from a checkpoint's optimizer, scaler, schedule, step, best metric and log (its
        growth history comes with the model, from build_model)."""
        if resume.get('optimizer'):
            self.optimizer.load_state_dict(resume['optimizer'])
        if self.scaler is not None and resume.get('scaler'):
            self.scaler.load_state_dict(resume['scaler'])
        if resume.get('scheduler'):
            self.scheduler.load_state_dict(resume['scheduler'])
        self.step, self.best = int(resume['step']), resume.get('metric')
        self.log = resume.get('log') or self.log


def build_model(args, num_classes: int, resume: Optional[Dict] = None, source: str = 'checkpoint'):
    """(model, growth history): resumed from `resume`, grown from --initial-checkpoint, or new
    (initialised from --seed, the same on every rank)."""
    torch.manual_seed(args.seed)
    if resume is not None:
        try:
            sizes = token_counts(resume['state_dict'], source)
        except GrowthError:  # another timm model: it has no token counts
            sizes = (None, None)
        model = create_model(args, num_classes, *sizes)
        load_weights(model, resume['state_dict'], source, args)
        return model, list(resume.get('growth_history') or [])
    model, history = create_model(args, num_classes), []
    if args.initial_checkpoint:
        init = read_checkpoint(args.initial_checkpoint)
        state = init.get('state_dict', init)
        attn, ffn = token_counts(state, args.initial_checkpoint)
        target = (model.attn_tokens, model.ffn_tokens)
        model = create_model(args, num_classes, attn, ffn)
        load_weights(model, state, str(args.initial_checkpoint), args)
        # --eval-only evaluates the checkpoint's own function: growing it (paper mode) would change it
        if (attn, ffn) != target and not args.eval_only:
            record = grow_training_state(model, *target, args.grow_mode, seed=args.seed, ramp_epochs=args.tau_ramp_epochs)
            history.append(dict(record, epoch=0, source=str(args.initial_checkpoint)))
    if (args.grow or args.initial_checkpoint) and not hasattr(model, 'attn_tokens'):
        raise ConfigError(f'--grow and --initial-checkpoint need a Tokenformer-ViT; {args.model} has no parameter tokens.')
    return model, history


def build_run(args, model: torch.nn.Module, num_classes: int, updates_per_epoch: int, *,
              device: torch.device = torch.device('cpu'), amp: str = 'none', growth_history: Iterable[Dict] = (),
              rank: int = 0, world: int = 1, resume: Optional[Dict] = None, source: str = 'checkpoint',
              mean: Optional[tuple] = None, std: Optional[tuple] = None) -> Run:
    """A Run of `model` from the flags: EMA, optimizer, schedule (ending at --epochs, restarted at
    growths under --grow-schedule restart), loss and mixup; continued from `resume` if given. The
    input is normalised with `mean` and `std`, by default the model's."""
    from .transforms import build_mixup
    model.to(device=device, memory_format=torch.channels_last)
    cfg = getattr(model, 'pretrained_cfg', {}) or {}
    ema = None
    if args.ema_decay:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(model, decay=args.ema_decay)
        if resume is not None and resume.get('state_dict_ema'):
            load_weights(ema.module, resume['state_dict_ema'], f'{source} (EMA)', args)
    lr = args.lr if args.lr is not None else args.blr * args.batch_size * world / 256
    optimizer = build_optimizer(model, lr, args.weight_decay, args.opt_betas, device)
    scheduler = LRSchedule(optimizer, total_steps=args.epochs * updates_per_epoch,
                           warmup_steps=args.warmup_epochs * updates_per_epoch, warmup_lr=args.warmup_lr,
                           min_lr=args.min_lr, policy=args.grow_schedule,
                           planned=[e['epoch'] * updates_per_epoch for e in args.grow])
    mixup = build_mixup(num_classes, args.mixup, args.cutmix, args.smoothing)
    run = Run(args=args, model=model, optimizer=optimizer, scheduler=scheduler, device=device,
              loss_fn=build_loss(mixup is not None, args.smoothing), updates_per_epoch=updates_per_epoch,
              mean=mean or cfg.get('mean', Run.mean), std=std or cfg.get('std', Run.std), ema=ema, mixup=mixup,
              scaler=torch.amp.GradScaler('cuda') if amp == 'fp16' else None,
              amp_dtype={'bf16': torch.bfloat16, 'fp16': torch.float16, 'none': None}[amp],
              rank=rank, world=world, growth_history=list(growth_history))
    if resume is not None:
        run.load(resume)
    return run


def grow_if_scheduled(run: Run, epoch: int) -> Optional[Dict]:
    """The --grow event of `epoch`, once: at the epoch's start, unless the run's history has it (a
    resumed run). Grows the model, EMA, optimizer and schedule together; returns the record."""
    args = run.args
    for event in args.grow:
        done = any(g.get('epoch') == event['epoch'] and g.get('attn_tokens', [0, 0])[1] == event['attn_tokens']
                   for g in run.growth_history)
        if event['epoch'] != epoch or run.step != epoch * run.updates_per_epoch or done:
            continue
        mode = event['mode'] or args.grow_mode
        record = grow_training_state(run.model, event['attn_tokens'], event['ffn_tokens'], mode,
                                     optimizer=run.optimizer, ema=run.ema, scheduler=run.scheduler, step=run.step,
                                     seed=args.seed * 7919 + epoch, ramp_epochs=args.tau_ramp_epochs)
        record['epoch'] = epoch
        run.growth_history.append(record)
        if args.compile:  # the old size's graphs never run again: cleared, they do not count towards dynamo's
            torch.compiler.reset()  # recompile limit, and each size compiles once per phase (bench_compile_growth.py)
        run.wrap()
        if run.rank == 0:
            n_params = sum(p.numel() for p in run.model.parameters())
            print(f'epoch {epoch}: grew attn_tokens {record["attn_tokens"][0]} -> {run.model.attn_tokens}, '
                  f'ffn_tokens {record["ffn_tokens"][0]} -> {run.model.ffn_tokens} ({mode} mode), '
                  f'{n_params / 1e6:.2f}M parameters', flush=True)
        return record
    return None


def train_epoch(run: Run, batches: Iterable, should_stop: Callable[[], bool] = lambda: False,
                on_step: Callable = lambda *a: None) -> Dict:
    """engine.train_one_epoch with the run's parts, from the run's step; advances `run.step`. After
    each step, τ follows a 'ramp' growth in progress (growth.ramp_tau)."""
    def after_step(step: int, *rest) -> None:
        ramp_tau(run.model, run.growth_history, step, run.updates_per_epoch)
        on_step(step, *rest)

    result = train_one_epoch(run.train_model, batches, run.optimizer, run.scheduler, run.loss_fn, device=run.device,
                             mean=run.mean, std=run.std, step=run.step, seed=run.args.seed, rank=run.rank,
                             amp_dtype=run.amp_dtype, scaler=run.scaler, mixup=run.mixup, ema=run.ema,
                             clip_grad=run.args.clip_grad, raw_model=run.model, should_stop=should_stop,
                             on_step=after_step, mark_cuda_graph_steps=run.cuda_graphs)
    run.step = result['step']
    return result


def evaluate_run(run: Run, loader: Iterable) -> Dict[str, float]:
    """The model's (and the EMA's) loss, top-1 and top-5 on `loader`, as summary.csv columns."""
    kw = dict(device=run.device, mean=run.mean, std=run.std, amp_dtype=run.amp_dtype, distributed=run.world > 1)
    ev = evaluate(run.eval_model, loader, **kw)
    row = dict(eval_loss=ev['loss'], eval_top1=ev['top1'], eval_top5=ev['top5'])
    if run.ema is not None:
        ev = evaluate(run.eval_ema, loader, **kw)
        row.update(eval_ema_loss=ev['loss'], eval_ema_top1=ev['top1'], eval_ema_top5=ev['top5'])
    return row


# ----------------------------------------------------------------------------------------------------------------
# the job: set up, then per epoch grow, train, evaluate and log, save


@dataclass
class Job:
    """What the job knows besides the run: where it writes, its data, its place among the ranks."""
    args: argparse.Namespace
    out: Path
    rank: int
    world: int
    device: torch.device
    amp: str
    num_classes: int = 0
    info: Dict = field(default_factory=dict)
    resume: Optional[Dict] = None
    folder: Optional['RunFolder'] = None

    @property
    def resume_path(self) -> Path:
        return self.out / 'last.pth.tar'


def setup(args: argparse.Namespace) -> Job:
    """Processes and devices, the run folder (claimed, then checked), the checkpoint to resume, and
    every check that can be made before work starts; a refusal releases the folder it claimed."""
    rank, world, device = setup_distributed(args.device)
    job = Job(args, Path(args.output), rank, world, device, args.amp or ('bf16' if device.type == 'cuda' else 'none'))
    if job.amp == 'fp16' and device.type != 'cuda':
        raise ConfigError('--amp fp16 needs a CUDA GPU: use --amp bf16 or none on the CPU.')
    if args.pattention_impl == 'fused' and device.type != 'cuda' and not interpreting():
        raise ConfigError(f'--pattention-impl fused runs on CUDA GPUs, not on {device.type}: use auto or torch.')
    job.folder = RunFolder(job.out)
    try:
        on_rank_zero(rank, world, job.folder.claim)
        on_rank_zero(rank, world, lambda: prepare_output(job.out, args.overwrite))
        if job.resume_path.is_file():
            job.resume = read_checkpoint(job.resume_path)
            check_resume(args, job.resume, world)
        elif args.eval_only and not args.initial_checkpoint:
            raise ConfigError(f'--eval-only has nothing to evaluate: {job.resume_path} does not exist and no '
                              f'--initial-checkpoint was given.')
        check_growth_plan(args, job.resume)
    except UserError:
        job.folder.release()
        raise
    return job


def prepare_data(job: Job) -> None:
    """Build the shards if asked and missing; read the number of classes from them."""
    args = job.args
    _ensure_shards(args, job.rank, job.world)
    job.info = read_info(args.data_dir)
    split = job.info.get('splits', {}).get(args.train_split, {})
    data_classes = split.get('num_classes') or len(job.info.get('classes', []))
    job.num_classes = args.num_classes or data_classes
    if not job.num_classes:
        raise ConfigError(f'{args.data_dir}/_info.json does not say how many classes there are: pass --num-classes.')
    if data_classes and job.num_classes < data_classes:
        raise ConfigError(f'--num-classes {job.num_classes} is fewer than the {data_classes} classes of '
                          f'{args.data_dir}: pass at least {data_classes}, or leave it out.')


def build_loaders(job: Job, model: torch.nn.Module):
    """(train loader, validation loader) over the shards, at the model's input size."""
    args, cfg = job.args, model.pretrained_cfg
    img_size = args.img_size or model.patch_embed.img_size[0]
    common = dict(num_workers=args.workers, img_size=img_size, world_size=job.world, rank=job.rank,
                  pin_memory=job.device.type == 'cuda', num_classes=job.num_classes, max_pixels=args.max_image_pixels)
    val = build_loader(args.data_dir, args.val_split, args.batch_size, False,
                       crop_pct=args.crop_pct or cfg.get('crop_pct', 0.875), **common)
    if args.eval_only:
        return None, val
    train = build_loader(args.data_dir, args.train_split, args.batch_size, True, seed=args.seed,
                         rand_augment=args.rand_augment, color_jitter=args.color_jitter, reprob=args.reprob,
                         scale=tuple(args.scale), **common)
    return train, val


def evaluate_only(job: Job, model: torch.nn.Module, val_loader) -> int:
    """--eval-only: the model's and the EMA's figures, and stop."""
    run = build_run(job.args, model, job.num_classes, 1, device=job.device, amp=job.amp, rank=job.rank,
                    world=job.world, resume=job.resume, source=str(job.resume_path))
    kw = dict(device=run.device, mean=run.mean, std=run.std, amp_dtype=run.amp_dtype, distributed=run.world > 1)
    source = job.resume_path if job.resume is not None else job.args.initial_checkpoint
    if job.rank == 0 and hasattr(model, 'attn_tokens'):  # the checkpoint as it is: --eval-only never grows it
        print(f'evaluating {source} (attn_tokens={model.attn_tokens}, ffn_tokens={model.ffn_tokens})', flush=True)
    has_ema = run.ema is not None and job.resume is not None and bool(job.resume.get('state_dict_ema'))
    for name, m in (('model', run.model), ('ema', run.ema.module if has_ema else None)):
        if m is not None:
            r = evaluate(m, val_loader, **kw)
            if job.rank == 0:
                print(f'{name}: top-1 {r["top1"]:.2f}%  top-5 {r["top5"]:.2f}%  loss {r["loss"]:.4f}  '
                      f'({r["images"]} images)')
    _finish()
    return 0


def save(job: Job, run: Run, epoch_in_progress: int, epoch_done: int, *names: str) -> None:
    """Rank 0 saves the run to last.pth.tar and to any further `names`, each atomically."""
    if job.rank != 0:
        return
    state = run.checkpoint_state(epoch_in_progress, epoch_done)
    for name in ('last.pth.tar',) + names:
        try:
            save_atomic(state, job.out / name)
        except OSError as e:  # the file it would have replaced is intact
            raise CheckpointError(f'could not write {job.out / name} ({e.strerror}): free space in or fix --output, '
                                  f'then rerun the command to resume from the last save.') from None


class StepHook:
    """Called after every optimizer step of the job: the loss curve every --log-every steps, and a
    save every --save-every-steps steps (none at an epoch's last step: the epoch's save follows)."""

    def __init__(self, job: Job, run: Run, tb=None):
        self.job, self.run, self.tb = job, run, tb

    def __call__(self, step: int, loss, lr: float, n: int) -> None:
        args, run = self.job.args, self.run
        if self.job.rank == 0 and (step % args.log_every == 0 or step == 1):
            value = float(loss)
            run.log['steps'].append(dict(step=step, loss=value, lr=lr))
            if self.tb:
                self.tb.add_scalar('train/loss', value, step)
                self.tb.add_scalar('train/lr', lr, step)
        upe = run.updates_per_epoch
        if args.save_every_steps and step % args.save_every_steps == 0 and step % upe:
            run.step = step
            save(self.job, run, step // upe, step // upe - 1)


def log_epoch(job: Job, run: Run, epoch: int, result: Dict, row: Dict, img_s: float, eta: float, tb) -> None:
    """Append the epoch to the run's log; rank 0 writes summary.csv, curves.png, TensorBoard, a line."""
    row = dict(epoch=epoch, step=run.step, train_loss=result['loss'], **row, lr=run.optimizer.param_groups[0]['lr'],
               img_s=img_s, attn_tokens=getattr(run.model, 'attn_tokens', ''),
               ffn_tokens=getattr(run.model, 'ffn_tokens', ''))
    run.log['epochs'].append(row)
    if job.rank != 0:
        return
    write_logs(job.out, run.log, run.growth_history)
    if tb:
        for k, v in row.items():
            if k.startswith('eval') or k in ('train_loss', 'img_s'):
                tb.add_scalar(k, v, run.step)
    ema_text = f', EMA {row["eval_ema_top1"]:.2f}%' if run.ema is not None else ''
    print(f'epoch {epoch}: loss {result["loss"]:.4f}, top-1 {row["eval_top1"]:.2f}%{ema_text}, top-5 '
          f'{row["eval_top5"]:.2f}%, {img_s:.0f} img/s, ETA {eta / 60:.1f} min', flush=True)


def start_logging(job: Job, run: Run):
    """config.yaml in the run folder (the flags as run, with the derived values); TensorBoard if asked."""
    if job.rank != 0:
        return None
    args = job.args
    lr = args.lr if args.lr is not None else args.blr * run.global_batch / 256
    with atomic_file(job.out / 'config.yaml', 'w') as f:
        yaml.safe_dump(_plain(dict(vars(args), lr=lr, amp=job.amp, world_size=job.world,
                                   num_classes=job.num_classes)), f, sort_keys=False)
    if not args.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError('--tensorboard needs the tensorboard package: pip install tensorboard.') from None
    return SummaryWriter(str(job.out / 'tb'))


def main(args: argparse.Namespace) -> int:
    """The job: set up, build or resume the run, then per epoch grow, train, evaluate and log, save."""
    job = setup(args)
    try:  # a job refused before its first step leaves nothing behind
        prepare_data(job)
        model, history = build_model(args, job.num_classes, job.resume, str(job.resume_path))
        train_loader, val_loader = build_loaders(job, model)
        if args.eval_only:
            return evaluate_only(job, model, val_loader)
        upe = train_loader.dataset.batches_per_rank
        run = build_run(args, model, job.num_classes, upe, device=job.device, amp=job.amp, growth_history=history,
                        rank=job.rank, world=job.world, resume=job.resume, source=str(job.resume_path))
    except UserError:
        job.folder.release()
        raise
    if job.resume is not None and job.rank == 0:
        print(f'resumed from {job.resume_path}: epoch {job.resume["epoch_in_progress"]}, step {run.step}', flush=True)
    job.resume = None
    tb, preemption = start_logging(job, run), Preemption(job.world, job.device)
    t_start, step_start, hook = time.time(), run.step, StepHook(job, run, tb)
    for epoch in range(run.step // upe, args.epochs):
        grow_if_scheduled(run, epoch)
        skip = run.step - epoch * upe
        train_loader.dataset.set_epoch(epoch, skip_batches=skip)
        t0 = time.time()
        result = train_epoch(run, _progress(job, train_loader, epoch, skip), preemption.requested, hook)
        if result['stopped'] and run.step % upe:  # signalled mid-epoch: save where it stopped
            save(job, run, epoch, epoch - 1)
            return _stop(preemption, job.rank, job.out, run.step)
        img_s = result['images'] * job.world / max(time.time() - t0, 1e-9)
        row = evaluate_run(run, val_loader)
        is_best = run.best is None or row['eval_top1'] > run.best
        run.best = row['eval_top1'] if is_best else run.best
        eta = (time.time() - t_start) / max(1, run.step - step_start) * (args.epochs * upe - run.step)
        log_epoch(job, run, epoch, result, row, img_s, eta, tb)
        every = args.save_every_epochs
        save(job, run, epoch + 1, epoch, *(('best.pth.tar',) if is_best else ()),
             *((f'checkpoint-{epoch}.pth.tar',) if every and (epoch + 1) % every == 0 else ()))
        if result['stopped'] and epoch + 1 < args.epochs:  # signalled in the epoch's last step: saved above
            return _stop(preemption, job.rank, job.out, run.step)
    finish_message(job, run, tb)
    _finish()
    return 0


def _progress(job: Job, loader, epoch: int, skip: int):
    if job.rank != 0 or not job.args.progress:
        return loader
    from tqdm import tqdm
    return tqdm(loader, desc=f'epoch {epoch}', initial=skip, total=loader.dataset.batches_per_rank, unit='batch',
                dynamic_ncols=True, leave=False)


def finish_message(job: Job, run: Run, tb) -> None:
    """Rank 0: the best top-1 and the timm validate.py command for last.pth.tar."""
    if job.rank != 0:
        return
    args, out = job.args, job.out
    data_flags = f'--dataset wds/{job.info.get("name", "NAME")} --split {args.val_split}'
    if args.crop_pct:
        data_flags += f' --crop-pct {args.crop_pct}'
    if job.device.type != 'cuda':  # validate.py runs on cuda unless told
        data_flags += f' --device {job.device.type}'
    command = (validate_command(args.model, run.model.state_dict(), out / 'last.pth.tar', args.data_dir,
                                model_kwargs=dict(args.model_kwargs))
               if hasattr(run.model, 'attn_tokens') else
               f'python validate.py --model {args.model} --num-classes {job.num_classes} '
               f'--checkpoint {out / "last.pth.tar"} --data-dir {args.data_dir}')
    print(f'done: best top-1 {run.best:.2f}%; checkpoints in {out}. Validate with timm\'s validate.py:\n  '
          f'{command} {data_flags}', flush=True)
    if tb:
        tb.close()


def _stop(preemption: 'Preemption', rank: int, out: Path, step: int) -> int:
    """After the preemption save: all ranks leave the process group, then submitit may requeue."""
    if rank == 0:
        print(f'signal {preemption.signum}: saved {out / "last.pth.tar"} at step {step}; rerun the same command '
              f'(or let the cluster requeue it) to resume', flush=True)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return preemption.hand_over()


def _finish() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
