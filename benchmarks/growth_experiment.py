"""Growth against training from scratch on real data: the paper's Figure 1, for vision, at CPU scale.

One Tokenformer-ViT (width, depth and patch fixed) at a ladder of parameter-token counts, on
Fashion-MNIST (60,000 training / 10,000 test images, 28x28):
  (a) scratch:  every size trained from scratch for `scratch_epochs`;
  (b) preserve: the smallest trained `ladder_epochs[0]` epochs, grown to the next size (function-
      preserving, optimizer state carried) and trained `ladder_epochs[1]`, and so on;
  (c) paper:    the same ladder, grown as the official code does (new keys random, τ recomputed).
Each run is repeated over the seeds. Test top-1 is measured after every epoch (and every stage).

Training FLOPs: forward + backward per image of each size, counted by torch's FlopCounterMode on
one training step (matrix products and attention; 2 FLOPs per multiply-add; elementwise work is
not counted), times the images seen at that size; a grown run's count includes all its stages.

    python benchmarks/growth_experiment.py [--config configs/growth_experiment.yaml] [--quick]
        [--output benchmarks/results]   # writes growth_vs_scratch.json and growth_vs_scratch.png
"""
import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import timm
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fashion_mnist_tensors import load_tensors  # noqa: E402

import tokenformer_vit  # noqa: E402,F401 - registers the models
from tokenformer_vit.growth import grow_model, grow_optimizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUICK = dict(sizes=[[8, 32], [16, 64], [32, 128]], embed_dim=64, depth=2, scratch_epochs=0.1,
             ladder_epochs=[0.04, 0.03, 0.03], seeds=[0, 1, 2], train_images=60000)


def build(cfg, attn: int, ffn: int) -> torch.nn.Module:
    return timm.create_model('tokenformer_vit_tiny', img_size=28, patch_size=cfg['patch_size'], in_chans=1,
                             num_classes=10, embed_dim=cfg['embed_dim'], depth=cfg['depth'],
                             num_heads=cfg['num_heads'], attn_tokens=attn, ffn_tokens=ffn)


def train_flops_per_image(cfg, attn: int, ffn: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    model = build(cfg, attn, ffn)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / 8


def evaluate(model, test_x, test_y) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(test_x), 1000):
            correct += (model(test_x[i:i + 1000]).argmax(-1) == test_y[i:i + 1000]).sum().item()
    model.train()
    return 100.0 * correct / len(test_x)


