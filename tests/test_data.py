"""Shards (make_shards), the streaming loader (data.build_loader) and the augmentations (transforms)."""
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tokenformer_vit.data import DataConfig, DataError, build_loader
from tokenformer_vit.errors import ShardError
from tokenformer_vit.make_shards import ShardSpec, make_shards
from tokenformer_vit.transforms import MAX_IMAGE_PIXELS, Recipe, build_mixup, decode_rgb, normalize_batch


def recipe(**values) -> Recipe:
    """The loader tests' recipe: 8 px, no RandAugment, evaluation without a resize; `values` over it."""
    from test_transforms import recipe as paper_recipe
    return paper_recipe(**dict(dict(img_size=8, crop_pct=1.0, rand_augment=False), **values))


def shard_loader(root, split, batch_size, training, *, workers=0, seed=0, world_size=1, rank=0, num_classes=None,
           max_pixels=MAX_IMAGE_PIXELS, **values):
    """build_loader over `root` with the tests' recipe (`values` over it)."""
    data = DataConfig(root=str(root), batch_size=batch_size, workers=workers, seed=seed, recipe=recipe(**values),
                      max_pixels=max_pixels, shuffle_buffer=2048)
    return build_loader(data, split, training, world_size=world_size, rank=rank, num_classes=num_classes)


def image_folder(root, classes=('cat', 'dog', 'eel'), per_class=6, size=(40, 30), seed=0):
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f'{c}_{i}.jpg', quality=90)
    return root


def id_shards(root, n, shard_sizes, split='train'):
    """Shards whose label is the sample's own index, so that coverage can be counted exactly."""
    import webdataset as wds
    root.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(buf, format='JPEG')
    files, i = [], 0
    for s, size in enumerate(shard_sizes):
        name = f'ids-{split}-{s:06d}.tar'
        with wds.TarWriter(str(root / name)) as sink:
            for _ in range(size):
                sink.write({'__key__': f'{split}_{i:08d}', 'jpg': buf.getvalue(), 'cls': str(i).encode()})
                i += 1
        files.append(name)
    assert i == n
    (root / '_info.json').write_text(json.dumps({'name': 'ids', 'splits': {split: {
        'name': split, 'num_samples': n, 'filenames': files, 'shard_lengths': list(shard_sizes)}}}))
    return root


def targets(loader):
    return [t for _, y in loader for t in y.tolist()]


def test_write_read_round_trip_keeps_keys_labels_and_bytes(tmp_path):
    src = image_folder(tmp_path / 'in')
    entry = make_shards(str(src), 'validation', tmp_path / 'out', ShardSpec(shard_size=5, workers=1, progress=False))
    assert entry['num_samples'] == 18 and entry['shard_lengths'] == [5, 5, 5, 3]
    seen = {}
    for name in entry['filenames']:
        with tarfile.open(tmp_path / 'out' / name) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split('.', 1)
                seen.setdefault(key, {})[ext] = tar.extractfile(m).read()
    assert all('.' not in k for k in seen) and len(seen) == 18
    for sample in seen.values():
        meta = json.loads(sample['json'])
        assert ['cat', 'dog', 'eel'].index(meta['class']) == int(sample['cls'])
        assert sample['jpg'] == (src / meta['file']).read_bytes()  # small JPEGs are stored byte for byte
    info = json.loads((tmp_path / 'out' / '_info.json').read_text())
    assert info['splits']['validation']['filenames'] == entry['filenames']


def test_timm_reads_our_shards_with_the_right_labels(tmp_path):
    from timm.data import create_dataset
    src = image_folder(tmp_path / 'in')
    make_shards(str(src), 'train', tmp_path / 'out', ShardSpec(shard_size=4, progress=False, name='toy'))
    ds = create_dataset('wds/toy', root=str(tmp_path / 'out'), split='train', is_training=False)
    got = sorted(int(t) for _, t in ds)
    assert got == sorted([0] * 6 + [1] * 6 + [2] * 6)


