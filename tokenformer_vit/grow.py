"""Grow a Tokenformer-ViT checkpoint to larger token counts.

    python -m tokenformer_vit.grow --checkpoint IN --attn-tokens N --ffn-tokens M \\
        [--mode preserve|paper] --output OUT [--hf-dir DIR] [--model ARCH] [--seed S]

IN is a timm-format checkpoint (`state_dict`, `state_dict_ema`, `optimizer`, `arch`, ...), a bare
state dict, or a .safetensors file. `state_dict` and `state_dict_ema` are grown; optimizer state,
whose shapes no longer fit, is dropped (the training job grows its optimizer in memory instead);
the growth is appended to the checkpoint's `growth_history`. OUT is written atomically and loads
strictly with `timm.create_model(ARCH, attn_tokens=N, ffn_tokens=M, checkpoint_path=OUT)`. DIR,
if given, is a folder that `timm.create_model("local-dir:DIR")` rebuilds at the grown size.

A bad request (shrinking, not a Tokenformer-ViT checkpoint, a missing file, an unknown mode) ends
with one sentence on stderr and exit code 2, and writes nothing.
"""
import argparse
import sys
from pathlib import Path

from timm.utils import ParseKwargs

from .checkpoint import read_checkpoint, recorded_model_kwargs, save_atomic, validate_command, validate_flags, write_hf_dir
from .errors import UserError
from .growth import GROWTH_MODES, GrowthError, grow_checkpoint, token_counts


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
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                        help='create_model arguments no weight records (e.g. num_heads=4), for --hf-dir and the '
                             'validate command; default: those the checkpoint records')
    return parser


def check_paths(args: argparse.Namespace) -> None:
    """Refuse outputs that would overwrite the input or cannot be what they are asked to be."""
    if args.mode == 'ramp':
        raise GrowthError("--mode ramp moves τ during training, after the growth: grow the checkpoint with --mode "
                          "preserve (its start), or train with --grow-mode ramp.")
    if args.mode not in GROWTH_MODES:
        raise GrowthError(f"Unknown growth mode {args.mode!r}: use 'preserve' (function-preserving) or 'paper'.")
    if Path(args.output).resolve() == Path(args.checkpoint).resolve():
        raise GrowthError(f'--output {args.output} is the checkpoint being grown: write the grown checkpoint to '
                          f'a new file, so that the original stays.')
    if args.hf_dir and Path(args.hf_dir).exists() and not Path(args.hf_dir).is_dir():
        raise GrowthError(f'--hf-dir {args.hf_dir} is a file: pass a folder name for the timm local-dir: model.')
    if Path(args.output).is_dir():
        raise GrowthError(f'--output {args.output} is a folder: pass a file name, e.g. grown.pth.tar.')


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_paths(args)
        ckpt = read_checkpoint(args.checkpoint)
        model_kwargs = dict(recorded_model_kwargs(ckpt), **dict(args.model_kwargs))
        arch = args.model or ckpt.get('arch')
        if args.hf_dir and not arch:
            raise GrowthError(f"{args.checkpoint} records no 'arch': pass --model, e.g. --model tokenformer_vit_base.")
        old = token_counts(ckpt['state_dict'], args.checkpoint)
        dropped = grow_checkpoint(ckpt, args.attn_tokens, args.ffn_tokens, args.mode, args.seed, args.checkpoint)
        new = token_counts(ckpt['state_dict'])
        if args.hf_dir:  # built before anything is written, so that a model it cannot build stops the command
            write_hf_dir(arch, ckpt.get('state_dict_ema') or ckpt['state_dict'], *new, args.hf_dir, model_kwargs)
        command = validate_command(arch, ckpt['state_dict'], args.output, model_kwargs=model_kwargs)
        if arch:
            ckpt['arch'] = arch
        try:
            save_atomic(ckpt, args.output)
        except OSError as e:
            raise UserError(f'could not write {args.output} ({e.strerror}): choose a writable place with free '
                            f'space.') from None
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f'grew {args.checkpoint}: attn_tokens {old[0]} -> {new[0]}, ffn_tokens {old[1]} -> {new[1]} '
          f'({args.mode} mode), wrote {args.output}')
    if dropped:
        print(f'dropped {", ".join(dropped)}: its shapes no longer fit; a run resumed from this checkpoint '
              f'starts a fresh optimizer')
    if args.hf_dir:
        print(f'wrote {args.hf_dir}: timm.create_model("local-dir:{args.hf_dir}", pretrained=True) '
              f'rebuilds the grown model')
    print('validate with timm\'s validate.py (from a clone of timm\'s repository):\n'
          f'  {command}')
    if args.hf_dir:
        _, flags = validate_flags(arch, ckpt['state_dict'], model_kwargs)
        print(f'  python -m tokenformer_vit.timm_script validate.py --model local-dir:{args.hf_dir}{flags} '
              f'--data-dir DATA')
    return 0


if __name__ == '__main__':
    sys.exit(main())