class Stage:
    """Train `model` for `epochs` epochs of the data with its own warmup + cosine schedule."""

    def __init__(self, cfg, data, seed: int):
        self.cfg, self.data = cfg, data
        self.gen = torch.Generator().manual_seed(seed)

    def run(self, model, opt, epochs: float, peak_lr: float, flops_per_image: float, log: dict, label: str) -> None:
        train_x, train_y, test_x, test_y = self.data
        n = min(len(train_x), self.cfg['train_images'])
        bs = self.cfg['batch_size']
        steps = max(1, round(epochs * n / bs))
        warm = max(1, round(steps * self.cfg['warmup_fraction']))
        per_epoch = max(1, round(n / bs))
        eval_at = {min(steps, per_epoch * k) for k in range(1, math.ceil(epochs) + 1)} | {steps}
        order = torch.randperm(n, generator=self.gen)
        t0 = time.perf_counter()
        for step in range(steps):
            lr = (peak_lr * (step + 1) / warm if step < warm else
                  self.cfg['min_lr'] + 0.5 * (peak_lr - self.cfg['min_lr']) * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm))))
            for g in opt.param_groups:
                g['lr'] = lr
            idx = order[(step * bs + torch.arange(bs)) % n]
            x, y = train_x[idx], train_y[idx]
            flip = torch.rand(len(x), generator=self.gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            log['flops'] += flops_per_image * bs
            if step + 1 in eval_at:
                log['seconds'] += time.perf_counter() - t0
                log['points'].append(dict(flops=log['flops'], seconds=log['seconds'],
                                          top1=evaluate(model, test_x, test_y), stage=label))
                t0 = time.perf_counter()


def make_optimizer(cfg, model):
    return torch.optim.AdamW(model.parameters(), lr=cfg['lr'], betas=(0.9, 0.95), weight_decay=cfg['weight_decay'])


def run_scratch(cfg, data, sizes_flops, size, seed) -> dict:
    torch.manual_seed(seed)
    model = build(cfg, *size)
    log = dict(strategy='scratch', size=size, seed=seed, flops=0.0, seconds=0.0, points=[])
    Stage(cfg, data, seed).run(model, make_optimizer(cfg, model), cfg['scratch_epochs'], cfg['lr'],
                               sizes_flops[tuple(size)], log, f'{size[0]}/{size[1]}')
    return log


def run_ladder(cfg, data, sizes_flops, mode, seed) -> dict:
    torch.manual_seed(seed)
    sizes = cfg['sizes']
    model = build(cfg, *sizes[0])
    opt = make_optimizer(cfg, model)
    stage = Stage(cfg, data, seed)
    log = dict(strategy=mode, size=sizes[-1], seed=seed, flops=0.0, seconds=0.0, points=[])
    for i, (size, epochs) in enumerate(zip(sizes, cfg['ladder_epochs'])):
        if i:
            pairs = grow_model(model, size[0], size[1], mode, torch.Generator().manual_seed(seed * 100 + i))
            grow_optimizer(opt, pairs)
            log['points'].append(dict(flops=log['flops'], seconds=log['seconds'],
                                      top1=evaluate(model, data[2], data[3]), stage=f'grown to {size[0]}/{size[1]}'))
        peak = cfg['lr'] if i == 0 else cfg['lr'] * cfg['grown_lr_factor']
        stage.run(model, opt, epochs, peak, sizes_flops[tuple(size)], log, f'{size[0]}/{size[1]}')
    return log


def summarize(cfg, runs) -> dict:
    """Mean and spread (sample std over seeds) of every strategy's final top-1 and FLOPs, and where
    the preserve ladder reaches the largest from-scratch model's final top-1."""
    out = {}
    largest = tuple(cfg['sizes'][-1])
    for key in sorted({(r['strategy'], tuple(r['size'])) for r in runs}):
        finals = [r['points'][-1]['top1'] for r in runs if (r['strategy'], tuple(r['size'])) == key]
        flops = [r['flops'] for r in runs if (r['strategy'], tuple(r['size'])) == key]
        secs = [r['seconds'] for r in runs if (r['strategy'], tuple(r['size'])) == key]
        out[f'{key[0]} {key[1][0]}/{key[1][1]}'] = dict(
            top1=statistics.mean(finals), spread=statistics.stdev(finals) if len(finals) > 1 else 0.0,
            flops=statistics.mean(flops), seconds=statistics.mean(secs), seeds=len(finals))
    target = out[f'scratch {largest[0]}/{largest[1]}']
    for mode in ('preserve', 'paper'):
        ladder = out.get(f'{mode} {largest[0]}/{largest[1]}')
        if ladder is None:
            continue
        spread = max(target['spread'], ladder['spread'])
        # the first evaluation (averaged over seeds, point by point) at which the ladder is within the spread
        curves = [r['points'] for r in runs if r['strategy'] == mode]
        reached = None
        for i in range(min(len(c) for c in curves)):
            top1 = statistics.mean(c[i]['top1'] for c in curves)
            if top1 >= target['top1'] - spread:
                reached = dict(flops=statistics.mean(c[i]['flops'] for c in curves), top1=top1)
                break
        ladder['reaches_scratch_largest'] = reached is not None
        ladder['flops_fraction_at_reach'] = reached['flops'] / target['flops'] if reached else None
        ladder['flops_fraction_total'] = ladder['flops'] / target['flops']
        ladder['difference_vs_scratch_largest'] = ladder['top1'] - target['top1']
        ladder['difference_is_within_spread'] = abs(ladder['top1'] - target['top1']) <= spread
    return out


def plot(cfg, runs, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colors = {'scratch': ['#9ecae1', '#4292c6', '#08306b'], 'preserve': ['#d62728'], 'paper': ['#ff9f40']}
    groups = {}
    for r in runs:
        groups.setdefault((r['strategy'], tuple(r['size'])), []).append(r)
    for (strategy, size), rs in sorted(groups.items()):
        n = min(len(r['points']) for r in rs)
        xs = [statistics.mean(r['points'][i]['flops'] for r in rs) / 1e15 for i in range(n)]
        ys = [statistics.mean(r['points'][i]['top1'] for r in rs) for i in range(n)]
        err = [statistics.stdev([r['points'][i]['top1'] for r in rs]) if len(rs) > 1 else 0 for i in range(n)]
        if strategy == 'scratch':
            color = colors['scratch'][[tuple(s) for s in cfg['sizes']].index(size) % 3]
            label = f'from scratch, {size[0]}/{size[1]} tokens'
        else:
            color = colors[strategy][0]
            label = f'grown ({strategy}), ' + ' → '.join(f'{a}/{b}' for a, b in cfg['sizes'])
        ax.errorbar(xs, ys, yerr=err, color=color, marker='o', ms=3, lw=1.5, capsize=2, label=label)
    ax.set_xlabel('training PFLOPs (forward + backward)')
    ax.set_ylabel('Fashion-MNIST test top-1 (%)')
    ax.set_title(f'Growth vs. scratch, Tokenformer-ViT d={cfg["embed_dim"]}, depth {cfg["depth"]} '
                 f'(mean ± sd, {len(cfg["seeds"])} seeds)', fontsize=10)
    lows = [p['top1'] for r in runs for p in r['points']]
    ax.set_ylim(max(min(lows) - 1, sorted(lows)[len(lows) // 10] - 3), max(lows) + 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc='lower right')
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', default=str(REPO / 'configs' / 'growth_experiment.yaml'))
    p.add_argument('--quick', action='store_true', help='a tiny version for the tests (< 5 min)')
    p.add_argument('--output', default=str(REPO / 'benchmarks' / 'results'))
    p.add_argument('--threads', type=int, default=None)
    args = p.parse_args(argv)
    cfg = yaml.safe_load(Path(args.config).read_text())
    if args.quick:
        cfg.update(QUICK)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    name = 'growth_vs_scratch_quick' if args.quick else 'growth_vs_scratch'
    data = load_tensors()
    sizes_flops = {tuple(s): train_flops_per_image(cfg, *s) for s in cfg['sizes']}
    print('training GFLOPs per image: ' + ', '.join(f'{a}/{b}: {f / 1e9:.4f}' for (a, b), f in sizes_flops.items()),
          flush=True)
    runs, t0 = [], time.time()
    for seed in cfg['seeds']:
        for size in cfg['sizes']:
            runs.append(run_scratch(cfg, data, sizes_flops, size, seed))
            print(f'seed {seed} scratch {size}: {runs[-1]["points"][-1]["top1"]:.2f}%  '
                  f'({runs[-1]["seconds"]:.0f} s, {time.time() - t0:.0f} s so far)', flush=True)
        for mode in ('preserve', 'paper'):
            runs.append(run_ladder(cfg, data, sizes_flops, mode, seed))
            print(f'seed {seed} {mode} ladder: {runs[-1]["points"][-1]["top1"]:.2f}%  '
                  f'({runs[-1]["seconds"]:.0f} s, {time.time() - t0:.0f} s so far)', flush=True)
    summary = summarize(cfg, runs)
    result = dict(config=cfg, train_flops_per_image={f'{a}/{b}': f for (a, b), f in sizes_flops.items()},
                  summary=summary, runs=runs, wall_seconds=time.time() - t0, threads=torch.get_num_threads())
    (out / f'{name}.json').write_text(json.dumps(result, indent=1))
    plot(cfg, runs, out / f'{name}.png')
    print(f'\n{"run":<22}{"top-1 %":>10}{"± sd":>7}{"PFLOPs":>9}{"s":>7}')
    for key, s in summary.items():
        print(f'{key:<22}{s["top1"]:>10.2f}{s["spread"]:>7.2f}{s["flops"] / 1e15:>9.3f}{s["seconds"]:>7.0f}')
    for mode in ('preserve', 'paper'):
        s = summary.get(f'{mode} {cfg["sizes"][-1][0]}/{cfg["sizes"][-1][1]}')
        if s:
            reach = (f'reaches the largest scratch model\'s top-1 (within the spread) at '
                     f'{100 * s["flops_fraction_at_reach"]:.0f}% of its FLOPs' if s['reaches_scratch_largest']
                     else 'does not reach the largest scratch model\'s top-1')
            print(f'{mode} ladder: {reach}; ends {s["difference_vs_scratch_largest"]:+.2f} points at '
                  f'{100 * s["flops_fraction_total"]:.0f}% of its FLOPs')
    print(f'wrote {out / name}.json and .png ({time.time() - t0:.0f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
