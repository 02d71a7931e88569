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
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from timm.utils import ParseKwargs

from .checkpoint import read_checkpoint, save_atomic
from .errors import UserError
from .growth import GROWTH_MODES, GrowthError, grow_tokens

_ATTN = re.compile(r'^(?:module\.)?(?:_orig_mod\.)?blocks\.\d+\.attn\.(q|k|v|proj)\.key_tokens$')
_FFN = re.compile(r'^(?:module\.)?(?:_orig_mod\.)?blocks\.\d+\.ffn\.key_tokens$')


def token_counts(state_dict: Dict[str, torch.Tensor], source: str = 'checkpoint') -> Tuple[int, int]:
    """(attn_tokens, ffn_tokens) of a Tokenformer-ViT state dict."""
    attn = {v.shape[0] for k, v in state_dict.items() if _ATTN.match(k)}
    ffn = {v.shape[0] for k, v in state_dict.items() if _FFN.match(k)}
    if not attn or not ffn:
        raise GrowthError(f'{source} is not a Tokenformer-ViT checkpoint: it has no blocks.N.attn.q.key_tokens '
                          f'or blocks.N.ffn.key_tokens.')
    if len(attn) > 1 or len(ffn) > 1:
        raise GrowthError(f'{source} has Pattentions of mixed token counts ({sorted(attn)}, {sorted(ffn)}): '
                          f'grow it with tokenformer_vit.grow_model instead.')
    return attn.pop(), ffn.pop()


