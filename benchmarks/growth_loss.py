"""The training loss around a growth step, on real data (docs/design.md, "Growth").

A tokenformer_vit_tiny (6 blocks, 28x28 Fashion-MNIST, 7x7 patches) is trained with half the
tokens (96 attention, 384 FFN) for a few epochs, then grown to 192/768 and trained 100 more steps
with the same batches, four ways:

  preserve + grown optimizer   zero new keys, τ kept; AdamW state carried by grow_optimizer (ours)
  preserve + fresh optimizer   the same model, a new AdamW
  paper + grown optimizer      the official code's growth (random new rows, τ = √n_new)
  no growth                    the small model, trained on (reference)

Every variant is the training job's own Run (config.study_config, timm's AdamW, the job's schedule,
growth.grow_training_state, engine.train_one_epoch), fed from memory. The loss is measured on a
fixed set of 2,048 training images in eval mode, so batch-to-batch noise does not hide or fake a
rise. AdamW uses β = (0.9, 0.999), the setting in which a shared step count makes new rows' first
updates oversized. Before growth the learning rate warms up to 1e-3 and decays (cosine) to 1e-4 at
the growth step; after it, it stays at 1e-4, so that no schedule change falls on the growth step.

Each seed is one run; the figures are the mean and spread over `--seeds`. A run's numbers are
exactly reproducible for the same --threads on the same CPU; another thread count or CPU sums
floats in another order, and the seeds' spread says how much that can move them.

    python benchmarks/growth_loss.py [--epochs 2] [--seeds 0 1 2] [--threads 1] [--jobs N] [--out benchmarks/results]
"""
import argparse
import copy
import itertools
import json
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from study_data import MEAN, STD, TensorBatches, load_dataset
from tokenformer_vit.config import study_config
from tokenformer_vit.engine import LRSchedule, build_optimizer, evaluate
from tokenformer_vit.growth import grow_training_state
from tokenformer_vit.run import build_model, build_run, train_epoch, train_epochs

SMALL, GROWN = (96, 384), (192, 768)
VARIANTS = {'no growth': (None, 'grown'), 'preserve + grown optimizer': ('preserve', 'grown'),
            'preserve + fresh optimizer': ('preserve', 'fresh'), 'paper + grown optimizer': ('paper', 'grown')}


def probe_loss(run, probe) -> float:
    return evaluate(run.model, probe, device=run.device, mean=run.mean, std=run.std)['loss']


def one_seed(args, data, probe, seed: int):
    """Train the small model, then each variant for --after steps: {variant: [(step, probe loss)]}."""
    config = study_config(model='tokenformer_vit_tiny', img_size=28, seed=seed, epochs=args.epochs,
                          batch_size=args.batch_size, lr=args.lr, min_lr=args.lr_at_growth, warmup_lr=1e-5,
                          warmup_epochs=0.1 * args.epochs, weight_decay=0.05, opt_betas=(0.9, 0.999), smoothing=0.0,
                          mixup=0.0, cutmix=0.0, reprob=0.0, ema_decay=0.0,
                          model_kwargs=dict(depth=6, patch_size=7, in_chans=1, attn_tokens=SMALL[0],
                                            ffn_tokens=SMALL[1]))
    model, _ = build_model(config, 10)
    batches = TensorBatches(data[0], data[1], args.batch_size, seed=seed)
    run = build_run(config, model, 10, batches.batches_per_rank)
    run.mean, run.std = MEAN, STD  # Fashion-MNIST's normalisation
    for _ in train_epochs(run, batches):  # the schedule ends at the growth step, at lr_at_growth
        pass
    curves = {}
    for name, (mode, opt_kind) in VARIANTS.items():
        r = copy.deepcopy(run)  # model, optimizer and schedule together, so that they stay linked
        if mode is not None:
            grow_training_state(r.model, *GROWN, mode, optimizer=r.optimizer if opt_kind == 'grown' else None,
                                step=r.step, seed=seed)
        if opt_kind == 'fresh':
            r.optimizer = build_optimizer(r.model, args.lr_at_growth, config.weight_decay, config.opt_betas)
            r.scheduler = LRSchedule(r.optimizer, total_steps=r.step + args.after, warmup_steps=0,
                                     warmup_lr=args.lr_at_growth, min_lr=args.lr_at_growth)  # constant
        batches.set_epoch(args.epochs)  # the epoch after growth: every variant trains on the same batches
        curve, after = [], iter(batches)
        for start in range(0, args.after, args.every):
            curve.append((start, probe_loss(r, probe)))
            train_epoch(r, itertools.islice(after, args.every))
        curves[name] = curve + [(args.after, probe_loss(r, probe))]
    return probe_loss(run, probe), curves


