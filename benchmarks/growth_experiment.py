"""Growth against training from scratch on real data: the paper's Figure 1, for vision, at CPU scale.

One Tokenformer-ViT (width, depth and patch fixed) at a ladder of parameter-token counts, on the
config's data set: CIFAR-10 (growth_cifar10.yaml, 50,000 training / 10,000 test images, 32x32), or
Fashion-MNIST (`dataset: fashion-mnist`, 60,000 / 10,000, 28x28; the tests' quick study):
  scratch:           every size trained from scratch for its `scratch_epochs`;
  MODE+SCHEDULE:     the smallest trained `ladder_epochs[0]` epochs, grown to the next size, trained
                     `ladder_epochs[1]`, and so on: the job's `--grow` with `--grow-mode MODE`
                     (preserve: function-preserving; paper: the official code's random keys, τ = √n)
                     and `--grow-schedule SCHEDULE` (continue: one learning-rate schedule over the
                     ladder; restart, the job's default: warmup and cosine again at every growth).
Every run is the training job's own Run (config.study_config from `job:` in the config, timm's
AdamW, the job's schedule and growth plan, run.train_epochs and evaluate), fed from memory instead
of shards. Each run is repeated over the seeds. Test top-1 is measured after every
epoch (every few epochs where a run is longer than `max_evals` epochs) and right after every growth.
Runs seed themselves: `--jobs` of them train at once, each in its own process with `--threads` torch
threads (default one process per core, one thread each; a run's numbers depend on its thread count,
not on how many run beside it).

Training FLOPs: forward + backward per image of each size, counted by torch's FlopCounterMode on
one training step (matrix products and attention; 2 FLOPs per multiply-add; elementwise work is
not counted), times the images seen at that size; a grown run's count includes all its stages.
Training seconds likewise: each size's seconds per image, timed alone before the runs start, times
the images seen at that size (the runs' own clocks, kept as `seconds_in_run`, count whatever else
shared the cores).

    python benchmarks/growth_experiment.py [--config CONFIG] [--quick] [--seeds 0,1,2]
        [--strategies scratch,preserve+continue] [--jobs N] [--output benchmarks/results]
        # writes growth_vs_scratch_DATASET.json and .png (growth_vs_scratch_cifar10.* by default)
        # every finished run is also kept in OUTPUT/growth_runs/ (--cache): a rerun, or a study
        # stopped half-way and started again, reads those instead of training them again
    python benchmarks/growth_experiment.py --convergence [--seeds 0]
        # every size from scratch for each of `convergence_factors` times its scratch_epochs (half and
        # twice): writes growth_convergence_DATASET.json, how far each size's schedule is from convergence
"""
import argparse
import contextlib
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
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_data import DATASETS, TensorBatches, load_dataset, test_top1  # noqa: E402

from tokenformer_vit.atomic import atomic_file  # noqa: E402
from tokenformer_vit.config import study_config  # noqa: E402
from tokenformer_vit.growth import GROW_SCHEDULES, GROWTH_MODES  # noqa: E402
from tokenformer_vit.run import build_model, build_run, train_epoch, train_epochs  # noqa: E402

HERE = Path(__file__).resolve().parent
LADDERS = [f'{mode}+{schedule}' for mode in ('preserve', 'paper') for schedule in GROW_SCHEDULES]  # the 2x2
# a config may name its own `ladders` (any MODE+SCHEDULE of the job's --grow-mode and --grow-schedule)
# and its `dataset` (study_data.DATASETS; default cifar10)
QUICK = dict(scratch_epochs=[3, 2, 2], ladder_epochs=[1, 1, 1], train_images=1280, test_images=2000, seeds=[0, 1, 2],
             convergence_factors=[0.5, 1])


def size_kwargs(cfg, size) -> dict:
    return dict(cfg['job'].get('model_kwargs', {}), attn_tokens=size[0], ffn_tokens=size[1])


