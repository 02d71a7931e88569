"""A stand-in for timm's validate.py, which lives in timm's git repository and not in its wheel: the
flags the job and the grow command print, parsed as validate.py parses them (an unknown flag is an
error), and the model, checkpoint, data config, data set and loader made through the timm functions
that validate.py calls, in its order. It prints `top-1 X top-5 Y loss L images N`.

Tests copy it to a folder as validate.py and run the printed command there; the real script is run
by benchmarks/validate_printed_commands.py (docs/guarantees.md).
"""
import argparse

import torch
from timm.data import create_dataset, create_loader, resolve_data_config
from timm.models import create_model, load_checkpoint
from timm.utils import ParseKwargs

parser = argparse.ArgumentParser()
parser.add_argument('--data-dir')
parser.add_argument('--dataset', default='')
parser.add_argument('--split', default='validation')
parser.add_argument('--model', required=True)
parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
parser.add_argument('--num-classes', type=int, default=None)
parser.add_argument('--in-chans', type=int, default=None)
parser.add_argument('--img-size', type=int, default=None)
parser.add_argument('--crop-pct', type=float, default=None)
parser.add_argument('--checkpoint', default='')
parser.add_argument('--use-ema', action='store_true')
parser.add_argument('--device', default='cuda')
parser.add_argument('--amp', action='store_true')
parser.add_argument('--amp-dtype', default='float16')
parser.add_argument('-b', '--batch-size', type=int, default=256)


def main():
    args = parser.parse_args()
    device = torch.device(args.device)
    model = create_model(args.model, pretrained=False, num_classes=args.num_classes, in_chans=args.in_chans or 3,
                         global_pool=None, scriptable=False, **args.model_kwargs)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint, args.use_ema)
    config = resolve_data_config(vars(args), model=model, use_test_size=True)
    model = model.to(device).eval()
    dataset = create_dataset(root=args.data_dir, name=args.dataset, split=args.split)
    loader = create_loader(dataset, input_size=config['input_size'], batch_size=args.batch_size, use_prefetcher=True,
                           interpolation=config['interpolation'], mean=config['mean'], std=config['std'],
                           num_workers=0, crop_pct=config['crop_pct'], crop_mode=config['crop_mode'], device=device)
    amp = dict(bfloat16=torch.bfloat16, float16=torch.float16)[args.amp_dtype] if args.amp else None
    hits1 = hits5 = n = loss = 0
    with torch.no_grad():
        for x, y in loader:
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = model(x).float()
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(y[:, None])
            hits1, hits5, n = hits1 + top[:, 0].sum().item(), hits5 + top.any(1).sum().item(), n + len(y)
            loss += torch.nn.functional.cross_entropy(logits, y, reduction='sum').item()
    print(f'top-1 {100 * hits1 / n:.3f} top-5 {100 * hits5 / n:.3f} loss {loss / n:.6f} images {n}')


if __name__ == '__main__':
    main()
