"""A sweep of cases a new user meets, run as real commands: bad flags and config files, resumes with
changed settings, run folders and shard folders holding other files, the grow and timm_script
commands. Each case says what it expects (`ok`: exit 0 and its check holds; `refused`: exit 2 with
one `error:` sentence and no traceback) and is classified from what happened:

    ok / refused as expected; LOSS (a file not ours removed or changed, or a run's saves lost);
    SILENT (exit 0 where a refusal was due, or a wrong effect); TRACEBACK; UNCLEAR (another exit
    code, or not one sentence)

    python benchmarks/sweep_user_cases.py [--only SUBSTRING] [--out FILE]

Writes benchmarks/results/sweep_user_cases.json (issue 32's sweep: the cases are new, not the issue's).
"""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TINY = ['--model', 'tokenformer_vit_tiny', '--model-kwargs', 'depth=2', 'embed_dim=32', 'num_heads=2',
        'attn_tokens=16', 'ffn_tokens=32', 'patch_size=8', '--img-size', '32', '--batch-size', '8', '--workers', '0',
        '--lr', '2e-3', '--warmup-epochs', '0.5', '--ema-decay', '0.9', '--cutmix', '0', '--no-rand-augment',
        '--reprob', '0', '--no-progress', '--device', 'cpu']