def train_flops_per_image(cfg, size) -> float:
    """Forward + backward FLOPs of one training image at this size (FlopCounterMode, 8 images)."""
    from torch.utils.flop_counter import FlopCounterMode
    model, _ = build_model(study_config(**dict(cfg['job'], model_kwargs=size_kwargs(cfg, size))), 10)
    x, y = torch.randn(8, *dataset(cfg)['shape']), torch.randint(0, 10, (8,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / 8


def train_seconds_per_image(cfg, size, batches: int = 10) -> float:
    """Seconds of one training image at this size on this machine, timed alone (before any run
    starts, with the caller's torch threads): `batches` steps of the job's Run on random images after
    as many untimed ones. A run's own clock counts whatever shared the cores with it; the seconds view
    multiplies these by the images that a run trained at each size instead."""
    config = run_args(cfg, 'scratch', 0, 1, size)
    gen = torch.Generator().manual_seed(0)
    shape = (batches * config.batch_size, *dataset(cfg)['shape'])
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
    run, tensor_batches = build_study_run(cfg, config, images, torch.randint(0, 10, (len(images),), generator=gen))
    train_epoch(run, tensor_batches)  # untimed: first steps allocate
    t0 = time.perf_counter()
    train_epoch(run, tensor_batches)
    return (time.perf_counter() - t0) / len(images)


def with_timed_seconds(runs: list, seconds_per_image: dict) -> list:
    """The runs with every point's and every run's seconds replaced by its training images at each size
    times that size's seconds per image (train_seconds_per_image); the clock's own reading stays as
    `seconds_in_run`."""
    def timed(images: dict) -> float:
        return sum(n * seconds_per_image[size] for size, n in images.items())
    out = []
    for r in runs:
        points = [dict(p, seconds=timed(p['images']), seconds_in_run=p['seconds']) for p in r['points']]
        out.append(dict(r, points=points, seconds=timed(r['images']), seconds_in_run=r['seconds']))
    return out


def run_args(cfg, strategy: str, seed: int, epochs: int, size=None):
    """The run's config from the job's flags for one run: a size from scratch, or the ladder grown as
    `strategy` says."""
    if strategy == 'scratch':
        return study_config(**dict(cfg['job'], model_kwargs=size_kwargs(cfg, size), epochs=epochs, seed=seed,
                               warmup_epochs=cfg['warmup_fraction'] * epochs))
    mode, schedule = strategy.split('+')
    sizes, stages = cfg['sizes'], cfg['ladder_epochs']
    starts = [sum(stages[:i]) for i in range(1, len(stages))]
    grow = ','.join(f'{e}:{a}:{f}' for e, (a, f) in zip(starts, sizes[1:]))
    return study_config(**dict(cfg['job'], model_kwargs=size_kwargs(cfg, sizes[0]), epochs=sum(stages), seed=seed,
                           warmup_epochs=cfg['warmup_fraction'] * stages[0], grow=grow, grow_mode=mode,
                           grow_schedule=schedule))


def build_study_run(cfg, config, images, labels):
    """The job's Run for this config, and its in-memory batches of `images` with the data set's
    augmentation and normalisation."""
    model, _ = build_model(config, 10)
    ds = dataset(cfg)
    batches = TensorBatches(images, labels, config.batch_size, seed=config.seed, **ds['augment'])
    run = build_run(config, model, 10, batches.batches_per_rank)
    run.mean, run.std = ds['mean'], ds['std']  # the data set's normalisation
    return run, batches


def run_one(cfg, data, sizes_flops, strategy: str, seed: int, epochs: int = 0, size=None) -> dict:
    """Train one run through the job's Run; test top-1 after the scheduled epochs and each growth."""
    train_x, train_y, test_x, test_y = data
    n = cfg['train_images']
    config = run_args(cfg, strategy, seed, epochs, size)
    run, batches = build_study_run(cfg, config, train_x[:n], train_y[:n])
    test = (test_x[:cfg['test_images']], test_y[:cfg['test_images']])
    log = dict(strategy=strategy, size=list(size or cfg['sizes'][-1]), seed=seed, epochs=config.epochs,
               flops=0.0, seconds=0.0, points=[], images={})
    if strategy != 'scratch':
        log['ladder_epochs'] = cfg['ladder_epochs']
    # after every epoch, or every few epochs for long runs (at most max_evals), and at the end;
    # evaluating draws no random numbers, so how often it happens does not change the training
    every = max(1, math.ceil(config.epochs / cfg.get('max_evals', math.inf)))

    def after_growth(record):
        log['points'].append(dict(flops=log['flops'], seconds=log['seconds'], top1=test_top1(run, *test),
                                  images=dict(log['images']),
                                  stage=f'grown to {run.model.attn_tokens}/{run.model.ffn_tokens}'))
    for result in train_epochs(run, batches, on_growth=after_growth):
        epoch = result['epoch']
        log['seconds'] += result['seconds']
        now = f'{run.model.attn_tokens}/{run.model.ffn_tokens}'
        log['flops'] += result['images'] * sizes_flops[(run.model.attn_tokens, run.model.ffn_tokens)]
        log['images'][now] = log['images'].get(now, 0) + result['images']  # images trained at each size
        if (epoch + 1) % every == 0 or epoch + 1 == config.epochs:
            log['points'].append(dict(flops=log['flops'], seconds=log['seconds'], top1=test_top1(run, *test),
                                      images=dict(log['images']), stage=now, epoch=epoch + 1))
    return log


def dataset(cfg) -> dict:
    return DATASETS[cfg.get('dataset', 'cifar10')]


def ladders(cfg) -> list:
    return list(cfg.get('ladders', LADDERS))


@functools.lru_cache(maxsize=2)
def _data(name: str):
    """The data set, loaded once per process."""
    return load_dataset(name)


def _cpu() -> str:
    """The CPU's model name: float results depend on the kernels it selects, wall times on its speed."""
    try:
        return next(line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo') if line.startswith('model name'))
    except (OSError, StopIteration):
        import platform
        return platform.processor() or 'unknown'


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _execute(task: tuple, cache=None) -> dict:
    """One run, in this process or a worker: (cfg, sizes_flops, strategy, seed, epochs, size). Every
    run seeds itself, so its numbers do not depend on which process runs it or when. With a cache
    folder the finished run is also written there, so that an interrupted study keeps it."""
    cfg, sizes_flops, strategy, seed, epochs, size = task
    log = run_one(cfg, _data(cfg.get('dataset', 'cifar10')), sizes_flops, strategy, seed, epochs, size)
    if cache is not None:
        with atomic_file(_cache_path(cache, task), 'w') as f:
            json.dump(dict(log, cpu=_cpu(), threads=torch.get_num_threads()), f, indent=1)
    return log


def _cache_path(cache: Path, task: tuple) -> Path:
    """Where a run's log is kept: named by the run, in a folder named by everything else that
    decides its numbers (the config but its seeds, and the torch threads per run)."""
    import hashlib
    cfg, _, strategy, seed, epochs, size = task
    setting = {k: v for k, v in cfg.items() if k not in ('seeds', 'convergence_factors', 'ladders')}
    key = json.dumps(dict(setting, threads=torch.get_num_threads()), sort_keys=True)
    folder = hashlib.sha256(key.encode()).hexdigest()[:12]
    size = size or cfg['sizes'][-1]
    epochs = epochs or sum(cfg['ladder_epochs'])
    return Path(cache) / folder / f'{strategy}-{size[0]}x{size[1]}-{epochs}ep-seed{seed}.json'


def _cost(task: tuple) -> float:
    """A rough relative running time, to start the longest runs first."""
    cfg, sizes_flops, strategy, seed, epochs, size = task
    top = max(sizes_flops.values())
    stages = [(size, epochs)] if strategy == 'scratch' else list(zip(cfg['sizes'], cfg['ladder_epochs']))
    return sum(e * (0.7 + 0.3 * sizes_flops[tuple(s)] / top) for s, e in stages)


def execute_all(tasks: list, jobs: int, threads: int, t0: float, cache=None) -> list:
    """Run every task, `jobs` at a time in worker processes of `threads` torch threads each (in this
    process when jobs is 1); the logs come back in the order of `tasks`. A task whose log the cache
    folder holds, for the same settings, is read from there instead of trained again."""
    def report(log):
        print(f'seed {log["seed"]} {log["strategy"]} {log["size"][0]}/{log["size"][1]}, {log["epochs"]} epochs: '
              f'{log["points"][-1]["top1"]:.2f}%  ({log["seconds"]:.0f} s, {time.time() - t0:.0f} s so far)',
              flush=True)
        return log
    logs = [None] * len(tasks)
    with _threads(threads):  # the cache key holds the runs' thread count
        for i, task in enumerate(tasks):
            path = _cache_path(cache, task) if cache is not None else None
            if path is not None and path.is_file():
                logs[i] = dict(json.loads(path.read_text()), cached=str(path.relative_to(cache)))
    todo = [i for i in range(len(tasks)) if logs[i] is None]
    if cache is not None:
        print(f'{len(tasks) - len(todo)} of {len(tasks)} runs read from {cache}', flush=True)
    jobs = min(jobs, len(todo))
    if jobs <= 1:
        for i in todo:
            with _threads(threads):
                logs[i] = report(_execute(tasks[i], cache))
        return logs
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    order = sorted(todo, key=lambda i: -_cost(tasks[i]))
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context('spawn'),
                             initializer=_init_worker, initargs=(threads,)) as pool:
        futures = {pool.submit(_execute, tasks[i], cache): i for i in order}
        for future in as_completed(futures):
            logs[futures[future]] = report(future.result())
    return logs


@contextlib.contextmanager
def _threads(n: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_convergence(cfg, sizes_flops, jobs, threads, t0, cache=None) -> dict:
    """Every size from scratch for each of `convergence_factors` times its scratch schedule, and each
    size's final top-1 per length in epochs (mean over seeds): how far the scratch schedules are from
    convergence."""
    lengths = {tuple(size): [round(f * e) for f in cfg['convergence_factors']]
               for size, e in zip(cfg['sizes'], cfg['scratch_epochs'])}
    tasks = [(cfg, sizes_flops, 'scratch', seed, epochs, tuple(size))
             for seed in cfg['seeds'] for size in cfg['sizes'] for epochs in lengths[tuple(size)]]
    runs = execute_all(tasks, jobs, threads, t0, cache)
    table = {}
    for size in cfg['sizes']:
        table[f'{size[0]}/{size[1]}'] = {
            str(epochs): statistics.mean(r['points'][-1]['top1'] for r in runs
                                         if r['size'] == list(size) and r['epochs'] == epochs)
            for epochs in lengths[tuple(size)]}
    return dict(runs=runs, final_top1=table)


def _mean_curve(curves: list) -> list:
    """Seeds' evaluation points averaged point by point (every seed evaluates at the same epochs)."""
    return [dict(flops=statistics.mean(c[i]['flops'] for c in curves),
                 seconds=statistics.mean(c[i]['seconds'] for c in curves),
                 top1=statistics.mean(c[i]['top1'] for c in curves), stage=curves[0][i]['stage'])
            for i in range(min(len(c) for c in curves))]


def _last_growth(curve: list) -> int:
    return max(i for i, p in enumerate(curve) if p['stage'].startswith('grown to'))


def summarize(cfg, runs) -> dict:
    """Mean and spread (sample std over seeds) of every strategy's final top-1, FLOPs and seconds,
    and for each ladder both views of growth against the largest model from scratch (its final
    top-1 less the larger of the two spreads is the bar):
    - whole ladder: the FLOPs and seconds at which the ladder, from its start, first reaches the bar,
      as fractions of the scratch run's;
    - reuse (the paper's view): given the trained smaller model, the FLOPs and seconds from the last
      growth until the ladder reaches the bar, as fractions of the scratch run's;
    and where the scratch run itself first does as well as the ladder's final top-1, as a fraction of
    its FLOPs (what the ladder's end is worth in scratch compute)."""
    out = {}
    largest = cfg['sizes'][-1]
    for key in sorted({(r['strategy'], tuple(r['size'])) for r in runs}):
        group = [r for r in runs if (r['strategy'], tuple(r['size'])) == key]
        finals = [r['points'][-1]['top1'] for r in group]
        out[f'{key[0]} {key[1][0]}/{key[1][1]}'] = dict(
            top1=statistics.mean(finals), spread=statistics.stdev(finals) if len(finals) > 1 else 0.0,
            flops=statistics.mean(r['flops'] for r in group), seconds=statistics.mean(r['seconds'] for r in group),
            seeds=len(finals))
    target = out[f'scratch {largest[0]}/{largest[1]}']
    scratch_curve = _mean_curve([r['points'] for r in runs
                                 if r['strategy'] == 'scratch' and r['size'] == list(largest)])
    for strategy in sorted({r['strategy'] for r in runs} - {'scratch'}):
        ladder = out[f'{strategy} {largest[0]}/{largest[1]}']
        bar = target['top1'] - max(target['spread'], ladder['spread'])
        curve = _mean_curve([r['points'] for r in runs if r['strategy'] == strategy])
        grown = curve[_last_growth(curve)]
        reached = next((p for p in curve if p['top1'] >= bar), None)
        reused = next((p for p in curve[_last_growth(curve):] if p['top1'] >= bar), None)
        # the other way round: where the scratch run first does as well as the ladder's end
        matched = next((p for p in scratch_curve if p['top1'] >= ladder['top1']), None)
        ladder.update(
            reaches_scratch_largest=reached is not None,
            flops_fraction_at_reach=reached['flops'] / target['flops'] if reached else None,
            seconds_fraction_at_reach=reached['seconds'] / target['seconds'] if reached else None,
            reuse_flops_fraction=(reused['flops'] - grown['flops']) / target['flops'] if reused else None,
            reuse_seconds_fraction=(reused['seconds'] - grown['seconds']) / target['seconds'] if reused else None,
            flops_fraction_total=ladder['flops'] / target['flops'],
            scratch_flops_fraction_at_ladder_top1=matched['flops'] / target['flops'] if matched else None,
            difference_vs_scratch_largest=ladder['top1'] - target['top1'],
            difference_is_within_spread=ladder['top1'] >= bar)
    return out


STYLES = {'preserve+continue': ('#d62728', '-'), 'preserve+restart': ('#d62728', '--'),
          'paper+continue': ('#ff9f40', '-'), 'paper+restart': ('#ff9f40', '--'),
          'ramp+continue': ('#2ca02c', '-'), 'ramp+restart': ('#2ca02c', '--')}


def _series(cfg, runs, reuse: bool):
    """(label, color, style, xs TFLOPs, ys, errors) per strategy and size; in the reuse view, the
    ladders from their last growth on and the largest size from scratch, both from zero."""
    groups = {}
    for r in runs:
        groups.setdefault((r['strategy'], tuple(r['size'])), []).append(r)
    blues = ['#9ecae1', '#4292c6', '#08306b']
    for (strategy, size), rs in sorted(groups.items()):
        if reuse and strategy == 'scratch' and list(size) != list(cfg['sizes'][-1]):
            continue
        curves = [r['points'] for r in rs]
        first = _last_growth(_mean_curve(curves)) if reuse and strategy != 'scratch' else 0
        base = statistics.mean(c[first]['flops'] for c in curves) if first else 0.0
        n = min(len(c) for c in curves)
        xs = [(statistics.mean(c[i]['flops'] for c in curves) - base) / 1e12 for i in range(first, n)]
        ys = [statistics.mean(c[i]['top1'] for c in curves) for i in range(first, n)]
        err = [statistics.stdev([c[i]['top1'] for c in curves]) if len(curves) > 1 else 0 for i in range(first, n)]
        if strategy == 'scratch':
            color, style = blues[[tuple(s) for s in cfg['sizes']].index(size) % 3], '-'
            label = f'from scratch, {size[0]}/{size[1]} tokens, {rs[0]["epochs"]} epochs'
        else:
            color, style = STYLES.get(strategy, ('grey', ':'))
            label = (f'grown ({strategy.replace("+", ", ")}), ' + ' → '.join(f'{a}/{b}' for a, b in cfg['sizes'])
                     + ', ' + '+'.join(f'{e:g}' for e in cfg['ladder_epochs']) + ' epochs')
        yield label, color, style, xs, ys, err


def plot(cfg, runs, path: Path) -> None:
    """Two views: every run against its training FLOPs from the start, and (reuse) the ladders
    from their last growth against the largest size from scratch."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    lows = [p['top1'] for r in runs for p in r['points']]
    for ax, reuse in zip(axes, (False, True)):
        for label, color, style, xs, ys, err in _series(cfg, runs, reuse):
            ax.errorbar(xs, ys, yerr=err, color=color, ls=style, marker='o', ms=3, lw=1.5, capsize=2, label=label)
        ax.set_xlabel('training TFLOPs since the last growth (from zero for scratch)' if reuse
                      else 'training TFLOPs (forward + backward), whole ladder')
        ax.set_title('reuse: the smaller model is already trained' if reuse else 'whole ladder', fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc='lower right')
    name = {'fashion-mnist': 'Fashion-MNIST', 'cifar10': 'CIFAR-10'}[cfg.get('dataset', 'cifar10')]
    axes[0].set_ylabel(f'{name} test top-1 (%)')
    axes[0].set_ylim(max(min(lows) - 1, sorted(lows)[len(lows) // 10] - 3), max(lows) + 1)
    fig.suptitle(f'Growth vs. scratch, Tokenformer-ViT d={cfg["job"]["model_kwargs"]["embed_dim"]}, depth '
                 f'{cfg["job"]["model_kwargs"]["depth"]} (mean ± sd, {len(cfg["seeds"])} seeds)', fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', default=str(HERE / 'growth_cifar10.yaml'))
    p.add_argument('--quick', action='store_true', help='a tiny version for the tests (a few minutes)')
    p.add_argument('--output', default=str(HERE / 'results'))
    p.add_argument('--seeds', default=None, help='comma-separated seeds, instead of the config\'s')
    p.add_argument('--convergence', action='store_true',
                   help='train every size from scratch for each of convergence_factors times its scratch_epochs '
                        'instead (seed 0 unless --seeds)')
    p.add_argument('--strategies', default=None,
                   help='comma-separated: scratch and the config\'s ladders (default: all of them)')
    p.add_argument('--jobs', type=int, default=None,
                   help='runs trained at once, each in its own process (default: one per CPU core, at most one '
                        'per run)')
    p.add_argument('--cache', default=None,
                   help='folder that keeps every finished run, so that an interrupted study resumes where it stopped '
                        '(default: OUTPUT/growth_runs; "none" to keep nothing)')
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
    for key, what in (('scratch_epochs', 'epochs per size'), ('ladder_epochs', 'epochs per ladder stage')):
        if len(cfg[key]) != len(cfg['sizes']):
            raise SystemExit(f'{key} has {len(cfg[key])} entries for {len(cfg["sizes"])} sizes: give {what}.')
    strategies = ['scratch'] + ladders(cfg)
    bad = [s for s in ladders(cfg) if s.count('+') != 1 or s.split('+')[0] not in GROWTH_MODES
           or s.split('+')[1] not in GROW_SCHEDULES]
    if bad or cfg.get('dataset', 'cifar10') not in DATASETS:
        raise SystemExit(f'{args.config}: ladders are MODE+SCHEDULE ({"|".join(GROWTH_MODES)} + '
                         f'{"|".join(GROW_SCHEDULES)}), not {bad}, and dataset one of {", ".join(DATASETS)}.')
    args.strategies = args.strategies.split(',') if args.strategies else strategies
    if set(args.strategies) - set(strategies) or 'scratch' not in args.strategies:
        raise SystemExit(f'--strategies {",".join(args.strategies)}: choose among {", ".join(strategies)}, with '
                         f'scratch (the runs the ladders are compared against).')
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    args.jobs = args.jobs if args.jobs is not None else cores
    args.cache = None if args.cache == 'none' else Path(args.cache or Path(args.output) / 'growth_runs')
    if args.jobs < 1 or args.threads < 1:
        raise SystemExit(f'--jobs {args.jobs} --threads {args.threads}: both must be at least 1.')
    return args, cfg


def main(argv=None) -> int:
    args, cfg = parse(argv)
    with _threads(args.threads):  # --threads is for the runs, not for whoever called main()
        return _main(args, cfg)


def _main(args, cfg) -> int:
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    data = cfg.get('dataset', 'cifar10').replace('-', '_')
    name = (('growth_convergence' if args.convergence else 'growth_vs_scratch') + f'_{data}'
            + ('_quick' if args.quick else ''))
    sizes_flops = {tuple(s): train_flops_per_image(cfg, s) for s in cfg['sizes']}
    print('training GFLOPs per image: ' + ', '.join(f'{a}/{b}: {f / 1e9:.4f}' for (a, b), f in sizes_flops.items()),
          flush=True)
    t0 = time.time()
    meta = dict(config=cfg, jobs=args.jobs, threads=args.threads, torch=torch.__version__, cpu=_cpu())
    if args.convergence:
        result = dict(run_convergence(cfg, sizes_flops, args.jobs, args.threads, t0, args.cache), **meta,
                      wall_seconds=time.time() - t0)
        (out / f'{name}.json').write_text(json.dumps(result, indent=1))
        print(f'\nfinal test top-1 % (mean over seeds {cfg["seeds"]}) at each schedule length')
        for size, epochs in zip(cfg['sizes'], cfg['scratch_epochs']):
            row = result['final_top1'][f'{size[0]}/{size[1]}']
            print(f'{size[0]}/{size[1]:<5} scratch_epochs {epochs}: '
                  + ', '.join(f'{e} epochs {top1:.2f}' for e, top1 in row.items()))
        print(f'wrote {out / name}.json ({time.time() - t0:.0f} s)')
        return 0
    tasks = []
    for seed in cfg['seeds']:
        tasks += [(cfg, sizes_flops, 'scratch', seed, e, tuple(s)) for s, e in zip(cfg['sizes'], cfg['scratch_epochs'])]
        tasks += [(cfg, sizes_flops, s, seed, 0, None) for s in args.strategies if s != 'scratch']
    with _threads(args.threads):  # timed alone, before any run starts: see train_seconds_per_image
        sizes_seconds = {f'{a}/{b}': train_seconds_per_image(cfg, (a, b)) for a, b in cfg['sizes']}
    print('training ms per image, timed alone: ' + ', '.join(f'{k}: {1e3 * v:.3f}' for k, v in sizes_seconds.items()),
          flush=True)
    runs = with_timed_seconds(execute_all(tasks, args.jobs, args.threads, t0, args.cache), sizes_seconds)
    summary = summarize(cfg, runs)
    result = dict(meta, train_flops_per_image={f'{a}/{b}': f for (a, b), f in sizes_flops.items()},
                  train_seconds_per_image=sizes_seconds, summary=summary, runs=runs, wall_seconds=time.time() - t0)
    (out / f'{name}.json').write_text(json.dumps(result, indent=1))
    plot(cfg, runs, out / f'{name}.png')
    print(f'\n{"run":<30}{"top-1 %":>10}{"± sd":>7}{"TFLOPs":>9}{"s":>7}')
    for key, s in summary.items():
        print(f'{key:<30}{s["top1"]:>10.2f}{s["spread"]:>7.2f}{s["flops"] / 1e12:>9.2f}{s["seconds"]:>7.0f}')
    largest = cfg['sizes'][-1]
    for strategy in sorted({r['strategy'] for r in runs} - {'scratch'}):
        s = summary[f'{strategy} {largest[0]}/{largest[1]}']
        pct = lambda x: f'{100 * x:.0f}%'  # noqa: E731
        reach = (f'reaches the largest scratch model\'s top-1 (within the spread) at '
                 f'{pct(s["flops_fraction_at_reach"])} of its FLOPs and {pct(s["seconds_fraction_at_reach"])} of '
                 f'its seconds' if s['reaches_scratch_largest']
                 else 'never reaches the largest scratch model\'s top-1 (within the spread)')
        reuse = (f'from the last growth, {pct(s["reuse_flops_fraction"])} of its FLOPs'
                 if s['reuse_flops_fraction'] is not None else 'not after the last growth either')
        worth = (f'; the scratch run is as good after {pct(s["scratch_flops_fraction_at_ladder_top1"])} of its FLOPs'
                 if s['scratch_flops_fraction_at_ladder_top1'] is not None else '')
        print(f'{strategy} ladder: {reach}; {reuse}; ends {s["difference_vs_scratch_largest"]:+.2f} points at '
              f'{pct(s["flops_fraction_total"])} of its FLOPs{worth}')
    print(f'wrote {out / name}.json and .png ({time.time() - t0:.0f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
