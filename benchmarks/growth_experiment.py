"""Growth against training from scratch on real data: the paper's Figure 1, for vision, at CPU scale.

One Tokenformer-ViT (width, depth and patch fixed) at a ladder of parameter-token counts, on
Fashion-MNIST (60,000 training / 10,000 test images, 28x28):
  (a) scratch:  every size trained from scratch for its `scratch_epochs` (one number, or one per size);
  (b) preserve: the smallest trained `ladder_epochs[0]` epochs, grown to the next size (function-
      preserving, optimizer state carried) and trained `ladder_epochs[1]`, and so on;
  (c) paper:    the same ladder, grown as the official code does (new keys random, τ recomputed).
Each run is repeated over the seeds. Test top-1 is measured after every epoch (every few epochs where a
stage is longer than `max_evals` epochs), at the end of every stage and right after every growth.
Runs are independent and seed themselves: `--jobs` of them train at once, each in its own process with
`--threads` torch threads (default: one process per core, one thread each; a run's numbers depend on
its thread count, not on how many run beside it).

Training FLOPs: forward + backward per image of each size, counted by torch's FlopCounterMode on
one training step (matrix products and attention; 2 FLOPs per multiply-add; elementwise work is
not counted), times the images seen at that size; a grown run's count includes all its stages.

    python benchmarks/growth_experiment.py [--config configs/growth_experiment.yaml] [--quick]
        [--seeds 0,1,2] [--jobs N] [--output benchmarks/results]   # writes growth_vs_scratch.json and .png
    python benchmarks/growth_experiment.py --convergence [--seeds 0]
        # every size from scratch for each of `convergence_factors` times its scratch_epochs (half and
        # twice): writes growth_convergence.json, how far each size's schedule is from convergence
    python benchmarks/growth_experiment.py --ladder-epochs 5,5,25 --strategies paper \
        --reuse benchmarks/results/growth_vs_scratch.json --name growth_long_ladder
        # one more ladder, plotted and summarised with an earlier result's runs
"""
import argparse
import functools
import json
import math
import os
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
QUICK = dict(sizes=[[16, 64], [32, 128], [64, 256]], embed_dim=64, depth=2, scratch_epochs=[0.1, 0.1, 0.05],
             ladder_epochs=[0.04, 0.03, 0.03], seeds=[0, 1, 2], train_images=60000, batch_size=128,
             convergence_factors=[0.5, 2])


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
        # after every epoch, or every few epochs for long schedules (at most max_evals), and at the end;
        # evaluating draws no random numbers, so how often it happens does not change the training
        every = max(1, math.ceil(math.ceil(epochs) / self.cfg.get('max_evals', math.inf)))
        eval_at = {min(steps, per_epoch * k) for k in range(every, math.ceil(epochs) + 1, every)} | {steps}
        # a fresh shuffle every epoch
        order = torch.cat([torch.randperm(n, generator=self.gen) for _ in range(math.ceil(steps * bs / n))])
        t0 = time.perf_counter()
        for step in range(steps):
            lr = (peak_lr * (step + 1) / warm if step < warm else
                  self.cfg['min_lr'] + 0.5 * (peak_lr - self.cfg['min_lr']) * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm))))
            for g in opt.param_groups:
                g['lr'] = lr
            idx = order[step * bs:(step + 1) * bs]
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


def scratch_epochs(cfg, size) -> float:
    """`scratch_epochs` is one number for every size, or a list with one per size."""
    epochs = cfg['scratch_epochs']
    if isinstance(epochs, (list, tuple)):
        return epochs[[list(s) for s in cfg['sizes']].index(list(size))]
    return epochs


def run_scratch(cfg, data, sizes_flops, size, seed, epochs: float) -> dict:
    torch.manual_seed(seed)
    model = build(cfg, *size)
    log = dict(strategy='scratch', size=size, seed=seed, epochs=epochs, flops=0.0, seconds=0.0, points=[])
    Stage(cfg, data, seed).run(model, make_optimizer(cfg, model), epochs, cfg['lr'],
                               sizes_flops[tuple(size)], log, f'{size[0]}/{size[1]}')
    return log


