"""Checkpoints on disk: read in any of the formats we meet, written atomically."""
import os
import tempfile
from pathlib import Path
from typing import Any, Dict

import torch

__all__ = ['CheckpointError', 'read_checkpoint', 'save_atomic']


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the fix."""


def read_checkpoint(path: os.PathLike) -> Dict[str, Any]:
    """A checkpoint as a timm-format dict (a bare state dict is wrapped as its `state_dict`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'Checkpoint {path} does not exist: pass the path of a .pth/.pth.tar/.safetensors file.')
    if path.suffix == '.safetensors':
        from safetensors.torch import load_file
        return {'state_dict': load_file(str(path))}
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise CheckpointError(f'Checkpoint {path} could not be read as a torch or safetensors file ({e.__class__.__name__}).')
    if not isinstance(ckpt, dict):
        raise CheckpointError(f'Checkpoint {path} holds a {type(ckpt).__name__}, not a state dict.')
    if 'state_dict' not in ckpt and 'model' in ckpt and isinstance(ckpt['model'], dict):
        ckpt = dict(ckpt, state_dict=ckpt.pop('model'))
    if 'state_dict' not in ckpt:
        ckpt = {'state_dict': ckpt}
    return ckpt


def save_atomic(obj: Any, path: os.PathLike) -> None:
    """torch.save to a temporary file beside `path`, then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + '.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
