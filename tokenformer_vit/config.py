"""The training job's flags: argparse, a YAML config of flag defaults, their checks, and the values
they become.

A YAML config sets the flags' defaults (keys are the flags' names with underscores); flags override
it. Every value, from a flag or the file alike, is checked here (`parse_args`), before any work
starts: a bad one is one sentence and exit code 2. Checked flags then become frozen values, once,
here (`job_config`): the job's `JobConfig`, which holds the run's `RunConfig` (run.py), the loader's
`DataConfig` (data.py) and, with --shards-from, the shard writer's `ShardSpec` (make_shards.py).
Below the commands, no function sees the argparse namespace.
"""
import argparse
import importlib.util
import math
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import yaml

from .errors import ConfigError, UserError
from .growth import GROWTH_MODES, GROW_SCHEDULES, GrowthPlan, check_exact
from .pattention import PATTENTION_IMPLS, Pattention
from .run import RunConfig
from .data import DataConfig
from .make_shards import ShardSpec
from .transforms import INTERPOLATIONS, MAX_IMAGE_PIXELS, Recipe

__all__ = ['COMPILE_MODES', 'ConfigError', 'JobConfig', 'build_parser', 'parse_args', 'job_args', 'job_config',
           'run_config', 'data_config', 'study_config', 'plain']


SHUFFLE_BUFFER = 2048  # undecoded training samples shuffled in each loader worker

# torch.compile's modes; those that capture CUDA graphs mark every training step (engine.train_one_epoch)
COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune-no-cudagraphs', 'max-autotune')

# flags that name files or folders: a leading ~ is the home folder, in YAML as on a shell's command line
PATH_FLAGS = ('config', 'output', 'data_dir', 'initial_checkpoint', 'pretrained_path', 'job_dir')


class _YamlLoader(yaml.SafeLoader):
    """YAML's safe loader with YAML 1.2's numbers, as a user writing a config means them: 8e-2 is a
    number (1.1 wants a dot), 2:16:32 a string (1.1 reads base 60: 8192), 010 ten (1.1: octal)."""


_INT, _FLOAT = 'tag:yaml.org,2002:int', 'tag:yaml.org,2002:float'
_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_YamlLoader.add_implicit_resolver(_FLOAT, re.compile(
    r'^[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?$|^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$'
    r'|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$'), list('-+0123456789.'))
_YamlLoader.add_implicit_resolver(_INT, re.compile(r'^[-+]?(?:0|[1-9][0-9_]*)$|^0x[0-9a-fA-F_]+$'),
                                  list('-+0123456789'))


def load_yaml(text: str):
    """A config file's values (`_YamlLoader`)."""
    return yaml.load(text, Loader=_YamlLoader)


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
    g.add_argument('--pretrained-path', default=None,
                   help='fine-tune from this checkpoint (timm --pretrained-path): a .pth.tar, timm\'s, .safetensors '
                        'or a grow command\'s --hf-dir folder; its token counts are read from it, its classifier '
                        'is kept if the class count matches and new if not, its position embedding resampled')
    _add_growth_flags(g)
    g.add_argument('--pattention-impl', default='torch', choices=PATTENTION_IMPLS,
                   help="Pattention's implementation, speed only: 'torch' ops, or Triton row kernels (CUDA, opt-in: "
                        "slower than 'torch' in training on an H200 so far)")
    _add_data_flags(p.add_argument_group('data'))
    _add_optimization_flags(p.add_argument_group('optimization'))
    _add_run_flags(p.add_argument_group('run'))
    _add_submit_flags(p.add_argument_group('submitit (with --submit)'))
    return p


