"""Training-pipeline images/s: ours (tokenformer_vit.data) against timm's own wds loader, same shards,
same batch size and workers, in one run; plus ours with the full recipe (RandAugment + erasing).

Both do RandomResizedCrop 224 (scale 0.08-1) + horizontal flip and deliver normalised float batches
(timm through its prefetcher, ours through normalize_batch). Without --root, shards of full-size
ImageNet JPEGs are built from an image folder (default ../shared/data/imagenet-sample-100),
repeated --repeat times.

    python benchmarks/bench_data.py [--root ROOT] [--workers 2] [--batch-size 64] [--json out.json]
"""
import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from tokenformer_vit.data import build_loader
from tokenformer_vit.make_shards import make_shards
from tokenformer_vit.transforms import normalize_batch

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
    make_shards(str(folder), 'train', root, shard_size=128, max_side=10_000, workers=os.cpu_count() or 1,
                progress=False)
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


def ours(root, args, full: bool):
    loader = build_loader(str(root), 'train', args.batch_size, True, num_workers=args.workers,
                          rand_augment=full, reprob=0.25 if full else 0.0)
    while True:
        for x, y in loader:
            yield normalize_batch(x, MEAN, STD), y
        loader.dataset.set_epoch(loader.dataset.epoch + 1)


def timm_loader(root, args):
    from timm.data import create_dataset, create_loader
    ds = create_dataset('wds/bench', root=str(root), split='train', is_training=True, batch_size=args.batch_size,
                        repeats=100)
    loader = create_loader(ds, input_size=(3, 224, 224), batch_size=args.batch_size, is_training=True,
                           scale=(0.08, 1.0), hflip=0.5, color_jitter=None, auto_augment=None, re_prob=0.0,
                           interpolation='bilinear', mean=MEAN, std=STD, num_workers=args.workers,
                           use_prefetcher=True, device=torch.device('cpu'), persistent_workers=False)
    while True:
        yield from loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--root', default=None, help='shards to read (a split named train)')
    parser.add_argument('--images', default='../shared/data/imagenet-sample-100')
    parser.add_argument('--repeat', type=int, default=10)
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--batches', type=int, default=25, help='timed batches per pipeline')
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
          f'{args.workers} workers, {os.cpu_count()} cores; decoder: OpenCV (libjpeg-turbo)')
    res = dict(timm_img_s=images_per_s(timm_loader(root, args), args.batches),
               ours_img_s=images_per_s(ours(root, args, full=False), args.batches),
               ours_full_recipe_img_s=images_per_s(ours(root, args, full=True), args.batches))
    res['ratio'] = res['ours_img_s'] / res['timm_img_s']
    res['per_core_ours_img_s'] = res['ours_img_s'] / max(1, args.workers)
    res.update(workers=args.workers, batch_size=args.batch_size, samples=info['num_samples'])
    for k in ('timm_img_s', 'ours_img_s', 'ours_full_recipe_img_s'):
        print(f'{k:<24}{res[k]:>9.1f}')
    print(f'{"ratio (ours / timm)":<24}{res["ratio"]:>9.2f}')
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == '__main__':
    main()
