"""Write an image-folder data set as WebDataset tar shards that timm's `wds/` reader reads as they are.

    python -m tokenformer_vit.make_shards --input DIR --split {train,validation} --output ROOT \\
        [--class-list FILE] [--shard-size 1024] [--max-side N] [--workers N] [--name NAME]
    python -m tokenformer_vit.make_shards --input fashion-mnist --split train --output ROOT
    python -m tokenformer_vit.make_shards --input cifar10 --split validation --output ROOT

DIR holds one folder per class; the class index is the folder's rank in sorted order, or its line
in --class-list (e.g. the 1,000 ImageNet synsets in class-index order). Each sample is KEY.jpg,
KEY.cls (the index as ASCII) and KEY.json (original file name, class name), with keys free of dots.
Samples are shuffled once (fixed seed) before sharding, so that a shard mixes classes. The split is
merged into ROOT/_info.json (docs/design.md, "Shards and the loader"), with its --max-side. JPEGs are
stored byte for byte (EXIF and all: neither the loader nor timm applies EXIF orientation), unless
--max-side is given and their longer side is above it; other images, and those, are converted to
8-bit RGB (16-bit, 32-bit and float pixels scaled, not clipped), resized so the longer side is at
most --max-side, and encoded at quality 95. An unreadable image, or a dangling
link, is skipped, named and counted. A rebuild writes a new generation of shards beside the old and
switches over by replacing _info.json, so a killed or repeated run leaves either the old set or the
new one, never half a file or a mix. One build writes to ROOT at a time (a second waits), and files
are written, replaced or removed only where make_shards' own record names them (_info.json and its
journal), never by a name pattern: a folder may hold other files, which stay as they are.
"""
import argparse
import io
import json
import os
import random
import signal
import sys
import tarfile
import warnings
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from .atomic import atomic_file
from .errors import ShardError, UserError
from .transforms import MAX_IMAGE_PIXELS, ImageTooLarge

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff', '.gif')
SPLITS = ('train', 'validation')
EMBEDDED = ('fashion-mnist', 'cifar10')  # --input names of the embedded real data sets (a folder: ./NAME)
JPEG_QUALITY = 95

# one sample to write: (key, class index, class name, source path or raw image, original file name)
Item = Tuple[str, int, str, object, str]


@dataclass(frozen=True)
class ShardSpec:
    """How a split is written: images per shard, the longer side above which an image is re-encoded
    (None: JPEGs byte for byte), the largest image decoded, worker processes, the data set's name
    (None: the output folder's), the shuffle's seed, and a progress bar."""
    shard_size: int = 1024
    max_side: Optional[int] = None
    max_pixels: int = MAX_IMAGE_PIXELS
    workers: int = 1
    name: Optional[str] = None
    seed: int = 0
    progress: bool = True


