"""The training job behind `train_imagenet.py`: train a Tokenformer-ViT on WebDataset shards on one
device, over DDP (torchrun or submitit) or on a Slurm cluster, grow it on a schedule, and survive
preemption without losing work.

    python train_imagenet.py --config configs/demo.yaml
    python train_imagenet.py --config configs/tokenformer_vit_base.yaml --data-dir /data/imagenet-wds --output runs/b
    torchrun --nproc-per-node 8 train_imagenet.py --config configs/tokenformer_vit_base.yaml ...
    python train_imagenet.py --config configs/tokenformer_vit_base.yaml ... --submit --cluster slurm --nodes 4 --gpus-per-node 8

A YAML config sets the flags' defaults (keys are the flags' names with underscores); flags override
it. A job whose --output holds `last.pth.tar` resumes from it: model, EMA, optimizer, scaler,
scheduler, step and data position; growth events it has passed are not repeated. On SIGUSR2 or
SIGTERM the job saves at the next step boundary and stops (under submitit rank 0 then requeues).
"""
import argparse
import csv
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
import yaml

from .checkpoint import CheckpointError, atomic_file, read_checkpoint, save_atomic
from .data import build_loader, read_info
from .errors import UserError
from .transforms import MAX_IMAGE_PIXELS
from .engine import evaluate, train_one_epoch
from .growth import GROWTH_MODES, GrowthError, grow_model, grow_optimizer
from .pattention import PATTENTION_IMPLS, Pattention, interpreting, set_pattention_impl
from .grow import token_counts, validate_command

__all__ = ['ConfigError', 'build_parser', 'parse_args', 'parse_grow_schedule', 'main', 'cli']