def _seed_in_worker(task):
    """One seed with --threads torch threads, in this process or a worker: its numbers do not depend
    on which process runs it."""
    args, seed = task
    torch.set_num_threads(args.threads)
    data = load_dataset('fashion-mnist')
    probe = TensorBatches(data[0][:2048], data[1][:2048], 512, training=False)
    return one_seed(args, data, probe, seed)


def summarize(before, runs):
    """Per variant, over seeds: loss at growth, largest rise above it and above no growth (in %), final."""
    out = {}
    for name in VARIANTS:
        rises, above, finals = [], [], []
        for curves in runs:
            c, ref = curves[name], curves['no growth']
            rises.append(100 * (max(v for _, v in c) / c[0][1] - 1))
            above.append(100 * max(v / r - 1 for (_, v), (_, r) in zip(c, ref)))
            finals.append(c[-1][1])
        out[name] = {k: dict(mean=statistics.mean(v), sd=statistics.stdev(v) if len(v) > 1 else 0.0, values=v)
                     for k, v in (('max_rise_pct', rises), ('max_above_no_growth_pct', above), ('final', finals))}
    out['loss_before_growth'] = dict(mean=statistics.mean(before), sd=statistics.stdev(before) if len(before) > 1
                                     else 0.0, values=before)
    return out


def plot(runs, before, args, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in VARIANTS:
        steps = [s for s, _ in runs[0][name]]
        ax.plot(steps, [statistics.mean(c[name][i][1] for c in runs) for i in range(len(steps))], label=name)
    ax.axhline(statistics.mean(before) * 1.02, color='grey', ls=':', lw=1, label='+2% of the loss before growth')
    ax.set_xlabel(f'steps after growth ({SMALL[0]}/{SMALL[1]} -> {GROWN[0]}/{GROWN[1]} tokens)')
    ax.set_ylabel('loss on 2,048 fixed training images')
    ax.set_title(f'Fashion-MNIST, tokenformer_vit_tiny (6 blocks): loss around growth, mean of {len(runs)} seeds',
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--epochs', type=int, default=2, help='training before growth')
    parser.add_argument('--after', type=int, default=100, help='steps after growth')
    parser.add_argument('--every', type=int, default=5, help='steps between loss probes after growth')
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--lr', type=float, default=1e-3, help='peak learning rate before growth')
    parser.add_argument('--lr-at-growth', type=float, default=1e-4, help='learning rate at and after growth')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--threads', type=int, default=1, help='torch threads per seed (the numbers depend on it)')
    parser.add_argument('--jobs', type=int, default=None, help='seeds trained at once (default: one per CPU core)')
    parser.add_argument('--out', default='benchmarks/results')
    args = parser.parse_args()
    t0 = time.perf_counter()
    jobs = min(len(args.seeds), args.jobs or len(os.sched_getaffinity(0)))
    if jobs > 1:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context('spawn')) as pool:
            results = list(pool.map(_seed_in_worker, [(args, seed) for seed in args.seeds]))
    else:
        results = [_seed_in_worker((args, seed)) for seed in args.seeds]
    before, runs = [r[0] for r in results], [r[1] for r in results]
    for seed, loss, curves in zip(args.seeds, before, runs):
        print(f'seed {seed}: probe loss before growth {loss:.4f}; ' + ', '.join(
            f'{name} max {max(v for _, v in c):.4f} final {c[-1][1]:.4f}' for name, c in curves.items()), flush=True)
    summary = summarize(before, runs)
    for name in VARIANTS:
        s = summary[name]
        print(f'{name:<28} max rise {s["max_rise_pct"]["mean"]:+.2f} ± {s["max_rise_pct"]["sd"]:.2f}% of its value '
              f'at growth, {s["max_above_no_growth_pct"]["mean"]:+.2f} ± {s["max_above_no_growth_pct"]["sd"]:.2f}% '
              f'above no growth, final {s["final"]["mean"]:.4f} ± {s["final"]["sd"]:.4f}')
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from growth_experiment import _cpu
    meta = dict(vars(args), model='tokenformer_vit_tiny depth 6, 28x28, patch 7', small=SMALL, grown=GROWN,
                betas=(0.9, 0.999), torch=torch.__version__, cpu=_cpu(), seconds=time.perf_counter() - t0)
    (out / 'growth_loss.json').write_text(json.dumps(dict(meta=meta, summary=summary, curves=runs), indent=1))
    plot(runs, before, args, out / 'growth_loss.png')
    print(f'wrote {out / "growth_loss.json"} and {out / "growth_loss.png"} ({time.perf_counter() - t0:.0f} s)')


if __name__ == '__main__':
    main()
