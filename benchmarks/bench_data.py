"""Training-pipeline images/s: ours (tokenformer_vit.data) against timm's own wds loader, same shards,
same batch size and workers, in one run; plus ours with the full recipe (RandAugment + erasing).

Both do RandomResizedCrop 224 (scale 0.08-1) + horizontal flip and are timed on the uint8 batches
their workers deliver, which is what a GPU job receives: both normalise on the GPU (timm in its
PrefetchLoader, which wraps the DataLoader timed here; ours in normalize_batch). Each pipeline is run
with --workers workers and in one process (the per-core figure), and the bare JPEG decoders (OpenCV,
ours; PIL, timm's) are timed on one core: decoding bounds what any pipeline that decodes every image
can reach. Without --root, shards of full-size ImageNet JPEGs are built from an image folder (default
../shared/data/imagenet-sample-100), repeated --repeat times.

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


def ours(root, args, full: bool, workers: int):
    loader = build_loader(str(root), 'train', args.batch_size, True, num_workers=workers,
                          rand_augment=full, reprob=0.25 if full else 0.0)
    while True:
        yield from loader
        loader.dataset.set_epoch(loader.dataset.epoch + 1)


def timm_loader(root, args, workers: int):
    from timm.data import create_dataset, create_loader
    ds = create_dataset('wds/bench', root=str(root), split='train', is_training=True, batch_size=args.batch_size,
                        repeats=100)
    loader = create_loader(ds, input_size=(3, 224, 224), batch_size=args.batch_size, is_training=True,
                           scale=(0.08, 1.0), hflip=0.5, color_jitter=None, auto_augment=None, re_prob=0.0,
                           interpolation='bilinear', mean=MEAN, std=STD, num_workers=workers,
                           use_prefetcher=True, device=torch.device('cpu'), persistent_workers=False)
    while True:
        yield from loader.loader  # the DataLoader inside timm's PrefetchLoader: uint8 batches


def decoders_img_s(root) -> dict:
    """One-core images/s of the bare decoders on (up to 100) distinct JPEGs of the shards."""
    import io
    import tarfile
    from PIL import Image
    from tokenformer_vit.transforms import decode_rgb
    info = json.loads((Path(root) / '_info.json').read_text())['splits']['train']
    jpegs = {}
    for name in info['filenames']:
        with tarfile.open(Path(root) / name) as tar:
            for m in tar:
                if m.name.endswith('.jpg') and len(jpegs) < 100:
                    data = tar.extractfile(m).read()
                    jpegs[hash(data)] = data
    jpegs = list(jpegs.values())
    out = {}
    for name, fn in (('opencv', decode_rgb), ('pil', lambda b: Image.open(io.BytesIO(b)).convert('RGB'))):
        fn(jpegs[0])
        t0 = time.perf_counter()
        for _ in range(3):
            for b in jpegs:
                fn(b)
        out[f'decode_{name}_img_s'] = 3 * len(jpegs) / (time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--root', default=None, help='shards to read (a split named train)')
    parser.add_argument('--images', default='../shared/data/imagenet-sample-100')
    parser.add_argument('--repeat', type=int, default=30)
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--batches', type=int, default=40, help='timed batches per pipeline (fewer than an epoch)')
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
    res = dict(timm_img_s=images_per_s(timm_loader(root, args, args.workers), args.batches),
               ours_img_s=images_per_s(ours(root, args, False, args.workers), args.batches),
               ours_full_recipe_img_s=images_per_s(ours(root, args, True, args.workers), args.batches),
               per_core_timm_img_s=images_per_s(timm_loader(root, args, 0), args.batches // 2),
               per_core_ours_img_s=images_per_s(ours(root, args, False, 0), args.batches // 2),
               **decoders_img_s(root))
    res['ratio'] = res['ours_img_s'] / res['timm_img_s']
    res['per_core_ratio'] = res['per_core_ours_img_s'] / res['per_core_timm_img_s']
    res['decode_bound_ratio'] = res['decode_opencv_img_s'] / res['per_core_timm_img_s']
    res.update(workers=args.workers, batch_size=args.batch_size, samples=info['num_samples'], cores=os.cpu_count(),
               decoder='OpenCV imdecode (libjpeg-turbo), straight to RGB')
    for k, v in res.items():
        if isinstance(v, float):
            print(f'{k:<26}{v:>9.2f}')
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == '__main__':
    main()