def grow_state_dict(state_dict: Dict[str, torch.Tensor], attn_tokens: int, ffn_tokens: int, mode: str,
                    generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
    """A copy of a Tokenformer-ViT state dict with every Pattention grown (as `grow_model` does)."""
    out = dict(state_dict)
    for k in state_dict:
        if _ATTN.match(k) or _FFN.match(k):
            prefix = k[:-len('key_tokens')]
            n = attn_tokens if _ATTN.match(k) else ffn_tokens
            key, value, tau = grow_tokens(state_dict[k], state_dict[prefix + 'value_tokens'],
                                          state_dict[prefix + 'tau'], n, mode, generator=generator)
            out[k], out[prefix + 'value_tokens'], out[prefix + 'tau'] = key, value, tau
    return out


def _model_kwargs(state_dict: Dict[str, torch.Tensor], extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The construction arguments a state dict implies besides the token counts, with `extra` (the
    ones no weight shape records, such as num_heads) over them."""
    from timm.models import clean_state_dict
    sd = clean_state_dict(state_dict)
    proj = sd['patch_embed.proj.weight']
    patch = proj.shape[-1]
    grid = round((sd['pos_embed'].shape[1] - 1) ** 0.5)
    depth = len({k.split('.')[1] for k in sd if k.startswith('blocks.')})
    kwargs = dict(num_classes=sd['head.weight'].shape[0] if 'head.weight' in sd else 0, in_chans=proj.shape[1],
                  patch_size=patch, img_size=grid * patch, depth=depth, embed_dim=proj.shape[0])
    kwargs.update({k: v for k, v in (extra or {}).items() if k not in ('attn_tokens', 'ffn_tokens')})
    return kwargs


def recorded_model_kwargs(ckpt: Dict[str, Any]) -> Dict[str, Any]:
    """The create_model arguments a training job's checkpoint records (its --model-kwargs)."""
    args = ckpt.get('args')
    kwargs = args.get('model_kwargs') if isinstance(args, dict) else None
    return dict(kwargs) if isinstance(kwargs, dict) else {}


def write_hf_dir(arch: str, state_dict: Dict[str, torch.Tensor], attn_tokens: int, ffn_tokens: int,
                 hf_dir: os.PathLike, model_kwargs: Optional[Dict[str, Any]] = None) -> None:
    """A folder that `timm.create_model("local-dir:DIR")` rebuilds at the grown size."""
    import timm
    kwargs = _model_kwargs(state_dict, model_kwargs)
    try:
        model = timm.create_model(arch, attn_tokens=attn_tokens, ffn_tokens=ffn_tokens, **kwargs)
    except (RuntimeError, TypeError, ValueError) as e:
        raise GrowthError(f'cannot build {arch} with {kwargs} for --hf-dir ({e}): pass the arguments it was '
                          f'trained with as --model-kwargs, e.g. num_heads=4.') from None
    model.load_state_dict(state_dict)
    tmp = Path(tempfile.mkdtemp(prefix=Path(hf_dir).name + '.', dir=Path(hf_dir).resolve().parent))
    timm.models.save_for_hf(model, str(tmp), model_args=dict(attn_tokens=attn_tokens, ffn_tokens=ffn_tokens, **kwargs))
    if Path(hf_dir).exists():
        shutil.rmtree(hf_dir)
    os.replace(tmp, hf_dir)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--checkpoint', required=True, help='the checkpoint to grow')
    parser.add_argument('--attn-tokens', type=int, default=None, help='new token count of Q/K/V/O (default: keep)')
    parser.add_argument('--ffn-tokens', type=int, default=None, help='new token count of the FFN (default: keep)')
    parser.add_argument('--mode', default='preserve', help=f'{" or ".join(GROWTH_MODES)} (default preserve)')
    parser.add_argument('--output', required=True, help='where to write the grown checkpoint')
    parser.add_argument('--hf-dir', default=None, help='also write a local-dir: folder for timm')
    parser.add_argument('--model', default=None, help="architecture, when the checkpoint has no 'arch'")
    parser.add_argument('--seed', type=int, default=0, help='seed of the new tokens')
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                        help='create_model arguments no weight records (e.g. num_heads=4), for --hf-dir and the '
                             'validate command; default: those the checkpoint records')
    args = parser.parse_args(argv)
    try:
        if args.mode not in GROWTH_MODES:
            raise GrowthError(f"Unknown growth mode {args.mode!r}: use 'preserve' (function-preserving) or 'paper'.")
        if Path(args.output).resolve() == Path(args.checkpoint).resolve():
            raise GrowthError(f'--output {args.output} is the checkpoint being grown: write the grown checkpoint to '
                              f'a new file, so that the original stays.')
        if args.hf_dir and Path(args.hf_dir).exists() and not Path(args.hf_dir).is_dir():
            raise GrowthError(f'--hf-dir {args.hf_dir} is a file: pass a folder name for the timm local-dir: model.')
        if Path(args.output).is_dir():
            raise GrowthError(f'--output {args.output} is a folder: pass a file name, e.g. grown.pth.tar.')
        ckpt = read_checkpoint(args.checkpoint)
        model_kwargs = dict(recorded_model_kwargs(ckpt), **dict(args.model_kwargs))
        old_attn, old_ffn = token_counts(ckpt['state_dict'], args.checkpoint)
        attn = old_attn if args.attn_tokens is None else args.attn_tokens
        ffn = old_ffn if args.ffn_tokens is None else args.ffn_tokens
        for what, old, new in (('attn_tokens', old_attn, attn), ('ffn_tokens', old_ffn, ffn)):
            if new < old:
                raise GrowthError(f'Cannot shrink {what} from {old} to {new}: growth only appends tokens.')
        arch = args.model or ckpt.get('arch')
        if args.hf_dir and not arch:
            raise GrowthError(f"{args.checkpoint} records no 'arch': pass --model, e.g. --model tokenformer_vit_base.")
        from timm.models import clean_state_dict
        generator = torch.Generator().manual_seed(args.seed)
        for key in ('state_dict', 'state_dict_ema'):
            if isinstance(ckpt.get(key), dict):
                # keys of a DDP or torch.compile'd model lose their wrapper prefixes: the output loads in timm
                ckpt[key] = clean_state_dict(ckpt[key])
                token_counts(ckpt[key], f'{args.checkpoint} [{key}]')
                ckpt[key] = grow_state_dict(ckpt[key], attn, ffn, args.mode, generator)
        if args.hf_dir:  # built before anything is written, so that a model it cannot build stops the command
            hf_state = ckpt.get('state_dict_ema') or ckpt['state_dict']
            write_hf_dir(arch, hf_state, attn, ffn, args.hf_dir, model_kwargs)
        command = validate_command(arch, ckpt['state_dict'], args.output, model_kwargs=model_kwargs)
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    dropped = [k for k in ('optimizer', 'amp_scaler', 'scaler') if k in ckpt]
    for k in dropped:
        del ckpt[k]
    event = dict(attn_tokens=[old_attn, attn], ffn_tokens=[old_ffn, ffn], mode=args.mode, seed=args.seed,
                 epoch=ckpt.get('epoch'), time=time.strftime('%Y-%m-%dT%H:%M:%S'), source=str(args.checkpoint))
    ckpt['growth_history'] = list(ckpt.get('growth_history') or []) + [event]
    if arch:
        ckpt['arch'] = arch
    try:
        save_atomic(ckpt, args.output)
    except OSError as e:
        print(f'error: could not write {args.output} ({e.strerror}): choose a writable place with free space.',
              file=sys.stderr)
        return 2
    print(f'grew {args.checkpoint}: attn_tokens {old_attn} -> {attn}, ffn_tokens {old_ffn} -> {ffn} '
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
        _, flags = _validate_flags(arch, ckpt['state_dict'], model_kwargs)
        print(f'  python -m tokenformer_vit.timm_script validate.py --model local-dir:{args.hf_dir}{flags} '
              f'--data-dir DATA')
    return 0


def validate_command(arch: Optional[str], state_dict: Dict[str, torch.Tensor], checkpoint: os.PathLike,
                     data_dir: str = 'DATA', model_kwargs: Optional[Dict[str, Any]] = None) -> str:
    """The command that evaluates `checkpoint` (with this state dict) with timm's validate.py;
    `model_kwargs` are construction arguments no weight shape records (num_heads)."""
    attn, ffn = token_counts(state_dict)
    model_kwargs, flags = _validate_flags(arch, state_dict, model_kwargs)
    return (f'python -m tokenformer_vit.timm_script validate.py --model {arch or "ARCH"} --model-kwargs '
            f'attn_tokens={attn} ffn_tokens={ffn}{model_kwargs}{flags} --checkpoint {checkpoint} --data-dir {data_dir}')


def _validate_flags(arch: Optional[str], state_dict: Dict[str, torch.Tensor],
                    extra: Optional[Dict[str, Any]] = None) -> Tuple[str, str]:
    """validate.py flags for this checkpoint's non-default shape: (model kwargs, script flags).

    validate.py passes its own num_classes and in_chans to create_model, and sizes its input from
    --img-size, so those go as its flags (on both routes), the rest as --model-kwargs.
    """
    kwargs = _model_kwargs(state_dict, extra)
    flags = ''
    for key, flag, default in (('num_classes', '--num-classes', 1000), ('in_chans', '--in-chans', 3),
                               ('img_size', '--img-size', 224)):
        if kwargs[key] != default:
            flags += f' {flag} {kwargs[key]}'
    defaults = dict(img_size=224, patch_size=16)
    if arch:
        import timm
        meta = timm.create_model(arch, device='meta')
        defaults.update(depth=len(meta.blocks), embed_dim=meta.embed_dim, num_heads=meta.blocks[0].attn.num_heads)
    shown = ('patch_size', 'img_size', 'depth', 'embed_dim', 'num_heads')
    model_kwargs = ''.join(f' {k}={kwargs[k]}' for k in shown if k in kwargs and k in defaults and defaults[k] != kwargs[k])
    return model_kwargs, flags


if __name__ == '__main__':
    sys.exit(main())
