"""ATen ops dispatched by one forward and backward of a block, ours against timm's ViT block.

Every op that reaches the dispatcher below autograd is counted (views and casts included), as a
TorchDispatchMode sees them, for one forward of a block on (batch × 197 × dim) tokens, then the
backward of the sum of its output, with fresh gradients (as after `zero_grad(set_to_none=True)`).
In eager mode on a GPU each such op is at least one kernel launch or one trip through the
dispatcher, so the count is what a small model pays in host time per block.

    python benchmarks/count_ops.py                   # tiny's width, fp32 and bf16 autocast
    python benchmarks/count_ops.py --dim 768 --heads 12 --attn-tokens 576 --ffn-tokens 2304 --ops
"""
import argparse
import collections
import json
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tokenformer_vit.tokenformer_vit import TokenformerBlock  # noqa: E402


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops dispatched while it is active, by name."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def block_ops(block: torch.nn.Module, dim: int, amp: bool, batch: int = 2, tokens: int = 197) -> collections.Counter:
    """The ops of one forward and backward of `block` (CPU), fresh gradients, under bf16 autocast or not."""
    torch.manual_seed(0)
    x = torch.randn(batch, tokens, dim, requires_grad=True)
    block.zero_grad(set_to_none=True)
    counter = OpCounter()
    with counter:
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=amp):
            y = block(x)
        y.float().sum().backward()
    return counter.ops


def blocks(dim: int, heads: int, attn_tokens: int, ffn_tokens: int, impl: str = 'torch'):
    """(ours, timm's ViT block of the same width and MLP ratio 4)."""
    from timm.models.vision_transformer import Block
    return (TokenformerBlock(dim, heads, attn_tokens, ffn_tokens, pattention_impl=impl),
            Block(dim, heads, mlp_ratio=4.0, qkv_bias=True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--dim', type=int, default=192)
    p.add_argument('--heads', type=int, default=3)
    p.add_argument('--attn-tokens', type=int, default=192)
    p.add_argument('--ffn-tokens', type=int, default=768)
    p.add_argument('--ops', action='store_true', help='also list the ops by name')
    p.add_argument('--json', default=None)
    args = p.parse_args()
    ours, vit = blocks(args.dim, args.heads, args.attn_tokens, args.ffn_tokens)
    print(f'torch {torch.__version__}; block of width {args.dim}, {args.heads} heads, '
          f'{args.attn_tokens}/{args.ffn_tokens} tokens; one forward and backward on the CPU')
    rows = []
    for amp in (False, True):
        a, b = block_ops(ours, args.dim, amp), block_ops(vit, args.dim, amp)
        row = dict(amp='bf16' if amp else 'fp32', ours=sum(a.values()), vit=sum(b.values()))
        row['ratio'] = row['ours'] / row['vit']
        rows.append(dict(row, ours_ops=dict(a), vit_ops=dict(b)))
        print(f'{row["amp"]:<5} ours {row["ours"]:>4}  ViT {row["vit"]:>4}  ratio {row["ratio"]:.2f}')
        if args.ops:
            for name in sorted(set(a) | set(b), key=lambda n: -(a[n] + b[n])):
                print(f'      {name:<58}{a[name]:>4}{b[name]:>5}')
    if args.json:
        Path(args.json).write_text(json.dumps(dict(torch=torch.__version__, dim=args.dim, heads=args.heads,
                                                   attn_tokens=args.attn_tokens, ffn_tokens=args.ffn_tokens,
                                                   rows=rows), indent=1))


if __name__ == '__main__':
    main()