def _add_data_flags(g) -> None:
    g.add_argument('--data-dir', default=None, help='folder of WebDataset shards with _info.json')
    g.add_argument('--shards-from', default=None, choices=['fashion-mnist', 'cifar10'],
                   help='build --data-dir from this source if it has no _info.json')
    g.add_argument('--train-split', default='train')
    g.add_argument('--val-split', default='validation')
    g.add_argument('--workers', type=int, default=8, help='data loader workers per process')
    # the recipe: each flag is timm's train.py flag of the same name, at MAE's value (docs/design.md, "Augmentation")
    g.add_argument('--scale', type=float, nargs=2, default=(0.08, 1.0),
                   help="RandomResizedCrop's area range (timm --scale)")
    g.add_argument('--ratio', type=float, nargs=2, default=(3 / 4, 4 / 3),
                   help="RandomResizedCrop's aspect range (timm --ratio)")
    g.add_argument('--hflip', type=float, default=0.5, help='horizontal flip probability (timm --hflip)')
    g.add_argument('--train-interpolation', default='bicubic', choices=INTERPOLATIONS,
                   help="RandomResizedCrop's and RandAugment's resampling (timm --train-interpolation; MAE: bicubic)")
    g.add_argument('--rand-augment', action=argparse.BooleanOptionalAction, default=True,
                   help='RandAugment, timm --aa rand-m9-mstd0.5-inc1')
    g.add_argument('--color-jitter', type=float, default=0.0,
                   help='colour jitter strength (timm --color-jitter); with --no-rand-augment only, as timm applies it')
    g.add_argument('--reprob', type=float, default=0.25,
                   help='random erasing probability, on the normalised batch (timm --reprob; --remode pixel '
                        '--recount 1)')
    g.add_argument('--aug-repeats', type=int, default=1,
                   help='repeated augmentation: N augmented copies of each decoded image (timm --aug-repeats; DeiT: '
                        '3), kept on one rank where timm\'s sampler spreads them over ranks (docs/design.md)')
    g.add_argument('--crop-pct', type=float, default=None,
                   help="evaluation crop (timm validate.py --crop-pct; default: the model's)")
    g.add_argument('--mixup', type=float, default=0.8, help='timm --mixup')
    g.add_argument('--cutmix', type=float, default=1.0, help='timm --cutmix')
    g.add_argument('--smoothing', type=float, default=0.1, help='label smoothing (timm --smoothing)')
    g.add_argument('--max-image-pixels', type=int, default=MAX_IMAGE_PIXELS,
                   help='skip (and count) images larger than this many pixels instead of decoding them')


def _add_optimization_flags(g) -> None:
    g.add_argument('--epochs', type=int, default=300)
    g.add_argument('--batch-size', type=int, default=128, help='per device')
    g.add_argument('--lr', type=float, default=None,
                   help='absolute learning rate (default: --blr x global batch / 256)')
    g.add_argument('--blr', type=float, default=1e-4, help='learning rate per 256 images')
    g.add_argument('--min-lr', type=float, default=1e-6)
    g.add_argument('--warmup-lr', type=float, default=1e-6)
    g.add_argument('--warmup-epochs', type=float, default=20)
    g.add_argument('--weight-decay', type=float, default=0.3)
    g.add_argument('--layer-decay', type=float, default=None,
                   help='layer-wise learning-rate decay (timm --layer-decay; MAE fine-tunes ViT-B with 0.65)')
    g.add_argument('--opt-betas', type=float, nargs=2, default=(0.9, 0.95))
    g.add_argument('--clip-grad', type=float, default=None)
    g.add_argument('--ema-decay', type=float, default=0.9999, help='0 disables the EMA')
    g.add_argument('--amp', default=None, choices=['bf16', 'fp16', 'none'], help='default: bf16 on CUDA, none on CPU')
    g.add_argument('--compile', action=argparse.BooleanOptionalAction, default=False,
                   help='torch.compile the model for training and evaluation (recompiled once per size after a growth)')
    g.add_argument('--compile-mode', default='default', choices=COMPILE_MODES,
                   help="torch.compile's mode, with --compile: reduce-overhead captures each step as a CUDA graph "
                        "(CUDA), max-autotune-no-cudagraphs times inductor's GEMM templates and fusions")


