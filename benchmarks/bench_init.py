"""The initialisation of the parameter tokens, measured: activation scale at init and Fashion-MNIST
test top-1 after a short training, for a few choices of the value tokens' standard deviation.

Keys are always normal(0, 0.02), as in the official code. Values:
  - 0.02: the same as keys, and as timm's ViT linear weights (our default)
  - official: 2 / (depth · √d), the official language-model code's value init
  - unit: 1/√(E[GeLU(z)²] · n) ≈ 1.53/√n, so that a Pattention's output has unit variance

    python benchmarks/bench_init.py [--steps 200] [--seeds 0 1]
"""
import argparse
import math
import statistics

import torch
import timm

from tokenformer_vit import Pattention
from fashion_mnist_tensors import load_tensors, train_and_test

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
    parser.add_argument('--seeds', type=int, nargs='+', default=[0])
    args = parser.parse_args()
    data = load_tensors()
    print(f'tokenformer_vit_tiny depth {args.depth} on Fashion-MNIST, {args.steps} steps of 128, seeds {args.seeds}')
    print(f'{"value std":>10} {"residual std growth":>20} {"test top-1 %":>13}')
    for choice in args.choices:
        accs, growth = [], []
        for seed in args.seeds:
            model = build(choice, args.depth, seed)
            growth.append(residual_growth(model, data[0][:256]))
            accs.append(train_and_test(model, data, args.steps, seed=seed, log_every=0))
        spread = f' ± {statistics.stdev(accs):.2f}' if len(accs) > 1 else ''
        print(f'{choice:>10} {statistics.mean(growth):>20.2f} {statistics.mean(accs):>10.2f}{spread}', flush=True)


if __name__ == '__main__':
    main()
