"""The training job on a GPU, through the real pipeline: generated full-size JPEG shards, bf16,
`tokenformer_vit_base_pm` grown mid-run to `tokenformer_vit_base`'s token counts, next to
`vit_base_patch16_224` trained the same way; images/s per epoch from each run's summary.csv.

    python benchmarks/gpu_check.py [--steps 300] [--batch-size 128] [--images 6400] [--json out.json]
    python benchmarks/gpu_check.py --pattention-impl triton --no-baseline   # the fused path alone

The images are smooth random colour fields, 500x375 like an average ImageNet photo, in 100 classes
(content does not matter for throughput). Every run evaluates once per epoch, as training does.
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


def build_shards(root: Path, images: int, val_images: int, workers: int) -> Path:
    from tokenformer_vit.make_shards import ShardSpec, make_shards
    wds = root / 'wds'
    if (wds / '_info.json').is_file():
        return wds
    for split, n, seed in (('train', images, 0), ('validation', val_images, 1)):
        folder = root / 'images' / split
        chunk = -(-n // workers)
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_images, [(str(folder), s, min(chunk, n - s), seed * 1000 + s)
                                          for s in range(0, n, chunk)]))
        make_shards(str(folder), split, wds, ShardSpec(shard_size=256, workers=workers, progress=False))
    return wds


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
                top1=float(rows[-1]['eval_top1']), grew=[r['attn_tokens'] for r in rows])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--steps', type=int, default=300)
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--images', type=int, default=6400, help='training images generated')
    p.add_argument('--val-images', type=int, default=1000, help='validation images generated')
    p.add_argument('--workers', type=int, default=max(1, (os.cpu_count() or 2) - 2))
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
    wds = build_shards(work, args.images, args.val_images, args.workers)
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
    summary = dict(runs=results, ratio=results[0]['img_s'] / results[1]['img_s'] if args.baseline else None,
                   device=args.device, amp=args.amp, pattention_impl=args.pattention_impl,
                   batch_size=args.batch_size, workers=args.workers, images=args.images, grow=grow)
    try:
        import torch
        summary['gpu'] = torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'
    except Exception:  # noqa: BLE001
        pass
    for r in results:
        print(f'{r["model"]:<26} {r["img_s"]:8.0f} img/s (median after epoch 0), {r["steps"]} steps, '
              f'{r["wall_s"]:.0f} s, attn_tokens per epoch {r["grew"]}')
    if summary['ratio'] is not None:
        print(f'ratio {summary["ratio"]:.3f}')
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))


if __name__ == '__main__':
    main()
