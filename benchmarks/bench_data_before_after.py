"""The input pipeline before and after issue 31 (timm's recipe), one core, in one process: the two
packages' loaders over the same shards take turns batch by batch with the bare OpenCV decoder
(bench_data.per_core), so that the figures share the machine's state. The package before is an older
checkout of tokenformer_vit copied under the name tokenformer_vit_old (its build_loader signature is
that of commit 6ad88b9):

    git worktree add /tmp/old 6ad88b9 && mkdir -p /tmp/oldpkg
    cp -r /tmp/old/tokenformer_vit /tmp/oldpkg/tokenformer_vit_old
    python benchmarks/bench_data_before_after.py --old /tmp/oldpkg [--json out.json]
"""
import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_data  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--old', required=True, help='a folder holding the older package as tokenformer_vit_old')
    p.add_argument('--images', default='../shared/data/imagenet-sample-100')
    p.add_argument('--repeat', type=int, default=30)
    p.add_argument('--rounds', type=int, default=30)
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--json', default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    sys.path.insert(0, args.old)
    with warnings.catch_warnings():  # it registers the same model names with timm
        warnings.simplefilter('ignore')
        from tokenformer_vit_old.data import build_loader as old_loader
    tmp = tempfile.TemporaryDirectory()
    root = bench_data.build_repeated_shards(Path(args.images), args.repeat, Path(tmp.name))

    def before(training: bool, rand_augment: bool = False):
        loader = old_loader(str(root), 'train', args.batch_size, training, num_workers=0, rand_augment=rand_augment,
                            reprob=0.25 if rand_augment else 0.0)
        while True:
            yield from loader
            loader.dataset.set_epoch(loader.dataset.epoch + 1)

    pipelines = dict(before=lambda: before(True), after=lambda: bench_data.ours(root, args, False, 0),
                     before_rand_augment=lambda: before(True, True),
                     after_rand_augment=lambda: bench_data.ours(root, args, True, 0),
                     before_eval=lambda: before(False), after_eval=lambda: bench_data.ours_eval(root, args))
    res = bench_data.per_core(pipelines, bench_data.distinct_jpegs(root), args.rounds, args.batch_size)
    res.update(rounds=args.rounds, batch_size=args.batch_size, torch=torch.__version__,
               note='before: albumentations RandAugment and erasing in the worker, OpenCV resizing; after: timm\'s '
                    'ops, resizing within 0.25 per pixel of PIL in training and PIL itself in evaluation, erasing on '
                    'the device')
    bench_data.report(res, args.json)


if __name__ == '__main__':
    main()