def test_class_list_sets_indices_and_greyscale_cmyk_png_become_rgb_jpeg(tmp_path):
    src = tmp_path / 'in'
    for c in ('b', 'a'):
        (src / c).mkdir(parents=True)
    Image.new('L', (20, 20), 90).save(src / 'a' / 'grey.jpg')
    Image.new('CMYK', (20, 20), (0, 50, 100, 0)).save(src / 'a' / 'cmyk.jpg')
    Image.new('RGB', (700, 350), (10, 200, 30)).save(src / 'b' / 'big.png')
    (tmp_path / 'classes.txt').write_text('z\nb\na\n')
    entry = make_shards(str(src), 'train', tmp_path / 'out', ShardSpec(max_side=512, progress=False),
                        class_list=tmp_path / 'classes.txt')
    with tarfile.open(tmp_path / 'out' / entry['filenames'][0]) as tar:
        samples = {}
        for m in tar.getmembers():
            key, ext = m.name.split('.', 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    for s in samples.values():
        meta = json.loads(s['json'])
        assert int(s['cls']) == {'b': 1, 'a': 2}[meta['class']]
        img = decode_rgb(s['jpg'])
        assert img.ndim == 3 and img.shape[2] == 3
        if meta['file'].endswith('big.png'):
            assert Image.open(io.BytesIO(s['jpg'])).format == 'JPEG' and img.shape[:2] == (256, 512)


def test_corrupt_images_are_skipped_named_and_counted(tmp_path, capsys):
    src = image_folder(tmp_path / 'in', per_class=2)
    (src / 'cat' / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
    entry = make_shards(str(src), 'train', tmp_path / 'out', ShardSpec(progress=False))
    assert entry['num_samples'] == 6 and entry['skipped'] == 1
    assert 'broken.jpg' in capsys.readouterr().err
    bad = tmp_path / 'bad'  # no readable image at all: refused, and the split written before stays
    (bad / 'cat').mkdir(parents=True)
    (bad / 'cat' / 'broken.jpg').write_bytes(b'not a jpeg')
    before = (tmp_path / 'out' / '_info.json').read_text()
    with pytest.raises(ShardError, match='none of the 1 images .* could be read'):
        make_shards(str(bad), 'train', tmp_path / 'out', ShardSpec(progress=False))
    assert (tmp_path / 'out' / '_info.json').read_text() == before
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == sorted(['_info.json', '.make_shards.lock',
                                                                           *entry['filenames']])


def test_rerun_leaves_no_temporary_or_stale_files_and_merges_splits(tmp_path):
    src = image_folder(tmp_path / 'in')
    make_shards(str(src), 'train', tmp_path / 'out', ShardSpec(shard_size=2, progress=False))
    make_shards(str(src), 'validation', tmp_path / 'out', ShardSpec(shard_size=9, progress=False))
    make_shards(str(src), 'train', tmp_path / 'out', ShardSpec(shard_size=9, progress=False))
    names = sorted(p.name for p in (tmp_path / 'out').iterdir())
    assert names == ['.make_shards.lock', '_info.json', 'out-train-g2-000000.tar', 'out-train-g2-000001.tar',
                     'out-validation-g1-000000.tar', 'out-validation-g1-000001.tar']
    info = json.loads((tmp_path / 'out' / '_info.json').read_text())
    assert set(info['splits']) == {'train', 'validation'}


def test_make_shards_bad_requests_exit_2_with_one_sentence(tmp_path):
    proc = subprocess.run([sys.executable, '-m', 'tokenformer_vit.make_shards', '--input', str(tmp_path / 'nope'),
                           '--split', 'train', '--output', str(tmp_path / 'out')], capture_output=True, text=True)
    assert proc.returncode == 2 and 'does not exist' in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_fashion_mnist_input_builds_rgb_shards(tmp_path):
    entry = make_shards('fashion-mnist', 'validation', tmp_path / 'fm', ShardSpec(shard_size=2500, workers=2,
                                                                                  progress=False))
    assert entry['num_samples'] == 10_000 and entry['num_classes'] == 10
    loader = shard_loader(tmp_path / 'fm', 'validation', 500, False, workers=0, img_size=28)
    x, y = next(iter(loader))
    assert x.shape == (500, 3, 28, 28) and x.dtype == torch.uint8 and 0 <= int(y.min()) and int(y.max()) <= 9


@pytest.mark.parametrize('world', [1, 2, 3])
def test_evaluation_sees_every_sample_exactly_once(tmp_path, world):
    root = id_shards(tmp_path / 'ids', 50, [20, 20, 10], split='validation')
    seen = []
    for rank in range(world):
        loader = shard_loader(str(root), 'validation', 7, False, workers=2,
                              world_size=world, rank=rank)
        batches = [y.tolist() for _, y in loader]
        assert len(batches) == len(loader)
        seen += [t for b in batches for t in b]
    assert sorted(seen) == list(range(50))


@pytest.mark.parametrize('world', [1, 2, 4])
@pytest.mark.parametrize('workers', [0, 2])
def test_training_batches_are_equal_disjoint_and_reshuffled(tmp_path, world, workers):
    root = id_shards(tmp_path / 'ids', 90, [30, 30, 20, 10])
    bs = 5
    per_rank = []
    for rank in range(world):
        loader = shard_loader(str(root), 'train', bs, True, workers=workers, world_size=world,
                              rank=rank, seed=3)
        batches = [y.tolist() for _, y in loader]
        assert len(batches) == 90 // (world * bs) == len(loader) and all(len(b) == bs for b in batches)
        per_rank.append([t for b in batches for t in b])
    flat = [t for r in per_rank for t in r]
    # the shards are dealt out balanced by size: a short share repeats less than one shard's worth
    assert len(set(flat)) >= len(flat) - 30
    for a in range(world):
        for b in range(a + 1, world):
            assert not set(per_rank[a]) & set(per_rank[b])
    again = shard_loader(str(root), 'train', bs, True, workers=workers, world_size=world, rank=0,
                         seed=3)
    assert targets(again) == per_rank[0]  # deterministic for a seed and epoch
    again.dataset.set_epoch(1)
    assert targets(again) != per_rank[0]  # another order next epoch


def test_corrupt_sample_unlabelled_sample_and_truncated_tar_are_skipped(tmp_path):
    root = id_shards(tmp_path / 'ids', 12, [6, 6], split='validation')
    import webdataset as wds
    with wds.TarWriter(str(root / 'ids-validation-000000.tar')) as sink:
        sink.write({'__key__': 'validation_00000000', 'jpg': b'garbage', 'cls': b'0'})
        sink.write({'__key__': 'validation_00000001', 'jpg': (root / '_info.json').read_bytes()[:3]})
        buf = io.BytesIO()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format='JPEG')
        for i in range(2, 6):
            sink.write({'__key__': f'validation_{i:08d}', 'jpg': buf.getvalue(), 'cls': str(i).encode()})
    data = (root / 'ids-validation-000001.tar').read_bytes()
    (root / 'ids-validation-000001.tar').write_bytes(data[:len(data) // 2])
    with pytest.warns(UserWarning) as record:
        seen = targets(shard_loader(str(root), 'validation', 4, False, workers=0))
    assert seen[:4] == [2, 3, 4, 5] and len(seen) < 10
    text = ' '.join(str(w.message) for w in record)
    assert 'could not be decoded' in text and 'no .jpg or .cls' in text and 'unreadable tar data' in text


def test_missing_root_split_or_info_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match='does not exist'):
        shard_loader(str(tmp_path / 'none'), 'train', 4, True)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(DataError, match='_info.json is missing'):
        shard_loader(str(tmp_path / 'empty'), 'train', 4, True)
    root = id_shards(tmp_path / 'ids', 10, [10])
    with pytest.raises(DataError, match="Split 'validation' is not in"):
        shard_loader(str(root), 'validation', 4, False)


def test_batches_normalise_and_mix_with_timm_mixup(tmp_path):
    root = id_shards(tmp_path / 'ids', 8, [8])
    x, y = next(iter(shard_loader(str(root), 'train', 8, True, workers=0)))
    x = normalize_batch(x, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert x.dtype == torch.float32 and torch.allclose(x, torch.full_like(x, (128 / 255 - 0.5) / 0.25), atol=0.05)
    mixup = build_mixup(num_classes=8, mixup=0.8, cutmix=0.0, smoothing=0.1)
    _, soft = mixup(x.clone(), y)
    assert soft.shape == (8, 8) and torch.allclose(soft.sum(1), torch.ones(8)) and soft.max() < 1.0
    assert build_mixup(8, 0.0, 0.0) is None


def test_fashion_mnist_downloads_once_checked_and_atomically(tmp_path, monkeypatch):
    from tokenformer_vit import fashion_mnist as fm
    src = fm.DEFAULT_ROOT  # the Debian files stand in for the official server
    md5 = {name: fm._md5_of(src / name) for name in fm.MD5}
    monkeypatch.setattr(fm, 'MD5', md5)
    monkeypatch.setattr(fm, 'DEFAULT_ROOT', tmp_path / 'no-debian-package')
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))  # read when used, not at import
    cache = tmp_path / 'xdg' / 'tokenformer_vit' / 'fashion-mnist'
    monkeypatch.delenv('FASHION_MNIST_ROOT', raising=False)
    dead, good = (tmp_path / 'dead').as_uri() + '/', src.as_uri() + '/'
    monkeypatch.setattr(fm, 'MIRRORS', (dead, good))
    images, labels = fm.load_fashion_mnist('test')
    assert images.shape == (10_000, 28, 28) and sorted(set(labels.tolist())) == list(range(10))
    assert sorted(p.name for p in (cache).iterdir()) == sorted(md5)  # no temporary left
    monkeypatch.setattr(fm, 'MIRRORS', (dead,))
    assert fm.load_fashion_mnist('test')[0].shape == (10_000, 28, 28)  # cached: no download needed
    monkeypatch.setattr(fm, 'MD5', dict(md5, **{'t10k-labels-idx1-ubyte.gz': '0' * 32}))
    (cache / 't10k-labels-idx1-ubyte.gz').unlink()
    with pytest.raises(DataError, match='Could not download Fashion-MNIST t10k-labels.*MD5'):
        fm.download_fashion_mnist(cache, (good,))
    assert not (cache / 't10k-labels-idx1-ubyte.gz').exists()
    assert not [p for p in (cache).iterdir() if p.name.startswith('.')]


@pytest.mark.parametrize('workers', [0, 2])
def test_resumed_epoch_gives_exactly_the_batches_not_yet_trained_on(tmp_path, workers):
    src = image_folder(tmp_path / 'in', per_class=12, size=(24, 20))
    make_shards(str(src), 'train', tmp_path / 'out', ShardSpec(shard_size=6, workers=1, progress=False))

    def epoch(skip):
        loader = shard_loader(str(tmp_path / 'out'), 'train', 4, True, workers=workers, img_size=16, seed=5)
        loader.dataset.set_epoch(1, skip_batches=skip)
        return list(loader)

    full, rest = epoch(0), epoch(3)
    assert len(full) == 9 and len(rest) == 6
    for (x, y), (x2, y2) in zip(full[3:], rest):  # same images, same labels, same augmentation
        assert torch.equal(y, y2) and torch.equal(x, x2)
    with pytest.raises(DataError, match='cannot skip 9 of 9'):
        shard_loader(str(tmp_path / 'out'), 'train', 4, True, workers=0).dataset.set_epoch(0, skip_batches=9)


def _bomb_jpeg(width=12000, height=12000) -> bytes:
    """A few hundred bytes of JPEG whose header claims width x height pixels (a decompression bomb)."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format='JPEG', quality=50)
    data = bytearray(buf.getvalue())
    sof = data.index(b'\xff\xc0')  # baseline frame header: length (2), precision (1), height (2), width (2)
    data[sof + 5:sof + 7] = height.to_bytes(2, 'big')
    data[sof + 7:sof + 9] = width.to_bytes(2, 'big')
    return bytes(data)


def test_decoder_refuses_an_image_above_the_pixel_limit_before_decoding_it():
    from tokenformer_vit.transforms import ImageTooLarge
    bomb = _bomb_jpeg()
    assert len(bomb) < 1000
    with pytest.raises(ImageTooLarge, match='12000x12000 pixels, above the limit of 89478485'):
        decode_rgb(bomb)
    with pytest.raises(ImageTooLarge):
        decode_rgb(_bomb_jpeg(100, 100), max_pixels=99 * 100)
    small = io.BytesIO()
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(small, format='JPEG')
    assert decode_rgb(small.getvalue(), max_pixels=120).shape == (10, 12, 3)


def test_make_shards_skips_and_names_an_image_above_the_pixel_limit(tmp_path, capsys):
    image_folder(tmp_path / 'img', classes=('a', 'b'), per_class=2)
    (tmp_path / 'img' / 'a' / 'bomb.jpg').write_bytes(_bomb_jpeg())
    entry = make_shards(str(tmp_path / 'img'), 'train', tmp_path / 'wds', ShardSpec(progress=False))
    assert entry['num_samples'] == 4 and entry['skipped'] == 1
    assert 'bomb.jpg (ImageTooLarge: 12000x12000 pixels' in capsys.readouterr().err


def test_a_later_split_keeps_the_recorded_class_indices_or_is_refused(tmp_path):
    from tokenformer_vit.make_shards import ShardError
    image_folder(tmp_path / 'train', classes=('cat', 'dog', 'eel'), per_class=2)
    image_folder(tmp_path / 'val', classes=('dog', 'eel'), per_class=2)  # a subset: sorted alone, dog would be 0
    make_shards(str(tmp_path / 'train'), 'train', tmp_path / 'wds', ShardSpec(progress=False))
    make_shards(str(tmp_path / 'val'), 'validation', tmp_path / 'wds', ShardSpec(progress=False))
    info = json.loads((tmp_path / 'wds' / '_info.json').read_text())
    assert info['classes'] == ['cat', 'dog', 'eel'] and info['splits']['validation']['num_classes'] == 3
    assert sorted(set(targets(shard_loader(str(tmp_path / 'wds'), 'validation', 2, False, workers=0)))) == [1, 2]
    image_folder(tmp_path / 'other', classes=('cat', 'fox'), per_class=1)
    with pytest.raises(ShardError, match="has class 'fox' that they lack"):
        make_shards(str(tmp_path / 'other'), 'validation', tmp_path / 'wds', ShardSpec(progress=False))
    assert json.loads((tmp_path / 'wds' / '_info.json').read_text()) == info  # nothing was rewritten


def test_duplicate_class_names_and_output_inside_input_are_refused(tmp_path):
    image_folder(tmp_path / 'img', classes=('a', 'b'), per_class=1)
    (tmp_path / 'classes.txt').write_text('a\nb\na\n')
    for argv, message in (
            (['--class-list', str(tmp_path / 'classes.txt'), '--output', str(tmp_path / 'wds')],
             "names 'a' more than once"),
            (['--output', str(tmp_path / 'img' / 'shards')], 'is inside --input')):
        res = subprocess.run([sys.executable, '-m', 'tokenformer_vit.make_shards', '--input', str(tmp_path / 'img'),
                              '--split', 'train', *argv], capture_output=True, text=True)
        assert res.returncode == 2 and message in res.stderr, res.stderr
        assert res.stderr.strip().count('\n') == 0
    assert not (tmp_path / 'img' / 'shards').exists() and not (tmp_path / 'wds').exists()


def test_a_pool_inside_a_process_that_ignores_sigterm_finishes_with_workers_that_obey_it(tmp_path):
    # what a submitit task does to its children: its SIGTERM handler only logs "Bypassing signal SIGTERM".
    # A pool worker that inherits it cannot be terminated, and the pool can wait for it forever.
    image_folder(tmp_path / 'img', classes=('a', 'b', 'c'), per_class=4)
    script = (
        'import os, signal\n'
        'signal.signal(signal.SIGTERM, lambda *a: print("Bypassing signal SIGTERM", flush=True))\n'
        'from tokenformer_vit import make_shards as ms\n'
        'write = ms._write_shard\n'
        'def spy(job):  # runs in a pool worker: record the SIGTERM handler it has\n'
        f'    with open({str(tmp_path)!r} + f"/handler-{{os.getpid()}}", "w") as f:\n'
        '        f.write(str(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL))\n'
        '    return write(job)\n'
        'ms._write_shard = spy\n'
        f'ms.make_shards({str(tmp_path / "img")!r}, "train", {str(tmp_path / "wds")!r}, '
        'ms.ShardSpec(shard_size=2, workers=2, progress=False))\n'
        'print("built")\n')
    res = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and 'built' in res.stdout, res.stdout + res.stderr
    handlers = [p.read_text() for p in tmp_path.glob('handler-*')]
    assert handlers and set(handlers) == {'True'}, handlers


def test_info_json_that_is_not_json_is_one_clear_error(tmp_path):
    (tmp_path / 'wds').mkdir()
    (tmp_path / 'wds' / '_info.json').write_text('{"name": "x", "splits": ')
    with pytest.raises(DataError, match='is not valid JSON'):
        shard_loader(str(tmp_path / 'wds'), 'train', 2, True, workers=0)


def test_a_label_outside_the_model_classes_stops_the_loader_with_one_sentence(tmp_path):
    image_folder(tmp_path / 'img', classes=('a', 'b', 'c'), per_class=2)
    make_shards(str(tmp_path / 'img'), 'train', tmp_path / 'wds', ShardSpec(progress=False))
    loader = shard_loader(str(tmp_path / 'wds'), 'train', 2, True, workers=0, num_classes=2)
    with pytest.raises(DataError, match='has label 2, outside the 2 classes of the model'):
        loader.dataset.set_epoch(0)
        list(loader)
    # with workers, in a process of its own: the error comes from a worker, and the process must still
    # exit although the worker (which ignores SIGTERM) was left running by the exception
    script = (
        'import sys\n'
        f'sys.path.insert(0, {str(Path(__file__).parent)!r})\n'
        'from test_data import DataError, shard_loader\n'
        f'loader = shard_loader({str(tmp_path / "wds")!r}, "train", 2, True, workers=1, num_classes=2)\n'
        'loader.dataset.set_epoch(0)\n'
        'try:\n'
        '    list(loader)\n'
        'except DataError as e:\n'
        '    kept = e  # keeps the traceback, and with it the loader\'s iterator and its worker\n'
        '    print("caught:", str(e).strip().splitlines()[-1])\n')
    res = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and 'has label 2, outside the 2 classes of the model' in res.stdout, res.stderr
    assert 'Traceback' not in res.stderr, res.stderr


CIFAR = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')


def fake_cifar10_batches(root, per_split=(12, 6), seed=0):
    """torchvision's cifar-10-batches-py layout: pickled dicts of CHW rows and labels."""
    import pickle
    rng = np.random.default_rng(seed)
    folder = root / 'cifar-10-batches-py'
    folder.mkdir(parents=True)
    arrays = {}
    for split, n, names in (('train', per_split[0], [f'data_batch_{i}' for i in range(1, 6)]),
                            ('test', per_split[1], ['test_batch'])):
        data = rng.integers(0, 256, (n * len(names), 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n * len(names)).tolist()
        arrays[split] = data, labels
        for i, name in enumerate(names):
            with open(folder / name, 'wb') as f:
                pickle.dump({b'data': data[i * n:(i + 1) * n], b'labels': labels[i * n:(i + 1) * n]}, f)
    return arrays


def test_cifar10_image_folders_load_in_the_official_class_order_and_shard_byte_for_byte(tmp_path, monkeypatch):
    print('seed 0')
    for split in ('train', 'test'):
        image_folder(tmp_path / 'c10' / 'cifar10' / split, classes=CIFAR[::-1], per_class=2, size=(32, 32))
    monkeypatch.setenv('CIFAR10_ROOT', str(tmp_path / 'c10'))  # the tarball's top folder is found inside
    from tokenformer_vit.cifar10 import load_cifar10
    images, labels = load_cifar10('test')
    assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8
    assert labels.tolist() == [c for c in range(10) for _ in range(2)]
    entry = make_shards('cifar10', 'validation', tmp_path / 'shards', ShardSpec(shard_size=8, workers=1,
                                                                                progress=False))
    assert entry['num_samples'] == 20 and entry['num_classes'] == 10
    for name in entry['filenames']:
        with tarfile.open(tmp_path / 'shards' / name) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for key in {n.split('.', 1)[0] for n in members}:
            meta = json.loads(members[f'{key}.json'])
            assert CIFAR.index(meta['class']) == int(members[f'{key}.cls'])
            _, split, cls, file = meta['file'].split('/')
            assert (split, cls) == ('test', meta['class'])
            assert members[f'{key}.jpg'] == (tmp_path / 'c10' / 'cifar10' / 'test' / cls / file).read_bytes()


def test_cifar10_torchvision_batches_load_as_hwc_images_with_their_labels(tmp_path, monkeypatch):
    print('seed 0')
    arrays = fake_cifar10_batches(tmp_path)
    monkeypatch.setenv('CIFAR10_ROOT', str(tmp_path))
    from tokenformer_vit.cifar10 import load_cifar10
    for split, n in (('train', 60), ('test', 6)):
        images, labels = load_cifar10(split)
        data, expected = arrays[split]
        assert images.shape == (n, 32, 32, 3) and labels.tolist() == expected
        assert np.array_equal(images[3], data[3].reshape(3, 32, 32).transpose(1, 2, 0))


def test_cifar10_that_is_not_there_or_has_other_classes_is_one_clear_error(tmp_path):
    env = dict(__import__('os').environ, CIFAR10_ROOT=str(tmp_path / 'none'))
    cmd = [sys.executable, '-m', 'tokenformer_vit.make_shards', '--input', 'cifar10', '--split', 'train',
           '--output', str(tmp_path / 'out')]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and 'No CIFAR-10 in' in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    for split in ('train', 'test'):
        image_folder(tmp_path / 'other' / split, classes=CIFAR[:9] + ('zebra',), per_class=1, size=(32, 32))
    env['CIFAR10_ROOT'] = str(tmp_path / 'other')
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "zebra" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / 'out').exists()  # refused before anything was written


def read_every_sample(root):
    """[(label, class name from the sample's own json)] of every shard _info.json lists, and the info."""
    info = json.loads((root / '_info.json').read_text())
    pairs = []
    for split in info['splits'].values():
        for name in split['filenames']:
            with tarfile.open(root / name) as tar:
                samples = {}
                for m in tar.getmembers():
                    key, ext = m.name.split('.', 1)
                    samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
            pairs += [(int(s['cls']), json.loads(s['json'])['class']) for s in samples.values()]
        assert len(pairs) == split['num_samples'], (len(pairs), split['num_samples'])
    return pairs, info


@pytest.mark.parametrize('seed', [0, 1])
def test_a_rebuild_killed_at_a_random_shard_leaves_a_set_whose_every_label_names_its_class(tmp_path, seed):
    # a real make_shards process, rebuilding with another class order, SIGTERMed once a seeded random
    # number of its new shards is on disk: _info.json and every listed shard must still agree
    # (before: the old _info.json with half the shards relabelled, and training on it ran to exit 0)
    import random
    import signal
    import time
    print(f'seed={seed}')
    rng = np.random.default_rng(seed)
    src = tmp_path / 'in'
    for c in ('cat', 'dog', 'eel'):  # PNGs, which are re-encoded: a shard takes a few milliseconds
        (src / c).mkdir(parents=True)
        for i in range(40):
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(src / c / f'{i}.png')
    out = tmp_path / 'out'
    make_shards(str(src), 'train', out, ShardSpec(shard_size=2, progress=False))
    (tmp_path / 'order.txt').write_text('eel\ncat\ndog\n')
    target = random.Random(seed).randint(1, 50)  # of 60 new shards
    start = time.time_ns()
    proc = subprocess.Popen([sys.executable, '-m', 'tokenformer_vit.make_shards', '--input', str(src), '--split',
                             'train',
                             '--output', str(out), '--class-list', str(tmp_path / 'order.txt'), '--shard-size', '2',
                             '--workers', '1'], stderr=subprocess.DEVNULL)
    while proc.poll() is None and sum(p.stat().st_mtime_ns > start for p in out.glob('*.tar')) < target:
        time.sleep(0.001)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait() == -signal.SIGTERM  # killed mid-rebuild, not after it
    pairs, info = read_every_sample(out)
    assert len(pairs) == 120 and all(info['classes'][label] == name for label, name in pairs)
    assert info['classes'] in (['cat', 'dog', 'eel'], ['eel', 'cat', 'dog'])
    make_shards(str(src), 'train', out, ShardSpec(shard_size=2, progress=False), class_list=tmp_path / 'order.txt')
    pairs, info = read_every_sample(out)
    assert info['classes'] == ['eel', 'cat', 'dog'] and all(info['classes'][l] == n for l, n in pairs)
    listed = set(info['splits']['train']['filenames'])
    assert sorted(p.name for p in out.iterdir()) == sorted(listed | {'_info.json', '.make_shards.lock'})  # no other


def test_16_bit_32_bit_and_float_images_are_scaled_to_8_bits_not_clipped():
    from tokenformer_vit.make_shards import to_rgb8
    ramp16 = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))
    expected = np.rint(ramp16 / 257.0)
    for img in (Image.fromarray(ramp16), Image.fromarray(ramp16.astype(np.int32), 'I')):
        got = np.asarray(to_rgb8(img))
        assert got.shape == (8, 64, 3) and np.abs(got[..., 0] - expected).max() <= 1 and (got[..., 0] == got[...,
                                                                                                             2]).all()
    unit = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (8, 1))
    assert np.abs(np.asarray(to_rgb8(Image.fromarray(unit, 'F')))[..., 1] - np.rint(unit * 255)).max() <= 1
    wide = np.tile(np.linspace(-1e6, 3e6, 64), (8, 1)).astype(np.int32)  # outside 0-65535: its own range
    got = np.asarray(to_rgb8(Image.fromarray(wide, 'I')))[..., 0]
    assert got[0, 0] == 0 and got[0, -1] == 255 and np.all(np.diff(got[0].astype(int)) >= 0)