def _add_run_flags(g) -> None:
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


def _add_growth_flags(g) -> None:
    g.add_argument('--grow', default=None,
                   help='growth schedule: "EPOCH:ATTN_TOKENS:FFN_TOKENS[:MODE],..." grows at the start of EPOCH '
                        '(0-based)')
    # the defaults are the recipe that trained best in the CIFAR-10 growth study (docs/growth.md)
    g.add_argument('--grow-mode', default=None, choices=GROWTH_MODES,
                   help='paper (the default): new random keys, τ = √n, as the official code; preserve (the default '
                        'with --pretrained-path): the grown model computes the same function; ramp: preserve, then '
                        'τ moves to √n over --tau-ramp-epochs')
    g.add_argument('--tau-ramp-epochs', type=float, default=1.0,
                   help="after a 'ramp' growth, the epochs over which τ moves linearly to √(new n)")
    g.add_argument('--grow-schedule', default='restart', choices=GROW_SCHEDULES,
                   help='the learning rate at a growth: restart (default) warmup and cosine (to the next growth or '
                        'the end), as the official code\'s training stages do, or continue the one schedule')


def _add_submit_flags(g) -> None:
    g.add_argument('--submit', action='store_true', help='submit the job through submitit instead of running it')
    g.add_argument('--cluster', default='slurm', choices=['slurm', 'local', 'debug'])
    g.add_argument('--nodes', type=int, default=1)
    g.add_argument('--gpus-per-node', type=int, default=1)
    g.add_argument('--tasks-per-node', type=int, default=None,
                   help='default: --gpus-per-node (processes, on a CPU machine)')
    g.add_argument('--cpus-per-task', type=int, default=10)
    g.add_argument('--mem-gb', type=int, default=None)
    g.add_argument('--partition', default=None)
    g.add_argument('--timeout-min', type=int, default=60 * 72)
    g.add_argument('--job-dir', default=None, help='submitit\'s folder (default: OUTPUT/submitit)')


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
            cfg = load_yaml(path.read_text(encoding='utf-8-sig')) or {}
        except UnicodeDecodeError:
            parser.error(f'config file {path} is not text: pass a YAML file of flag names and values.')
        except yaml.YAMLError as e:
            mark = getattr(e, 'problem_mark', None)
            where = f'line {mark.line + 1}: {e.problem}' if mark is not None else e.__class__.__name__
            parser.error(f'config file {path} is not valid YAML ({where}): fix its syntax.')
        if not isinstance(cfg, dict):
            parser.error(f'config file {path} must be a mapping of flag names to values.')
        actions = {a.dest: a for a in parser._actions}
        if 'config' in cfg:
            parser.error(f'config file {path} has a config key: a config file cannot name another; merge them into '
                         f'one file.')
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
    for key in PATH_FLAGS:  # `~/runs` from YAML (the shell expands it only on the command line)
        if isinstance(getattr(args, key), str):
            setattr(args, key, os.path.expanduser(getattr(args, key)))
    try:
        _check_values(args)
    except UserError as e:
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
           ('clip_grad', 0, False), ('color_jitter', 0, True), ('tau_ramp_epochs', 0, True), ('hflip', 0, True),
           ('aug_repeats', 1, True), ('layer_decay', 0, False))


# (flag, the largest value allowed, whether that value itself is allowed): probabilities and rates
_UPPER = (('smoothing', 1, False), ('reprob', 1, True), ('hflip', 1, True), ('drop_path', 1, False), ('mixup', 1, True),
          ('cutmix', 1, True), ('crop_pct', 1, True), ('ema_decay', 1, False), ('layer_decay', 1, True))