def list_image_folder(root: Path, class_list: Optional[Path] = None) -> Tuple[List[Tuple[Path, int]], List[str]]:
    """(path, class index) of every image under root/CLASS/, and the class names by index."""
    if not root.is_dir():
        state = 'is a file' if root.exists() else 'does not exist'
        raise ShardError(f'Input folder {root} {state}: pass a folder with one sub-folder per class.')
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if class_list is not None:
        if not class_list.is_file():
            raise ShardError(f'Class list {class_list} does not exist: pass a text file with one class name a line.')
        try:  # utf-8-sig: a list saved with a byte-order mark (Windows editors) names its first class as written
            classes = [line.strip() for line in class_list.read_text(encoding='utf-8-sig').splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise ShardError(f'Class list {class_list} is not UTF-8 text: save it as a text file with one class name '
                             f'a line.') from None
        repeated = sorted({c for c in classes if classes.count(c) > 1})
        if repeated:
            raise ShardError(f'Class list {class_list} names {repeated[0]!r} more than once: each class must have '
                             f'one line, its index.')
        unknown = sorted(set(folders) - set(classes))
        if unknown:
            raise ShardError(f'{len(unknown)} folder(s) of {root} are not in {class_list} (e.g. {unknown[0]}): '
                             f'fix the class list or the folder names.')
    else:
        classes = folders
    if not folders:
        raise ShardError(f'Input folder {root} has no class sub-folders: expected {root}/CLASS/IMAGE.jpg.')
    index = {name: i for i, name in enumerate(classes)}
    items = []
    for name in folders:
        for path in sorted((root / name).rglob('*')):
            # a dangling link is listed too: it is then skipped and counted like an unreadable file
            dangling = path.is_symlink() and not path.exists()
            if path.suffix.lower() in IMAGE_EXTENSIONS and (path.is_file() or dangling):
                items.append((path, index[name]))
    if not items:
        raise ShardError(f'Input folder {root} holds no images ({", ".join(IMAGE_EXTENSIONS)}).')
    return items, classes


def encode_sample(source, max_side: Optional[int] = None, max_pixels: int = MAX_IMAGE_PIXELS) -> bytes:
    """JPEG bytes for one image: a JPEG's original bytes unless its longer side is above `max_side`;
    other images (and those) as 8-bit RGB, resized to `max_side` if given, quality 95. An image of
    more than `max_pixels` pixels is refused before it is decoded."""
    raw = source.read_bytes() if isinstance(source, Path) else None
    with warnings.catch_warnings():  # PIL's own bomb warning: max_pixels decides
        warnings.simplefilter('ignore', Image.DecompressionBombWarning)
        img = Image.open(io.BytesIO(raw)) if raw is not None else source
    fmt, size = img.format, img.size
    if size[0] * size[1] > max_pixels:
        raise ImageTooLarge(f'{size[0]}x{size[1]} pixels, above the limit of {max_pixels}')
    img.load()  # decode fully: a truncated or corrupt file fails here, not in training
    if raw is not None and fmt == 'JPEG' and (max_side is None or max(size) <= max_side):
        return raw  # the photograph as it is: the loader and timm decode it with PIL's conversion to RGB
    img = to_rgb8(img)
    if max_side is not None and max(size) > max_side:
        scale = max_side / max(size)
        img = img.resize((max(1, round(size[0] * scale)), max(1, round(size[1] * scale))), Image.BICUBIC)
    out = io.BytesIO()
    img.save(out, format='JPEG', quality=JPEG_QUALITY)
    return out.getvalue()


def to_rgb8(img: Image.Image) -> Image.Image:
    """An 8-bit RGB image of the same content. PIL's own conversion clips 16-bit, 32-bit and float
    pixels to 255 or truncates them to 0; here they are scaled instead: 16-bit (and 32-bit values
    within 0-65535, as PIL opens some 16-bit files) by 255/65535, floats within 0-1 by 255, any other
    range from its minimum to its maximum. Palette, CMYK, alpha (dropped, as timm's loader drops it)
    and bilevel images go through PIL's conversion."""
    if img.mode.startswith('I') or img.mode == 'F':
        a = np.asarray(img, dtype=np.float64)
        low, high = (a.min(), a.max()) if a.size else (0.0, 0.0)
        if img.mode == 'F' and low >= 0 and high <= 1:
            scaled = a * 255
        elif img.mode != 'F' and low >= 0 and high <= 65535:
            scaled = a * (255 / 65535)
        else:
            scaled = (a - low) * (255 / (high - low)) if high > low else np.zeros_like(a)
        img = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), 'L')
    return img.convert('RGB')


