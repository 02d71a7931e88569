"""Grow a Tokenformer-ViT checkpoint to larger token counts.

    python -m tokenformer_vit.grow_checkpoint --checkpoint IN --attn-tokens N --ffn-tokens M \\
        [--mode preserve|paper] --output OUT [--overwrite] [--hf-dir DIR] [--model ARCH] [--seed S]

IN is a timm-format checkpoint (`state_dict`, `state_dict_ema`, `optimizer`, `arch`, ..., ours or
timm's train.py's), a bare state dict, or a .safetensors file. `state_dict` and `state_dict_ema` are
grown; optimizer state, whose shapes no longer fit, is dropped (the training job grows its optimizer
in memory instead); the growth is appended to the checkpoint's `growth_history`. OUT is written
atomically (a .safetensors name holds the grown `state_dict` alone) and loads strictly with
`timm.create_model(ARCH, attn_tokens=N, ffn_tokens=M, checkpoint_path=OUT)`. DIR, if given, is a
folder that `timm.create_model("local-dir:DIR")` rebuilds at the grown size, from the same
`state_dict`; it must be new, empty, or one that this command wrote (nothing else is replaced).

A bad request (shrinking, not a Tokenformer-ViT checkpoint, a missing file, an unknown mode) ends
with one sentence on stderr and exit code 2, and writes nothing.
"""
import argparse
import shlex
import shutil
import sys
from pathlib import Path

import timm
from timm.utils import ParseKwargs

from .atomic import atomic_file, save_atomic
from .checkpoint import (check_hf_dir, place_hf_dir, read_checkpoint, recorded_model_kwargs,
                         validate_command, validate_flags, write_hf_dir)
from .errors import UserError
from .growth import GROWTH_MODES, GrowthError, check_exact, grow_checkpoint, token_counts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--checkpoint', required=True, help='the checkpoint to grow')
    parser.add_argument('--attn-tokens', type=int, default=None, help='new token count of Q/K/V/O (default: keep)')
    parser.add_argument('--ffn-tokens', type=int, default=None, help='new token count of the FFN (default: keep)')
    parser.add_argument('--mode', default='preserve', help='preserve or paper (default preserve)')
    parser.add_argument('--output', required=True, help='where to write the grown checkpoint')
    parser.add_argument('--hf-dir', default=None, help='also write a local-dir: folder for timm')
    parser.add_argument('--model', default=None, help="architecture, when the checkpoint has no 'arch'")
    parser.add_argument('--seed', type=int, default=0, help='seed of the new tokens')
    parser.add_argument('--overwrite', action='store_true', help='replace --output if it exists')
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                        help='create_model arguments no weight records (e.g. num_heads=4), for --hf-dir and the '
                             'validate command; default: those the checkpoint records')
    return parser


def check_paths(args: argparse.Namespace) -> None:
    """Refuse, before anything is read or written, outputs that would overwrite the input or a folder
    of other files, or cannot be what they are asked to be."""
    if args.mode == 'ramp':
        raise GrowthError("--mode ramp moves τ during training, after the growth: grow the checkpoint with --mode "
                          "preserve (its start), or train with --grow-mode ramp.")
    if args.mode not in GROWTH_MODES:
        raise GrowthError(f"Unknown growth mode {args.mode!r}: use 'preserve' (function-preserving) or 'paper'.")
    if args.model and not timm.is_model(args.model):
        raise GrowthError(f'--model {args.model} is not a timm model: see timm.list_models("tokenformer*") for ours.')
    if Path(args.output).resolve() == Path(args.checkpoint).resolve():
        raise GrowthError(f'--output {args.output} is the checkpoint being grown: write the grown checkpoint to '
                          f'a new file, so that the original stays.')
    if Path(args.output).is_dir():
        raise GrowthError(f'--output {args.output} is a folder: pass a file name, e.g. grown.pth.tar.')
    if Path(args.output).exists() and not args.overwrite:
        raise GrowthError(f'--output {args.output} exists: pass a new file name, or --overwrite to replace it.')
    if args.hf_dir:
        check_hf_dir(args.hf_dir)  # a folder holding --checkpoint is refused here: it did not write it
        if Path(args.output).resolve().parent == Path(args.hf_dir).resolve():
            raise GrowthError(f'--output {args.output} is inside --hf-dir {args.hf_dir}: pass a folder of its own.')


