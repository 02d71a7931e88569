"""Checkpoints on disk: read in any of the formats we meet, written atomically, and handed to timm
(a `local-dir:` folder, the validate.py command that evaluates one)."""
import argparse
import os
import pickle
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .errors import CheckpointError, GrowthError
from .tokenformer_vit import token_counts_or_none

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
                                  f'({e.__class__.__name__}): pass an intact .safetensors, .pth or .pth.tar '
                                  f'file.') from None
    try:
        ckpt = _torch_load(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise CheckpointError(f'Checkpoint {path} could not be read as a torch or safetensors file '
                              f'({e.__class__.__name__}): pass an intact .pth, .pth.tar or .safetensors '
                              f'file.') from None
    if isinstance(ckpt, dict) and isinstance(ckpt.get('args'), argparse.Namespace):
        ckpt['args'] = vars(ckpt['args'])  # timm's train.py saves its argparse namespace
    if not isinstance(ckpt, dict):
        raise CheckpointError(f'Checkpoint {path} holds a {type(ckpt).__name__}, not a state dict.')
    if 'state_dict' not in ckpt and 'model' in ckpt and isinstance(ckpt['model'], dict):
        ckpt = dict(ckpt, state_dict=ckpt.pop('model'))
    if 'state_dict' not in ckpt:
        ckpt = {'state_dict': ckpt}
    from timm.models import clean_state_dict
    for key in ('state_dict', 'state_dict_ema'):  # saved from a DDP or torch.compile wrapper: timm's keys
        if isinstance(ckpt.get(key), dict):
            ckpt[key] = clean_state_dict(ckpt[key])
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
        timm.models.save_for_hf(model, str(tmp), model_args=dict(attn_tokens=attn_tokens, ffn_tokens=ffn_tokens,
                                                                 **kwargs))
        (tmp / HF_DIR_MARK).write_text('written by python -m tokenformer_vit.grow_checkpoint; the next grow may '
                                       'replace it\n')
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
                     data_dir: str = 'DATA', model_kwargs: Optional[Dict[str, Any]] = None,
                     flags: Sequence[str] = ()) -> str:
    """The command that evaluates `checkpoint` (with this state dict) with timm's validate.py, carrying
    every setting that changes the model's function: the architecture, every create_model argument
    the run was built with (`model_kwargs`, a speed switch such as pattention_impl aside), the token
    counts and shapes the weights hold, and the script's `flags` (data set, split, crop, precision).
    Every value is quoted for a POSIX shell."""
    kwargs, script_flags = validate_flags(arch, state_dict, model_kwargs)
    words = ['python', '-m', 'tokenformer_vit.timm_script', 'validate.py', '--model', arch or 'ARCH']
    if kwargs:
        words += ['--model-kwargs', *(f'{k}={v}' for k, v in kwargs.items())]
    words += [*script_flags, '--checkpoint', str(checkpoint), '--data-dir', str(data_dir), *flags]
    return ' '.join(shlex.quote(str(w)) for w in words)


# create_model arguments that choose how a layer computes, not what: left out of the printed commands
SPEED_KWARGS = ('pattention_impl',)


def validate_flags(arch: Optional[str], state_dict: Dict[str, torch.Tensor],
                   extra: Optional[Dict[str, Any]] = None) -> Tuple[Dict[str, Any], List[str]]:
    """validate.py's arguments for this checkpoint: (its --model-kwargs, its other flags).

    validate.py passes its own num_classes and in_chans to create_model and sizes its input from
    --img-size, so those go as its flags; the image size goes to create_model as well. Every other
    argument the run was built with (`extra`) goes as a model kwarg, with the shapes the weights
    record (depth, width, patch) where they differ from the architecture's defaults.
    """
    recorded = {k: v for k, v in (extra or {}).items() if k not in SPEED_KWARGS}
    counts = token_counts_or_none(state_dict)
    if counts is not None:
        attn, ffn = counts
        shapes = model_kwargs_of(state_dict, recorded)
    else:  # another timm model: its recorded arguments, its class count from its head if it has one
        attn = ffn = None
        shapes = dict(recorded)
        head = state_dict.get('head.weight', state_dict.get('fc.weight'))
        if head is not None and 'num_classes' not in shapes:
            shapes['num_classes'] = head.shape[0]
    flags = []
    for key, flag, default in (('num_classes', '--num-classes', None), ('in_chans', '--in-chans', 3),
                               ('img_size', '--img-size', None)):
        if shapes.get(key) is not None and shapes[key] != default:
            flags += [flag, str(shapes[key])]
    kwargs = {} if attn is None else dict(attn_tokens=attn, ffn_tokens=ffn)
    defaults = {}
    if arch and attn is not None:
        import timm
        meta = timm.create_model(arch, device='meta')
        defaults.update(img_size=meta.patch_embed.img_size[0], patch_size=meta.patch_embed.patch_size[0],
                        depth=len(meta.blocks), embed_dim=meta.embed_dim)
    for key, value in shapes.items():
        if key in ('num_classes', 'in_chans', 'attn_tokens', 'ffn_tokens'):
            continue
        if key in recorded or (key in defaults and defaults[key] != value):
            kwargs[key] = value
    return kwargs, flags