def _write_shard(job) -> Tuple[str, int, List[str]]:
    """Write one shard atomically; returns (file name, samples written, names of skipped images)."""
    import webdataset as wds
    path, items, max_side, max_pixels = job
    path = Path(path)
    written, skipped = 0, []
    with atomic_file(path, tmp=_partial(path)) as f:  # the journal lists the shard: its temporary is ours
        # plain ustar with a fixed mtime: no per-member PAX header to parse, and reproducible shards
        with wds.TarWriter(f, format=tarfile.USTAR_FORMAT, mtime=0) as sink:
            for key, label, class_name, source, file_name in items:
                try:
                    jpg = encode_sample(source, max_side, max_pixels)
                except Exception as e:  # noqa: BLE001 - any unreadable image is skipped and named
                    why = 'not an image file PIL can read' if isinstance(e, UnidentifiedImageError) else str(e)
                    skipped.append(f'{file_name} ({e.__class__.__name__}: {why})')
                    continue
                sink.write({'__key__': key, 'jpg': jpg, 'cls': str(label).encode(),
                            'json': json.dumps({'file': file_name, 'class': class_name}).encode()})
                written += 1
    return path.name, written, skipped


def _embedded_items(input: str, split: str) -> Tuple[List[Item], List[str]]:
    """The items of an embedded real data set: Fashion-MNIST's arrays, or CIFAR-10's JPEG files (stored
    as they are) or arrays (torchvision's release), labelled in the data set's official class order."""
    part = 'train' if split == 'train' else 'test'
    if input == 'cifar10':
        from .cifar10 import CIFAR10_CLASSES as classes, cifar10_files, find_cifar10, load_cifar10
        layout, folder = find_cifar10()
        if layout == 'folders':
            return [(None, label, classes[label], path, f'cifar10/{part}/{classes[label]}/{path.name}')
                    for path, label in cifar10_files(folder, part)], list(classes)
        images, labels = load_cifar10(part)
    else:
        from .fashion_mnist import FASHION_MNIST_CLASSES as classes, load_fashion_mnist
        images, labels = load_fashion_mnist(part)
    items = [(None, int(label), classes[label], Image.fromarray(img).convert('RGB'), f'{input}/{part}/{i:05d}')
             for i, (img, label) in enumerate(zip(images, labels))]
    return items, list(classes)


