"""Input-pipeline images/s: ours (tokenformer_vit.data) against timm's own wds loader, same shards,
same batch size, in one run; training without and with RandAugment (rand-m9-mstd0.5-inc1), and
evaluation (resize to 256, centre crop 224, bicubic).

The training pipelines do RandomResizedCrop 224 (scale 0.08-1, bicubic, MAE's) + horizontal flip and
are timed on the uint8 batches their workers deliver, which is what a GPU job receives: both normalise
and erase on the device (timm in its PrefetchLoader, which wraps the DataLoader timed here; ours in
engine.train_one_epoch). With --workers workers, each pipeline runs alone. In one process (the per-core
figures), the pipelines and the bare decoders (OpenCV alone; ours, decode_rgb; PIL, timm's) take turns
batch by batch (`per_core`), so that the machine's drifting speed does not fall on one of them:
`per_core_NAME_vs_decode` is a pipeline over the bare OpenCV decoder, which bounds any pipeline that
decodes every JPEG. Without --root, shards of full-size ImageNet JPEGs are built from an image folder
(default ../shared/data/imagenet-sample-100), repeated --repeat times. timm's RandAugment needs one
patch to run here (`_clamp_timm_posterize`).

    python benchmarks/bench_data.py [--root ROOT] [--workers 2] [--batch-size 64] [--json out.json]
"""
import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from tokenformer_vit.config import data_config, job_args
from tokenformer_vit.data import build_loader
from tokenformer_vit.make_shards import ShardSpec, make_shards

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def build_repeated_shards(src: Path, repeat: int, out: Path) -> Path:
    folder = out / 'folder'
    for cls in sorted(p for p in src.iterdir() if p.is_dir()):
        (folder / cls.name).mkdir(parents=True, exist_ok=True)
        for img in cls.iterdir():
            for r in range(repeat):
                link = folder / cls.name / f'{img.stem}_{r}{img.suffix}'
                if not link.exists():
                    os.symlink(img.resolve(), link)
    root = out / 'bench'
    make_shards(str(folder), 'train', root, ShardSpec(shard_size=128, workers=os.cpu_count() or 1, progress=False))
    return root


def images_per_s(batches, limit: int, warmup: int = 2) -> float:
    n, t0 = 0, None
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            t0, n = time.perf_counter(), 0
        elif i > warmup:
            n += len(y)
        if i >= warmup + limit:
            break
    return n / (time.perf_counter() - t0)


def ours(root, args, full: bool, workers: int):
    flags = job_args(data_dir=str(root), batch_size=args.batch_size, workers=workers, rand_augment=full)
    loader = build_loader(data_config(flags), 'train', True)  # the job's recipe for its default model (224)
    while True:
        yield from loader
        loader.dataset.set_epoch(loader.dataset.epoch + 1)


def ours_eval(root, args):
    flags = job_args(data_dir=str(root), batch_size=args.batch_size, workers=0)
    while True:
        yield from build_loader(data_config(flags), 'train', False)


def timm_eval(root, args):
    from timm.data import create_dataset, create_loader
    ds = create_dataset('wds/bench', root=str(root), split='train', batch_size=args.batch_size)
    loader = create_loader(ds, input_size=(3, 224, 224), batch_size=args.batch_size, is_training=False,
                           crop_pct=0.875, interpolation='bicubic', mean=MEAN, std=STD, num_workers=0,
                           use_prefetcher=True, device=torch.device('cpu'))
    while True:
        yield from loader.loader


def _clamp_timm_posterize() -> None:
    """timm 1.0.31's rand-m9-mstd0.5-inc1 asks Pillow for 0 bits when a magnitude reaches 10, and Pillow
    13 raises (it ended this benchmark's timm loader); clamped to 1 bit, as ours is."""
    from timm.data import auto_augment as aa
    posterize = aa.posterize
    aa.NAME_TO_OP['PosterizeIncreasing'] = lambda img, bits, **kw: posterize(img, max(1, bits), **kw)


def timm_loader(root, args, full: bool, workers: int):
    from timm.data import create_dataset, create_loader
    _clamp_timm_posterize()
    ds = create_dataset('wds/bench', root=str(root), split='train', is_training=True, batch_size=args.batch_size,
                        repeats=100)
    loader = create_loader(ds, input_size=(3, 224, 224), batch_size=args.batch_size, is_training=True,
                           scale=(0.08, 1.0), hflip=0.5, color_jitter=None, re_prob=0.0,
                           auto_augment='rand-m9-mstd0.5-inc1' if full else None,
                           interpolation='bicubic', mean=MEAN, std=STD, num_workers=workers,
                           use_prefetcher=True, device=torch.device('cpu'), persistent_workers=False)
    while True:
        yield from loader.loader  # the DataLoader inside timm's PrefetchLoader: uint8 batches