def test_palette_cmyk_and_alpha_images_keep_their_colours():
    from tokenformer_vit.make_shards import to_rgb8
    pal = Image.new('P', (4, 4))
    pal.putpalette([0, 0, 0, 200, 30, 60] + [0] * 762)
    pal.putpixel((1, 1), 1)
    got = np.asarray(to_rgb8(pal))
    assert tuple(got[1, 1]) == (200, 30, 60) and tuple(got[0, 0]) == (0, 0, 0)
    cmyk = np.asarray(to_rgb8(Image.new('CMYK', (2, 2), (0, 255, 255, 0))))
    assert tuple(cmyk[0, 0]) == (255, 0, 0)  # no cyan or black, full magenta and yellow: red
    rgba = np.asarray(to_rgb8(Image.new('RGBA', (2, 2), (10, 20, 30, 0))))
    assert tuple(rgba[0, 0]) == (10, 20, 30)  # alpha dropped, as timm's loader drops it


def test_a_16_bit_png_is_stored_with_its_grey_levels_and_a_dangling_link_is_skipped_and_counted(tmp_path, capsys):
    # before: the gradient came out white (mean 254.5 of 255), and the dangling link vanished uncounted
    src = tmp_path / 'in'
    (src / 'a').mkdir(parents=True)
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    Image.fromarray(ramp).save(src / 'a' / 'deep.png')
    (src / 'a' / 'gone.jpg').symlink_to(tmp_path / 'nowhere.jpg')
    entry = make_shards(str(src), 'train', tmp_path / 'out', ShardSpec(progress=False))
    assert entry['num_samples'] == 1 and entry['skipped'] == 1 and 'gone.jpg' in capsys.readouterr().err
    pairs, _ = read_every_sample(tmp_path / 'out')
    with tarfile.open(tmp_path / 'out' / entry['filenames'][0]) as tar:
        jpg = next(tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith('.jpg'))
    img = decode_rgb(jpg).astype(float)
    assert abs(img.mean() - 127.5) < 2 and img[:, 0].mean() < 3 and img[:, -1].mean() > 252


