"""Streaming loader over WebDataset shards (DESIGN §5): `build_loader(root, split, ...)`.

Training: the shard list is shuffled per epoch with a seed every rank shares, then split over
ranks × workers; samples are shuffled in a buffer; every rank yields the same number of full
batches, floor(N / (world_size · batch_size)), whatever the shard count, so DDP never waits on a
rank that ran dry. A worker whose share falls short of its quota starts its share again (a few
samples then appear twice in an epoch; none is read by two ranks). Evaluation: every sample
exactly once, in one process or across ranks (disjoint subsets whose counts add up), the last
batch partial.

With at least ranks × workers shards, each (rank, worker) reads whole shards, dealt out so that the
sample counts are balanced (each next shard to the slot with the fewest samples); with fewer, each
reads all of them and keeps every (ranks · workers)-th sample, so no worker is ever left without data.

Images are decoded to uint8 RGB in the workers, augmented there (transforms.py), and handed over as
uint8; `normalize_batch` turns a batch into the model's normalised float input on its device. Bad
data (a corrupt JPEG, a sample without a label, a truncated tar) is skipped with a counted warning.
"""
import json
import math
import random
import tarfile
import warnings
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .transforms import build_eval_transform, build_train_transform, decode_rgb, seed_worker

__all__ = ['DataError', 'read_info', 'ShardStream', 'build_loader']


class DataError(ValueError):
    """Data that cannot be loaded as asked; the message names the thing and the fix."""


def read_info(root: str) -> Dict:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f'Shard folder {root} does not exist: build it with `python -m tokenformer_vit.make_shards`.')
    path = root / '_info.json'
    if not path.is_file():
        raise DataError(f'{path} is missing: build the shards with `python -m tokenformer_vit.make_shards`, '
                        f'which writes it.')
    return json.loads(path.read_text())


def _iter_tar(path: Path, counter: Dict[str, int]) -> Iterator[Dict[str, bytes]]:
    """Samples (key -> {ext: bytes}) of one tar, grouped by key; a truncated tar ends with a warning."""
    current, key = {}, None
    try:
        with tarfile.open(path, 'r|') as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base, _, ext = member.name.rpartition('/')[2].partition('.')
                if base != key:
                    if current:
                        yield current
                    current, key = {'__key__': base}, base
                current[ext] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        counter['truncated'] += 1
        warnings.warn(f'{path.name}: unreadable tar data after key {key} ({e.__class__.__name__}); '
                      f'skipping the rest of the shard ({counter["truncated"]} so far in this worker)')
        return
    if current:
        yield current


