"""The initialisation of the parameter tokens, measured: activation scale at init and Fashion-MNIST
test top-1 after a short training, for a few choices of the value tokens' standard deviation.

Keys are always normal(0, 0.02), as in the official code. Values:
  - 0.02: the same as keys, and as timm's ViT linear weights (our default)
  - official: 2 / (depth · √d), the official language-model code's value init
  - unit: 1/√(E[GeLU(z)²] · n) ≈ 1.53/√n, so that a Pattention's output has unit variance

Each run trains through the job's own Run (study_data.train_and_test) with one torch
thread, so a rerun gives the same figures.

    python benchmarks/bench_init.py [--steps 200] [--seeds 0 1 2] [--json benchmarks/results/bench_init.json]
"""
import argparse
import json
import math
import statistics
from pathlib import Path

import torch
import timm

from tokenformer_vit import Pattention
from study_data import MEAN, STD, load_dataset, train_and_test

GELU_SQ = 0.4252  # E[GeLU(z)²] for z ~ N(0, 1)


def value_std(choice: str, layer: Pattention, depth: int) -> float:
    if choice == 'official':
        return 2.0 / (depth * math.sqrt(layer.in_features))
    if choice == 'unit':
        return 1.0 / math.sqrt(GELU_SQ * layer.num_tokens)
    return float(choice)


def build(choice: str, depth: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model('tokenformer_vit_tiny', img_size=28, patch_size=7, in_chans=1, num_classes=10,
                              depth=depth)
    for m in model.modules():
        if isinstance(m, Pattention):
            torch.nn.init.normal_(m.value_tokens, std=value_std(choice, m, depth))
    return model


def residual_growth(model: torch.nn.Module, x: torch.Tensor) -> float:
    """std of the residual stream after the last block over its std after the embedding."""
    with torch.no_grad():
        h = model._pos_embed(model.patch_embed(x))
        s0 = h.std().item()
        h = model.blocks(h)
    return h.std().item() / s0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--choices', nargs='+', default=['0.02', 'official', 'unit'])
    parser.add_argument('--depth', type=int, default=6)
    parser.add_argument('--steps', type=int, default=200)
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--json', default=None, help='also write the figures to this file')
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset('fashion-mnist')
    rows = []
    print(f'tokenformer_vit_tiny depth {args.depth} on Fashion-MNIST, {args.steps} steps of 128, seeds {args.seeds}')
    print(f'{"value std":>10} {"residual std growth":>20} {"test top-1 %":>13}')
    for choice in args.choices:
        accs, growth = [], []
        for seed in args.seeds:
            model = build(choice, args.depth, seed)
            x = (data[0][:256].float() / 255 - MEAN[0]) / STD[0]
            growth.append(residual_growth(model, x))
            accs.append(train_and_test(model, data, args.steps, seed=seed))
        spread = f' ± {statistics.stdev(accs):.2f}' if len(accs) > 1 else ''
        print(f'{choice:>10} {statistics.mean(growth):>20.2f} {statistics.mean(accs):>10.2f}{spread}', flush=True)
        rows.append(dict(value_std=choice, residual_std_growth=statistics.mean(growth), top1=accs,
                         top1_mean=statistics.mean(accs), top1_sd=statistics.stdev(accs) if len(accs) > 1 else 0.0))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(vars(args), threads=1, torch=torch.__version__, rows=rows),
                                              indent=1))
        print(f'wrote {args.json}')


if __name__ == '__main__':
    main()