def test_a_split_with_no_shards_or_samples_is_one_clear_error_at_once(tmp_path):
    root = id_shards(tmp_path / 'ids', 4, [4])
    info = json.loads((root / '_info.json').read_text())
    info['splits']['validation'] = dict(name='validation', num_samples=0, filenames=[], shard_lengths=[])
    (root / '_info.json').write_text(json.dumps(info))
    with pytest.raises(DataError, match="Split 'validation' of .* has no samples"):
        shard_loader(str(root), 'validation', 2, False, workers=0)
    del info['splits']['train']['num_samples']
    (root / '_info.json').write_text(json.dumps(info))
    with pytest.raises(DataError, match="does not list split 'train' as make_shards writes it"):
        shard_loader(str(root), 'train', 2, True, workers=0)


def photo_id_shards(root, n, shard_size, seed=0):
    """Shards of photograph-like images whose label is the sample's own index."""
    import webdataset as wds
    from photos import jpeg_bytes, photo_like
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for s, start in enumerate(range(0, n, shard_size)):
        files.append(f'ids-train-{s:06d}.tar')
        with wds.TarWriter(str(root / files[-1])) as sink:
            for i in range(start, min(n, start + shard_size)):
                sink.write({'__key__': f'train_{i:08d}', 'jpg': jpeg_bytes(photo_like(seed + i, 20, 24)),
                            'cls': str(i).encode()})
    lengths = [min(shard_size, n - s) for s in range(0, n, shard_size)]
    (root / '_info.json').write_text(json.dumps({'name': 'ids', 'splits': {'train': {
        'name': 'train', 'num_samples': n, 'filenames': files, 'shard_lengths': lengths}}}))
    return root


