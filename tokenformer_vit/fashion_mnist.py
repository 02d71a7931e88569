"""Fashion-MNIST, the demo's embedded real data set (CIFAR-10 is the other, cifar10.py): 70,000 28×28
greyscale images of 10 clothing classes.

Read from the IDX files of the Debian package `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist),
from any folder holding the four `*-idx?-ubyte.gz` files of the official release (FASHION_MNIST_ROOT),
or, where neither is there, downloaded once from the official release into
~/.cache/tokenformer_vit/fashion-mnist (checked against the release's MD5 sums, written atomically).
"""
import gzip
import hashlib
import os
import sys
import urllib.request
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from .errors import DataError

__all__ = ['FASHION_MNIST_CLASSES', 'DEFAULT_ROOT', 'cache_root', 'load_fashion_mnist', 'download_fashion_mnist']

DEFAULT_ROOT = Path('/usr/share/datasets/fashion-mnist')


def cache_root() -> Path:
    """Where a download goes: XDG_CACHE_HOME (default ~/.cache)/tokenformer_vit/fashion-mnist, read when used."""
    return Path(os.environ.get('XDG_CACHE_HOME', Path.home() / '.cache')) / 'tokenformer_vit' / 'fashion-mnist'


MIRRORS = ('http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/',
           'https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/')
MD5 = {  # of the official release's files
    'train-images-idx3-ubyte.gz': '8d4fb7e6c68d591d4c3dfef9ec88bf0d',
    'train-labels-idx1-ubyte.gz': '25c81989df183df01b3e8a0aad5dffbe',
    't10k-images-idx3-ubyte.gz': 'bef4ecab320f06d8554ea6380940ec79',
    't10k-labels-idx1-ubyte.gz': 'bb300cfdad3c16e7a12a480ee83cd310',
}
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


def download_fashion_mnist(root: Optional[os.PathLike] = None, mirrors: Optional[Sequence[str]] = None) -> Path:
    """Fetch the four official files into `root` (default `cache_root()`), trying `mirrors` (default
    MIRRORS) in turn; files already there and intact are kept."""
    from .atomic import atomic_file
    root, mirrors = Path(root or cache_root()), mirrors or MIRRORS
    root.mkdir(parents=True, exist_ok=True)
    for name, md5 in MD5.items():
        path = root / name
        if path.is_file() and _md5_of(path) == md5:
            continue
        errors = []
        for mirror in mirrors:
            try:
                print(f'Downloading {mirror}{name}', file=sys.stderr)
                digest = hashlib.md5(usedforsecurity=False)
                with urllib.request.urlopen(mirror + name, timeout=60) as response, atomic_file(path) as f:
                    for chunk in iter(lambda: response.read(1 << 20), b''):
                        digest.update(chunk)
                        f.write(chunk)
                    if digest.hexdigest() != md5:
                        raise ValueError(f'MD5 {digest.hexdigest()} is not the release\'s {md5}')
                break
            except Exception as e:  # noqa: BLE001 - the next mirror, then one error naming all
                errors.append(f'{mirror}: {e}')
        else:
            raise DataError(f'Could not download Fashion-MNIST {name} ({"; ".join(errors)}): install '
                               f'`apt-get install dataset-fashion-mnist` or put the official files in a folder '
                               f'and set FASHION_MNIST_ROOT to it.')
    return root


def _md5_of(path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _find_root(root: Optional[os.PathLike], download: bool) -> Path:
    given = root or os.environ.get('FASHION_MNIST_ROOT')
    if given:
        return Path(given)  # where the user says: no download, a missing file is an error
    for candidate in (DEFAULT_ROOT, cache_root()):
        if all((candidate / name).is_file() for name in MD5):
            return candidate
    if download:
        return download_fashion_mnist()
    return DEFAULT_ROOT


def load_fashion_mnist(split: str, root: Optional[os.PathLike] = None,
                       download: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """(images uint8 N×28×28, labels int64 N) of the 'train' (60,000) or 'test' (10,000) split.

    Looks in `root` or FASHION_MNIST_ROOT if given, else in the Debian package's folder, then in the
    download cache, and downloads there (once) when the files are nowhere and `download` is true."""
    if split not in _FILES:
        raise ValueError(f"Unknown Fashion-MNIST split {split!r}: use 'train' or 'test'.")
    root = _find_root(root, download)
    paths = [root / name for name in _FILES[split]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(
            f'Fashion-MNIST files not found ({", ".join(missing)}): install them with '
            f'`apt-get install dataset-fashion-mnist`, or point FASHION_MNIST_ROOT at a folder holding them.')
    images, labels = (_read_idx(p) for p in paths)
    return images, labels.astype(np.int64)