def distinct_jpegs(root, limit: int = 100) -> list:
    """Up to `limit` distinct JPEGs of the shards."""
    import tarfile
    info = json.loads((Path(root) / '_info.json').read_text())['splits']['train']
    jpegs = {}
    for name in info['filenames']:
        with tarfile.open(Path(root) / name) as tar:
            for m in tar:
                if m.name.endswith('.jpg') and len(jpegs) < limit:
                    data = tar.extractfile(m).read()
                    jpegs[hash(data)] = data
    return list(jpegs.values())


def decoders() -> dict:
    import io
    import cv2
    import numpy as np
    from PIL import Image
    from tokenformer_vit.transforms import decode_rgb
    bare = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
    return dict(decode_opencv=lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), bare), decode_rgb=decode_rgb,
                decode_pil=lambda b: Image.open(io.BytesIO(b)).convert('RGB'))


def per_core(pipelines: dict, jpegs: list, rounds: int, batch_size: int) -> dict:
    """One-process images/s of each pipeline and of the bare decoders, interleaved: each round times
    one batch of every pipeline, then each decoder on as many JPEGs, so that a drift in the machine's
    speed falls on all alike. Medians over the rounds, and each pipeline's median ratio to the bare
    OpenCV decoder of the same rounds."""
    import statistics
    iters = {name: iter(make()) for name, make in pipelines.items()}
    for it in iters.values():  # warm up
        next(it), next(it)
    rates = {name: [] for name in [*pipelines, *decoders()]}
    for r in range(rounds):
        for name, it in iters.items():
            t0 = time.perf_counter()
            _, y = next(it)
            rates[name].append(len(y) / (time.perf_counter() - t0))
        chunk = [jpegs[(r * batch_size + i) % len(jpegs)] for i in range(batch_size)]
        for name, fn in decoders().items():
            t0 = time.perf_counter()
            for b in chunk:
                fn(b)
            rates[name].append(batch_size / (time.perf_counter() - t0))
    out = {f'per_core_{name}_img_s': statistics.median(v) for name, v in rates.items()}
    for name in pipelines:
        out[f'per_core_{name}_vs_decode'] = statistics.median(
            a / b for a, b in zip(rates[name], rates['decode_opencv']))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--root', default=None, help='shards to read (a split named train)')
    parser.add_argument('--images', default='../shared/data/imagenet-sample-100')
    parser.add_argument('--repeat', type=int, default=30)
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--batches', type=int, default=30,
                        help='timed batches per pipeline (fewer than an epoch); per core: rounds of one batch each')
    parser.add_argument('--json', default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tmp = None
    root = args.root
    if root is None:
        tmp = tempfile.TemporaryDirectory()
        root = build_repeated_shards(Path(args.images), args.repeat, Path(tmp.name))
    info = json.loads((Path(root) / '_info.json').read_text())['splits']['train']
    print(f'{info["num_samples"]} samples in {len(info["filenames"])} shards; batch {args.batch_size}, '
          f'{args.workers} workers, {os.cpu_count()} cores')
    res = {}
    for full, tag in ((False, ''), (True, '_rand_augment')):  # all cores: one pipeline after the other
        res[f'timm{tag}_img_s'] = images_per_s(timm_loader(root, args, full, args.workers), args.batches)
        res[f'ours{tag}_img_s'] = images_per_s(ours(root, args, full, args.workers), args.batches)
        res[f'ratio{tag}'] = res[f'ours{tag}_img_s'] / res[f'timm{tag}_img_s']
    pipelines = dict(ours=lambda: ours(root, args, False, 0), timm=lambda: timm_loader(root, args, False, 0),
                     ours_rand_augment=lambda: ours(root, args, True, 0),
                     timm_rand_augment=lambda: timm_loader(root, args, True, 0),
                     eval_ours=lambda: ours_eval(root, args), eval_timm=lambda: timm_eval(root, args))
    res.update(per_core(pipelines, distinct_jpegs(root), args.batches, args.batch_size))
    for tag in ('', '_rand_augment', 'eval_'):
        ours_, timm_ = ('eval_ours', 'eval_timm') if tag == 'eval_' else (f'ours{tag}', f'timm{tag}')
        key = f'per_core_ratio_{tag.strip("_") or "plain"}'
        res[key] = res[f'per_core_{ours_}_img_s'] / res[f'per_core_{timm_}_img_s']
    res.update(workers=args.workers, batch_size=args.batch_size, samples=info['num_samples'], cores=os.cpu_count(),
               decoders='decode_opencv: OpenCV imdecode alone (libjpeg-turbo, straight to RGB, EXIF orientation '
                        'ignored); decode_rgb: ours, with its header check; decode_pil: PIL, as timm decodes',
               torch=torch.__version__, timm=__import__('timm').__version__)
    report(res, args.json)


def report(res: dict, path=None) -> None:
    """Print the figures, one a line, and write them all to `path` as JSON if given."""
    width = max(map(len, res)) + 2
    for k, v in res.items():
        print(f'{k:<{width}}{v:>10.3f}' if isinstance(v, float) else f'{k:<{width}}{v}')
    if path:
        Path(path).write_text(json.dumps(res, indent=1))


if __name__ == '__main__':
    main()
