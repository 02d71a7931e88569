"""Checkpoints on disk: read in any of the formats we meet, written atomically."""
import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Dict

import torch

from .errors import UserError

__all__ = ['CheckpointError', 'atomic_file', 'read_checkpoint', 'save_atomic']


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message names the file and the fix."""


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


@contextlib.contextmanager
def atomic_file(path: os.PathLike, mode: str = 'wb'):
    """Open a temporary file beside `path`; on success it is synced and renamed to `path` (mode 0644),
    on any error removed: a reader never sees half a file, a killed writer leaves only a hidden .tmp."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_atomic(obj: Any, path: os.PathLike) -> None:
    """torch.save through `atomic_file`."""
    with atomic_file(path) as f:
        torch.save(obj, f)
