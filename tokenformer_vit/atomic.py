"""Files written all or nothing: the base layer under checkpoints, run logs and shards.

A reader never sees half a file; a writer killed half-way leaves only a hidden `.NAME.<random>.tmp`
beside the file it would have replaced, which stays intact.
"""
import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ['atomic_file', 'save_atomic']


@contextlib.contextmanager
def atomic_file(path: os.PathLike, mode: str = 'wb'):
    """Open a temporary file beside `path`; on success it is synced and renamed to `path` (mode 0644),
    on any error removed."""
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
