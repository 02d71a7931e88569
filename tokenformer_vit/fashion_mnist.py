"""Fashion-MNIST, the embedded real data set: 70,000 28×28 greyscale images of 10 clothing classes.

Read from the IDX files of the Debian package `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist),
or from any folder holding the four `*-idx?-ubyte.gz` files of the official release.
"""
import gzip
import os
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

__all__ = ['FASHION_MNIST_CLASSES', 'DEFAULT_ROOT', 'load_fashion_mnist']

DEFAULT_ROOT = Path('/usr/share/datasets/fashion-mnist')
FASHION_MNIST_CLASSES = (
    't-shirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker', 'bag', 'ankle-boot')
_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, 'rb') as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(split: str, root: Optional[os.PathLike] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(images uint8 N×28×28, labels int64 N) of the 'train' (60,000) or 'test' (10,000) split."""
    root = Path(root or os.environ.get('FASHION_MNIST_ROOT', DEFAULT_ROOT))
    if split not in _FILES:
        raise ValueError(f"Unknown Fashion-MNIST split {split!r}: use 'train' or 'test'.")
    paths = [root / name for name in _FILES[split]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f'Fashion-MNIST files not found ({", ".join(missing)}): install them with '
            f'`apt-get install dataset-fashion-mnist`, or point FASHION_MNIST_ROOT at a folder holding them.')
    images, labels = (_read_idx(p) for p in paths)
    return images, labels.astype(np.int64)
