"""timm's own validate.py on the demo's checkpoints: the figure behind the README's claim that a
grown checkpoint evaluates in timm as it did in the job.

Runs, for `RUN/last.pth.tar` of the README's main job (python train_imagenet.py --config
configs/demo.yaml), the validate.py command that the job prints (through tokenformer_vit.timm_script,
which registers our models), plus the same checkpoint grown once more by the grow command, and
compares both with the job's own last evaluation in RUN/summary.csv. validate.py lives in timm's git
repository, not in its wheel: pass a clone.

    git clone https://github.com/huggingface/pytorch-image-models timm-src
    python benchmarks/validate_demo.py --timm-src timm-src [--run runs/demo] \\
        [--json benchmarks/results/demo_validate.json]
"""
import argparse
import csv
import json
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def validate(command: str, timm_src: Path) -> float:
    """Top-1 (%) that validate.py prints for `command` (the job's or grow's validate line)."""
    argv = shlex.split(command)
    argv[argv.index('validate.py')] = str(timm_src / 'validate.py')
    argv[0] = sys.executable
    if not torch.cuda.is_available():  # validate.py runs on cuda unless told
        argv += ['--device', 'cpu']
    out = subprocess.run(argv, capture_output=True, text=True, cwd=REPO)
    match = re.search(r'Acc@1 ([\d.]+)', out.stdout + out.stderr)
    if out.returncode or not match:
        raise SystemExit(f'validate.py failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}')
    return float(match.group(1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--timm-src', required=True, help="a clone of timm's repository (holds validate.py)")
    p.add_argument('--run', default=str(REPO / 'runs' / 'demo'), help='the demo run folder')
    p.add_argument('--data-dir', default=str(REPO / 'data' / 'fashion-mnist'))
    p.add_argument('--json', default=None, help='also write the figures to this file')
    args = p.parse_args()
    from tokenformer_vit.checkpoint import validate_command
    run, timm_src = Path(args.run), Path(args.timm_src)
    if not (timm_src / 'validate.py').is_file() or not (run / 'last.pth.tar').is_file():
        raise SystemExit(f'need {timm_src}/validate.py and {run}/last.pth.tar: clone timm, run the demo first.')
    rows = list(csv.DictReader((run / 'summary.csv').open()))
    job_top1 = float(rows[-1]['eval_top1'])
    ckpt = torch.load(run / 'last.pth.tar', map_location='cpu', weights_only=True)
    flags = f' --dataset wds/fashion_mnist --split validation --crop-pct {ckpt["args"]["crop_pct"]}'
    kwargs = dict(ckpt['args']['model_kwargs'])
    command = validate_command(ckpt['arch'], ckpt['state_dict'], run / 'last.pth.tar', args.data_dir, kwargs) + flags
    top1 = validate(command, timm_src)
    with tempfile.TemporaryDirectory() as tmp:
        grown = Path(tmp) / 'grown.pth.tar'
        subprocess.run([sys.executable, '-m', 'tokenformer_vit.grow_checkpoint', '--checkpoint',
                        str(run / 'last.pth.tar'),
                        '--attn-tokens', '128', '--ffn-tokens', '512', '--output', str(grown)], check=True,
                       capture_output=True, cwd=REPO)
        state = torch.load(grown, map_location='cpu', weights_only=True)['state_dict']
        grown_command = validate_command(ckpt['arch'], state, grown, args.data_dir, kwargs) + flags
        grown_top1 = validate(grown_command, timm_src)
    result = dict(job_top1=job_top1, validate_top1=top1, grown_validate_top1=grown_top1, command=command,
                  grown_to=[128, 512], torch=torch.__version__)
    print(f'job: {job_top1:.2f}%  validate.py: {top1:.2f}%  validate.py after growing to 128/512 tokens '
          f'(preserve): {grown_top1:.2f}%')
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f'wrote {args.json}')
    return 0 if abs(top1 - job_top1) < 0.01 and abs(grown_top1 - job_top1) < 0.01 else 1


if __name__ == '__main__':
    sys.exit(main())