def save_output(ckpt: dict, path: str) -> None:
    """The grown checkpoint at `path`, atomically: timm's format, or for a .safetensors name the grown
    weights (`state_dict`) alone."""
    try:
        if Path(path).suffix == '.safetensors':
            from safetensors.torch import save
            with atomic_file(path) as f:
                f.write(save({k: v.contiguous() for k, v in ckpt['state_dict'].items()}))
        else:
            save_atomic(ckpt, path)
    except OSError as e:
        raise UserError(f'could not write {path} ({e.strerror}): choose a writable place with free space.') from None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    hf_tmp = None
    try:
        check_paths(args)
        ckpt = read_checkpoint(args.checkpoint)
        model_kwargs = dict(recorded_model_kwargs(ckpt), **dict(args.model_kwargs))
        arch = args.model or ckpt.get('arch')
        if arch is not None and not timm.is_model(arch):
            raise GrowthError(f"{args.checkpoint} records arch {arch!r}, which is not a timm model: pass --model, "
                              f"e.g. --model tokenformer_vit_base.")
        if args.hf_dir and not arch:
            raise GrowthError(f"{args.checkpoint} records no 'arch': pass --model, e.g. --model tokenformer_vit_base.")
        check_exact(args.mode, model_kwargs.get('pattention_norm', 'l2_gelu'), str(args.checkpoint))
        old = token_counts(ckpt['state_dict'], args.checkpoint)
        dropped = grow_checkpoint(ckpt, args.attn_tokens, args.ffn_tokens, args.mode, args.seed, args.checkpoint)
        new = token_counts(ckpt['state_dict'])
        if args.hf_dir:  # the same weights as the checkpoint's state_dict, which validate.py evaluates
            hf_tmp = write_hf_dir(arch, ckpt['state_dict'], *new, args.hf_dir, model_kwargs)
        command = validate_command(arch, ckpt['state_dict'], args.output, model_kwargs=model_kwargs)
        if arch:
            ckpt['arch'] = arch
        save_output(ckpt, args.output)
        if hf_tmp is not None:
            place_hf_dir(hf_tmp, args.hf_dir)
            hf_tmp = None
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    finally:
        if hf_tmp is not None:  # refused or failed after it was written: nothing is left behind
            shutil.rmtree(hf_tmp, ignore_errors=True)
    print(f'grew {args.checkpoint}: attn_tokens {old[0]} -> {new[0]}, ffn_tokens {old[1]} -> {new[1]} '
          f'({args.mode} mode), wrote {args.output}'
          + (' (the grown state_dict alone)' if Path(args.output).suffix == '.safetensors' else ''))
    if dropped:
        print(f'dropped {", ".join(dropped)}: its shapes no longer fit; a run resumed from this checkpoint '
              f'starts a fresh optimizer')
    if args.hf_dir:
        print(f'wrote {args.hf_dir}: timm.create_model("local-dir:{args.hf_dir}", pretrained=True) '
              f'rebuilds the grown model (its state_dict)')
    print('validate with timm\'s validate.py (from a clone of timm\'s repository); both evaluate the state_dict:\n'
          f'  {command}')
    if args.hf_dir:  # local-dir: rebuilds the model from its config.json: the script's flags alone
        _, flags = validate_flags(arch, ckpt['state_dict'], model_kwargs)
        words = ['python', '-m', 'tokenformer_vit.timm_script', 'validate.py', '--model', f'local-dir:{args.hf_dir}',
                 *flags, '--data-dir', 'DATA']
        print('  ' + ' '.join(map(shlex.quote, words)))
    if isinstance(ckpt.get('state_dict_ema'), dict) and Path(args.output).suffix != '.safetensors':
        print('  (add --use-ema to the first command to evaluate the EMA weights instead)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
