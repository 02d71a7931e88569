"""The job's evaluation against timm's own validate.py on real photographs, as a new user meets them:
the README's make_shards commands on a folder of ImageNet JPEGs (default: the 100 photographs of
../shared/data/imagenet-sample-100, used for both splits), one epoch of the README's ImageNet job on
them, then the job's --eval-only and the validate.py command that the job printed, on the same
checkpoint and shards. validate.py lives in timm's git repository, not in its wheel: pass a clone.

    python benchmarks/validate_imagenet_sample.py --timm-src TIMM_CLONE [--json out.json]
"""
import argparse
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(argv, **kw) -> str:
    t0 = time.time()
    res = subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=REPO, **kw)
    if res.returncode:
        raise SystemExit(f'{shlex.join(map(str, argv))} failed:\n{res.stdout[-3000:]}{res.stderr[-3000:]}')
    print(f'[{time.time() - t0:.0f} s] {shlex.join(map(str, argv))[:160]}', flush=True)
    return res.stdout + res.stderr


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--timm-src', required=True, help="a clone of timm's repository (holds validate.py)")
    p.add_argument('--images', default=str(REPO.parent / 'shared' / 'data' / 'imagenet-sample-100'))
    p.add_argument('--synsets', default=str(REPO.parent / 'shared' / 'data' / 'imagenet_synsets.txt'))
    p.add_argument('--config', default='configs/tokenformer_vit_base_pm.yaml')
    p.add_argument('--batch-size', type=int, default=10)
    p.add_argument('--json', default=None)
    args = p.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        wds, out = Path(tmp) / 'imagenet-wds', Path(tmp) / 'run'
        for split in ('train', 'validation'):  # the README's commands
            run([py, '-m', 'tokenformer_vit.make_shards', '--input', args.images, '--split', split, '--output', wds,
                 '--class-list', args.synsets, '--workers', 2])
        info = json.loads((wds / '_info.json').read_text())
        job = [py, 'train_imagenet.py', '--config', args.config, '--data-dir', wds, '--output', out,
               '--batch-size', args.batch_size, '--workers', 2, '--epochs', 1, '--no-progress']
        trained = run(job)
        command = trained.split("Validate with timm's validate.py:")[1].strip().splitlines()[0]
        evaluated = run(job + ['--eval-only'])
        m = re.search(r'model: top-1 ([\d.]+)%\s+top-5 ([\d.]+)%\s+loss ([\d.]+)\s+\((\d+) images\)', evaluated)
        argv = shlex.split(command)
        argv[argv.index('validate.py')] = str(Path(args.timm_src) / 'validate.py')
        argv[0] = py
        # one batch, so that its log line's running loss is the loss over every image
        validated = run(argv + ['--workers', 2, '--batch-size', 1000, '--log-freq', 1])
        loss = float(re.findall(r'Loss: +[\d.]+ \( *([\d.]+)\)', validated)[-1])
        v = json.loads(validated[validated.index('--result') + len('--result'):].strip().split('\n}')[0] + '\n}')
    result = dict(images=info['splits']['validation']['num_samples'], max_side=info['splits']['validation']['max_side'],
                  job_top1=float(m.group(1)), job_top5=float(m.group(2)), job_loss=float(m.group(3)),
                  job_images=int(m.group(4)), validate_top1=v['top1'], validate_top5=v['top5'], validate_loss=loss,
                  validate_crop_pct=v['crop_pct'], validate_interpolation=v['interpolation'], validate_command=command,
                  config=args.config)
    import timm
    import torch
    result.update(torch=torch.__version__, timm=timm.__version__)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    same = abs(result['job_top1'] - v['top1']) < 0.005 and abs(result['job_top5'] - v['top5']) < 0.005 \
        and abs(result['job_loss'] - loss) < 2e-4
    print('the same top-1, top-5 and loss' if same else 'DIFFERENT figures')
    return 0 if same else 1


if __name__ == '__main__':
    sys.exit(main())