class ConfigError(UserError):
    """A config file or flag that cannot be used; the message names it and the fix."""


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is its one sentence and exit code 2, without the 30-line usage."""

    def error(self, message):
        self.exit(2, f'{self.prog}: error: {message}\n')


def build_parser() -> argparse.ArgumentParser:
    from timm.utils import ParseKwargs
    p = _Parser(description='Train a Tokenformer-ViT on WebDataset shards.',
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--config', default=None, help='YAML file of flag defaults (keys: flag names with underscores)')
    g = p.add_argument_group('model')
    g.add_argument('--model', default='tokenformer_vit_base_pm', help='a timm model name')
    g.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                   help='extra create_model arguments, e.g. attn_tokens=576 ffn_tokens=2304 depth=6')
    g.add_argument('--img-size', type=int, default=None, help='input size (default: the model\'s)')
    g.add_argument('--num-classes', type=int, default=None, help='default: from the shards\' _info.json')
    g.add_argument('--drop-path', type=float, default=0.1)
    g.add_argument('--initial-checkpoint', default=None,
                   help='start from this (smaller) Tokenformer-ViT checkpoint, grown to the model\'s token counts')
    g.add_argument('--grow', default=None,
                   help='growth schedule: "EPOCH:ATTN_TOKENS:FFN_TOKENS[:MODE],..." grows at the start of EPOCH (0-based)')
    g.add_argument('--grow-mode', default='preserve', choices=GROWTH_MODES)
    g.add_argument('--pattention-impl', default='auto', choices=PATTENTION_IMPLS,
                   help="Pattention's implementation: 'fused' Triton kernels (CUDA, opt-in until measured), "
                        "'torch', or 'auto' (torch for now)")
    g = p.add_argument_group('data')
    g.add_argument('--data-dir', default=None, help='folder of WebDataset shards with _info.json')
    g.add_argument('--shards-from', default=None, choices=['fashion-mnist'],
                   help='build --data-dir from this source if it has no _info.json')
    g.add_argument('--train-split', default='train')
    g.add_argument('--val-split', default='validation')
    g.add_argument('--workers', type=int, default=8, help='data loader workers per process')
    g.add_argument('--scale', type=float, nargs=2, default=(0.08, 1.0), help='RandomResizedCrop area range')
    g.add_argument('--rand-augment', action=argparse.BooleanOptionalAction, default=True, help='rand-m9-mstd0.5')
    g.add_argument('--color-jitter', type=float, default=0.0)
    g.add_argument('--reprob', type=float, default=0.25, help='random erasing probability')
    g.add_argument('--crop-pct', type=float, default=None, help='evaluation crop (default: the model\'s)')
    g.add_argument('--mixup', type=float, default=0.8)
    g.add_argument('--cutmix', type=float, default=1.0)
    g.add_argument('--smoothing', type=float, default=0.1)
    g.add_argument('--max-image-pixels', type=int, default=MAX_IMAGE_PIXELS,
                   help='skip (and count) images larger than this many pixels instead of decoding them')
    g = p.add_argument_group('optimization')
    g.add_argument('--epochs', type=int, default=300)
    g.add_argument('--batch-size', type=int, default=128, help='per device')
    g.add_argument('--lr', type=float, default=None, help='absolute learning rate (default: --blr x global batch / 256)')
    g.add_argument('--blr', type=float, default=1e-4, help='learning rate per 256 images')
    g.add_argument('--min-lr', type=float, default=1e-6)
    g.add_argument('--warmup-lr', type=float, default=1e-6)
    g.add_argument('--warmup-epochs', type=float, default=20)
    g.add_argument('--weight-decay', type=float, default=0.3)
    g.add_argument('--opt-betas', type=float, nargs=2, default=(0.9, 0.95))
    g.add_argument('--clip-grad', type=float, default=None)
    g.add_argument('--ema-decay', type=float, default=0.9999, help='0 disables the EMA')
    g.add_argument('--amp', default=None, choices=['bf16', 'fp16', 'none'], help='default: bf16 on CUDA, none on CPU')
    g.add_argument('--compile', action='store_true', help='torch.compile the model')
    g = p.add_argument_group('run')
    g.add_argument('--output', default=None, help='run folder: checkpoints, logs; a rerun resumes from it')
    g.add_argument('--seed', type=int, default=0)
    g.add_argument('--device', default=None, help='default: cuda if available, else cpu')
    g.add_argument('--eval-only', action='store_true', help='evaluate the resumed or initial checkpoint and stop')
    g.add_argument('--overwrite', action='store_true',
                   help='start afresh in an --output that holds results but no last.pth.tar to resume from')
    g.add_argument('--save-every-epochs', type=int, default=0, help='also keep checkpoint-EPOCH.pth.tar every N epochs')
    g.add_argument('--save-every-steps', type=int, default=0, help='also save last.pth.tar every N steps')
    g.add_argument('--log-every', type=int, default=20, help='steps between loss points in the logs')
    g.add_argument('--tensorboard', action='store_true', help='also write TensorBoard events to OUTPUT/tb')
    g.add_argument('--progress', action=argparse.BooleanOptionalAction, default=True, help='progress bar on rank 0')
    g = p.add_argument_group('submitit (with --submit)')
    g.add_argument('--submit', action='store_true', help='submit the job through submitit instead of running it')
    g.add_argument('--cluster', default='slurm', choices=['slurm', 'local', 'debug'])
    g.add_argument('--nodes', type=int, default=1)
    g.add_argument('--gpus-per-node', type=int, default=1)
    g.add_argument('--tasks-per-node', type=int, default=None, help='default: --gpus-per-node (processes, on a CPU machine)')
    g.add_argument('--cpus-per-task', type=int, default=10)
    g.add_argument('--mem-gb', type=int, default=None)
    g.add_argument('--partition', default=None)
    g.add_argument('--timeout-min', type=int, default=60 * 72)
    g.add_argument('--job-dir', default=None, help='submitit\'s folder (default: OUTPUT/submitit)')
    return p


def parse_grow_schedule(value) -> List[Dict[str, Any]]:
    """[{'epoch', 'attn_tokens', 'ffn_tokens', 'mode'}] from "E:A:F[:MODE],..." or a YAML list of
    such strings or of dicts; ordered by epoch, each growing on the one before."""
    if not value:
        return []
    items = value.split(',') if isinstance(value, str) else list(value)
    events = []
    for item in items:
        try:
            if isinstance(item, dict):
                e = dict(epoch=int(item['epoch']), attn_tokens=int(item['attn_tokens']),
                         ffn_tokens=int(item['ffn_tokens']), mode=item.get('mode'))
            else:
                parts = str(item).strip().split(':')
                if len(parts) not in (3, 4):
                    raise ValueError
                e = dict(epoch=int(parts[0]), attn_tokens=int(parts[1]), ffn_tokens=int(parts[2]),
                         mode=parts[3] if len(parts) == 4 else None)
        except (KeyError, ValueError, TypeError):
            raise ConfigError(f'--grow entry {item!r} is not EPOCH:ATTN_TOKENS:FFN_TOKENS[:MODE], '
                              f'e.g. --grow 150:768:3072.') from None
        if e['mode'] is not None and e['mode'] not in GROWTH_MODES:
            raise ConfigError(f'--grow entry {item!r}: unknown mode {e["mode"]!r}; use one of {", ".join(GROWTH_MODES)}.')
        events.append(e)
    events.sort(key=lambda e: e['epoch'])
    for a, b in zip(events, events[1:]):
        if a['epoch'] == b['epoch'] or b['attn_tokens'] < a['attn_tokens'] or b['ffn_tokens'] < a['ffn_tokens']:
            raise ConfigError(f'--grow events must be at different epochs and never shrink: {a} then {b}.')
    return events


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Flags over the --config file's values over the defaults; unknown keys and flags are errors."""
    parser = build_parser()
    config_parser = argparse.ArgumentParser(add_help=False)
    config_parser.add_argument('--config', default=None)
    known, _ = config_parser.parse_known_args(argv)
    if known.config:
        path = Path(known.config)
        if not path.is_file():
            parser.error(f'config file {path} does not exist: pass an existing YAML file to --config.')
        try:
            cfg = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            parser.error(f'config file {path} is not valid YAML ({e.__class__.__name__}): fix its syntax.')
        if not isinstance(cfg, dict):
            parser.error(f'config file {path} must be a mapping of flag names to values.')
        actions = {a.dest: a for a in parser._actions}
        unknown = sorted(set(cfg) - set(actions))
        if unknown:
            parser.error(f'config file {path} has unknown key(s) {", ".join(unknown)}: keys are the flags\' '
                         f'names with underscores (see --help); fix or remove them.')
        for key, value in cfg.items():
            problem = _config_value_problem(actions[key], value)
            if problem:
                parser.error(f'config file {path}: {key}: {value!r} {problem}.')
        parser.set_defaults(**cfg)
    args = parser.parse_args(argv)
    try:
        args.grow = parse_grow_schedule(args.grow)
        _check_values(args)
    except ConfigError as e:
        parser.error(str(e))
    if args.output is None:
        parser.error('--output is required: the run folder for checkpoints and logs (a rerun resumes from it).')
    if args.data_dir is None:
        parser.error('--data-dir is required: a folder of WebDataset shards (python -m tokenformer_vit.make_shards).')
    return args


