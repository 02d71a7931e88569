"""The training loss around a growth step, on real data (DESIGN §3, issue 3).

A tokenformer_vit_tiny (6 blocks, 28x28 Fashion-MNIST, 7x7 patches) is trained with half the
tokens (96 attention, 384 FFN) for a few epochs, then grown to 192/768 and trained 100 more steps
with the same batches, four ways:

  preserve + grown optimizer   zero new keys, τ kept; AdamW state carried by grow_optimizer (ours)
  preserve + fresh optimizer   the same model, a new AdamW
  paper + grown optimizer      the official code's growth (random new rows, τ = √n_new)
  no growth                    the small model, trained on (reference)

The loss is measured on a fixed set of 2,048 training images in eval mode, so batch-to-batch noise
does not hide or fake a rise. AdamW uses β = (0.9, 0.999), the setting in which a shared step count
makes new rows' first updates oversized. Before growth the learning rate warms up to 1e-3 and decays
(cosine) to 1e-4 at the growth step; after it, it stays at 1e-4, so that no schedule change falls on
the growth step. (At a constant 1e-3 the loss of the run without growth itself swings by ±10% from
one probe to the next, which would hide what growth does.)

    python benchmarks/growth_loss.py [--epochs 2] [--out benchmarks/results]
"""
import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import timm

from tokenformer_vit import grow_model, grow_optimizer
from fashion_mnist_tensors import load_tensors

SMALL, GROWN = (96, 384), (192, 768)


def batches(train_x, train_y, start_step: int, steps: int, batch_size: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train_x), generator=gen)
    for step in range(start_step, start_step + steps):
        idx = order[(step * batch_size + torch.arange(batch_size)) % len(order)]
        yield train_x[idx], train_y[idx]


def probe_loss(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        loss = sum(F.cross_entropy(model(x[i:i + 512]), y[i:i + 512], reduction='sum').item()
                   for i in range(0, len(x), 512))
    model.train()
    return loss / len(x)


def train(model, opt, data, start, steps, args, probe=None, every=5, lr_at=None):
    curve = []
    for i, (x, y) in enumerate(batches(data[0], data[1], start, steps, args.batch_size, args.seed)):
        if probe is not None and i % every == 0:
            curve.append((i, probe_loss(model, *probe)))
        for g in opt.param_groups:
            g['lr'] = lr_at(i) if lr_at else args.lr_at_growth
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if probe is not None:
        curve.append((steps, probe_loss(model, *probe)))
    return curve


def make_optimizer(model, lr):
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=0.05)


def rise_pct(curve, reference):
    """Largest rise of a curve above its value at growth, and above the no-growth run, in %."""
    start = curve[0][1]
    above_start = 100 * (max(v for _, v in curve) / start - 1)
    above_ref = 100 * max(v / r - 1 for (_, v), (_, r) in zip(curve, reference)) if reference else float('nan')
    return above_start, above_ref


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--epochs', type=float, default=2.0, help='training before growth')
    parser.add_argument('--after', type=int, default=100, help='steps after growth')
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--lr', type=float, default=1e-3, help='peak learning rate before growth')
    parser.add_argument('--lr-at-growth', type=float, default=1e-4, help='learning rate at and after growth')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', default='benchmarks/results')
    args = parser.parse_args()
    t0 = time.perf_counter()
    data = load_tensors()
    probe = (data[0][:2048], data[1][:2048])
    torch.manual_seed(args.seed)
    model = timm.create_model('tokenformer_vit_tiny', img_size=28, patch_size=7, in_chans=1, num_classes=10, depth=6,
                              attn_tokens=SMALL[0], ffn_tokens=SMALL[1])
    opt = make_optimizer(model, args.lr)
    pre_steps = int(args.epochs * len(data[0]) / args.batch_size)
    warm = max(1, pre_steps // 10)

    def lr_before(i):  # linear warmup, then cosine from lr down to lr_at_growth at the growth step
        if i < warm:
            return args.lr * (i + 1) / warm
        t = (i - warm) / max(1, pre_steps - warm)
        return args.lr_at_growth + 0.5 * (args.lr - args.lr_at_growth) * (1 + math.cos(math.pi * t))

    print(f'training {SMALL} tokens for {pre_steps} steps ({args.epochs} epochs)...', flush=True)
    train(model, opt, data, 0, pre_steps, args, lr_at=lr_before)
    at_growth = probe_loss(model, *probe)
    print(f'probe loss before growth: {at_growth:.4f} ({time.perf_counter() - t0:.0f} s)', flush=True)

    results = {}
    variants = {
        'no growth': (None, 'grown'),
        'preserve + grown optimizer': ('preserve', 'grown'),
        'preserve + fresh optimizer': ('preserve', 'fresh'),
        'paper + grown optimizer': ('paper', 'grown'),
    }
    for name, (mode, opt_kind) in variants.items():
        m, o = copy.deepcopy((model, opt))  # together, so that o still holds m's parameters
        if mode is not None:
            pairs = grow_model(m, *GROWN, mode=mode, generator=torch.Generator().manual_seed(args.seed))
            if opt_kind == 'grown':
                grow_optimizer(o, pairs)
            else:
                o = make_optimizer(m, args.lr_at_growth)
        curve = train(m, o, data, pre_steps, args.after, args, probe=probe)
        reference = results.get('no growth', {}).get('curve')
        above_start, above_ref = rise_pct(curve, reference)
        results[name] = dict(curve=curve, at_growth=curve[0][1], max_after=max(v for _, v in curve),
                             max_rise_pct=above_start, max_above_no_growth_pct=above_ref, final=curve[-1][1])
        print(f'{name:<28} loss at growth {curve[0][1]:.4f}  max over {args.after} steps '
              f'{results[name]["max_after"]:.4f} ({above_start:+.2f}% of its value at growth, '
              f'{above_ref:+.2f}% above no growth)  final {curve[-1][1]:.4f}', flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(model='tokenformer_vit_tiny depth 6, 28x28, patch 7', small=SMALL, grown=GROWN, pre_steps=pre_steps,
                epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lr_at_growth=args.lr_at_growth,
                betas=(0.9, 0.999),
                loss_before_growth=at_growth, seconds=time.perf_counter() - t0)
    (out / 'growth_loss.json').write_text(json.dumps(dict(meta=meta, results=results), indent=1))
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in results.items():
        ax.plot([s for s, _ in r['curve']], [v for _, v in r['curve']], label=name)
    ax.axhline(at_growth * 1.02, color='grey', ls=':', lw=1, label='+2% of the loss before growth')
    ax.set_xlabel(f'steps after growth ({SMALL[0]}/{SMALL[1]} -> {GROWN[0]}/{GROWN[1]} tokens)')
    ax.set_ylabel('loss on 2,048 fixed training images')
    ax.set_title('Fashion-MNIST, tokenformer_vit_tiny (6 blocks): loss around growth')
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / 'growth_loss.png', dpi=120)
    print(f'wrote {out / "growth_loss.json"} and {out / "growth_loss.png"} ({time.perf_counter() - t0:.0f} s)')


if __name__ == '__main__':
    main()