@pytest.mark.parametrize('workers', [0, 2])
def test_aug_repeats_gives_each_image_n_times_in_a_row_each_augmented_anew_and_resumes_exactly(tmp_path, workers):
    print('seed 4')
    root = photo_id_shards(tmp_path / 'ids', 36, 9)
    kw = dict(workers=workers, seed=4, img_size=16, rand_augment=True, aug_repeats=3)
    loader = shard_loader(root, 'train', 4, True, **kw)  # 3 copies, batches of 4: copies straddle batches
    batches = list(loader)
    assert len(batches) == 9
    per_worker = [batches[w::max(1, workers)] for w in range(max(1, workers))]
    for share in per_worker:  # the DataLoader interleaves its workers' batches
        labels = [t for _, y in share for t in y.tolist()]
        images = torch.cat([x for x, _ in share])
        runs = [labels[i:i + 3] for i in range(0, len(labels) - len(labels) % 3, 3)]
        assert all(len(set(r)) == 1 for r in runs), labels
        for i in range(0, len(runs) * 3, 3):
            assert not torch.equal(images[i], images[i + 1]) and not torch.equal(images[i + 1], images[i + 2])
    # an epoch of 36 items: 12 images 3 times each (a worker's last image may be cut short)
    assert 12 <= len({t for _, y in batches for t in y.tolist()}) <= 12 + max(0, workers - 1)
    for skip in (1, 5):
        rest = shard_loader(root, 'train', 4, True, **kw)
        rest.dataset.set_epoch(0, skip_batches=skip)
        again = list(rest)
        assert len(again) == 9 - skip
        for (x, y), (x2, y2) in zip(batches[skip:], again):
            assert torch.equal(y, y2) and torch.equal(x, x2)


