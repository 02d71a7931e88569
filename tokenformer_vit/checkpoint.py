"""Checkpoints on disk: read in any of the formats we meet, written atomically, and handed to timm
(a `local-dir:` folder, the validate.py command that evaluates one)."""
import argparse
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from .errors import CheckpointError, GrowthError
from .tokenformer_vit import token_counts

__all__ = ['CheckpointError', 'read_checkpoint', 'recorded_model_kwargs',
           'check_hf_dir', 'write_hf_dir', 'place_hf_dir', 'validate_command', 'validate_flags']


def read_checkpoint(path: os.PathLike) -> Dict[str, Any]:
    """A checkpoint as a timm-format dict (a bare state dict is wrapped as its `state_dict`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'Checkpoint {path} does not exist: pass the path of a .pth/.pth.tar/.safetensors file.')
    if path.suffix == '.safetensors':
        from safetensors.torch import load_file
        try:
            return {'state_dict': load_file(str(path))}
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
            raise CheckpointError(f'Checkpoint {path} could not be read as a safetensors file '
                                  f'({e.__class__.__name__}): pass an intact .safetensors, .pth or .pth.tar file.') from None
    try:
        ckpt = _torch_load(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise CheckpointError(f'Checkpoint {path} could not be read as a torch or safetensors file ({e.__class__.__name__}).')
    if isinstance(ckpt, dict) and isinstance(ckpt.get('args'), argparse.Namespace):
        ckpt['args'] = vars(ckpt['args'])  # timm's train.py saves its argparse namespace
    if not isinstance(ckpt, dict):
        raise CheckpointError(f'Checkpoint {path} holds a {type(ckpt).__name__}, not a state dict.')
    if 'state_dict' not in ckpt and 'model' in ckpt and isinstance(ckpt['model'], dict):
        ckpt = dict(ckpt, state_dict=ckpt.pop('model'))
    if 'state_dict' not in ckpt:
        ckpt = {'state_dict': ckpt}
    return ckpt


def _torch_load(path: Path):
    """torch.load with weights_only=True, allowing the one non-tensor class that timm's own train.py
    pickles into its checkpoints (its argparse.Namespace of flags), which holds only plain values."""
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        if 'argparse.Namespace' not in str(e):
            raise
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location='cpu', weights_only=True)


def model_kwargs_of(state_dict: Dict[str, torch.Tensor], extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
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


# A folder the grow command writes for timm's local-dir: holds these files and no others, the first
# being its mark: a folder that has it, and nothing but these, may be replaced by the next grow.
HF_DIR_MARK = '.tokenformer_vit_hf_dir'
HF_DIR_FILES = (HF_DIR_MARK, 'config.json', 'pytorch_model.bin', 'model.safetensors')


def check_hf_dir(hf_dir: os.PathLike) -> None:
    """Refuse an --hf-dir that is a file, or a folder holding anything the grow command did not write."""
    hf_dir = Path(hf_dir)
    if hf_dir.exists() and not hf_dir.is_dir():
        raise GrowthError(f'--hf-dir {hf_dir} is a file: pass a folder name for the timm local-dir: model.')
    names = {p.name for p in hf_dir.iterdir()} if hf_dir.is_dir() else set()
    foreign = sorted(names - set(HF_DIR_FILES)) or (sorted(names) if names and HF_DIR_MARK not in names else [])
    if foreign:
        raise GrowthError(f'--hf-dir {hf_dir} holds files the grow command did not write ({", ".join(foreign[:3])}): '
                          f'pass a new or empty folder, so that nothing in it is replaced.')


def write_hf_dir(arch: str, state_dict: Dict[str, torch.Tensor], attn_tokens: int, ffn_tokens: int,
                 hf_dir: os.PathLike, model_kwargs: Optional[Dict[str, Any]] = None) -> Path:
    """Write, beside `hf_dir`, a folder that `timm.create_model("local-dir:DIR")` rebuilds at the grown
    size; returns it, for `place_hf_dir` to put in place (or `shutil.rmtree` to drop)."""
    import timm
    kwargs = model_kwargs_of(state_dict, model_kwargs)
    try:
        model = timm.create_model(arch, attn_tokens=attn_tokens, ffn_tokens=ffn_tokens, **kwargs)
    except (RuntimeError, TypeError, ValueError) as e:
        raise GrowthError(f'cannot build {arch} with {kwargs} for --hf-dir ({e}): pass the arguments it was '
                          f'trained with as --model-kwargs, e.g. num_heads=4.') from None
    model.load_state_dict(state_dict)
    parent = Path(hf_dir).resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{Path(hf_dir).name}.', suffix='.tmp', dir=parent))
    try:
        timm.models.save_for_hf(model, str(tmp), model_args=dict(attn_tokens=attn_tokens, ffn_tokens=ffn_tokens, **kwargs))
        (tmp / HF_DIR_MARK).write_text('written by python -m tokenformer_vit.grow; the next grow may replace it\n')
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def place_hf_dir(tmp: Path, hf_dir: os.PathLike) -> None:
    """Put the folder `write_hf_dir` wrote at `hf_dir`, replacing an earlier one that only the grow
    command wrote (`check_hf_dir`, again: nothing else is removed)."""
    hf_dir = Path(hf_dir)
    check_hf_dir(hf_dir)
    if hf_dir.is_dir():
        old = Path(tempfile.mkdtemp(prefix=f'.{hf_dir.name}.', suffix='.old', dir=tmp.parent))
        os.replace(hf_dir, old / hf_dir.name)
        os.replace(tmp, hf_dir)
        for name in HF_DIR_FILES:
            (old / hf_dir.name / name).unlink(missing_ok=True)
        (old / hf_dir.name).rmdir()
        old.rmdir()
    else:
        os.replace(tmp, hf_dir)


def validate_command(arch: Optional[str], state_dict: Dict[str, torch.Tensor], checkpoint: os.PathLike,
                     data_dir: str = 'DATA', model_kwargs: Optional[Dict[str, Any]] = None) -> str:
    """The command that evaluates `checkpoint` (with this state dict) with timm's validate.py;
    `model_kwargs` are construction arguments no weight shape records (num_heads)."""
    attn, ffn = token_counts(state_dict)
    model_kwargs, flags = validate_flags(arch, state_dict, model_kwargs)
    return (f'python -m tokenformer_vit.timm_script validate.py --model {arch or "ARCH"} --model-kwargs '
            f'attn_tokens={attn} ffn_tokens={ffn}{model_kwargs}{flags} --checkpoint {checkpoint} --data-dir {data_dir}')


def validate_flags(arch: Optional[str], state_dict: Dict[str, torch.Tensor],
                    extra: Optional[Dict[str, Any]] = None) -> Tuple[str, str]:
    """validate.py flags for this checkpoint's non-default shape: (model kwargs, script flags).

    validate.py passes its own num_classes and in_chans to create_model, and sizes its input from
    --img-size, so those go as its flags (on both routes), the rest as --model-kwargs.
    """
    kwargs = model_kwargs_of(state_dict, extra)
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