def run_ladder(cfg, data, sizes_flops, mode, seed, label=None) -> dict:
    torch.manual_seed(seed)
    sizes = cfg['sizes']
    model = build(cfg, *sizes[0])
    opt = make_optimizer(cfg, model)
    stage = Stage(cfg, data, seed)
    log = dict(strategy=label or mode, mode=mode, ladder_epochs=cfg['ladder_epochs'], size=sizes[-1], seed=seed,
               flops=0.0, seconds=0.0, points=[])
    for i, (size, epochs) in enumerate(zip(sizes, cfg['ladder_epochs'])):
        if i:
            pairs = grow_model(model, size[0], size[1], mode, torch.Generator().manual_seed(seed * 100 + i))
            grow_optimizer(opt, pairs)
            log['points'].append(dict(flops=log['flops'], seconds=log['seconds'],
                                      top1=evaluate(model, data[2], data[3]), stage=f'grown to {size[0]}/{size[1]}'))
        peak = cfg['lr'] if i == 0 else cfg['lr'] * cfg['grown_lr_factor']
        stage.run(model, opt, epochs, peak, sizes_flops[tuple(size)], log, f'{size[0]}/{size[1]}')
    return log


@functools.lru_cache(maxsize=1)
def _data():
    """The data set, loaded once per process."""
    return load_tensors()


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _execute(task: tuple) -> dict:
    """One run, in this process or a worker: ('scratch', cfg, sizes_flops, size, seed, epochs) or
    ('ladder', cfg, sizes_flops, mode, seed, label). Every run seeds itself, so its numbers do not
    depend on which process runs it or when."""
    kind, cfg, sizes_flops, a, seed, b = task
    if kind == 'scratch':
        return run_scratch(cfg, _data(), sizes_flops, a, seed, b)
    return run_ladder(cfg, _data(), sizes_flops, a, seed, b)


def _cost(task: tuple) -> float:
    """A rough relative running time, to start the longest runs first."""
    kind, cfg, sizes_flops, a, seed, b = task
    top = max(sizes_flops.values())
    stages = [(a, b)] if kind == 'scratch' else list(zip(cfg['sizes'], cfg['ladder_epochs']))
    return sum(e * (0.7 + 0.3 * sizes_flops[tuple(s)] / top) for s, e in stages)


def execute_all(tasks: list, jobs: int, threads: int, t0: float) -> list:
    """Run every task, `jobs` at a time in worker processes of `threads` torch threads each (in this
    process when jobs is 1); the logs come back in the order of `tasks`."""
    def report(log):
        print(f'seed {log["seed"]} {log["strategy"]} {log["size"][0]}/{log["size"][1]}'
              + (f' for {log["epochs"]:g} epochs' if log['strategy'] == 'scratch' else ' ladder')
              + f': {log["points"][-1]["top1"]:.2f}%  ({log["seconds"]:.0f} s, {time.time() - t0:.0f} s so far)',
              flush=True)
        return log
    jobs = min(jobs, len(tasks))
    if jobs <= 1:
        return [report(_execute(t)) for t in tasks]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    logs = [None] * len(tasks)
    order = sorted(range(len(tasks)), key=lambda i: -_cost(tasks[i]))
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context('spawn'),
                             initializer=_init_worker, initargs=(threads,)) as pool:
        futures = {pool.submit(_execute, tasks[i]): i for i in order}
        for future in as_completed(futures):
            logs[futures[future]] = report(future.result())
    return logs


def run_convergence(cfg, sizes_flops, jobs, threads, t0) -> dict:
    """Every size from scratch for each of `convergence_factors` times its scratch schedule, and each
    size's final top-1 per length in epochs (mean over seeds): how far the scratch schedules are from
    convergence."""
    lengths = {tuple(size): [f * scratch_epochs(cfg, size) for f in cfg['convergence_factors']]
               for size in cfg['sizes']}
    tasks = [('scratch', cfg, sizes_flops, size, seed, epochs)
             for seed in cfg['seeds'] for size in cfg['sizes'] for epochs in lengths[tuple(size)]]
    runs = execute_all(tasks, jobs, threads, t0)
    table = {}
    for size in cfg['sizes']:
        row = {}
        for epochs in lengths[tuple(size)]:
            finals = [r['points'][-1]['top1'] for r in runs if r['size'] == size and r['epochs'] == epochs]
            row[str(epochs)] = statistics.mean(finals)
        table[f'{size[0]}/{size[1]}'] = row
    return dict(runs=runs, final_top1=table)