def _config_value_problem(action: argparse.Action, value) -> Optional[str]:
    """What is wrong with a YAML value for this flag, checked as argparse checks the flag: type,
    number of values, choices; None when it is fine."""
    if value is None or action.dest in ('config', 'grow', 'model_kwargs'):
        if action.dest == 'model_kwargs' and value is not None and not isinstance(value, dict):
            return 'must be a mapping of create_model arguments, e.g. {depth: 6}'
        if action.dest == 'grow' and value is not None and not isinstance(value, (str, list)):
            return 'must be a string "EPOCH:ATTN_TOKENS:FFN_TOKENS[:MODE],..." or a list of them'
        return None
    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):
        return None if isinstance(value, bool) else 'must be true or false'
    values = value if isinstance(value, (list, tuple)) else None
    if isinstance(action.nargs, int) or action.nargs in ('*', '+'):
        if values is None or (isinstance(action.nargs, int) and len(values) != action.nargs):
            count = action.nargs if isinstance(action.nargs, int) else 'one or more'
            return f'must be a list of {count} values'
    elif values is not None:
        return 'must be a single value, not a list'
    for v in values if values is not None else [value]:
        if isinstance(v, str) and action.type in (int, float):
            try:  # YAML reads 1e-3 as a string; argparse converts string defaults, so it is fine
                v = action.type(v)
            except ValueError:
                pass
        if action.type is int and (isinstance(v, bool) or not isinstance(v, int)):
            return 'must be a whole number'
        if action.type is float and (isinstance(v, bool) or not isinstance(v, (int, float))):
            return 'must be a number'
        if action.type is None and not isinstance(v, str):
            return 'must be a string'
        if action.choices is not None and v not in action.choices:
            return f'must be one of {", ".join(map(str, action.choices))}'
    return None


