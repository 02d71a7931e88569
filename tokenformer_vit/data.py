"""Streaming loader over WebDataset shards (docs/design.md, "Shards and the loader"):
`build_loader(data, split, training)`, `data` a DataConfig (config.data_config makes the job's).

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

Repeated augmentation (`Recipe.aug_repeats` N > 1, DeiT's): each decoded sample gives N items in a
row, each augmented with its own draws, so an epoch of the same length holds about 1/N of the
images N times each and decodes 1/N as many JPEGs. The copies stay on one rank, mostly in one batch;
DeiT's sampler sends them to N ranks. Either way they fall in one global step, and only batch
statistics (BatchNorm, which a ViT does not have) tell the two apart.

Images are decoded to uint8 RGB in the workers, augmented there (transforms.py: each batch's
samples draw from the batch's own generator), and handed over as uint8; `normalize_batch` turns a
batch into the model's normalised float input on its device. Bad data (a corrupt JPEG, a sample
without a label, a truncated tar) is skipped with a counted warning.
"""
import atexit
import json
import math
import mmap
import multiprocessing
import os
import random
import signal
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .errors import DataError
from .transforms import EvalTransform, Recipe, TrainTransform, batch_rng, decode_rgb

__all__ = ['DataError', 'DataConfig', 'read_info', 'ShardStream', 'build_loader']


def read_info(root: str) -> Dict:
    root = Path(root)
    if not root.is_dir():
        state = 'is a file, not a folder' if root.exists() else 'does not exist'
        raise DataError(f'Shard folder {root} {state}: build it with `python -m tokenformer_vit.make_shards`, or pass '
                        f'the folder that holds _info.json.')
    path = root / '_info.json'
    if not path.is_file():
        raise DataError(f'{path} is missing: build the shards with `python -m tokenformer_vit.make_shards`, '
                        f'which writes it.')
    try:
        info = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f'{path} is not valid JSON ({e.__class__.__name__}): rebuild the shards with '
                        f'`python -m tokenformer_vit.make_shards`, which writes it.') from None
    if not isinstance(info, dict) or not isinstance(info.get('splits', {}), dict):
        raise DataError(f'{path} is not a shard index (a mapping with "splits"): rebuild the shards with make_shards.')
    return info


class _Counter(dict):
    """Bad data seen by one worker: counted, each occurrence warned about with the running total."""

    def __init__(self):
        super().__init__(truncated=0, unlabelled=0, corrupt=0)

    def warn(self, kind: str, message: str) -> None:
        self[kind] += 1
        warnings.warn(f'{message} ({self[kind]} so far in this worker)')

    def tar_error(self, exn: Exception) -> bool:
        """webdataset's handler for errors while reading a tar: warn, count, go on to the next shard."""
        where = next((a for a in exn.args if isinstance(a, str) and a.endswith('.tar')), 'a shard')
        self.warn('truncated', f'{Path(where).name}: unreadable tar data ({exn.__class__.__name__}); '
                               f'skipping the rest of the shard')
        return True


class TarError(OSError):
    """A shard that cannot be read past some point (truncated or damaged)."""


def _ustar_members(url: str) -> Iterator[Dict]:
    """The regular files of a plain tar (what make_shards writes), read in one go and parsed without
    tarfile: ~10x less time per member, a third of the per-image cost otherwise. Members are yielded
    as webdataset's tar expander yields them; a tar with other member types (PAX, GNU long names)
    goes through webdataset's own reader; damage raises TarError after the intact members. The file
    is mapped, not read: each member is copied out of the page cache once, and the mapping is closed
    before the first member is handed on (a file truncated later cannot fault the reader)."""
    with open(url, 'rb') as f:
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if os.fstat(f.fileno()).st_size else b''
    try:
        members, problem, pos = _ustar_index(data)
        contents = [(name, data[offset:offset + size]) for name, offset, size in members or ()]
    finally:
        if isinstance(data, mmap.mmap):
            data.close()
    if members is None:  # PAX or GNU members: webdataset's reader
        yield from wds.tariterators.tar_file_expander([{'url': url, 'stream': open(url, 'rb')}],
                                                      handler=wds.reraise_exception, eof_value=None)
        return
    for name, content in contents:
        yield {'fname': name, 'data': content, '__url__': url}
    if problem:
        raise TarError(f'{url} {problem} at byte {pos}')


