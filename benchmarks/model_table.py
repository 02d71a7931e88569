"""The README's model table: parameters and multiply-adds of every Tokenformer-ViT size and of the
timm ViTs it is compared with, at 224x224, batch 1.

GMACs count the matrix products (patch-embedding convolution, Pattention and attention matmuls,
head), from torch's FLOP counter divided by two; elementwise work (norms, GeLU) is not counted,
as in timm's own tables.

    python benchmarks/model_table.py [--markdown]
"""
import argparse

import torch
import timm
from torch.utils.flop_counter import FlopCounterMode

import tokenformer_vit  # noqa: F401

MODELS = [
    'tokenformer_vit_tiny', 'tokenformer_vit_small', 'tokenformer_vit_base', 'tokenformer_vit_base_pm',
    'tokenformer_vit_large', 'tokenformer_vit_large_pm',
    'vit_tiny_patch16_224', 'vit_small_patch16_224', 'vit_base_patch16_224', 'vit_large_patch16_224',
]


def count(name: str):
    model = timm.create_model(name, device='meta').eval()
    params = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(1, 3, 224, 224, device='meta'))
    return params, counter.get_total_flops() / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--markdown', action='store_true')
    args = parser.parse_args()
    rows = []
    for name in MODELS:
        params, macs = count(name)
        cfg = timm.create_model(name, device='meta')
        attn = getattr(cfg, 'attn_tokens', '—')
        ffn = getattr(cfg, 'ffn_tokens', '—')
        rows.append((name, cfg.embed_dim, len(cfg.blocks), attn, ffn, params / 1e6, macs / 1e9))
    if args.markdown:
        print('| model | dim | depth | attn_tokens | ffn_tokens | params (M) | GMACs |')
        print('|---|---|---|---|---|---|---|')
        for r in rows:
            print(f'| `{r[0]}` | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]:.2f} | {r[6]:.2f} |')
    else:
        print(f'{"model":<26}{"dim":>6}{"depth":>6}{"attn":>6}{"ffn":>6}{"params M":>10}{"GMACs":>8}')
        for r in rows:
            print(f'{r[0]:<26}{r[1]:>6}{r[2]:>6}{r[3]:>6}{r[4]:>6}{r[5]:>10.2f}{r[6]:>8.2f}')


if __name__ == '__main__':
    main()