# (flag, the smallest value allowed, whether that value itself is allowed): checked for flags and YAML alike
_RANGES = (('epochs', 1, True), ('batch_size', 1, True), ('lr', 0, False), ('blr', 0, False), ('min_lr', 0, True),
           ('warmup_lr', 0, True), ('warmup_epochs', 0, True), ('weight_decay', 0, True), ('workers', 0, True),
           ('drop_path', 0, True), ('smoothing', 0, True), ('mixup', 0, True), ('cutmix', 0, True),
           ('reprob', 0, True), ('ema_decay', 0, True), ('save_every_epochs', 0, True),
           ('save_every_steps', 0, True), ('log_every', 1, True), ('nodes', 1, True), ('gpus_per_node', 0, True),
           ('tasks_per_node', 1, True), ('cpus_per_task', 1, True), ('timeout_min', 1, True),
           ('num_classes', 1, True), ('img_size', 1, True), ('max_image_pixels', 1, True), ('crop_pct', 0, False),
           ('clip_grad', 0, False), ('color_jitter', 0, True))


def _check_values(args: argparse.Namespace) -> None:
    """Ranges and consistency of the flags (from the command line or the config alike)."""
    for key, low, inclusive in _RANGES:
        value = getattr(args, key, None)
        if value is not None and (value < low or (value == low and not inclusive)):
            bound = f'at least {low}' if inclusive else f'more than {low}'
            raise ConfigError(f'--{key.replace("_", "-")} is {value}: it must be {bound}.')
    import timm
    if not timm.is_model(args.model):
        raise ConfigError(f'--model {args.model} is not a timm model: see timm.list_models("tokenformer*") for ours.')
    if not all(0 <= b < 1 for b in args.opt_betas):
        raise ConfigError(f'--opt-betas {" ".join(map(str, args.opt_betas))}: each beta must be in [0, 1).')
    if not 0 < args.scale[0] <= args.scale[1] <= 1:
        raise ConfigError(f'--scale {args.scale[0]} {args.scale[1]}: pass MIN MAX with 0 < MIN <= MAX <= 1.')
    if args.initial_checkpoint and not Path(args.initial_checkpoint).is_file():
        raise ConfigError(f'--initial-checkpoint {args.initial_checkpoint} does not exist: pass a checkpoint file.')
    if not 0 <= args.ema_decay < 1:
        raise ConfigError(f'--ema-decay is {args.ema_decay}: use a decay in [0, 1) (0 disables the EMA).')
    for event in args.grow:
        if event['epoch'] >= args.epochs:
            raise ConfigError(f'--grow at epoch {event["epoch"]} never happens in a run of --epochs {args.epochs} '
                              f'(epochs count from 0): grow earlier or train longer.')


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


def _ensure_shards(args, rank: int) -> None:
    root = Path(args.data_dir)
    if (root / '_info.json').is_file() or not args.shards_from:
        return
    if rank == 0:
        from .make_shards import make_shards
        for split in (args.train_split, args.val_split):
            print(f'building {args.shards_from} {split} shards in {root}', flush=True)
            try:
                make_shards(args.shards_from, split, root, shard_size=2500, workers=max(1, os.cpu_count() or 1),
                            name=args.shards_from.replace('-', '_'), max_pixels=args.max_image_pixels)
            except OSError as e:
                raise ConfigError(f'cannot write the {args.shards_from} shards to --data-dir {root} ({e.strerror}): '
                                  f'free space there or choose another --data-dir.') from None
    if dist.is_initialized():
        dist.barrier()


# ----------------------------------------------------------------------------------------------------------------
# the job


