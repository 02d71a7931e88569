"""Run the validate.py commands that the job and the grow command print with timm's real validate.py,
and compare their top-1 (and top-5) with the job's own evaluation of the same checkpoint.

    python benchmarks/validate_printed_commands.py --timm-src path/to/pytorch-image-models

Cases: a softmax model of depth 1 in a run folder whose path holds a space, cropped at 0.8 (before
issue 32 the printed command left out pattention_norm and depth); and a checkpoint grown by the grow
command in paper mode. Writes benchmarks/results/validate_printed_commands.json. The tests run the
same commands against tests/validate_stand_in.py, as validate.py is not in timm's wheel.
"""
import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TINY = ['--model', 'tokenformer_vit_tiny', '--img-size', '32', '--batch-size', '8', '--workers', '0', '--lr', '2e-3',
        '--warmup-epochs', '0.5', '--ema-decay', '0.9', '--cutmix', '0', '--no-rand-augment', '--reprob', '0',
        '--no-progress', '--device', 'cpu']


def images(root: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split, per_class in (('train', 24), ('validation', 12)):
        for c in range(4):
            folder = root / split / f'class{c}'
            folder.mkdir(parents=True)
            for i in range(per_class):
                a = np.zeros((36, 40, 3), np.uint8)
                a[..., c % 3] = 60 + 60 * (c // 3) + rng.integers(0, 90, (36, 40), dtype=np.uint8)
                Image.fromarray(a).save(folder / f'{i}.jpg')


def run(cmd, cwd=None) -> str:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f'{cmd} failed:\n{res.stdout}\n{res.stderr}')
    return res.stdout


def validate(command: str, timm_src: Path) -> dict:
    out = run(shlex.split(command.replace(' validate.py ', f' {shlex.quote(str(timm_src / "validate.py"))} ', 1)))
    result = json.loads(out.split('--result', 1)[1])
    return dict(top1=result['top1'], top5=result['top5'])


def job_eval(data: Path, out: Path, *flags) -> dict:
    text = run([sys.executable, str(REPO / 'train_imagenet.py'), *TINY, '--data-dir', str(data), '--output', str(out),
                '--eval-only', *flags])
    line = next(line for line in text.splitlines() if line.startswith('model: top-1'))
    words = line.split()
    return dict(top1=float(words[2].rstrip('%')), top5=float(words[4].rstrip('%')))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--timm-src', required=True, type=Path, help="a clone of timm's repository (validate.py)")
    parser.add_argument('--out', type=Path, default=REPO / 'benchmarks' / 'results' / 'validate_printed_commands.json')
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    try:
        images(work / 'img')
        data = work / 'wds'
        for split in ('train', 'validation'):
            run([sys.executable, '-m', 'tokenformer_vit.make_shards', '--input', str(work / 'img' / split), '--split',
                 split, '--output', str(data), '--shard-size', '16', '--name', 'bench'])
        cases = []
        softmax = ['--model-kwargs', 'depth=1', 'embed_dim=32', 'num_heads=2', 'attn_tokens=16', 'ffn_tokens=32',
                   'patch_size=8', 'pattention_norm=softmax']
        out = work / 'a run'
        text = run([sys.executable, str(REPO / 'train_imagenet.py'), *TINY, *softmax, '--crop-pct', '0.8',
                    '--lr', '5e-3', '--data-dir', str(data), '--output', str(out), '--epochs', '8'])
        command = text.strip().splitlines()[-1].strip()
        cases.append(dict(case='job: softmax, depth 1, crop 0.8, a path with a space', command=command,
                          job=job_eval(data, out, *softmax, '--crop-pct', '0.8', '--epochs', '8', '--lr', '5e-3'),
                          validate_py=validate(command, args.timm_src)))
        gelu = ['--model-kwargs', 'depth=2', 'embed_dim=32', 'num_heads=2', 'attn_tokens=16', 'ffn_tokens=32',
                'patch_size=8', 'pattention_norm=gelu_l2']
        run([sys.executable, str(REPO / 'train_imagenet.py'), *TINY, *gelu, '--data-dir', str(data), '--output',
             str(work / 'small'), '--epochs', '2'])
        grown = work / 'grown model.pth.tar'
        text = run([sys.executable, '-m', 'tokenformer_vit.grow_checkpoint', '--checkpoint',
                    str(work / 'small' / 'last.pth.tar'),
                    '--attn-tokens', '24', '--ffn-tokens', '48', '--mode', 'paper', '--output', str(grown)])
        command = next(line.strip() for line in text.splitlines() if 'validate.py' in line and '--checkpoint' in line)
        command = command.replace('--data-dir DATA', f'--data-dir {data} --dataset wds/bench --device cpu')
        big = [w.replace('attn_tokens=16', 'attn_tokens=24').replace('ffn_tokens=32', 'ffn_tokens=48') for w in gelu]
        cases.append(dict(case='grow command: gelu_l2, paper mode, 16/32 -> 24/48 tokens', command=command,
                          job=job_eval(data, work / 'eval', '--initial-checkpoint', str(grown), *big),
                          validate_py=validate(command, args.timm_src)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for c in cases:
        c['equal'] = c['job'] == c['validate_py']
        print(f"{c['case']}: job {c['job']}, validate.py {c['validate_py']}, equal {c['equal']}")
    args.out.write_text(json.dumps(dict(command=' '.join(sys.argv), cases=cases), indent=1) + '\n')


if __name__ == '__main__':
    main()