class ShardStream(IterableDataset):
    """Batches of (uint8 images N×3×H×W, int64 targets) from one split's shards, for one rank."""

    def __init__(self, root: str, split: str, batch_size: int, training: bool, img_size: int = 224,
                 world_size: int = 1, rank: int = 0, seed: int = 0, epoch: int = 0, crop_pct: float = 0.875,
                 rand_augment: bool = True, color_jitter: float = 0.0, reprob: float = 0.25,
                 shuffle_buffer: int = 2048):
        info = read_info(root)
        if split not in info.get('splits', {}):
            raise DataError(f"Split {split!r} is not in {Path(root) / '_info.json'} (it has "
                            f"{', '.join(info.get('splits', {})) or 'none'}): build it with make_shards --split {split}.")
        entry = info['splits'][split]
        self.root, self.split, self.training = Path(root), split, training
        self.files = [self.root / f for f in entry['filenames']]
        missing = [str(f) for f in self.files if not f.is_file()]
        if missing:
            raise DataError(f'{len(missing)} shard(s) listed in _info.json are missing (e.g. {missing[0]}): '
                            f'rebuild the split with make_shards.')
        self.num_samples = int(entry['num_samples'])
        self.lengths = dict(zip(self.files, entry.get('shard_lengths') or [1] * len(self.files)))
        self.batch_size, self.world_size, self.rank = batch_size, world_size, rank
        self.seed, self.epoch, self.shuffle_buffer = seed, epoch, shuffle_buffer
        self.num_workers = 0  # the DataLoader's, set by build_loader: evaluation batches are per worker
        if training:
            self.transform = build_train_transform(img_size, rand_augment=rand_augment, color_jitter=color_jitter,
                                                   reprob=reprob, normalize=False)
            self.batches_per_rank = self.num_samples // (world_size * batch_size)
            if self.batches_per_rank == 0:
                raise DataError(f'{split} has {self.num_samples} samples, fewer than one batch per rank '
                                f'({world_size} x {batch_size}): lower the batch size.')
        else:
            self.transform = build_eval_transform(img_size, crop_pct, normalize=False)
            self.batches_per_rank = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.training:
            return self.batches_per_rank
        workers, total = max(1, self.num_workers), 0
        for w in range(workers):  # each worker ends with its own partial batch
            files, stride, offset = self._assignment(w, workers)
            count = sum(self.lengths[f] for f in files)
            if stride > 1:
                count = count // stride + (offset < count % stride)
            total += math.ceil(count / self.batch_size)
        return total

    def _assignment(self, worker: int, num_workers: int) -> Tuple[List[Path], int, int]:
        """(shards to read, keep every `stride`-th sample, starting at `offset`) for this rank and worker."""
        files = list(self.files)
        if self.training:
            random.Random(self.seed * 100_003 + self.epoch).shuffle(files)  # the same order on every rank
        slot, slots = self.rank * num_workers + worker, self.world_size * num_workers
        if len(files) < slots:
            return files, slots, slot
        # whole shards, each to the slot with the fewest samples so far: balanced for any shard sizes
        load, mine = [0] * slots, []
        for f in files:
            s = min(range(slots), key=lambda i: (load[i], i))
            load[s] += self.lengths[f]
            if s == slot:
                mine.append(f)
        return mine, 1, 0

    def _samples(self, files: List[Path], stride: int, offset: int, counter) -> Iterator[Tuple[np.ndarray, int]]:
        index = 0
        for path in files:
            for sample in _iter_tar(path, counter):
                index += 1
                if (index - 1) % stride != offset:
                    continue
                if 'cls' not in sample or 'jpg' not in sample:
                    counter['unlabelled'] += 1
                    warnings.warn(f'{path.name}: sample {sample["__key__"]} has no .jpg or .cls; skipped '
                                  f'({counter["unlabelled"]} so far in this worker)')
                    continue
                try:
                    image = decode_rgb(sample['jpg'])
                    label = int(sample['cls'])
                except Exception as e:  # noqa: BLE001 - any bad sample is skipped and counted
                    counter['corrupt'] += 1
                    warnings.warn(f'{path.name}: sample {sample["__key__"]} could not be decoded '
                                  f'({e.__class__.__name__}); skipped ({counter["corrupt"]} so far in this worker)')
                    continue
                yield image, label

    def _shuffled(self, samples, rng: random.Random):
        buf = []
        for s in samples:
            if len(buf) < self.shuffle_buffer:
                buf.append(s)
                continue
            i = rng.randrange(len(buf))
            buf[i], s = s, buf[i]
            yield s
        rng.shuffle(buf)
        yield from buf

    def _batch(self, items) -> Tuple[torch.Tensor, torch.Tensor]:
        # N×C×H×W in channels-last memory: the H×W×C images stacked, no copy to planar layout
        images = torch.from_numpy(np.stack([im for im, _ in items])).permute(0, 3, 1, 2)
        return images, torch.tensor([t for _, t in items], dtype=torch.int64)

    def __iter__(self):
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        seed_worker(self.transform, self.seed, self.rank, worker, self.epoch, num_workers)
        counter = {'truncated': 0, 'unlabelled': 0, 'corrupt': 0}
        files, stride, offset = self._assignment(worker, num_workers)
        if not self.training:
            batch = []
            for image, label in self._samples(files, stride, offset, counter):
                batch.append((self.transform(image=image)['image'], label))
                if len(batch) == self.batch_size:
                    yield self._batch(batch)
                    batch = []
            if batch:
                yield self._batch(batch)
            return
        quota = self.batches_per_rank // num_workers + (worker < self.batches_per_rank % num_workers)
        rng = random.Random(((self.seed * 100_003 + self.epoch) * 1_009 + self.rank) * 1_009 + worker)
        batch, made = [], 0
        while made < quota:
            got = 0
            for image, label in self._shuffled(self._samples(files, stride, offset, counter), rng):
                got += 1
                batch.append((self.transform(image=image)['image'], label))
                if len(batch) == self.batch_size:
                    yield self._batch(batch)
                    batch, made = [], made + 1
                    if made == quota:
                        return
            if got == 0:
                raise DataError(f'rank {self.rank} worker {worker} found no readable samples in its shards')
            rng.shuffle(files)  # a short share starts again, in another order


def build_loader(root: str, split: str, batch_size: int, training: bool, num_workers: int = 4, img_size: int = 224,
                 world_size: int = 1, rank: int = 0, seed: int = 0, epoch: int = 0, crop_pct: float = 0.875,
                 rand_augment: bool = True, color_jitter: float = 0.0, reprob: float = 0.25,
                 pin_memory: bool = False, shuffle_buffer: int = 2048) -> DataLoader:
    """A DataLoader of (uint8 images, targets) batches over `root/_info.json`'s `split`; see the module doc.

    Call `loader.dataset.set_epoch(e)` before each epoch (workers are restarted per epoch).
    """
    stream = ShardStream(root, split, batch_size, training, img_size, world_size, rank, seed, epoch, crop_pct,
                         rand_augment, color_jitter, reprob, shuffle_buffer)
    stream.num_workers = num_workers
    return DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=False, prefetch_factor=4 if num_workers else None)