def prepare_output(out: Path, overwrite: bool, rank: int) -> None:
    """Make sure the run folder can be written, clear what killed saves left, and never start a new
    run over an earlier run's results: they are kept unless --overwrite (a run resumes from
    last.pth.tar, so results without it are another run's)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f'--output {out} is a file: pass a folder for the run.')
    if rank != 0:
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_file(out / '.write-test'):
            pass
        (out / '.write-test').unlink()
    except OSError as e:
        raise ConfigError(f'cannot write to --output {out} ({e.strerror}): choose a writable folder with free space.') from None
    for stale in out.glob('.*.tmp'):  # atomic_file's temporaries from saves killed half-way
        stale.unlink(missing_ok=True)
    results = [p for p in ('best.pth.tar', 'summary.csv', 'curves.png') if (out / p).exists()]
    results += sorted(p.name for p in out.glob('checkpoint-*.pth.tar'))
    if results and not (out / 'last.pth.tar').exists():
        if not overwrite:
            raise ConfigError(f'--output {out} holds results of an earlier run ({", ".join(results)}) but no '
                              f'last.pth.tar to resume from: choose a new --output, or pass --overwrite to replace them.')
        for name in results:
            (out / name).unlink()


def check_resume(args: argparse.Namespace, resume: Dict, world: int) -> None:
    """A run resumes with the global batch it was trained with: the step count, the data position
    and the schedule all depend on it."""
    saved = resume.get('args') or {}
    before = resume.get('global_batch') or (saved.get('batch_size') and saved['batch_size'] * world)
    if before and before != args.batch_size * world:
        raise ConfigError(f'{Path(args.output) / "last.pth.tar"} was trained with a global batch of {before}, not '
                          f'{args.batch_size * world} (--batch-size {args.batch_size} x {world} process(es)): resume '
                          f'with the same batch, or start a new --output.')


def check_growth_plan(args: argparse.Namespace, resume: Optional[Dict]) -> None:
    """Every scheduled growth still to come must grow the model as it will be then, not shrink it:
    checked from the resumed checkpoint's token counts, or a meta-device model's, before any work."""
    if not args.grow:
        return
    try:
        start = token_counts(resume['state_dict']) if resume is not None else None
    except GrowthError:  # resuming another timm model: the model check below says so
        start = None
    if start is None:
        import timm
        try:
            meta = timm.create_model(args.model, device='meta', **dict(args.model_kwargs))
        except (RuntimeError, TypeError) as e:
            raise ConfigError(f'cannot create --model {args.model} with {dict(args.model_kwargs)}: {e}') from None
        if not hasattr(meta, 'attn_tokens'):
            raise ConfigError(f'--grow needs a Tokenformer-ViT; {args.model} has no parameter tokens.')
        start = (meta.attn_tokens, meta.ffn_tokens)
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


def main(args: argparse.Namespace) -> int:
    rank, world, device = setup_distributed(args.device)
    out = Path(args.output)
    prepare_output(out, args.overwrite, rank)
    resume_path = out / 'last.pth.tar'
    resume = read_checkpoint(resume_path) if resume_path.is_file() else None
    if resume is not None:
        check_resume(args, resume, world)
    elif args.eval_only and not args.initial_checkpoint:
        raise ConfigError(f'--eval-only has nothing to evaluate: {resume_path} does not exist and no '
                          f'--initial-checkpoint was given.')
    check_growth_plan(args, resume)
    amp = args.amp or ('bf16' if device.type == 'cuda' else 'none')
    if amp == 'fp16' and device.type != 'cuda':
        raise ConfigError('--amp fp16 needs a CUDA GPU: use --amp bf16 or none on the CPU.')
    amp_dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16, 'none': None}[amp]
    if args.pattention_impl == 'fused' and device.type != 'cuda' and not interpreting():
        raise ConfigError(f'--pattention-impl fused runs on CUDA GPUs, not on {device.type}: use auto or torch.')

    # data
    _ensure_shards(args, rank)
    info = read_info(args.data_dir)
    splits = info.get('splits', {})
    num_classes = args.num_classes or splits.get(args.train_split, {}).get('num_classes') or len(info.get('classes', []))
    if not num_classes:
        raise ConfigError(f'{args.data_dir}/_info.json does not say how many classes there are: pass --num-classes.')
    data_classes = splits.get(args.train_split, {}).get('num_classes') or len(info.get('classes', []))
    if data_classes and num_classes < data_classes:
        raise ConfigError(f'--num-classes {num_classes} is fewer than the {data_classes} classes of {args.data_dir}: '
                          f'pass at least {data_classes}, or leave it out.')

    # model: resumed, grown from an initial checkpoint, or new (initialised from --seed, the same on every rank)
    torch.manual_seed(args.seed)
    growth_history: List[Dict] = []
    if resume is not None:
        try:
            sizes = token_counts(resume['state_dict'], str(resume_path))
        except GrowthError:  # another timm model: it has no token counts
            sizes = (None, None)
        model = create_model(args, num_classes, *sizes)
        load_weights(model, resume['state_dict'], str(resume_path), args)
        growth_history = list(resume.get('growth_history') or [])
    else:
        model = create_model(args, num_classes)
        if args.initial_checkpoint:
            init = read_checkpoint(args.initial_checkpoint)
            state = init.get('state_dict', init)
            attn, ffn = token_counts(state, args.initial_checkpoint)
            target = (model.attn_tokens, model.ffn_tokens)
            model = create_model(args, num_classes, attn, ffn)
            load_weights(model, state, str(args.initial_checkpoint), args)
            if (attn, ffn) != target:
                grow_model(model, *target, mode=args.grow_mode, generator=torch.Generator().manual_seed(args.seed))
                growth_history.append(dict(epoch=0, step=0, attn_tokens=[attn, target[0]], ffn_tokens=[ffn, target[1]],
                                           mode=args.grow_mode, source=str(args.initial_checkpoint)))
    if (args.grow or args.initial_checkpoint) and not hasattr(model, 'attn_tokens'):
        raise ConfigError(f'--grow and --initial-checkpoint need a Tokenformer-ViT; {args.model} has no parameter tokens.')
    model.to(device=device, memory_format=torch.channels_last)
    cfg = model.pretrained_cfg
    mean, std = cfg.get('mean', (0.485, 0.456, 0.406)), cfg.get('std', (0.229, 0.224, 0.225))
    img_size = args.img_size or model.patch_embed.img_size[0]
    crop_pct = args.crop_pct or cfg.get('crop_pct', 0.875)

    ema = None
    if args.ema_decay:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(model, decay=args.ema_decay)
        if resume is not None and resume.get('state_dict_ema'):
            load_weights(ema.module, resume['state_dict_ema'], f'{resume_path} (EMA)', args)

    val_loader = build_loader(args.data_dir, args.val_split, args.batch_size, False, num_workers=args.workers,
                              img_size=img_size, world_size=world, rank=rank, crop_pct=crop_pct,
                              pin_memory=device.type == 'cuda', num_classes=num_classes,
                              max_pixels=args.max_image_pixels)
    if args.eval_only:
        for name, m in (('model', model), ('ema', ema.module if ema else None)):
            if m is not None:
                r = evaluate(m, val_loader, device=device, mean=mean, std=std, amp_dtype=amp_dtype,
                             distributed=world > 1)
                if rank == 0:
                    print(f'{name}: top-1 {r["top1"]:.2f}%  top-5 {r["top5"]:.2f}%  loss {r["loss"]:.4f}  '
                          f'({r["images"]} images)')
        _finish()
        return 0

    train_loader = build_loader(args.data_dir, args.train_split, args.batch_size, True, num_workers=args.workers,
                                img_size=img_size, world_size=world, rank=rank, seed=args.seed,
                                rand_augment=args.rand_augment, color_jitter=args.color_jitter, reprob=args.reprob,
                                pin_memory=device.type == 'cuda', scale=tuple(args.scale), num_classes=num_classes,
                                max_pixels=args.max_image_pixels)
    updates_per_epoch = train_loader.dataset.batches_per_rank
    global_batch = args.batch_size * world
    lr = args.lr if args.lr is not None else args.blr * global_batch / 256

    from timm.loss import SoftTargetCrossEntropy, LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from .transforms import build_mixup

    def make_optimizer():
        extra = dict(fused=True) if device.type == 'cuda' else {}
        return create_optimizer_v2(model, 'adamw', lr=lr, weight_decay=args.weight_decay,
                                   betas=tuple(args.opt_betas), **extra)

    optimizer = make_optimizer()
    scheduler, _ = create_scheduler_v2(optimizer, 'cosine', num_epochs=args.epochs, warmup_epochs=args.warmup_epochs,
                                       warmup_lr=args.warmup_lr, min_lr=args.min_lr, step_on_epochs=False,
                                       updates_per_epoch=updates_per_epoch)
    scaler = torch.amp.GradScaler('cuda') if amp == 'fp16' else None
    mixup = build_mixup(num_classes, args.mixup, args.cutmix, args.smoothing)
    loss_fn = (SoftTargetCrossEntropy() if mixup is not None else
               LabelSmoothingCrossEntropy(args.smoothing) if args.smoothing else torch.nn.CrossEntropyLoss())

    step, best = 0, None
    log = dict(epochs=[], steps=[])
    if resume is not None:
        if resume.get('optimizer'):
            optimizer.load_state_dict(resume['optimizer'])
        if scaler is not None and resume.get('scaler'):
            scaler.load_state_dict(resume['scaler'])
        if resume.get('scheduler'):
            scheduler.load_state_dict(resume['scheduler'])
        step, best = int(resume['step']), resume.get('metric')
        log = resume.get('log') or log
        if rank == 0:
            print(f'resumed from {resume_path}: epoch {resume["epoch_in_progress"]}, step {step}', flush=True)
    start_epoch = step // updates_per_epoch
    skip = step - start_epoch * updates_per_epoch
    del resume

    tb = None
    if args.tensorboard and rank == 0:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError('--tensorboard needs the tensorboard package: pip install tensorboard.') from None
        tb = SummaryWriter(str(out / 'tb'))
    if rank == 0:
        with atomic_file(out / 'config.yaml', 'w') as f:
            yaml.safe_dump(_plain(dict(vars(args), lr=lr, amp=amp, world_size=world, num_classes=num_classes)), f,
                           sort_keys=False)

    def wrap(m):
        if args.compile:
            m = torch.compile(m)
        if world > 1:
            m = torch.nn.parallel.DistributedDataParallel(m, device_ids=[device.index] if device.type == 'cuda' else None)
        return m

    train_model = wrap(model)
    preemption = Preemption(world, device)

    def checkpoint(at_step: int, epoch_in_progress: int, epoch_done: int, *names: str) -> None:
        """Save the run's whole state after optimizer step `at_step` (rank 0) to last.pth.tar and to
        any further `names`."""
        if rank != 0:
            return
        state = dict(arch=args.model, state_dict=model.state_dict(),
                     state_dict_ema=ema.module.state_dict() if ema else None,
                     optimizer=optimizer.state_dict(), scaler=scaler.state_dict() if scaler else None,
                     scheduler=scheduler.state_dict(), epoch=epoch_done, epoch_in_progress=epoch_in_progress,
                     step=at_step, global_batch=global_batch, metric=best, version=2, args=_plain(vars(args)),
                     growth_history=growth_history, log=log,
                     model_kwargs=dict(attn_tokens=getattr(model, 'attn_tokens', None),
                                       ffn_tokens=getattr(model, 'ffn_tokens', None)))
        for name in ('last.pth.tar',) + names:
            try:
                save_atomic(state, out / name)
            except OSError as e:  # the file it would have replaced is intact
                raise CheckpointError(f'could not write {out / name} ({e.strerror}): free space in or fix --output, '
                                      f'then rerun the command to resume from the last save.') from None

    def on_step(s, loss, lr_now, n):
        if rank == 0 and (s % args.log_every == 0 or s == 1):
            value = float(loss)
            log['steps'].append(dict(step=s, loss=value, lr=lr_now))
            if tb:
                tb.add_scalar('train/loss', value, s)
                tb.add_scalar('train/lr', lr_now, s)
        # at an epoch's last step the epoch-end save follows at once, after the evaluation it records
        if args.save_every_steps and s % args.save_every_steps == 0 and s % updates_per_epoch:
            checkpoint(s, s // updates_per_epoch, s // updates_per_epoch - 1)

    total_steps = args.epochs * updates_per_epoch
    t_start, step_start = time.time(), step
    for epoch in range(start_epoch, args.epochs):
        # scheduled growth, once: a resumed job finds the event in its history
        for event in args.grow:
            done = any(g.get('epoch') == event['epoch'] and g.get('attn_tokens', [0, 0])[1] == event['attn_tokens']
                       for g in growth_history)
            if event['epoch'] == epoch and skip == 0 and not done:
                mode = event['mode'] or args.grow_mode
                old = (model.attn_tokens, model.ffn_tokens)
                gen_seed = args.seed * 7919 + epoch
                pairs = grow_model(model, event['attn_tokens'], event['ffn_tokens'], mode,
                                   torch.Generator().manual_seed(gen_seed))
                if ema is not None:  # same new tokens as the model's
                    grow_model(ema.module, event['attn_tokens'], event['ffn_tokens'], mode,
                               torch.Generator().manual_seed(gen_seed))
                model.to(device=device, memory_format=torch.channels_last)
                if ema is not None:
                    ema.module.to(device)
                grow_optimizer(optimizer, [(o, n) for o, n in pairs])
                record = dict(epoch=epoch, step=step, attn_tokens=[old[0], model.attn_tokens],
                              ffn_tokens=[old[1], model.ffn_tokens], mode=mode)
                growth_history.append(record)
                train_model = wrap(model)
                if rank == 0:
                    n_params = sum(p.numel() for p in model.parameters())
                    print(f'epoch {epoch}: grew attn_tokens {old[0]} -> {model.attn_tokens}, ffn_tokens {old[1]} -> '
                          f'{model.ffn_tokens} ({mode} mode), {n_params / 1e6:.2f}M parameters', flush=True)
        train_loader.dataset.set_epoch(epoch, skip_batches=skip)
        batches = train_loader
        if rank == 0 and args.progress:
            from tqdm import tqdm
            batches = tqdm(train_loader, desc=f'epoch {epoch}', initial=skip, total=updates_per_epoch,
                           unit='batch', dynamic_ncols=True, leave=False)
        t0 = time.time()
        result = train_one_epoch(train_model, batches, optimizer, scheduler, loss_fn, device=device, mean=mean,
                                 std=std, step=step, seed=args.seed, rank=rank, amp_dtype=amp_dtype, scaler=scaler,
                                 mixup=mixup, ema=ema, clip_grad=args.clip_grad, raw_model=model,
                                 should_stop=preemption.requested, on_step=on_step)
        step, skip = result['step'], 0
        if result['stopped'] and step % updates_per_epoch:
            checkpoint(step, epoch, epoch - 1)
            return _stop(preemption, rank, out, step)
        seconds = time.time() - t0
        img_s = result['images'] * world / max(seconds, 1e-9)
        ev = evaluate(model, val_loader, device=device, mean=mean, std=std, amp_dtype=amp_dtype, distributed=world > 1)
        row = dict(epoch=epoch, step=step, train_loss=result['loss'], eval_loss=ev['loss'], eval_top1=ev['top1'],
                   eval_top5=ev['top5'])
        if ema is not None:
            ev_ema = evaluate(ema.module, val_loader, device=device, mean=mean, std=std, amp_dtype=amp_dtype,
                              distributed=world > 1)
            row.update(eval_ema_loss=ev_ema['loss'], eval_ema_top1=ev_ema['top1'], eval_ema_top5=ev_ema['top5'])
        row.update(lr=optimizer.param_groups[0]['lr'], img_s=img_s, attn_tokens=getattr(model, 'attn_tokens', ''),
                   ffn_tokens=getattr(model, 'ffn_tokens', ''))
        log['epochs'].append(row)
        is_best = best is None or ev['top1'] > best
        best = ev['top1'] if is_best else best
        extra = (('best.pth.tar',) if is_best else ()) + (
            (f'checkpoint-{epoch}.pth.tar',) if args.save_every_epochs and (epoch + 1) % args.save_every_epochs == 0 else ())
        checkpoint(step, epoch + 1, epoch, *extra)
        if rank == 0:
            write_logs(out, log, growth_history)
            if tb:
                for k, v in row.items():
                    if k.startswith('eval') or k in ('train_loss', 'img_s'):
                        tb.add_scalar(k, v, step)
            eta = (time.time() - t_start) / max(1, step - step_start) * (total_steps - step)
            ema_text = f', EMA {row["eval_ema_top1"]:.2f}%' if ema is not None else ''
            print(f'epoch {epoch}: loss {result["loss"]:.4f}, top-1 {ev["top1"]:.2f}%{ema_text}, top-5 '
                  f'{ev["top5"]:.2f}%, {img_s:.0f} img/s, ETA {eta / 60:.1f} min', flush=True)
        if result['stopped'] and epoch + 1 < args.epochs:  # signalled in the epoch's last step: saved above
            return _stop(preemption, rank, out, step)
    if rank == 0:
        data_flags = f'--dataset wds/{info.get("name", "NAME")} --split {args.val_split}'
        if args.crop_pct:
            data_flags += f' --crop-pct {args.crop_pct}'
        command = (validate_command(args.model, model.state_dict(), out / 'last.pth.tar', args.data_dir,
                                    model_kwargs=dict(args.model_kwargs))
                   if hasattr(model, 'attn_tokens') else
                   f'python validate.py --model {args.model} --num-classes {num_classes} '
                   f'--checkpoint {out / "last.pth.tar"} --data-dir {args.data_dir}')
        print(f'done: best top-1 {best:.2f}%; checkpoints in {out}. Validate with timm\'s validate.py:\n  '
              f'{command} {data_flags}', flush=True)
        if tb:
            tb.close()
    _finish()
    return 0


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


def cli(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        if args.submit:
            from .submit import submit
            return submit(args)
        return main(args)
    except UserError as e:
        message = str(e)
        if 'Original Traceback' in message:  # raised in a DataLoader worker: its own sentence is the last line
            message = message.strip().splitlines()[-1].split(': ', 1)[-1]
        print(f'error: {message}', file=sys.stderr)
        return 2
