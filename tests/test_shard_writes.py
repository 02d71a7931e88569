"""make_shards writes, replaces and removes only what its own record names (issue 32): _info.json and
its journal, never a name pattern; one build at a time per folder."""
import errno
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tokenformer_vit.errors import ShardError
from tokenformer_vit.make_shards import ShardSpec, make_shards

JOURNAL = '.make_shards-journal.json'  # make_shards.JOURNAL


def image_folder(root: Path, classes=('cat', 'dog', 'owl'), per_class=3, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / c / f'{i}.jpg')
    return root


def listing(folder: Path):
    return sorted(p.name for p in folder.iterdir())


def test_files_named_like_shards_that_make_shards_did_not_write_are_kept(tmp_path):
    # before: every NAME-SPLIT-*.tar in the folder was removed, e.g. a user's notes or Hugging Face's shards
    src = image_folder(tmp_path / 'in')
    out = tmp_path / 'out'
    out.mkdir()
    theirs = ['mywds-train-notes.tar', 'imagenet1k-train-0000.tar', 'mywds-train-g1-000000.tar',
              '.mywds-train-g2-000000.tar.partial', 'mywds-train-x.tmp']
    for name in theirs:
        (out / name).write_bytes(b'mine')
    for _ in range(2):  # a build, then a rebuild
        entry = make_shards(str(src), 'train', out, ShardSpec(name='mywds', shard_size=4, progress=False))
    assert all((out / name).read_bytes() == b'mine' for name in theirs)
    # the new generations never take a name that is there: g1 and g2 were, so g3, then g4
    assert entry['filenames'] == [f'mywds-train-g4-{i:06d}.tar' for i in range(3)]
    assert listing(out) == sorted([*theirs, '_info.json', '.make_shards.lock', *entry['filenames']])


def test_a_rebuild_under_another_name_removes_the_old_set_by_its_record(tmp_path):
    src = image_folder(tmp_path / 'in')
    out = tmp_path / 'out'
    first = make_shards(str(src), 'train', out, ShardSpec(name='a', shard_size=4, progress=False))
    second = make_shards(str(src), 'train', out, ShardSpec(name='b', shard_size=4, progress=False))
    assert listing(out) == sorted(['_info.json', '.make_shards.lock', *second['filenames']])
    assert not set(first['filenames']) & set(listing(out))  # no unlisted orphans
    with pytest.raises(ShardError, match="names the data set 'b' .* pass --name b"):  # one name for every split
        make_shards(str(src), 'validation', out, ShardSpec(name='c', progress=False))


def test_a_full_disk_leaves_the_published_set_and_no_orphans(tmp_path, monkeypatch):
    from tokenformer_vit import make_shards as ms
    src = image_folder(tmp_path / 'in', per_class=4)
    out = tmp_path / 'out'
    before = make_shards(str(src), 'train', out, ShardSpec(shard_size=4, progress=False))
    info = (out / '_info.json').read_text()
    real, calls = ms._write_shard, []

    def full_on_the_second_shard(job):
        calls.append(job)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, 'No space left on device')
        return real(job)
    monkeypatch.setattr(ms, '_write_shard', full_on_the_second_shard)
    with pytest.raises(OSError):
        make_shards(str(src), 'train', out, ShardSpec(shard_size=4, progress=False))
    assert (out / '_info.json').read_text() == info
    assert listing(out) == sorted(['_info.json', '.make_shards.lock', *before['filenames']])
    # a first build that fails leaves no folder behind
    with pytest.raises(OSError):
        calls.clear()
        make_shards(str(src), 'train', tmp_path / 'new', ShardSpec(shard_size=4, progress=False))
    assert not (tmp_path / 'new').exists()


def test_a_killed_build_is_cleared_by_the_next_from_its_journal(tmp_path):
    src = image_folder(tmp_path / 'in')
    out = tmp_path / 'out'
    published = make_shards(str(src), 'train', out, ShardSpec(shard_size=4, progress=False))
    # what a build killed half-way leaves: its journal, one whole shard and one partial
    (out / JOURNAL).write_text(json.dumps({'train': ['out-train-g2-000000.tar', 'out-train-g2-000001.tar',
                                                     *published['filenames']]}))
    (out / 'out-train-g2-000000.tar').write_bytes(b'whole')
    (out / '.out-train-g2-000001.tar.partial').write_bytes(b'half')
    (out / 'out-train-g9-000000.tar').write_bytes(b'not in the journal: not ours')
    entry = make_shards(str(src), 'validation', out, ShardSpec(shard_size=4, progress=False))
    assert listing(out) == sorted(['_info.json', '.make_shards.lock', 'out-train-g9-000000.tar',
                                   *published['filenames'], *entry['filenames']])


def test_two_builds_on_one_folder_at_once_are_serialised_with_one_class_list(tmp_path):
    # real processes: train and validation started together, each waiting on the folder's lock (held
    # here until both wait); before, both exited 0, each merging _info.json from what it had read
    import fcntl
    import webdataset as wds
    train_src = image_folder(tmp_path / 'train', classes=('cat', 'dog', 'owl'), per_class=20)
    val_src = image_folder(tmp_path / 'val', classes=('cat', 'dog', 'owl'), per_class=5, seed=1)
    out = tmp_path / 'out'
    out.mkdir()
    holder = open(out / '.make_shards.lock', 'a+')
    fcntl.flock(holder, fcntl.LOCK_EX)
    procs = [subprocess.Popen([sys.executable, '-m', 'tokenformer_vit.make_shards', '--input', str(src), '--split',
                               split, '--output', str(out), '--workers', '1', '--shard-size', '16'],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for src, split in ((train_src, 'train'), (val_src, 'validation'))]
    for p in procs:  # each says it waits, and writes nothing meanwhile
        assert 'waiting for the other make_shards' in p.stderr.readline()
    assert listing(out) == ['.make_shards.lock']
    holder.close()
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    info = json.loads((out / '_info.json').read_text())
    assert set(info['splits']) == {'train', 'validation'} and info['classes'] == ['cat', 'dog', 'owl']
    for split in ('train', 'validation'):
        for f in info['splits'][split]['filenames']:
            for sample in wds.WebDataset(str(out / f), shardshuffle=False):
                assert info['classes'][int(sample['cls'])] == json.loads(sample['json'])['class']


def test_a_class_list_with_a_byte_order_mark_names_its_first_class_as_written(tmp_path):
    src = image_folder(tmp_path / 'in')
    classes = tmp_path / 'classes.txt'
    classes.write_text('\ufeffowl\ncat\ndog\n', encoding='utf-8')
    make_shards(str(src), 'train', tmp_path / 'out', ShardSpec(progress=False), class_list=classes)
    assert json.loads((tmp_path / 'out' / '_info.json').read_text())['classes'] == ['owl', 'cat', 'dog']
