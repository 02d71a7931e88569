"""Files written all or nothing: the base layer under checkpoints, run logs and shards.

A reader never sees half a file; a writer killed half-way leaves only a hidden temporary beside the
file it would have replaced, which stays intact.
"""
import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

__all__ = ['atomic_file', 'save_atomic']


@contextlib.contextmanager
def atomic_file(path: os.PathLike, mode: str = 'wb', tmp: Optional[os.PathLike] = None):
    """Open a temporary file beside `path`; on success it is synced and renamed to `path` (mode 0644),
    on any error removed. The temporary is a new `.NAME.<random>.tmp`, or `tmp` where the caller owns
    that name by its own record (a run folder's manifest, make_shards' journal): one that a killed
    write left is then known to be ours, and replaced or removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tmp is None:
        fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    else:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
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


def save_atomic(obj: Any, path: os.PathLike, tmp: Optional[os.PathLike] = None) -> None:
    """torch.save through `atomic_file`."""
    with atomic_file(path, tmp=tmp) as f:
        torch.save(obj, f)