def summarize(cfg, runs) -> dict:
    """Mean and spread (sample std over seeds) of every strategy's final top-1 and FLOPs, and where
    each ladder reaches the largest from-scratch model's final top-1."""
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
    for mode in sorted({r['strategy'] for r in runs} - {'scratch'}):
        ladder = out[f'{mode} {largest[0]}/{largest[1]}']
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
        xs = [statistics.mean(r['points'][i]['flops'] for r in rs) / 1e12 for i in range(n)]
        ys = [statistics.mean(r['points'][i]['top1'] for r in rs) for i in range(n)]
        err = [statistics.stdev([r['points'][i]['top1'] for r in rs]) if len(rs) > 1 else 0 for i in range(n)]
        if strategy == 'scratch':
            color = colors['scratch'][[tuple(s) for s in cfg['sizes']].index(size) % 3]
            label = f'from scratch, {size[0]}/{size[1]} tokens, {rs[0]["epochs"]:g} epochs'
        else:
            mode, epochs = rs[0]['mode'], rs[0]['ladder_epochs']
            color = colors[mode][0]
            label = (f'grown ({mode}), ' + ' → '.join(f'{a}/{b}' for a, b in cfg['sizes']) +
                     ', ' + '+'.join(f'{e:g}' for e in epochs) + ' epochs')
        style = '--' if strategy not in ('scratch', 'preserve', 'paper') else '-'
        ax.errorbar(xs, ys, yerr=err, color=color, ls=style, marker='o', ms=3, lw=1.5, capsize=2, label=label)
    ax.set_xlabel('training TFLOPs (forward + backward)')
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
    previous = torch.get_num_threads()
    try:
        return _main(argv)
    finally:  # --threads is for the runs, not for whoever called main()
        torch.set_num_threads(previous)