def _check_values(args: argparse.Namespace) -> None:
    """Ranges and consistency of the flags (from the command line or the config alike)."""
    for key, low, inclusive in _RANGES:
        value = getattr(args, key, None)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f'--{key.replace("_", "-")} is {value}: pass a finite number.')
        if value is not None and (value < low or (value == low and not inclusive)):
            bound = f'at least {low}' if inclusive else f'more than {low}'
            raise ConfigError(f'--{key.replace("_", "-")} is {value}: it must be {bound}.')
    for key, high, inclusive in _UPPER:
        value = getattr(args, key, None)
        if value is not None and (value > high or (value == high and not inclusive)):
            bound = f'at most {high}' if inclusive else f'less than {high}'
            raise ConfigError(f'--{key.replace("_", "-")} is {value}: it must be {bound}'
                              + (' (a fraction of the resized image: 0.875 keeps 87.5%).' if key == 'crop_pct'
                                 else '.'))
    if args.device is not None:
        try:
            torch.device(args.device)
        except RuntimeError:
            raise ConfigError(f'--device {args.device} is not a device: use cpu, cuda or cuda:N.') from None
    plan = _growth_plan(args)
    model = _check_model(args)
    if (plan or args.initial_checkpoint) and not hasattr(model, 'attn_tokens'):
        raise ConfigError(f'--{"grow" if plan else "initial-checkpoint"} needs a Tokenformer-ViT; --model '
                          f'{args.model} has no parameter tokens: pick a tokenformer_vit_* model.')
    if plan:  # from the flags' token counts: a resumed run checks again from its checkpoint's (run.check_resume),
        # a fine-tuning run from those it starts at (run.check_pretrained)
        if not args.pretrained_path:
            plan.check((model.attn_tokens, model.ffn_tokens), epochs=args.epochs)
        _check_grow_modes(args, model, plan)
    _check_impl(args, model)
    if args.tensorboard and importlib.util.find_spec('tensorboard') is None:
        raise ConfigError('--tensorboard needs the tensorboard package: pip install tensorboard, or leave the flag '
                          'out.')
    if not all(0 <= b < 1 for b in args.opt_betas):
        raise ConfigError(f'--opt-betas {" ".join(map(str, args.opt_betas))}: each beta must be in [0, 1).')
    if not 0 < args.scale[0] <= args.scale[1] <= 1:
        raise ConfigError(f'--scale {args.scale[0]} {args.scale[1]}: pass MIN MAX with 0 < MIN <= MAX <= 1.')
    if not 0 < args.ratio[0] <= args.ratio[1] or not all(map(math.isfinite, args.ratio)):
        raise ConfigError(f'--ratio {args.ratio[0]} {args.ratio[1]}: pass MIN MAX with 0 < MIN <= MAX, '
                          f'e.g. 0.75 1.333.')
    _check_data_config(args, model)
    if args.initial_checkpoint and not Path(args.initial_checkpoint).is_file():
        raise ConfigError(f'--initial-checkpoint {args.initial_checkpoint} does not exist: pass a checkpoint file.')
    if args.pretrained_path:
        _check_pretrained_flags(args)
    if args.compile_mode != 'default' and not args.compile:
        raise ConfigError(f'--compile-mode {args.compile_mode} takes effect only with --compile: add --compile.')
    _check_effective(args, plan)


def _check_pretrained_flags(args: argparse.Namespace) -> None:
    """--pretrained-path starts a fine-tuning run from a checkpoint that exists (what it holds is
    checked against the model before work starts: run.check_pretrained)."""
    if args.initial_checkpoint:
        raise ConfigError(f'--pretrained-path and --initial-checkpoint both name a checkpoint to start from: pass '
                          f'--pretrained-path {args.pretrained_path} alone to fine-tune it, or --initial-checkpoint '
                          f'alone to go on training the same model.')
    if args.eval_only:
        raise ConfigError(f'--eval-only evaluates a checkpoint as it is, and --pretrained-path starts a fine-tuning '
                          f'run: pass --initial-checkpoint {args.pretrained_path} to evaluate it.')
    path = Path(args.pretrained_path)
    if not path.exists():
        raise ConfigError(f'--pretrained-path {path} does not exist: pass a checkpoint file, or a folder the grow '
                          f'command wrote with --hf-dir.')


