"""The training job on a GPU, through the real pipeline: generated full-size JPEG shards, bf16,
`tokenformer_vit_base_pm` grown mid-run to `tokenformer_vit_base`'s token counts, next to
`vit_base_patch16_224` trained the same way; images/s per epoch from each run's summary.csv.

    python benchmarks/gpu_check.py [--steps 300] [--batch-size 128] [--images 6400] [--json out.json]
    python benchmarks/gpu_check.py --pattention-impl triton --no-baseline   # the fused path alone

The images are smooth random colour fields, 500x375 like an average ImageNet photo, in 100 classes,
or with --photos the JPEGs of a folder of synset folders (../shared/data/imagenet-sample-100's 100
ImageNet photographs), each repeated until there are --images of them. Every run evaluates once per
epoch, as training does. Beside each run's images/s it measures, in this process, the same model's
train steps alone (benchmarks/bench_model.py's step: forward, backward, AdamW, on one batch kept on
the device, at the run's last token counts) and the job's training loader alone (decode and augment,
no model): the job against the first is the share of a step that is not the model's, and the second
says whether the loader can keep up.

    python benchmarks/gpu_check.py --photos ../shared/data/imagenet-sample-100 --models tokenformer_vit_tiny \
        vit_tiny_patch16_224 --compile --json out.json
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _write_images(job):
    import numpy as np
    from PIL import Image
    folder, start, count, seed = job
    rng = np.random.default_rng(seed)
    for i in range(start, start + count):
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((500, 375), Image.BICUBIC)
        noise = rng.integers(-12, 12, (375, 500, 3))
        img = Image.fromarray(np.clip(np.asarray(img, np.int16) + noise, 0, 255).astype(np.uint8))
        cls = Path(folder) / f'class{i % 100:03d}'
        cls.mkdir(parents=True, exist_ok=True)
        img.save(cls / f'{i:06d}.jpg', quality=90)


def _link_photos(photos: Path, folder: Path, count: int) -> None:
    """`count` images in synset folders, each a hard link to (or a copy of) one of the JPEGs in the
    synset folders of `photos`, taken in turn."""
    files = [p for p in sorted(photos.glob('*/*')) if p.suffix.lower() in ('.jpg', '.jpeg')]
    if not files:
        raise SystemExit(f'--photos {photos} holds no JPEGs in synset folders')
    for i in range(count):
        src = files[i % len(files)]
        dst = folder / src.parent.name / f'{i:06d}{src.suffix}'
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:  # another file system
            shutil.copyfile(src, dst)


def build_shards(root: Path, images: int, val_images: int, workers: int, photos: Path = None) -> Path:
    from tokenformer_vit.make_shards import ShardSpec, make_shards
    wds = root / ('wds_photos' if photos else 'wds')
    if (wds / '_info.json').is_file():
        return wds
    for split, n, seed in (('train', images, 0), ('validation', val_images, 1)):
        folder = root / ('photos' if photos else 'images') / split
        if photos:
            _link_photos(photos, folder, n)
        else:
            chunk = -(-n // workers)
            with ProcessPoolExecutor(workers) as pool:
                list(pool.map(_write_images, [(str(folder), s, min(chunk, n - s), seed * 1000 + s)
                                              for s in range(0, n, chunk)]))
        make_shards(str(folder), split, wds, ShardSpec(shard_size=256, workers=workers, progress=False))
    return wds


def loader_img_s(flags, batches: int = 40) -> dict:
    """The job's training loader alone, built from the job's own flags: seconds to its first batch
    (workers starting, shards opening) and images/s after it."""
    from tokenformer_vit.config import job_config, parse_args
    from tokenformer_vit.data import build_loader
    config = job_config(parse_args([*map(str, flags), '--output', '/tmp/gpu_check_unused']))
    loader = build_loader(config.data, config.train_split, True, num_classes=None)
    loader.dataset.set_epoch(0)
    t0 = time.perf_counter()
    images, first, n = 0, None, 0
    for x, _ in loader:
        n += 1
        if first is None:
            first = time.perf_counter()
            continue
        images += x.shape[0]
        if n > batches:
            break
    end = time.perf_counter()
    return dict(first_batch_s=first - t0, img_s=images / max(end - first, 1e-9), batches=n - 1)


def model_img_s(name: str, kwargs: dict, args, iters: int = 12, warmup: int = 3) -> float:
    """Train steps of the model alone (bench_model.py's Runner) at the job's batch and precision, compiled
    where the job compiles, but per block where the job compiles the whole model (a fraction of the
    compile time; whether the kernels match is not measured)."""
    from bench_model import Runner, interleaved_seconds  # beside this script: on sys.path
    bench = argparse.Namespace(device=args.device, amp='bf16' if args.amp == 'bf16' else 'none',
                               batch=args.batch_size, train_batch=args.batch_size, compile_mode='regional',
                               inductor_mode='default')
    runner = Runner(name, bench, args.compile, model_kwargs=kwargs)
    seconds = interleaved_seconds([runner.train_step], iters, warmup, args.device)[0]
    del runner
    return args.batch_size / seconds


def run(name: str, flags, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)  # a leftover run folder would be resumed, not trained
    t0 = time.time()
    cmd = [sys.executable, str(REPO / 'train_imagenet.py'), *map(str, flags), '--output', str(out), '--no-progress']
    res = subprocess.run(cmd, capture_output=True, text=True)
    print(res.stdout[-3000:], res.stderr[-3000:] if res.returncode else '', flush=True)
    # what TORCH_LOGS=graph_breaks,recompiles says of a compiled run (a growth recompiles once per phase)
    compile_log = [line for line in res.stderr.splitlines()
                   if '__recompiles' in line or '__graph_breaks' in line or 'recompile_limit' in line]
    print('\n'.join(compile_log[:60]), flush=True)
    if res.returncode:
        raise SystemExit(f'{name} failed ({res.returncode})')
    import csv
    rows = list(csv.DictReader(open(out / 'summary.csv')))
    img_s = [float(r['img_s']) for r in rows]
    return dict(model=name, epochs=len(rows), steps=int(rows[-1]['step']), img_s_per_epoch=img_s,
                img_s=statistics.median(img_s[1:] or img_s), wall_s=time.time() - t0,
                top1=float(rows[-1]['eval_top1']), grew=[r['attn_tokens'] for r in rows],
                ffn_tokens=[r['ffn_tokens'] for r in rows])


def beside_the_model(r: dict, args, wds: Path) -> None:
    """The run's model alone, at the run's last token counts, and the job's last epoch against it."""
    kwargs = dict(kv.split('=', 1) for kv in args.model_kwargs)
    kwargs = {k: int(v) if v.isdigit() else v for k, v in kwargs.items()}
    kwargs['num_classes'] = json.loads((wds / '_info.json').read_text())['splits']['train']['num_classes']
    if r['grew'][-1]:
        kwargs.update(attn_tokens=int(r['grew'][-1]), ffn_tokens=int(r['ffn_tokens'][-1]))
    r['model_only_img_s'] = model_img_s(r['model'], kwargs, args)
    r['last_epoch_img_s'] = r['img_s_per_epoch'][-1]
    r['not_model_share'] = 1 - r['last_epoch_img_s'] / r['model_only_img_s']


def report(summary: dict) -> None:
    for r in summary['runs']:
        print(f'{r["model"]:<26} {r["img_s"]:8.0f} img/s (median after epoch 0), {r["steps"]} steps, '
              f'{r["wall_s"]:.0f} s, attn_tokens per epoch {r["grew"]}')
        print(f'{"":<26} last epoch {r["last_epoch_img_s"]:.0f} img/s, the model alone {r["model_only_img_s"]:.0f} '
              f'img/s: {100 * r["not_model_share"]:.0f}% of a step is not the model\'s')
    loader = summary['loader']
    print(f'the training loader alone: {loader["img_s"]:.0f} img/s after {loader["first_batch_s"]:.1f} s to its '
          f'first batch ({summary["workers"]} workers)')
    if summary['ratio'] is not None:
        print(f'ratio {summary["ratio"]:.3f}')


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--steps', type=int, default=300)
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--images', type=int, default=6400, help='training images generated')
    p.add_argument('--val-images', type=int, default=1000, help='validation images generated')
    p.add_argument('--workers', type=int, default=max(1, (os.cpu_count() or 2) - 2))
    p.add_argument('--photos', default=None, help='a folder of synset folders of JPEGs, repeated, in place of '
                   'generated images')
    p.add_argument('--work-dir', default='/tmp/gpu_check')
    p.add_argument('--device', default='cuda')
    p.add_argument('--amp', default='bf16')
    p.add_argument('--compile', action='store_true')
    p.add_argument('--json', default=None)
    p.add_argument('--models', nargs=2, default=('tokenformer_vit_base_pm', 'vit_base_patch16_224'))
    p.add_argument('--model-kwargs', nargs='*', default=[], help='for both models, e.g. depth=2 (CPU smoke runs)')
    p.add_argument('--pattention-impl', default='torch', choices=['torch', 'triton'], help='for the Tokenformer')
    p.add_argument('--baseline', action=argparse.BooleanOptionalAction, default=True,
                   help='also train the ViT the same way, for the images/s ratio')
    args = p.parse_args()
    work = Path(args.work_dir)
    wds = build_shards(work, args.images, args.val_images, args.workers, Path(args.photos) if args.photos else None)
    per_epoch = args.images // args.batch_size
    epochs = max(2, -(-args.steps // per_epoch))
    common = ['--data-dir', wds, '--epochs', epochs, '--batch-size', args.batch_size, '--workers', args.workers,
              '--amp', args.amp, '--device', args.device, '--warmup-epochs', 1, '--blr', 1e-4, '--seed', 0]
    if args.compile:
        common.append('--compile')
    if args.model_kwargs:
        common += ['--model-kwargs', *args.model_kwargs]
    tf, vit = args.models
    import timm
    import tokenformer_vit  # noqa: F401 - registers the models
    base = timm.create_model('tokenformer_vit_base', device='meta')
    grow = f'{epochs // 2}:{base.attn_tokens}:{base.ffn_tokens}'
    results = [run(tf, [*common, '--model', tf, '--grow', grow, '--pattention-impl', args.pattention_impl],
                   work / f'run_tf_{args.pattention_impl}')]
    if args.baseline:
        results.append(run(vit, [*common, '--model', vit], work / 'run_vit'))
    for r in results:
        beside_the_model(r, args, wds)
    loader = loader_img_s([*common, '--model', tf])
    summary = dict(runs=results, ratio=results[0]['img_s'] / results[1]['img_s'] if args.baseline else None,
                   device=args.device, amp=args.amp, pattention_impl=args.pattention_impl,
                   batch_size=args.batch_size, workers=args.workers, images=args.images, grow=grow,
                   photos=args.photos, loader=loader)
    try:
        import torch
        summary['gpu'] = torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'
    except Exception:  # noqa: BLE001
        pass
    report(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))


if __name__ == '__main__':
    main()