def _ustar_index(data) -> Tuple[Optional[List[Tuple[str, int, int]]], Optional[str], int]:
    """([(member name, offset, size)], what is wrong at the end or None, where): the members of a
    plain ustar archive, or None for the list when it holds other member types."""
    members, pos, end = [], 0, len(data)
    while True:
        if pos + 512 > end:
            problem = 'ends inside a header'
            break
        header = data[pos:pos + 512]
        if header == _ZERO_BLOCK:
            problem = None
            break
        checksum = int(header[148:155].strip(b' \0') or b'0', 8)
        if header[257:262] != b'ustar' or sum(header) - sum(header[148:156]) + 256 != checksum:
            problem = 'has a damaged header'
            break
        kind, size = header[156:157], int(header[124:135].strip(b' \0') or b'0', 8)
        if kind not in (b'0', b'\0', b'5'):
            return None, None, pos
        if pos + 512 + size > end:
            problem = 'ends inside a member'
            break
        if kind != b'5':
            name = header[:100].rstrip(b'\0').decode()
            prefix = header[345:500].rstrip(b'\0').decode()
            members.append((f'{prefix}/{name}' if prefix else name, pos + 512, size))
        pos += 512 + (size + 511) // 512 * 512
    return members, problem, pos


_ZERO_BLOCK = bytes(512)


def _tar_samples(handler):
    """webdataset's tarfile_to_samples, with the fast plain-tar reader for local shards."""
    def expand(sources):
        for source in sources:
            try:
                yield from _ustar_members(source['url'])
                yield {}  # end of shard: webdataset's group_by_keys does not join samples across shards
            except FileNotFoundError:  # listed when the job started, gone now: not a damaged shard to skip
                raise DataError(f'shard {source["url"]} is gone (removed, or its split rebuilt while this job '
                                f'ran): rerun the command to resume from the last save.') from None
            except Exception as exn:  # noqa: BLE001 - handed to the handler, as webdataset does
                exn.args = exn.args + (source['url'],)
                if not handler(exn):
                    break

    return lambda sources: wds.tariterators.group_by_keys(expand(sources), handler=handler)


@dataclass(frozen=True)
class DataConfig:
    """Where a run's shards are and how they are read, as plain values that travel to the loader's
    workers (config.data_config makes it from the job's flags)."""
    root: str
    batch_size: int  # per process
    workers: int  # DataLoader workers per process
    seed: int
    recipe: Recipe
    max_pixels: int  # larger images are skipped (counted), not decoded
    shuffle_buffer: int  # undecoded training samples shuffled in each worker