def grow_mode(args: argparse.Namespace) -> str:
    """--grow-mode as given, or its default: preserve when fine-tuning (--pretrained-path), else paper."""
    return args.grow_mode or ('preserve' if args.pretrained_path else 'paper')


def _growth_plan(args: argparse.Namespace) -> GrowthPlan:
    """The run's growth plan from --grow and the flags that qualify it (a bad entry: one sentence)."""
    return GrowthPlan.parse(args.grow, grow_mode(args), args.grow_schedule, args.tau_ramp_epochs)


def _check_impl(args: argparse.Namespace, model: torch.nn.Module) -> None:
    """--pattention-impl is the one switch of Pattention's implementation, for models that have it."""
    if 'pattention_impl' in dict(args.model_kwargs):
        raise ConfigError(f'--model-kwargs pattention_impl={dict(args.model_kwargs)["pattention_impl"]} is a speed '
                          f'switch, not a model argument: pass --pattention-impl instead.')
    if args.pattention_impl != 'torch' and not any(isinstance(m, Pattention) for m in model.modules()):
        raise ConfigError(f'--pattention-impl {args.pattention_impl} is for Tokenformer models; --model {args.model} '
                          f'has no Pattention layers: leave it out.')


# flags that act only with --submit (a job runs here without them)
SUBMIT_FLAGS = ('cluster', 'nodes', 'gpus_per_node', 'tasks_per_node', 'cpus_per_task', 'mem_gb', 'partition',
                'timeout_min', 'job_dir')


def _check_effective(args: argparse.Namespace, plan: GrowthPlan) -> None:
    """A flag (or config key) set away from its default must act: one that would do nothing in this
    combination is refused, in one sentence, rather than ignored."""
    defaults = build_parser().parse_args([])
    if not args.submit:
        changed = [k for k in SUBMIT_FLAGS if getattr(args, k) != getattr(defaults, k)]
        if changed:
            raise ConfigError(f'--{changed[0].replace("_", "-")} takes effect only with --submit: add --submit, or '
                              f'leave it out to run here.')
    else:
        if args.cluster == 'local' and args.nodes > 1:
            raise ConfigError(f'--cluster local runs on this machine alone, not on --nodes {args.nodes}: use '
                              f'--cluster slurm, or --nodes 1.')
        job_dir = Path(args.job_dir) if args.job_dir else None
        if job_dir is not None and job_dir.exists() and not job_dir.is_dir():
            raise ConfigError(f'--job-dir {job_dir} is a file: pass a folder for submitit\'s logs.')
    if args.color_jitter and args.rand_augment:  # timm's rule: jitter only without an auto-augment policy
        raise ConfigError(f'--color-jitter {args.color_jitter} takes effect only with --no-rand-augment (timm ignores '
                          f'colour jitter under RandAugment): add --no-rand-augment, or leave it out.')
    if not plan and args.grow_schedule != defaults.grow_schedule:
        raise ConfigError(f'--grow-schedule {args.grow_schedule} takes effect only with --grow: add a --grow, or leave '
                          f'it out.')
    if not plan and not args.initial_checkpoint and not args.pretrained_path and grow_mode(args) != 'paper':
        # its default may be given (a run's recorded flags replayed): any other mode would do nothing
        raise ConfigError(f'--grow-mode {args.grow_mode} takes effect only with --grow, --initial-checkpoint or '
                          f'--pretrained-path: add one, or leave it out.')
    ramps = args.grow_mode == 'ramp' or any(e.mode == 'ramp' for e in plan.events)
    if args.tau_ramp_epochs != defaults.tau_ramp_epochs and not ramps:
        raise ConfigError(f'--tau-ramp-epochs {args.tau_ramp_epochs} takes effect only with ramp growth: add '
                          f'--grow-mode ramp (or :ramp on a --grow event), or leave it out.')