def _recorded_classes(info_path: Path, split: str) -> Optional[List[str]]:
    """The class list that the other splits of an existing _info.json were labelled with, if any."""
    if not info_path.is_file():
        return None
    try:
        info = json.loads(info_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ShardError(f'{info_path} is not valid JSON: remove it (and its shards) or write to another '
                         f'--output.') from None
    others = [s for s in info.get('splits', {}) if s != split]
    return list(info['classes']) if others and info.get('classes') else None


def make_shards(input: str, split: str, output: os.PathLike, spec: ShardSpec = ShardSpec(),
                class_list: Optional[os.PathLike] = None) -> Dict:
    """Write `split` of an image folder (or an EMBEDDED data set) as shards under `output`, as `spec`
    says; returns its _info entry.

    The class indices of every split of one `output` come from one class list, recorded once in
    _info.json: a later split is labelled with the list the first one recorded, and refused if it
    has classes that list lacks. One build at a time writes to `output` (an OS lock on
    OUTPUT/.make_shards.lock; a second waits for it), and it writes, replaces or removes only files
    that its own record names: the shards that _info.json lists and those of the journal
    (OUTPUT/.make_shards-journal.json), which lists a build's shards before they are written."""
    root = Path(output)
    name = _check_request(input, split, root, spec)
    made = [p for p in (root, *root.parents) if not p.exists()]
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ShardError(f'cannot create --output {root} ({e.strerror}): choose a writable folder.') from None
    lock = None
    try:
        lock = _lock(root)
        _finish_killed_builds(root)
        items, classes = _labelled_items(input, split, root, class_list)
        _check_name(root, name, split)
        return _write_split(root, name, split, (items, classes, input), spec)
    except BaseException:
        if lock is not None and made:  # a refused or failed first build leaves no folder behind
            for path in (root / JOURNAL, root / LOCK):
                path.unlink(missing_ok=True)
            for folder in made:
                try:
                    folder.rmdir()
                except OSError:
                    break
        raise
    finally:
        if lock is not None:
            lock.close()


LOCK, JOURNAL = '.make_shards.lock', '.make_shards-journal.json'


def _lock(root: Path):
    """The build's exclusive lock on `root` (flock: released when the process ends, even killed); a
    second build on the same folder waits for the first, then reads what it recorded."""
    import fcntl
    path = root / LOCK
    f = open(path, 'a+')
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        print(f'waiting for the other make_shards writing {root} ({f.read().strip() or "no name"}) to finish',
              file=sys.stderr, flush=True)
        fcntl.flock(f, fcntl.LOCK_EX)
    f.seek(0)
    f.truncate()
    f.write(f'pid {os.getpid()}\n')
    f.flush()
    return f


def _partial(path: Path) -> Path:
    """The temporary a shard is written to, renamed to `path` when whole."""
    return path.with_name(f'.{path.name}.partial')


def _read_journal(root: Path) -> Dict:
    path = root / JOURNAL
    if not path.is_file():
        return {}
    try:
        journal = json.loads(path.read_text())
        assert isinstance(journal, dict) and all(isinstance(v, list) for v in journal.values())
        return journal
    except (ValueError, AssertionError, UnicodeDecodeError):
        raise ShardError(f'{path} is not the journal make_shards writes: move it away, then rebuild.') from None


def _write_journal(root: Path, journal: Dict) -> None:
    if journal:
        with atomic_file(root / JOURNAL, 'w', tmp=_partial(root / JOURNAL)) as f:
            json.dump(journal, f, indent=1)
    else:
        (root / JOURNAL).unlink(missing_ok=True)


def _finish_killed_builds(root: Path) -> None:
    """Remove what a killed or failed build wrote: the shards its journal lists that _info.json does
    not (the published set is never touched), and their temporaries."""
    journal = _read_journal(root)
    if not journal:
        return
    info_path = root / '_info.json'
    listed = set()
    if info_path.is_file():
        for entry in json.loads(info_path.read_text()).get('splits', {}).values():
            listed |= {f for f in entry.get('filenames', []) if isinstance(f, str)}
    for names in journal.values():
        _remove(root, [n for n in names if n not in listed])
    _write_journal(root, {})


def _remove(root: Path, names) -> None:
    """Remove these shards (names that our record lists) and their temporaries."""
    for n in names:
        if isinstance(n, str) and Path(n).name == n:
            (root / n).unlink(missing_ok=True)
            _partial(root / n).unlink(missing_ok=True)


def _check_name(root: Path, name: str, split: str) -> None:
    """The data set's name (timm's wds/NAME) is one for all splits of `root`."""
    info_path = root / '_info.json'
    if not info_path.is_file():
        return
    info = json.loads(info_path.read_text())
    others = [s for s in info.get('splits', {}) if s != split]
    if others and info.get('name') not in (None, name):
        raise ShardError(f'{info_path} names the data set {info["name"]!r} (its {others[0]} split), not {name!r}: '
                         f'pass --name {info["name"]}, or write to another --output.')


def _write_split(root: Path, name: str, split: str, source: Tuple[List[Item], List[str], str], spec: ShardSpec
                 ) -> Dict:
    """Write the split's `source` (items, classes, the input they came from) as a new generation of
    shards and switch _info.json over to it."""
    items, classes, input = source
    shard_size = spec.shard_size
    random.Random(spec.seed).shuffle(items)
    items = [(f'{split}_{i:08d}', label, cname, src, fname) for i, (_, label, cname, src, fname) in enumerate(items)]
    # A rebuild writes a new generation of shards beside the old, under names no file has, listed in
    # the journal before the first is written, and switches over by replacing _info.json: killed at
    # any point, the folder holds the old set or the new one, each as its _info.json lists it, and the
    # next build removes what the journal lists beyond it. Only after the switch are the old shards removed.
    info_path = root / '_info.json'
    before = _split_entry(info_path, split)
    generation = before.get('generation') if isinstance(before.get('generation'), int) else 0
    count = -(-len(items) // shard_size)
    while True:
        generation += 1
        names = [f'{name}-{split}-g{generation}-{i:06d}.tar' for i in range(count)]
        if not any((root / n).exists() or _partial(root / n).exists() for n in names):
            break
    old = [f for f in before.get('filenames', []) if isinstance(f, str) and f not in names]
    _write_journal(root, {split: names + old})  # whichever set _info.json does not list when killed goes next time
    jobs = [(str(root / n), items[s:s + shard_size], spec.max_side, spec.max_pixels)
            for n, s in zip(names, range(0, len(items), shard_size))]
    try:
        results, skipped = _write_all(jobs, spec.workers, f'{name}/{split}' if spec.progress else None)
        if not sum(results.values()):  # nothing to switch to: the old set stays
            raise ShardError(f'none of the {len(items)} images of {input} could be read ({skipped[0]}): the split '
                             f'was not written.')
        entry = dict(name=split, num_samples=sum(results.values()), filenames=names,
                     shard_lengths=[results[f] for f in names], num_classes=len(classes), skipped=len(skipped),
                     generation=generation, max_side=spec.max_side)
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        info['name'] = name
        info.setdefault('splits', {})[split] = entry
        info['classes'] = classes
        with atomic_file(info_path, 'w', tmp=_partial(info_path)) as f:  # the switch
            json.dump(info, f, indent=1)
    except BaseException:  # full disk, Ctrl-C, no image: this build's files go, the published set stays
        _remove(root, names)
        _write_journal(root, {})
        raise
    _remove(root, old)  # the previous set, as _info.json listed it
    _write_journal(root, {})
    for s in skipped:
        print(f'skipped unreadable image: {s}', file=sys.stderr)
    return entry


def _split_entry(info_path: Path, split: str) -> Dict:
    """The split's entry of an existing _info.json, or {}."""
    if not info_path.is_file():
        return {}
    entry = json.loads(info_path.read_text()).get('splits', {}).get(split)
    return entry if isinstance(entry, dict) else {}


def _check_request(input: str, split: str, root: Path, spec: ShardSpec) -> str:
    """Refuse what cannot be built, before anything is written; returns the data set's name."""
    if split not in SPLITS:
        raise ShardError(f"Unknown split {split!r}: use 'train' or 'validation'.")
    for flag, value in (('--shard-size', spec.shard_size), ('--max-side', spec.max_side),
                        ('--max-image-pixels', spec.max_pixels), ('--workers', spec.workers)):
        if value is not None and value < 1:
            raise ShardError(f'{flag} is {value}: it must be at least 1.')
    if root.exists() and not root.is_dir():
        raise ShardError(f'--output {root} is a file: pass a folder for the shards.')
    if input not in EMBEDDED and Path(input).is_dir():
        source, target = Path(input).resolve(), root.resolve()
        if target == source or source in target.parents:
            raise ShardError(f'--output {root} is inside --input {input}: it would become a class of its own; '
                             f'write the shards outside the image folder.')
    name = spec.name
    if name is None:  # the folder's name, as a name may be: ROOT imagenet-wds is the data set imagenet_wds
        name = root.resolve().name.replace('-', '_').replace('.', '_')
    if '.' in name or '-' in name:  # a shard is NAME-SPLIT-gN-000000.tar: its dashes separate those
        raise ShardError(f'Data set name {name!r} may not contain dots or dashes: pass --name without them.')
    return name


def _labelled_items(input: str, split: str, root: Path, class_list: Optional[os.PathLike]):
    """(items, classes): the split's images, labelled with the class list that `root` recorded for its
    other splits if it has one (a subset of those classes keeps their indices), else with their own."""
    recorded = _recorded_classes(root / '_info.json', split)
    if input not in EMBEDDED:
        files, classes = list_image_folder(Path(input), Path(class_list) if class_list else None)
        items = [(None, label, classes[label], path, str(path.relative_to(input))) for path, label in files]
    else:
        items, classes = _embedded_items(input, split)
    if recorded is None or classes == recorded:
        return items, classes
    if class_list is not None or not set(c for _, _, c, _, _ in items) <= set(recorded):
        missing = sorted(set(c for _, _, c, _, _ in items) - set(recorded))
        problem = f'has class {missing[0]!r} that they lack' if missing else 'was given another class list'
        raise ShardError(f'{root}/_info.json labels its other split(s) with {len(recorded)} classes, and this '
                         f'split {problem}: build it from folders of the same classes, or into another --output.')
    index = {c: i for i, c in enumerate(recorded)}
    return [(key, index[c], c, src, fname) for key, _, c, src, fname in items], recorded


def _write_all(jobs: list, workers: int, progress: Optional[str]):
    """Write every shard, `workers` at a time: ({shard path: images written}, [skipped images])."""
    results, skipped, bar = {}, [], None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=sum(len(j[1]) for j in jobs), desc=progress, unit='img', file=sys.stderr)
    # workers with default signal handlers, closed and joined, never terminated: forked inside a
    # submitit task they would inherit its handlers, which ignore the SIGTERM that Pool.terminate sends
    pool = Pool(workers, initializer=_default_signal_handlers) if workers > 1 else _Inline()
    try:
        for (shard, count, bad), job in zip(pool.imap(_write_shard, jobs), jobs):
            results[shard] = count
            skipped += bad
            if bar is not None:
                bar.update(len(job[1]))
        pool.close()
        pool.join()
    except BaseException:
        pool.terminate()
        raise
    if bar is not None:
        bar.close()
    return results, skipped


def _default_signal_handlers() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)