class ShardStream(IterableDataset):
    """Batches of (uint8 images N×3×H×W, int64 targets) from one split's shards, for one rank."""

    def __init__(self, data: DataConfig, split: str, training: bool, world_size: int = 1, rank: int = 0,
                 num_classes: Optional[int] = None):
        entry = _split_entry(data.root, split)
        self.data, self.split, self.training, self.num_classes = data, split, training, num_classes
        self.root = Path(data.root)
        self.filenames = list(entry['filenames'])  # the generation this stream reads (check_unchanged)
        self.files = [self.root / f for f in entry['filenames']]
        missing = [str(f) for f in self.files if not f.is_file()]
        if missing:
            raise DataError(f'{len(missing)} shard(s) listed in _info.json are missing (e.g. {missing[0]}): '
                            f'rebuild the split with make_shards.')
        self.num_samples = int(entry['num_samples'])
        self.lengths = dict(zip(self.files, entry.get('shard_lengths') or [1] * len(self.files)))
        self.batch_size, self.world_size, self.rank = data.batch_size, world_size, rank
        self.epoch = 0
        self.num_workers = 0  # the DataLoader's, set by build_loader: evaluation batches are per worker
        self.skip_batches = 0  # training batches of this epoch already consumed (a resumed run)
        self.resume_roles = None  # {role: (samples read, copies made of the last)} where a resumed epoch goes on
        self.read = None  # per training batch of the epoch: (samples its role had read, copies of the last), shared
        if training:
            self.transform = TrainTransform(data.recipe)
            self.batches_per_rank = self.num_samples // (world_size * self.batch_size)
            if self.batches_per_rank == 0:
                raise DataError(f'{split} has {self.num_samples} samples, fewer than one batch per rank '
                                f'({world_size} x {self.batch_size}): lower the batch size.')
        else:
            self.transform = EvalTransform(data.recipe)
            self.batches_per_rank = None

    def set_epoch(self, epoch: int, skip_batches: int = 0, position: Optional[Dict] = None) -> None:
        """The epoch to deliver next (the shard order and augmentation depend on it), from its batch
        `skip_batches` on: a job resumed mid-epoch gets exactly the batches it had not trained on.
        `position` (`position()` of the save) says how many samples each worker had read by then,
        undecodable ones included, so that they are skipped unread; without it (or with another
        worker count) the skip counts decoded images and assumes every sample decodes."""
        if self.training and not 0 <= skip_batches < self.batches_per_rank:
            raise DataError(f'cannot skip {skip_batches} of {self.batches_per_rank} batches of an epoch')
        self.check_unchanged()
        self.epoch, self.skip_batches = epoch, skip_batches
        usable = position is not None and skip_batches and position.get('workers') == max(1, self.num_workers)
        self.resume_roles = {int(r): tuple(v) for r, v in position['roles'].items()} if usable else None
        if self.training:  # written by the workers as they hand over each batch, read by `position`
            self.read = torch.zeros((self.batches_per_rank, 2), dtype=torch.int64).share_memory_()

    def position(self, trained: int) -> Dict:
        """Where each worker's share of this epoch stands after its first `trained` batches: saved with
        a checkpoint taken inside the epoch, handed to `set_epoch` when it resumes."""
        workers = max(1, self.num_workers)
        roles = {}
        for role in range(workers):
            last = role + (trained - 1 - role) // workers * workers if trained > role else None
            roles[role] = [int(v) for v in self.read[last]] if last is not None else [0, 0]
        return dict(workers=workers, roles=roles)

    def check_unchanged(self) -> None:
        """The split is still the generation of shards this stream started with; a rebuild (make_shards
        replaces _info.json, then removes the old shards) stops the job with a sentence."""
        try:
            now = _split_entry(self.data.root, self.split).get('filenames')
        except DataError as e:
            raise DataError(f'split {self.split!r} of {self.root} changed while this job ran ({e}): rerun the '
                            f'command once the shards are whole to resume from the last save.') from None
        if now != self.filenames:
            after = ('rerun the command to resume from the last save, evaluated on the new shards' if not self.training
                     else 'a run cannot change its training shards: put the old ones back to resume, or start a '
                          'new --output')
            raise DataError(f'split {self.split!r} of {self.root} was rebuilt while this job ran '
                            f'({len(self.filenames)} shards when it started, now {len(now)} others): {after}.')

    def check_evaluated(self, images: int) -> None:
        """An evaluation covered every sample the split declares; zero or fewer is an error, not a figure."""
        if images != self.num_samples:
            self.check_unchanged()
            raise DataError(f'evaluated {images} of the {self.num_samples} samples of split {self.split!r} of '
                            f'{self.root} (the others could not be read: see the warnings above): rebuild the '
                            f'split with make_shards; no figure is reported for it.')

    def __len__(self) -> int:
        if self.training:
            return self.batches_per_rank - self.skip_batches
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
            random.Random(self.data.seed * 100_003 + self.epoch).shuffle(files)  # the same order on every rank
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

    def _pipeline(self, files: List[Path], stride: int, offset: int, counter: _Counter, rng=None):
        """The webdataset pipeline of one pass over `files`: tar members grouped into samples, every
        `stride`-th kept, shuffled in a buffer of undecoded samples (training); labelled samples out."""
        def keep_slice(samples):
            for index, sample in enumerate(samples):
                if index % stride == offset:
                    yield sample

        def labelled(samples):
            for sample in samples:
                if 'cls' not in sample or 'jpg' not in sample:
                    counter.warn('unlabelled', f'{Path(sample.get("__url__", "?")).name}: sample '
                                               f'{sample["__key__"]} has no .jpg or .cls; skipped')
                    continue
                yield sample

        stages = [wds.SimpleShardList([str(f) for f in files]), _tar_samples(counter.tar_error)]
        if stride > 1:
            stages.append(keep_slice)
        if rng is not None:
            buffer = self.data.shuffle_buffer
            stages.append(wds.shuffle(buffer, initial=min(buffer, 256), rng=rng))
        stages.append(labelled)
        return wds.DataPipeline(*stages)

    def _decode(self, sample, counter: _Counter):
        """(decoded uint8 image, label), or None for a sample that does not decode (counted)."""
        try:
            image = decode_rgb(sample['jpg'], self.data.max_pixels)
            label = int(sample['cls'])
        except Exception as e:  # noqa: BLE001 - any bad sample is skipped and counted
            counter.warn('corrupt', f'{Path(sample.get("__url__", "?")).name}: sample {sample["__key__"]} could '
                                    f'not be decoded ({e.__class__.__name__}: {e}); skipped')
            return None
        if self.num_classes is not None and not 0 <= label < self.num_classes:
            # a wrong label is a wrong data set, not a bad sample: stop rather than train on it
            raise DataError(f'{Path(sample.get("__url__", "?")).name}: sample {sample["__key__"]} has label {label}, '
                            f'outside the {self.num_classes} classes of the model: rebuild the shards or fix '
                            f'--num-classes.')
        return image, label

    @staticmethod
    def _batch(items) -> Tuple[torch.Tensor, torch.Tensor]:
        # N×C×H×W in channels-last memory: the H×W×C images copied once, into shared memory, from which
        # the DataLoader hands the batch to the main process without a further copy
        images = torch.empty((len(items),) + items[0][0].shape, dtype=torch.uint8)
        if get_worker_info() is not None:
            images.share_memory_()
        out = images.numpy()
        for i, (im, _) in enumerate(items):
            out[i] = im
        return images.permute(0, 3, 1, 2), torch.tensor([t for _, t in items], dtype=torch.int64)

    def _batch_rng(self, index: int) -> random.Random:
        """The augmentation generator of training batch `index` (of this rank and epoch): the same
        whatever the number of workers, different for every batch, and a resumed epoch can skip
        batches without replaying it."""
        return batch_rng(self.data.seed, self.epoch, self.rank, index)

    def __iter__(self):
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if self.training:
            yield from self._training_batches(worker, num_workers)
            return
        counter, batch = _Counter(), []
        files, stride, offset = self._assignment(worker, num_workers)
        for sample in self._pipeline(files, stride, offset, counter):
            item = self._decode(sample, counter)
            if item is not None:
                batch.append((self.transform(item[0]), item[1]))
            if len(batch) == self.batch_size:
                yield self._batch(batch)
                batch = []
        if batch:
            yield self._batch(batch)

    def _training_batches(self, worker: int, num_workers: int):
        """This worker's share of the epoch's batches. The DataLoader takes batch i from worker
        i % num_workers, so (role) worker r makes batches r + j·num_workers of the epoch. Resumed after
        k batches, the DataLoader starts again at worker 0: worker w then plays role
        (w + k) % num_workers and skips what that role had read for its batches below k, reading but
        not decoding it: the samples the save recorded (`position`), undecodable ones included, or
        without that record as many samples as it made images. With --aug-repeats N each decoded
        sample gives N consecutive items, each augmented anew."""
        counter, repeats, bs = _Counter(), self.data.recipe.aug_repeats, self.batch_size
        role = (worker + self.skip_batches) % num_workers
        files, stride, offset = self._assignment(role, num_workers)
        quota = self.batches_per_rank // num_workers + (role < self.batches_per_rank % num_workers)
        skip = max(0, -(-(self.skip_batches - role) // num_workers)) * bs  # items of this role already trained
        rng = random.Random(((self.data.seed * 100_003 + self.epoch) * 1_009 + self.rank) * 1_009 + role)
        recorded = self.resume_roles.get(role) if self.resume_roles is not None and skip else None
        # pos: items of this role made or skipped so far; read: samples it has taken from its shards
        batch, pos, read, augment = [], (skip if recorded else 0), 0, None
        while pos < quota * bs:
            got = 0
            for sample in self._pipeline(files, stride, offset, counter, rng):
                got += 1
                read += 1
                first = 0
                if recorded is not None:  # the save's record: skip what was read, finish the last sample's copies
                    if read < recorded[0] or (read == recorded[0] and recorded[1] >= repeats):
                        continue
                    first = recorded[1] if read == recorded[0] else 0
                elif pos + repeats <= skip:  # every copy already trained on: read, not decoded
                    pos += repeats
                    continue
                item = self._decode(sample, counter)
                if item is None:
                    continue
                for copy in range(first, repeats):
                    if pos < skip:
                        pos += 1
                        continue
                    if not batch:
                        augment = self._batch_rng(role + pos // bs * num_workers)
                    batch.append((self.transform(item[0], augment), item[1]))
                    pos += 1
                    if len(batch) == bs:
                        index = role + (pos - 1) // bs * num_workers
                        if self.read is not None and index < len(self.read):
                            self.read[index, 0], self.read[index, 1] = read, copy + 1
                        yield self._batch(batch)
                        batch = []
                        if pos == quota * bs:
                            return
            if got == 0:
                raise DataError(f'rank {self.rank} worker {worker} found no readable samples in its shards')
            rng.shuffle(files)  # a short share starts again, in another order


def _split_entry(root: str, split: str) -> Dict:
    """The split's entry of ROOT/_info.json, checked to be as make_shards writes it."""
    info = read_info(root)
    index = Path(root) / '_info.json'
    if split not in info.get('splits', {}):
        raise DataError(f"Split {split!r} is not in {index} (it has "
                        f"{', '.join(info.get('splits', {})) or 'none'}): build it with make_shards --split {split}.")
    entry = info['splits'][split]
    if not isinstance(entry, dict) or not isinstance(entry.get('filenames'), list) or \
            not isinstance(entry.get('num_samples'), int) or isinstance(entry.get('num_samples'), bool):
        raise DataError(f'{index} does not list split {split!r} as make_shards writes it (filenames and '
                        f'num_samples): rebuild the split with make_shards.')
    if not entry['filenames'] or entry['num_samples'] < 1:
        raise DataError(f'Split {split!r} of {index} has no samples ({len(entry["filenames"])} shards, '
                        f'num_samples {entry["num_samples"]}): rebuild it with make_shards from a folder of images.')
    return entry


def _ignore_preemption_signals(worker_id: int) -> None:
    # Slurm signals every process of a job; the main process saves and stops, workers must not die first
    for sig in (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def _kill_leftover_workers() -> None:
    """At exit, SIGKILL the loader workers still alive. They ignore SIGTERM (above), and
    multiprocessing's own exit handler stops daemonic children with SIGTERM and then waits for them:
    a loader whose iterator an exception left behind (a bad label, say) would hold the process forever."""
    workers = [child for child in multiprocessing.active_children() if child.daemon]
    if workers:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler would report the kills as failures
    for child in workers:
        child.kill()
        child.join(timeout=10)


def _register_worker_reaper() -> None:
    """Make the reaper the latest exit handler (once, however often called): exit handlers run last
    first, so it runs before multiprocessing's, which would wait for the workers."""
    atexit.unregister(_kill_leftover_workers)
    atexit.register(_kill_leftover_workers)


def build_loader(data: DataConfig, split: str, training: bool, *, world_size: int = 1, rank: int = 0,
                 num_classes: Optional[int] = None, pin_memory: bool = False) -> DataLoader:
    """A DataLoader of (uint8 images, targets) batches over `data.root/_info.json`'s `split`; see the module doc.

    Call `loader.dataset.set_epoch(e)` before each epoch (workers are restarted per epoch); a resumed
    job calls `set_epoch(e, skip_batches=k)` to continue an epoch after its k-th batch.
    """
    stream = ShardStream(data, split, training, world_size, rank, num_classes)
    stream.num_workers = data.workers
    if data.workers:
        _register_worker_reaper()
    return DataLoader(stream, batch_size=None, num_workers=data.workers, pin_memory=pin_memory,
                      persistent_workers=False, prefetch_factor=4 if data.workers else None,
                      worker_init_fn=_ignore_preemption_signals if data.workers else None)