def _check_grow_modes(args: argparse.Namespace, model: torch.nn.Module, plan: GrowthPlan) -> None:
    """A growth that keeps the function (preserve, ramp) is exact only for the L2 norms: refused for a
    softmax model here, not at the growth's epoch."""
    for norm in {m.norm for m in model.modules() if isinstance(m, Pattention)}:
        for event in plan.events:
            check_exact(plan.mode_of(event), norm, f'--grow {event} of --model {args.model}')


def _check_model(args: argparse.Namespace) -> torch.nn.Module:
    """The model the flags describe can be built (on the meta device: no memory, no weights), and
    the input size holds at least one patch: a bad --model-kwargs value is one sentence here, not a
    traceback after the shards are built."""
    import timm
    if not timm.is_model(args.model):
        raise ConfigError(f'--model {args.model} is not a timm model: see timm.list_models("tokenformer*") for ours.')
    try:
        model = _meta_model(args)
    except Exception as e:  # noqa: BLE001 - any constructor error is the kwargs' fault
        text = [f'{k}={v!r}' for k, v in dict(args.model_kwargs).items() if isinstance(v, str)]
        hint = (f' ({", ".join(text)} {"was" if len(text) == 1 else "were"} read as text: numbers are written as '
                f'digits)' if text and isinstance(e, TypeError) else '')
        raise ConfigError(f'cannot create --model {args.model} with --model-kwargs {dict(args.model_kwargs)}'
                          f'{" and --img-size " + str(args.img_size) if args.img_size else ""}: '
                          f'{str(e).rstrip(".")}{hint}.') from None
    patch = getattr(getattr(model, 'patch_embed', None), 'patch_size', None)
    size = getattr(getattr(model, 'patch_embed', None), 'img_size', None)
    if patch and size and any(s < p for s, p in zip(size, patch)):
        raise ConfigError(f'--img-size {size[0]} is smaller than the patch size {patch[0]} of --model {args.model}: '
                          f'pass an image size of at least one patch.')
    return model


def _meta_model(args: argparse.Namespace) -> torch.nn.Module:
    """The model the flags describe, on the meta device (no memory, no weights)."""
    import timm
    kwargs = dict(args.model_kwargs, **({'img_size': args.img_size} if args.img_size else {}))
    return timm.create_model(args.model, device='meta', **kwargs)


def _resolved(args: argparse.Namespace, model: torch.nn.Module) -> dict:
    """The model's data config as validate.py resolves it (timm's resolve_data_config), with the
    job's --img-size and --crop-pct over the model's."""
    from timm.data import resolve_data_config
    img_size = args.img_size or (model.patch_embed.img_size[0] if hasattr(model, 'patch_embed') else None)
    return resolve_data_config(dict(img_size=img_size, crop_pct=args.crop_pct), model=model)


def _check_data_config(args: argparse.Namespace, model: torch.nn.Module) -> None:
    """The evaluation transform is timm's for the model's data config: a config ours does not do is refused."""
    cfg = _resolved(args, model)
    if cfg['interpolation'] not in ('bicubic', 'bilinear') or cfg.get('crop_mode', 'center') != 'center' \
            or cfg['input_size'][1] != cfg['input_size'][2]:
        raise ConfigError(f'--model {args.model} is evaluated with {cfg["interpolation"]} resizing, crop mode '
                          f'{cfg.get("crop_mode")} at {cfg["input_size"][1:]}; the job evaluates square inputs, '
                          f'bicubic or bilinear, centre crop: use a model with such a data config.')


def data_config(args: argparse.Namespace) -> DataConfig:
    """The loader's plain values from the job's checked flags, the recipe resolved for the model as
    validate.py resolves it."""
    cfg = _resolved(args, _meta_model(args))
    recipe = Recipe(img_size=cfg['input_size'][-1], crop_pct=cfg['crop_pct'], interpolation=cfg['interpolation'],
                    mean=tuple(cfg['mean']), scale=tuple(args.scale), ratio=tuple(args.ratio), hflip=args.hflip,
                    train_interpolation=args.train_interpolation, rand_augment=args.rand_augment,
                    color_jitter=args.color_jitter, aug_repeats=args.aug_repeats)
    return DataConfig(root=args.data_dir, batch_size=args.batch_size, workers=args.workers, seed=args.seed,
                      recipe=recipe, max_pixels=args.max_image_pixels, shuffle_buffer=SHUFFLE_BUFFER)