def test_jpegs_are_stored_byte_for_byte_unless_max_side_is_given_and_info_records_it(tmp_path):
    # before: --max-side 512 by default re-encoded every photograph with a side above 512 (11% of ImageNet's)
    from photos import jpeg_bytes, photo_like
    src = tmp_path / 'in' / 'a'
    src.mkdir(parents=True)
    big = jpeg_bytes(photo_like(0, 400, 700))
    (src / 'big.jpg').write_bytes(big)
    (src / 'cmyk.jpg').write_bytes(_jpeg(Image.fromarray(photo_like(1, 30, 40)).convert('CMYK')))
    for max_side, stored_big in ((None, True), (512, False)):
        out = tmp_path / f'out{max_side}'
        entry = make_shards(str(tmp_path / 'in'), 'train', out, ShardSpec(max_side=max_side, progress=False))
        pairs = {}
        with tarfile.open(out / entry['filenames'][0]) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, data in members.items():
            if name.endswith('.json'):
                pairs[json.loads(data)['file']] = members[name[:-5] + '.jpg']
        assert (pairs['a/big.jpg'] == big) is stored_big
        assert pairs['a/cmyk.jpg'] == (src / 'cmyk.jpg').read_bytes()  # a JPEG of any colour space stays as it is
        assert decode_rgb(pairs['a/big.jpg']).shape == ((400, 700, 3) if stored_big else (293, 512, 3))
        assert json.loads((out / '_info.json').read_text())['splits']['train']['max_side'] == max_side


def _jpeg(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format='JPEG')
    return buf.getvalue()


def test_an_output_folder_named_like_the_readmes_gives_a_name_timm_reads(tmp_path):
    # before: the README's own --output /data/imagenet-wds was refused ("may not contain dots or dashes")
    from timm.data import create_dataset
    src = image_folder(tmp_path / 'in', per_class=2)
    make_shards(str(src), 'validation', tmp_path / 'imagenet-wds.v2', ShardSpec(progress=False))
    assert json.loads((tmp_path / 'imagenet-wds.v2' / '_info.json').read_text())['name'] == 'imagenet_wds_v2'
    ds = create_dataset('wds/imagenet_wds_v2', root=str(tmp_path / 'imagenet-wds.v2'), split='validation')
    assert sorted(int(t) for _, t in ds) == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ShardError, match="Data set name 'my-set' may not contain dots or dashes"):
        make_shards(str(src), 'train', tmp_path / 'other', ShardSpec(name='my-set', progress=False))