def _main(argv) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', default=str(REPO / 'configs' / 'growth_experiment.yaml'))
    p.add_argument('--quick', action='store_true', help='a tiny version for the tests (< 5 min)')
    p.add_argument('--output', default=str(REPO / 'benchmarks' / 'results'))
    p.add_argument('--seeds', default=None, help='comma-separated seeds, instead of the config\'s')
    p.add_argument('--convergence', action='store_true',
                   help='train every size from scratch for each of convergence_factors times its scratch_epochs '
                        'instead (seed 0 unless --seeds)')
    p.add_argument('--ladder-epochs', default=None,
                   help='comma-separated epochs per ladder stage, instead of the config\'s; the ladders are then '
                        'labelled with them ("paper 5+5+25")')
    p.add_argument('--strategies', default='scratch,preserve,paper', help='which of scratch, preserve, paper to run')
    p.add_argument('--reuse', default=None, metavar='JSON',
                   help='an earlier result of the same config whose runs join this one\'s (e.g. its scratch runs)')
    p.add_argument('--name', default=None, help='output file name, without .json/.png')
    p.add_argument('--jobs', type=int, default=None,
                   help='runs trained at once, each in its own process (default: one per CPU core, at most one per run)')
    p.add_argument('--threads', type=int, default=1,
                   help='torch threads per run (default 1: the numbers then do not depend on the machine\'s cores)')
    args = p.parse_args(argv)
    cfg = yaml.safe_load(Path(args.config).read_text())
    if args.quick:
        cfg.update(QUICK)
    if args.seeds:
        cfg['seeds'] = [int(s) for s in args.seeds.split(',')]
    elif args.convergence:
        cfg['seeds'] = cfg['seeds'][:1]
    label = None
    if args.ladder_epochs:
        cfg['ladder_epochs'] = [float(e) for e in args.ladder_epochs.split(',')]
        label = '+'.join(f'{e:g}' for e in cfg['ladder_epochs'])
    if isinstance(cfg['scratch_epochs'], (list, tuple)) and len(cfg['scratch_epochs']) != len(cfg['sizes']):
        raise SystemExit(f'scratch_epochs has {len(cfg["scratch_epochs"])} entries for {len(cfg["sizes"])} sizes: '
                         'give one number for every size, or one per size.')
    if len(cfg['ladder_epochs']) != len(cfg['sizes']):
        raise SystemExit(f'ladder_epochs has {len(cfg["ladder_epochs"])} stages for {len(cfg["sizes"])} sizes: '
                         'give one number of epochs per size.')
    strategies = args.strategies.split(',')
    if set(strategies) - {'scratch', 'preserve', 'paper'}:
        raise SystemExit(f'Unknown strategy in --strategies {args.strategies}: use scratch, preserve and/or paper.')
    reused = []
    if args.reuse:
        earlier = json.loads(Path(args.reuse).read_text())
        differs = [k for k in cfg if k not in ('ladder_epochs', 'seeds', 'convergence_factors')
                   and earlier['config'].get(k) != cfg[k]]
        if differs:
            raise SystemExit(f'--reuse {args.reuse} was run with other settings ({", ".join(differs)}): '
                             'reuse a result of the same config.')
        # runs of a strategy this invocation trains again are replaced, not counted twice
        rerun = {m if m == 'scratch' or not label else f'{m} {label}' for m in strategies}
        reused = [r for r in earlier['runs'] if r['seed'] in cfg['seeds'] and r['strategy'] not in rerun]
    if 'scratch' not in strategies and not any(r['strategy'] == 'scratch' for r in reused):
        raise SystemExit('Without scratch runs there is nothing to compare against: keep scratch in --strategies '
                         'or --reuse a result that has them.')
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    jobs = args.jobs if args.jobs is not None else cores
    if jobs < 1 or args.threads < 1:
        raise SystemExit(f'--jobs {args.jobs} --threads {args.threads}: both must be at least 1.')
    torch.set_num_threads(args.threads)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    name = args.name or ('growth_convergence' if args.convergence else 'growth_vs_scratch')
    name += '_quick' if args.quick else ''
    sizes_flops = {tuple(s): train_flops_per_image(cfg, *s) for s in cfg['sizes']}
    print('training GFLOPs per image: ' + ', '.join(f'{a}/{b}: {f / 1e9:.4f}' for (a, b), f in sizes_flops.items()),
          flush=True)
    t0 = time.time()
    if args.convergence:
        result = run_convergence(cfg, sizes_flops, jobs, args.threads, t0)
        result.update(config=cfg, wall_seconds=time.time() - t0, jobs=jobs, threads=args.threads)
        (out / f'{name}.json').write_text(json.dumps(result, indent=1))
        print(f'\nfinal test top-1 % (mean over seeds {cfg["seeds"]}) at each schedule length')
        for size in cfg['sizes']:
            row = result['final_top1'][f'{size[0]}/{size[1]}']
            print(f'{size[0]}/{size[1]:<5} scratch_epochs {scratch_epochs(cfg, size):g}: '
                  + ', '.join(f'{float(e):g} epochs {top1:.2f}' for e, top1 in row.items()))
        print(f'wrote {out / name}.json ({time.time() - t0:.0f} s)')
        return 0
    tasks = []
    for seed in cfg['seeds']:
        tasks += [('scratch', cfg, sizes_flops, size, seed, scratch_epochs(cfg, size))
                  for size in cfg['sizes'] if 'scratch' in strategies]
        tasks += [('ladder', cfg, sizes_flops, mode, seed, label and f'{mode} {label}')
                  for mode in ('preserve', 'paper') if mode in strategies]
    runs = execute_all(tasks, jobs, args.threads, t0)
    wall = time.time() - t0
    runs = reused + runs
    summary = summarize(cfg, runs)
    result = dict(config=cfg, train_flops_per_image={f'{a}/{b}': f for (a, b), f in sizes_flops.items()},
                  summary=summary, runs=runs, wall_seconds=wall, jobs=jobs, threads=args.threads,
                  reused=dict(path=args.reuse, runs=len(reused)) if reused else None)
    (out / f'{name}.json').write_text(json.dumps(result, indent=1))
    plot(cfg, runs, out / f'{name}.png')
    print(f'\n{"run":<22}{"top-1 %":>10}{"± sd":>7}{"TFLOPs":>9}{"s":>7}')
    for key, s in summary.items():
        print(f'{key:<22}{s["top1"]:>10.2f}{s["spread"]:>7.2f}{s["flops"] / 1e12:>9.2f}{s["seconds"]:>7.0f}')
    for mode in sorted({r['strategy'] for r in runs} - {'scratch'}):
        s = summary[f'{mode} {cfg["sizes"][-1][0]}/{cfg["sizes"][-1][1]}']
        reach = (f'reaches the largest scratch model\'s top-1 (within the spread) at '
                 f'{100 * s["flops_fraction_at_reach"]:.0f}% of its FLOPs' if s['reaches_scratch_largest']
                 else 'does not reach the largest scratch model\'s top-1')
        print(f'{mode} ladder: {reach}; ends {s["difference_vs_scratch_largest"]:+.2f} points at '
              f'{100 * s["flops_fraction_total"]:.0f}% of its FLOPs')
    print(f'wrote {out / name}.json and .png ({time.time() - t0:.0f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
