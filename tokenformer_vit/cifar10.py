"""CIFAR-10, the second embedded real data set: 60,000 32×32 colour images of 10 classes
(50,000 train, 10,000 test).

Read from either layout, in a folder given as `root`, or by CIFAR10_ROOT, or else found at
./data/cifar10 or in the download cache ~/.cache/tokenformer_vit/cifar10:
- an image folder: train/CLASS/*.jpg|png and test/CLASS/..., one folder per CIFAR-10 class (a
  folder holding such a `cifar10/` is taken too);
- torchvision's `cifar-10-batches-py/` (the official Python release).
Where neither is found and `download` is true, torchvision downloads the official release into the
cache (once, MD5-checked). Labels always follow CIFAR10_CLASSES, the official order.
"""
import os
import pickle
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from .errors import DataError

__all__ = ['CIFAR10_CLASSES', 'cache_root', 'find_cifar10', 'cifar10_files', 'load_cifar10']

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
_BATCHES = 'cifar-10-batches-py'
_BATCH_FILES = {'train': [f'data_batch_{i}' for i in range(1, 6)], 'test': ['test_batch']}
_IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
_HOW = ('unpack the JPEG folders there (train/CLASS, test/CLASS), or let torchvision download the '
        'official release (download=True, the default of make_shards and the job)')


def cache_root() -> Path:
    """Where torchvision's download goes: XDG_CACHE_HOME (default ~/.cache)/tokenformer_vit/cifar10, read when used."""
    return Path(os.environ.get('XDG_CACHE_HOME', Path.home() / '.cache')) / 'tokenformer_vit' / 'cifar10'


def _layout(folder: Path) -> Optional[Tuple[str, Path]]:
    """('folders', root) or ('batches', root) if `folder` holds CIFAR-10 in either layout."""
    for root in (folder, folder / 'cifar10'):
        if (root / 'train').is_dir() and (root / 'test').is_dir():
            return 'folders', root
    if (folder / _BATCHES / 'test_batch').is_file():
        return 'batches', folder / _BATCHES
    return None


def find_cifar10(root: Optional[os.PathLike] = None, download: bool = True) -> Tuple[str, Path]:
    """(layout, folder) of CIFAR-10: 'folders' (train/ and test/ class folders) or 'batches'."""
    given = root or os.environ.get('CIFAR10_ROOT')
    if given:  # where the user says: no search and no download
        found = _layout(Path(given))
        if found is None:
            raise DataError(f'No CIFAR-10 in {given}: it needs train/CLASS and test/CLASS image folders or '
                                    f'torchvision\'s {_BATCHES}/; {_HOW}.')
        return found
    cache = cache_root()
    for candidate in (Path('data/cifar10'), cache):
        found = _layout(candidate)
        if found:
            return found
    if not download:
        raise DataError(f'CIFAR-10 not found in data/cifar10 or {cache}: set CIFAR10_ROOT to a folder '
                                f'holding it, or {_HOW}.')
    from torchvision.datasets import CIFAR10
    try:
        for train in (True, False):
            CIFAR10(str(cache), train=train, download=True)
    except Exception as e:  # noqa: BLE001 - no network, a broken mirror, a damaged archive: one answer
        raise DataError(f'CIFAR-10 is not in data/cifar10 or {cache}, and torchvision could not download it '
                        f'({e.__class__.__name__}): set CIFAR10_ROOT to a folder holding it, or {_HOW}.') from None
    return 'batches', cache / _BATCHES


def _read_batches(folder: Path, split: str) -> Tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in _BATCH_FILES[split]:
        path = folder / name
        if not path.is_file():
            raise DataError(f'{path} is missing: CIFAR-10\'s {split} split has {len(_BATCH_FILES[split])} '
                                    f'batch files; download the release again.')
        with open(path, 'rb') as f:
            batch = pickle.load(f, encoding='bytes')
        images.append(np.asarray(batch[b'data'], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[b'labels'], dtype=np.int64))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def cifar10_files(folder: Path, split: str) -> List[Tuple[Path, int]]:
    """(image path, label) of one split of the image-folder layout, in class then file-name order."""
    split_dir = folder / split
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    if found != sorted(CIFAR10_CLASSES):
        raise DataError(f'{split_dir} has class folders {found}, not CIFAR-10\'s ten '
                                f'({", ".join(CIFAR10_CLASSES)}): point CIFAR10_ROOT at the CIFAR-10 folder.')
    files = [(path, label) for label, name in enumerate(CIFAR10_CLASSES)
             for path in sorted(p for p in (split_dir / name).iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)]
    if not files:
        raise DataError(f'{split_dir} holds no images: {_HOW}.')
    return files


def _read_folders(folder: Path, split: str) -> Tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    images, labels = [], []
    for path, label in cifar10_files(folder, split):
        with Image.open(path) as img:
            array = np.asarray(img.convert('RGB'))
        if array.shape != (32, 32, 3):
            raise ValueError(f'{path} is {array.shape[1]}x{array.shape[0]}: CIFAR-10 images are 32x32.')
        images.append(array)
        labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def load_cifar10(split: str, root: Optional[os.PathLike] = None,
                 download: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """(images uint8 N×32×32×3, labels int64 N) of the 'train' (50,000) or 'test' (10,000) split,
    labelled in CIFAR10_CLASSES order; see the module's docstring for where it looks."""
    if split not in _BATCH_FILES:
        raise ValueError(f"Unknown CIFAR-10 split {split!r}: use 'train' or 'test'.")
    layout, folder = find_cifar10(root, download)
    return _read_batches(folder, split) if layout == 'batches' else _read_folders(folder, split)