def job_args(**values) -> argparse.Namespace:
    """The job's flags with their defaults, `values` over them, checked as parse_args checks them:
    how benchmarks and tests speak the job's schema without a command line."""
    parser = build_parser()
    actions = {a.dest for a in parser._actions}
    unknown = sorted(set(values) - actions)
    if unknown:
        raise ConfigError(f'unknown job flag(s) {", ".join(unknown)}: use the flags\' names with underscores.')
    args = parser.parse_args([])
    for key, value in values.items():
        pair = isinstance(value, list) and key in ('scale', 'ratio', 'opt_betas')
        setattr(args, key, tuple(value) if pair else value)
    _check_values(args)
    return args


def plain(value):
    """Flags as plain Python values, for config.yaml and checkpoints (timm loads checkpoints with
    weights_only=True); the growth plan as its --grow string."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def run_config(args: argparse.Namespace) -> RunConfig:
    """The run's plain values from the job's checked flags: the one place flags become a run. `flags`
    records them as run, --grow as its plan's string, in config.yaml and every checkpoint."""
    plan = _growth_plan(args)
    values = {f.name: getattr(args, f.name) for f in fields(RunConfig) if f.name not in ('growth', 'flags')}
    return RunConfig(**values, growth=plan, flags=plain(dict(vars(args), grow=str(plan), grow_mode=plan.mode)))


@dataclass(frozen=True)
class JobConfig:
    """The training job's values, made once from its checked flags (`job_config`): the run it trains,
    the data it reads (the loader's values, the splits, the shards to build if missing), where it
    writes, what it logs and saves, and the device and precision asked for (None: the defaults)."""
    run: RunConfig
    data: DataConfig
    output: Path
    train_split: str
    val_split: str
    num_classes: Optional[int]  # None: from the shards' _info.json
    crop_pct: Optional[float]  # the evaluation crop asked for (None: the model's), for the validate command
    device: Optional[str]
    amp: Optional[str]
    eval_only: bool
    overwrite: bool
    save_every_epochs: int
    save_every_steps: int
    log_every: int
    tensorboard: bool
    progress: bool
    shards_from: Optional[str]  # an embedded data set to build --data-dir from, if it has no _info.json
    shards: Optional[ShardSpec]  # how those shards are written (with --shards-from)

    @property
    def flags(self) -> Dict[str, Any]:
        """The flags as run (plain values): what config.yaml and every checkpoint record."""
        return self.run.flags


def job_config(args: argparse.Namespace) -> JobConfig:
    """The job's frozen values from its checked flags (`parse_args`)."""
    shards = ShardSpec(shard_size=2500, workers=max(1, os.cpu_count() or 1), max_pixels=args.max_image_pixels,
                       name=args.shards_from.replace('-', '_')) if args.shards_from else None
    return JobConfig(run=run_config(args), data=data_config(args), output=Path(args.output),
                     train_split=args.train_split, val_split=args.val_split, num_classes=args.num_classes,
                     crop_pct=args.crop_pct, device=args.device, amp=args.amp, eval_only=args.eval_only,
                     overwrite=args.overwrite, save_every_epochs=args.save_every_epochs,
                     save_every_steps=args.save_every_steps, log_every=args.log_every, tensorboard=args.tensorboard,
                     progress=args.progress, shards_from=args.shards_from, shards=shards)


def study_config(**values) -> RunConfig:
    """A run's config from job flags given as values (`job_args`): how the studies and tests build a run."""
    return run_config(job_args(**values))