class World:
    """The sweep's files: shards, a finished run to resume, image folders, checkpoints."""

    def __init__(self, root: Path):
        self.root = root
        rng = np.random.default_rng(0)
        for split, per_class in (('train', 12), ('validation', 4)):
            for c in range(4):
                folder = root / 'img' / split / f'class{c}'
                folder.mkdir(parents=True)
                for i in range(per_class):
                    a = np.zeros((36, 40, 3), np.uint8)
                    a[..., c % 3] = 60 + 60 * (c // 3) + rng.integers(0, 40, (36, 40), dtype=np.uint8)
                    Image.fromarray(a).save(folder / f'{i}.jpg')
            sh('make_shards', '--input', root / 'img' / split, '--split', split, '--output', root / 'wds',
               '--shard-size', 8, '--workers', 1)
        self.data = root / 'wds'
        self.base = root / 'base'
        job('--data-dir', self.data, '--output', self.base, '--epochs', 2)
        self.ckpt = self.base / 'last.pth.tar'
        self.n = 0

    def fresh(self, name='x') -> Path:
        self.n += 1
        return self.root / f'{name}{self.n}'

    def resumable(self) -> Path:
        """A copy of the base run, to resume."""
        out = self.fresh('resume')
        shutil.copytree(self.base, out)
        (out / '.lock').write_text('')  # an unlocked lock file, as a finished job leaves it
        return out


def sh(tool, *args, cwd=None):
    cmd = [sys.executable, '-m', f'tokenformer_vit.{tool}', *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=600)


def job(*args, cwd=None):
    return subprocess.run([sys.executable, str(REPO / 'train_imagenet.py'), *TINY, *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=600)


def flag(w, name, *flags, expected='refused', epochs=1):
    """A fresh run with these flags; a refusal must leave no run folder."""
    out = w.fresh()
    return (name, expected, lambda: job('--data-dir', w.data, '--output', out, '--epochs', epochs, *flags),
            lambda: None if expected == 'ok' or not out.exists() else f'{out} left behind')


def config(w, name, text, expected='refused'):
    """A fresh run from a config file of this text."""
    path = w.fresh('cfg').with_suffix('.yaml')
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    out = w.fresh()
    return (name, expected, lambda: job('--config', path, '--data-dir', w.data, '--output', out, '--epochs', 1),
            lambda: None)


def resume(w, name, *flags, expected='refused'):
    """The base run resumed with these flags; a refusal must leave its last.pth.tar as it was."""
    out = w.resumable()
    before = (out / 'last.pth.tar').read_bytes()

    def check():
        if expected == 'refused' and (out / 'last.pth.tar').read_bytes() != before:
            return 'last.pth.tar changed by a refused resume'
    return (name, expected, lambda: job('--data-dir', w.data, '--output', out, '--epochs', 2, *flags), check)


def cases(w: World):
    """(name, expected, run: () -> CompletedProcess, check: () -> problem or None)."""
    for group in (flag_cases, file_cases, resume_cases, folder_cases, shard_cases, grow_cases, finetune_cases):
        yield from group(w)


def flag_cases(w: World):
    """Flags a new user gets wrong (or right)."""
    yield flag(w, 'epochs 0', '--epochs', 0)
    yield flag(w, 'batch size 0', '--batch-size', 0)
    yield flag(w, 'negative workers', '--workers', -1)
    yield flag(w, 'model kwarg of a wrong type', '--model-kwargs', 'depth=two')
    yield flag(w, 'heads that do not divide the width', '--model-kwargs', 'embed_dim=33', 'num_heads=2')
    yield flag(w, 'unknown model', '--model', 'tokenformer_vit_gigantic')
    yield flag(w, 'image size 0', '--img-size', 0)
    yield flag(w, 'crop 0', '--crop-pct', 0)
    yield flag(w, 'scale from 0', '--scale', 0, 1)
    yield flag(w, 'ratio from 0', '--ratio', 0, 1)
    yield flag(w, 'negative mixup', '--mixup', -1)
    yield flag(w, 'negative lr', '--lr', -1)
    yield flag(w, 'beta of 1', '--opt-betas', 1, 0.9)
    yield flag(w, 'growth after the end', '--grow', '5:24:48', epochs=3)
    yield flag(w, 'growth that shrinks', '--grow', '1:8:16', epochs=2)
    yield flag(w, 'growth not parseable', '--grow', 'soon')
    yield flag(w, 'unknown growth mode', '--grow-mode', 'magic')
    yield flag(w, 'fp16 on a CPU', '--amp', 'fp16')
    yield flag(w, 'cuda without a GPU', '--device', 'cuda')
    yield flag(w, 'not a device', '--device', 'tpu:9')
    yield flag(w, 'compile mode without compile', '--compile-mode', 'max-autotune')


def file_cases(w: World):
    """Data folders, checkpoints and config files that are not what they should be."""
    a_file, missing = w.root / 'afile.txt', w.root / 'nowhere'
    yield ('missing data folder', 'refused', lambda: job('--data-dir', missing, '--output', w.fresh(), '--epochs', 1),
           lambda: None)
    a_file.write_text('x')
    yield ('data dir is a file', 'refused', lambda: job('--data-dir', a_file, '--output', w.fresh(), '--epochs', 1),
           lambda: None)
    empty = w.root / 'emptydata'
    empty.mkdir()
    yield ('data folder without _info.json', 'refused',
           lambda: job('--data-dir', empty, '--output', w.fresh(), '--epochs', 1), lambda: None)
    garbage = w.root / 'garbage'
    shutil.copytree(w.data, garbage)
    (garbage / '_info.json').write_text('{"splits": 5')
    yield ('_info.json not JSON', 'refused', lambda: job('--data-dir', garbage, '--output', w.fresh(), '--epochs', 1),
           lambda: None)
    yield flag(w, 'unknown validation split', '--val-split', 'test')
    yield flag(w, 'train on the validation split', '--train-split', 'validation', expected='ok')
    yield flag(w, 'fewer classes than the data', '--num-classes', 2)
    yield flag(w, 'missing initial checkpoint', '--initial-checkpoint', w.root / 'none.pth')
    yield flag(w, 'initial checkpoint is text', '--initial-checkpoint', a_file)
    yield from initial_checkpoint_cases(w)
    yield ('output is a file', 'refused', lambda: job('--data-dir', w.data, '--output', a_file, '--epochs', 1),
           lambda: None)
    yield ('missing config file', 'refused', lambda: job('--config', w.root / 'no.yaml', '--data-dir', w.data,
                                                         '--output', w.fresh()),
           lambda: None)
    yield config(w, 'config with an unknown key', 'epochz: 3\n')
    yield config(w, 'config list for a number', 'epochs: [1, 2]\n')
    yield config(w, 'config epochs as a quoted number', 'epochs: "1"\n', expected='ok')
    yield config(w, 'config growth as a list', 'grow: ["0:24:48"]\n', expected='ok')
    yield config(w, 'config model kwargs as a string', 'model_kwargs: depth=2\n')
    yield config(w, 'config with a tab', 'epochs:\t1\nlr: [\n')
    yield config(w, 'config empty', '', expected='ok')
    yield config(w, 'config amp null', 'amp: null\n', expected='ok')
    yield config(w, 'config binary', bytes(range(256)))
    yield config(w, 'config naming another config', 'config: other.yaml\n')
    yield config(w, 'config scientific without a dot', 'blr: 5e-4\n', expected='ok')
    yield flag(w, 'negative step saves', '--save-every-steps', -1)
    yield flag(w, 'log every 0', '--log-every', 0)
    yield flag(w, 'ramp with its length', '--grow', '1:24:48', '--grow-mode', 'ramp', '--tau-ramp-epochs', 0.5,
               expected='ok', epochs=2)
    yield flag(w, 'ramp length without ramp', '--tau-ramp-epochs', 0.5)
    yield flag(w, 'repeated augmentation', '--aug-repeats', 3, expected='ok')
    yield flag(w, 'flip probability 2', '--hflip', 2)
    yield flag(w, 'pixel limit 0', '--max-image-pixels', 0)
    yield flag(w, 'eval-only with nothing to evaluate', '--eval-only')
    yield flag(w, 'eval-only of another width', '--eval-only', '--initial-checkpoint', w.root / 'wide.pth')
    yield flag(w, 'partition without submit', '--partition', 'gpu')
    yield flag(w, 'colour jitter under RandAugment', '--rand-augment', '--color-jitter', 0.4)
    yield flag(w, 'grow schedule without a growth', '--grow-schedule', 'continue')
    yield flag(w, 'grow mode without a growth', '--grow-mode', 'preserve')
    yield flag(w, 'submit to slurm from a machine without it', '--submit', '--cluster', 'slurm')


def initial_checkpoint_cases(w: World):
    """--initial-checkpoint of another width, of the run's model at more tokens than it starts at, or of
    another class count."""
    import timm
    import tokenformer_vit  # noqa: F401
    for name, kwargs in (('another width', dict(embed_dim=48)),
                         ('more tokens than the run starts at', dict(attn_tokens=24, ffn_tokens=40)),
                         ('another class count', dict(num_classes=3)), ('more classes', dict(num_classes=6))):
        other = w.root / ('wide.pth' if name == 'another width' else f'initial-{name.replace(" ", "-")}.pth')
        shape = dict(depth=2, embed_dim=32, num_heads=2, attn_tokens=16, ffn_tokens=32, patch_size=8, img_size=32,
                     num_classes=4)
        torch.save({'state_dict': timm.create_model('tokenformer_vit_tiny', **dict(shape, **kwargs)).state_dict()},
                   other)
        yield flag(w, f'initial checkpoint of {name}', '--initial-checkpoint', other)


def resume_cases(w: World):
    """The base run resumed with changed settings: identity refused, the allow-list goes on."""
    yield resume(w, 'resume with another seed', '--seed', 3)
    yield resume(w, 'resume with another lr', '--lr', 1e-3)
    yield resume(w, 'resume with another warmup', '--warmup-epochs', 1)
    yield resume(w, 'resume with another depth', '--model-kwargs', 'depth=3', 'embed_dim=32', 'num_heads=2',
                 'attn_tokens=16', 'ffn_tokens=32', 'patch_size=8')
    yield resume(w, 'resume with another mixup', '--mixup', 0.5)
    yield resume(w, 'resume with another scale', '--scale', 0.2, 1)
    yield resume(w, 'resume with RandAugment on', '--rand-augment')
    yield resume(w, 'resume with another batch size', '--batch-size', 4)
    yield resume(w, 'resume with more workers', '--workers', 2, expected='ok')
    yield resume(w, 'resume with another log cadence', '--log-every', 1, expected='ok')
    yield resume(w, 'resume with step saves', '--save-every-steps', 2, expected='ok')
    yield resume(w, 'resume with more epochs, no growth ahead', '--epochs', 4)
    yield resume(w, 'resume with another validation split', '--val-split', 'train')
    yield resume(w, 'resume with another EMA decay', '--ema-decay', 0.99)
    yield resume(w, 'resume with clipping added', '--clip-grad', 1.0)
    yield resume(w, 'resume with a growth added', '--grow', '1:24:48')
    yield resume(w, 'resume with another crop', '--crop-pct', 0.9)
    yield resume(w, 'resume with more classes', '--num-classes', 6)
    yield resume(w, 'resume with --overwrite', '--overwrite', expected='ok')
    yield resume(w, 'eval-only with another batch size', '--eval-only', '--batch-size', 3, expected='ok')
    moved = w.root / 'moved'
    shutil.copytree(w.data, moved)
    out = w.resumable()
    yield ('resume from moved shards', 'ok', lambda: job('--data-dir', moved, '--output', out, '--epochs', 2),
           lambda: None)
    rebuilt = w.root / 'rebuilt'
    shutil.copytree(w.data, rebuilt)
    out2 = w.resumable()
    yield ('resume on rebuilt training shards', 'refused',
           lambda: (sh('make_shards', '--input', w.root / 'img' / 'train', '--split', 'train', '--output', rebuilt,
                       '--name', 'wds', '--shard-size', 4),
                    job('--data-dir', rebuilt, '--output', out2, '--epochs', 2))[1], lambda: None)


def folder_cases(w: World):
    """Run folders holding files the job did not write."""
    for name in ('summary.csv', 'config.yaml', 'checkpoint-0.pth.tar', 'last.pth.tar', '.lock'):
        out = w.fresh('theirs')
        out.mkdir()
        (out / name).write_text('mine')
        yield (f'run folder holding a user {name}', 'refused',
               lambda out=out: job('--data-dir', w.data, '--output', out, '--epochs', 1, '--save-every-epochs', 1,
                                   '--overwrite'),
               lambda out=out, name=name: None if (out / name).read_text() == 'mine' else f'{name} replaced')
    notes = w.fresh('notes')
    notes.mkdir()
    (notes / 'notes.txt').write_text('mine')
    yield ('run folder holding other notes', 'ok', lambda: job('--data-dir', w.data, '--output', notes, '--epochs', 1),
           lambda: None if (notes / 'notes.txt').read_text() == 'mine' else 'notes.txt changed')
    ours = w.resumable()
    (ours / 'last.pth.tar').unlink()
    yield ('earlier results without --overwrite', 'refused', lambda: job('--data-dir', w.data, '--output', ours,
                                                                         '--epochs', 1),
           lambda: None if (ours / 'best.pth.tar').exists() else 'best.pth.tar removed')
    ours2 = w.resumable()
    (ours2 / 'last.pth.tar').unlink()
    yield ('earlier results with --overwrite', 'ok', lambda: job('--data-dir', w.data, '--output', ours2, '--epochs',
                                                                 1, '--overwrite'),
           lambda: None)


def shard_cases(w: World):
    """make_shards on folders and class lists a user has."""
    a_file, missing = w.root / 'afile.txt', w.root / 'nowhere'
    img = w.root / 'img' / 'train'
    yield ('shards: missing input', 'refused', lambda: sh('make_shards', '--input', missing, '--split', 'train',
                                                            '--output', w.fresh()), lambda: None)
    yield ('shards: input is a file', 'refused', lambda: sh('make_shards', '--input', a_file, '--split', 'train',
                                                              '--output', w.fresh()), lambda: None)
    flat = w.root / 'flat'
    flat.mkdir()
    Image.new('RGB', (8, 8)).save(flat / 'a.jpg')
    yield ('shards: images without class folders', 'refused',
           lambda: sh('make_shards', '--input', flat, '--split', 'train', '--output', w.fresh()), lambda: None)
    hollow = w.root / 'hollow'
    (hollow / 'cat').mkdir(parents=True)
    yield ('shards: empty class folders', 'refused',
           lambda: sh('make_shards', '--input', hollow, '--split', 'train', '--output', w.fresh()), lambda: None)
    yield ('shards: shard size 0', 'refused', lambda: sh('make_shards', '--input', img, '--split', 'train', '--output',
                                                           w.fresh(), '--shard-size', 0), lambda: None)
    yield ('shards: split test', 'refused', lambda: sh('make_shards', '--input', img, '--split', 'test', '--output',
                                                         w.fresh()), lambda: None)
    yield ('shards: name with a dash', 'refused', lambda: sh('make_shards', '--input', img, '--split', 'train',
                                                               '--output', w.fresh(), '--name', 'my-set'), lambda: None)
    yield ('shards: output inside input', 'refused', lambda: sh('make_shards', '--input', img, '--split', 'train',
                                                                  '--output', img / 'out'), lambda: None)
    yield ('shards: missing class list', 'refused', lambda: sh('make_shards', '--input', img, '--split', 'train',
                                                                 '--output', w.fresh(), '--class-list',
                                                                 w.root / 'nolist.txt'), lambda: None)
    short = w.root / 'short.txt'
    short.write_text('class0\nclass1\n')
    yield ('shards: class list missing a folder', 'refused',
           lambda: sh('make_shards', '--input', img, '--split', 'train', '--output', w.fresh(), '--class-list', short),
           lambda: None)
    twice = w.root / 'twice.txt'
    twice.write_text('class0\nclass1\nclass2\nclass3\nclass1\n')
    yield ('shards: class list naming a class twice', 'refused',
           lambda: sh('make_shards', '--input', img, '--split', 'train', '--output', w.fresh(), '--class-list', twice),
           lambda: None)
    yield from shard_folder_cases(w, img)


def shard_folder_cases(w: World, img: Path):
    """make_shards on folders holding other files, and on images that do not read."""
    a_file = w.root / 'afile.txt'
    killed = w.fresh('killed')
    yield ('shards: a build killed half-way, then rebuilt', 'ok', lambda: kill_and_rebuild(w, killed),
           lambda: leftovers(killed))
    kept = w.fresh('kept')
    kept.mkdir()
    for name in ('kept-train-notes.tar', 'kept-train-g1-000000.tar', 'README.txt'):
        (kept / name).write_text('mine')
    yield ('shards: a folder of other files, built twice', 'ok',
           lambda: (sh('make_shards', '--input', img, '--split', 'train', '--output', kept),
                    sh('make_shards', '--input', img, '--split', 'train', '--output', kept))[1],
           lambda: None if all((kept / n).read_text() == 'mine' for n in ('kept-train-notes.tar',
                                                                          'kept-train-g1-000000.tar', 'README.txt'))
           else 'a user file changed')
    yield ('shards: output is a file', 'refused', lambda: sh('make_shards', '--input', img, '--split', 'train',
                                                               '--output', a_file), lambda: None)
    yield ('shards: max side 0', 'refused', lambda: sh('make_shards', '--input', img, '--split', 'train', '--output',
                                                         w.fresh(), '--max-side', 0), lambda: None)
    broken = w.root / 'broken'
    shutil.copytree(img, broken)
    (broken / 'class0' / 'bad.jpg').write_bytes(b'not an image')
    yield ('shards: one corrupt image', 'ok', lambda: sh('make_shards', '--input', broken, '--split', 'train',
                                                           '--output', w.fresh()), lambda: None)
    allbad = w.root / 'allbad'
    (allbad / 'cat').mkdir(parents=True)
    (allbad / 'cat' / 'bad.jpg').write_bytes(b'not an image')
    allbad_out = w.fresh()
    yield ('shards: every image corrupt', 'refused',
           lambda: sh('make_shards', '--input', allbad, '--split', 'train', '--output', allbad_out),
           lambda: None if not allbad_out.exists() else 'a folder was left behind')
    other, odd = w.fresh('other'), w.root / 'oddclasses'
    (odd / 'zebra').mkdir(parents=True)
    Image.new('RGB', (8, 8)).save(odd / 'zebra' / 'a.jpg')
    yield ('shards: a second split of other classes', 'refused',
           lambda: (sh('make_shards', '--input', img, '--split', 'train', '--output', other),
                    sh('make_shards', '--input', odd, '--split', 'validation', '--output', other))[1], lambda: None)


def grow_cases(w: World):
    """The grow command and timm_script."""
    import timm
    g = ['--attn-tokens', 24, '--ffn-tokens', 48]
    yield ('grow: missing checkpoint', 'refused', lambda: sh('grow_checkpoint', '--checkpoint', w.root / 'none.pth',
                                                             *g, '--output',
                                                              w.fresh()), lambda: None)
    yield ('grow: shrink', 'refused', lambda: sh('grow_checkpoint', '--checkpoint', w.ckpt, '--attn-tokens', 8,
                                                 '--output',
                                                  w.fresh()), lambda: None)
    yield ('grow: output is the input', 'refused', lambda: sh('grow_checkpoint', '--checkpoint', w.ckpt, *g,
                                                              '--output', w.ckpt),
           lambda: None)
    exists = w.root / 'exists.pth'
    exists.write_text('mine')
    yield ('grow: output exists', 'refused', lambda: sh('grow_checkpoint', '--checkpoint', w.ckpt, *g, '--output',
                                                        exists),
           lambda: None if exists.read_text() == 'mine' else 'output replaced')
    yield ('grow: unknown mode', 'refused', lambda: sh('grow_checkpoint', '--checkpoint', w.ckpt, *g, '--mode', 'x',
                                                       '--output',
                                                        w.fresh()), lambda: None)
    hf = w.fresh('hf')
    hf.mkdir()
    (hf / 'notes.txt').write_text('mine')
    yield ('grow: hf dir of other files', 'refused',
           lambda: sh('grow_checkpoint', '--checkpoint', w.ckpt, *g, '--output', w.fresh(), '--hf-dir', hf),
           lambda: None if (hf / 'notes.txt').read_text() == 'mine' else 'hf-dir file changed')
    resnet = w.root / 'resnet.pth'
    torch.save(timm.create_model('resnet18', num_classes=4).state_dict(), resnet)
    yield ('grow: a resnet checkpoint', 'refused', lambda: sh('grow_checkpoint', '--checkpoint', resnet, *g, '--output',
                                                               w.fresh()), lambda: None)
    ddp = w.root / 'ddp.pth'
    state = torch.load(w.ckpt, map_location='cpu', weights_only=True)['state_dict']
    torch.save({'state_dict': {'module.' + k: v for k, v in state.items()}}, ddp)
    yield ('grow: a DDP checkpoint', 'ok', lambda: sh('grow_checkpoint', '--checkpoint', ddp, *g, '--output',
                                                       w.fresh().with_suffix('.pth')), lambda: None)
    yield ('timm_script: missing script', 'refused', lambda: sh('timm_script', w.root / 'validate.py'), lambda: None)
    yield ('timm_script: a folder', 'refused', lambda: sh('timm_script', w.root), lambda: None)


def finetune_cases(w: World):
    """--pretrained-path and --layer-decay (issue 35's sweep: new cases, not the issue's)."""
    import timm
    yield flag(w, 'fine-tune: missing checkpoint', '--pretrained-path', w.root / 'none.pth.tar')
    empty = w.fresh('emptyhf')
    empty.mkdir()
    yield flag(w, 'fine-tune: a folder without weights', '--pretrained-path', empty)
    garbage = w.root / 'garbage.pth.tar'
    garbage.write_bytes(b'not a checkpoint')
    yield flag(w, 'fine-tune: an unreadable file', '--pretrained-path', garbage)
    resnet = w.root / 'resnet_ft.pth'
    torch.save(timm.create_model('resnet18', num_classes=4).state_dict(), resnet)
    yield flag(w, 'fine-tune: a resnet checkpoint', '--pretrained-path', resnet)
    yield flag(w, 'fine-tune: another width', '--pretrained-path', w.ckpt, '--model-kwargs', 'depth=2',
               'embed_dim=64', 'num_heads=2', 'patch_size=8')
    yield flag(w, 'fine-tune: another patch size', '--pretrained-path', w.ckpt, '--model-kwargs', 'depth=2',
               'embed_dim=32', 'num_heads=2', 'patch_size=16')
    yield flag(w, 'fine-tune: fewer tokens than it holds', '--pretrained-path', w.ckpt, '--model-kwargs', 'depth=2',
               'embed_dim=32', 'num_heads=2', 'patch_size=8', 'attn_tokens=8', 'ffn_tokens=32')
    yield flag(w, 'fine-tune: with --initial-checkpoint', '--pretrained-path', w.ckpt, '--initial-checkpoint', w.ckpt)
    yield flag(w, 'fine-tune: with --eval-only', '--pretrained-path', w.ckpt, '--eval-only')
    yield flag(w, 'fine-tune: a grow mode with nothing to grow', '--pretrained-path', w.ckpt, '--grow-mode', 'ramp')
    yield flag(w, 'fine-tune: a growth that shrinks it', '--pretrained-path', w.ckpt, '--grow', '1:8:32', epochs=2)
    yield flag(w, 'layer decay 0', '--layer-decay', 0)
    yield flag(w, 'layer decay above 1', '--layer-decay', 1.5)
    yield flag(w, 'layer decay nan', '--layer-decay', 'nan')
    yield flag(w, 'fine-tune: the same classes at another size, layer decay', '--pretrained-path', w.ckpt,
               '--img-size', 48, '--layer-decay', 0.75, expected='ok')
    yield flag(w, 'fine-tune: grown on the way', '--pretrained-path', w.ckpt, '--model-kwargs', 'depth=2',
               'embed_dim=32', 'num_heads=2', 'patch_size=8', 'attn_tokens=24', 'ffn_tokens=48', expected='ok')
    yield resume(w, 'resume a run with --pretrained-path', '--pretrained-path', w.ckpt)


def kill_and_rebuild(w: World, out: Path):
    """make_shards over 600 images, SIGKILLed once it has written its journal, then run again."""
    src = w.root / 'many'
    if not src.exists():
        rng = np.random.default_rng(1)
        for c in range(3):
            (src / f'c{c}').mkdir(parents=True)
            for i in range(200):
                Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(src / f'c{c}' / f'{i}.png')
    out.mkdir()
    (out / 'killed-train-notes.tar').write_text('mine')
    cmd = [sys.executable, '-m', 'tokenformer_vit.make_shards', '--input', str(src), '--split', 'train', '--output',
           str(out), '--shard-size', '20', '--workers', '1']
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and not list(out.glob('*-g1-*.tar')):
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def leftovers(out: Path):
    """A problem if the folder holds more than _info.json's shards, its own two files and the user's."""
    info = json.loads((out / '_info.json').read_text())
    listed = {f for e in info['splits'].values() for f in e['filenames']}
    extra = sorted(set(p.name for p in out.iterdir()) - listed - {'_info.json', '.make_shards.lock',
                                                                 'killed-train-notes.tar'})
    if (out / 'killed-train-notes.tar').read_text() != 'mine':
        return 'the user file changed'
    return f'left behind: {extra}' if extra else None


def classify(expected: str, res, problem) -> str:
    text = res.stdout + res.stderr
    errors = [line for line in text.splitlines() if line.startswith('error:') or ': error: ' in line]
    if problem:
        return 'LOSS'
    if 'Traceback' in text:
        return 'TRACEBACK'
    if res.returncode == 0:
        return 'ok' if expected == 'ok' else 'SILENT'
    if res.returncode == 2 and len(errors) == 1:
        return 'refused' if expected == 'refused' else 'REFUSED (expected ok)'
    return 'UNCLEAR'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--only', default=None, help='run the cases whose name holds this')
    parser.add_argument('--out', type=Path, default=REPO / 'benchmarks' / 'results' / 'sweep_user_cases.json')
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp())
    rows, t0 = [], time.time()
    try:
        world = World(root)
        for name, expected, run, check in cases(world):
            if args.only and args.only not in name:
                continue
            res = run()
            outcome = classify(expected, res, check())
            line = next((ln for ln in (res.stdout + res.stderr).splitlines()
                         if ln.startswith('error:') or ': error: ' in ln), '')
            rows.append(dict(case=name, expected=expected, exit=res.returncode, outcome=outcome,
                             message=line.replace(str(root), 'TMP')))
            print(f'{outcome:>10}  {name}: {rows[-1]["message"][:150]}', flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    counts = {}
    for r in rows:
        counts[r['outcome']] = counts.get(r['outcome'], 0) + 1
    print(f'{len(rows)} cases in {time.time() - t0:.0f} s: {counts}')
    if not args.only:
        args.out.write_text(json.dumps(dict(command='python benchmarks/sweep_user_cases.py', counts=counts,
                                            cases=rows), indent=1) + '\n')


if __name__ == '__main__':
    main()