class _Inline:
    """A stand-in for a process pool that maps in this process (workers=1)."""

    @staticmethod
    def imap(fn, jobs: Sequence):
        return map(fn, jobs)

    def close(self):
        pass

    join = terminate = close


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--input', required=True,
                        help="image folder (one folder per class), or 'fashion-mnist' or 'cifar10' (the embedded data "
                             "sets; "
                             "CIFAR-10 from CIFAR10_ROOT, data/cifar10 or torchvision's download)")
    parser.add_argument('--split', required=True, choices=SPLITS)
    parser.add_argument('--output', required=True, help='the shard folder (ROOT); _info.json is merged there')
    parser.add_argument('--class-list', default=None, help='text file: class names in class-index order')
    parser.add_argument('--shard-size', type=int, default=1024)
    parser.add_argument('--max-side', type=int, default=None,
                        help="re-encode (quality 95) images whose longer side is above this, resized to it; by default "
                             "every JPEG is stored byte for byte, as timm's validate.py would read the image folder")
    parser.add_argument('--workers', type=int, default=os.cpu_count() or 1)
    parser.add_argument('--name', default=None,
                        help="the data set's name, for timm's --dataset wds/NAME (default: ROOT's folder name, its "
                             "dashes and dots made underscores)")
    parser.add_argument('--max-image-pixels', type=int, default=MAX_IMAGE_PIXELS,
                        help='skip (and name) images larger than this many pixels instead of decoding them')
    args = parser.parse_args(argv)
    try:
        spec = ShardSpec(shard_size=args.shard_size, max_side=args.max_side, max_pixels=args.max_image_pixels,
                         workers=args.workers, name=args.name)
        entry = make_shards(args.input, args.split, args.output, spec, args.class_list)
    except (UserError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'interrupted: {args.output} holds what it held before (this build\'s shards are removed)',
              file=sys.stderr)
        return 130
    except OSError as e:  # a full or read-only --output: what was written before stays whole
        print(f'error: cannot write the shards to {args.output} ({e.strerror}): free space there or choose '
              f'another --output.', file=sys.stderr)
        return 2
    print(f'{args.split}: {entry["num_samples"]} samples in {len(entry["filenames"])} shards under {args.output}'
          + (f', {entry["skipped"]} unreadable image(s) skipped' if entry['skipped'] else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main())
