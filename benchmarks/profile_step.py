"""Where a training step's time goes: torch.profiler over a few steps, ours against timm's ViT.

For each model and mode it reports, per training step (forward, backward, AdamW):
- wall milliseconds (synchronised), and the milliseconds the host took to issue the step: where the
  two meet, the GPU waits on Python and dispatch (host-bound);
- device milliseconds: the GPU kernels' time summed, and its share of the wall time;
- kernels launched per step, and the top kernels by device time. On the CPU (a dry run) the
  "device" is the CPU itself: its figures are the ATen ops' self CPU time and their count.

Each (model, mode) runs in its own process, so that no compiled model shares dynamo's cache with another
(inductor's on-disk cache of kernels is shared: it only saves compile time).

    python benchmarks/profile_step.py --device cuda --pairs tiny base_pm --modes eager compiled \\
        --json benchmarks/results/PREFIX_profile.json --markdown benchmarks/results/PREFIX_profile.md
    python benchmarks/profile_step.py --device cpu --pairs tiny --img-size 32 --batch 2 --steps 2   # a dry run
"""
import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_model import PAIRS  # noqa: E402

TOP = 15


def build(args):
    import timm
    import tokenformer_vit  # noqa: F401
    ours, vit = PAIRS[args.pair]
    name = ours if args.which == 'ours' else vit
    kwargs = dict(img_size=args.img_size, num_classes=1000)
    if args.which == 'ours':
        kwargs['pattention_impl'] = args.impl
    model = timm.create_model(name, **kwargs).to(args.device)
    fn = model
    if args.mode == 'compiled':
        if args.compile_scope == 'regional':
            for block in model.blocks:
                block.compile(mode=args.inductor_mode)
        else:
            fn = torch.compile(model, mode=args.inductor_mode)
    return name, model, fn


def _timed(step, cuda: bool):
    """(wall seconds of one step, seconds until the host had issued it)."""
    t0 = time.perf_counter()
    step()
    issued = time.perf_counter() - t0
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0, issued


def profile_one(args) -> dict:
    """One model in one mode, in this process."""
    torch.manual_seed(0)
    cuda = args.device.startswith('cuda')
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    name, model, fn = build(args)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp = (lambda: torch.autocast('cuda', dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=args.device)
    y = torch.randint(0, 1000, (args.batch,), device=args.device)
    cuda_graphs = args.mode == 'compiled' and args.inductor_mode in ('reduce-overhead', 'max-autotune')

    def step():
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with amp():
            loss = torch.nn.functional.cross_entropy(fn(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    warmup_s = time.perf_counter() - t0
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        profiled = [_timed(step, cuda) for _ in range(args.steps)]
    # the same steps unprofiled, for the times: the profiler's own overhead inflates the host side
    plain = [_timed(step, cuda) for _ in range(args.steps)]
    events = prof.key_averages()
    if cuda:
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        time_of = lambda e: e.self_device_time_total  # noqa: E731
    else:
        kernels = [e for e in events if e.key.startswith('aten::')]
        time_of = lambda e: e.self_cpu_time_total  # noqa: E731
    device_us = sum(time_of(e) for e in kernels)
    top = sorted(kernels, key=time_of, reverse=True)[:TOP]
    row = dict(pair=args.pair, which=args.which, model=name, impl=args.impl if args.which == 'ours' else None,
               mode=args.mode, compile_scope=args.compile_scope if args.mode == 'compiled' else None,
               inductor_mode=args.inductor_mode if args.mode == 'compiled' else None,
               device=torch.cuda.get_device_name() if cuda else 'cpu', torch=torch.__version__, batch=args.batch,
               img_size=args.img_size, amp='bf16' if cuda else 'none', steps=args.steps, warmup_s=warmup_s,
               wall_ms=statistics.median(w for w, _ in plain) * 1e3, issue_ms=statistics.median(i for _,
                                                                                                i in plain) * 1e3,
               profiled_wall_ms=statistics.median(w for w, _ in profiled) * 1e3, device_ms=device_us / 1e3 / args.steps,
               launches=sum(e.count for e in kernels) / args.steps,
               top=[dict(name=e.key[:120], ms=time_of(e) / 1e3 / args.steps, calls=e.count / args.steps,
                         share=time_of(e) / max(device_us, 1e-9)) for e in top])
    row['device_share'] = row['device_ms'] / row['profiled_wall_ms']
    row['img_s'] = args.batch / (row['wall_ms'] / 1e3)
    return row


def markdown(rows) -> str:
    lines = ['| model | impl | mode | wall ms | issue ms | device ms | device/wall | kernels | img/s |',
             '|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        mode = r['mode'] if r['mode'] == 'eager' else f'{r["mode"]} ({r["compile_scope"]}, {r["inductor_mode"]})'
        lines.append(f'| {r["model"]} | {r["impl"] or "—"} | {mode} | {r["wall_ms"]:.1f} | {r["issue_ms"]:.1f} | '
                     f'{r["device_ms"]:.1f} | {r["device_share"]:.2f} | {r["launches"]:.0f} | {r["img_s"]:.0f} |')
    for r in rows:
        lines += ['', f'**{r["model"]}** {r["impl"] or ""} {r["mode"]}: top kernels by device time per step', '',
                  '| kernel | ms | calls | share |', '|---|---|---|---|']
        lines += [f'| `{t["name"][:90]}` | {t["ms"]:.2f} | {t["calls"]:.0f} | {t["share"]:.1%} |' for t in r['top']]
    return '\n'.join(lines) + '\n'


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--pairs', nargs='+', default=['tiny', 'base_pm'], choices=list(PAIRS))
    p.add_argument('--modes', nargs='+', default=['eager', 'compiled'], choices=['eager', 'compiled'])
    p.add_argument('--impls', nargs='+', default=['torch'], choices=['torch', 'triton'],
                   help="our Pattention paths to profile (each against the same ViT)")
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--batch', type=int, default=None, help='train batch (CUDA 128, CPU 2)')
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--warmup', type=int, default=3, help='steps before profiling (compilation happens here)')
    p.add_argument('--steps', type=int, default=5, help='profiled steps')
    p.add_argument('--compile-scope', choices=['full', 'regional'], default='regional',
                   help='compile the whole model, or each block (identical blocks share one compilation)')
    p.add_argument('--inductor-mode', default='default',
                   choices=['default', 'reduce-overhead', 'max-autotune-no-cudagraphs', 'max-autotune'])
    p.add_argument('--no-vit', action='store_true', help="skip timm's ViTs (e.g. a second run for another impl)")
    p.add_argument('--json', default=None)
    p.add_argument('--markdown', default=None)
    p.add_argument('--append', action='store_true', help='add the rows to those already in --json')
    p.add_argument('--one', nargs=4, metavar=('PAIR', 'WHICH', 'IMPL', 'MODE'), default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.batch = args.batch or (128 if args.device.startswith('cuda') else 2)
    if args.one:
        args.pair, args.which, args.impl, args.mode = args.one
        print(json.dumps(profile_one(args)))
        return
    runs = [] if args.no_vit else [(pair, 'vit', 'torch', mode) for pair in args.pairs for mode in args.modes]
    runs += [(pair, 'ours', impl, mode) for pair in args.pairs for impl in args.impls for mode in args.modes]
    runs.sort(key=lambda r: (args.pairs.index(r[0]), args.modes.index(r[3]), r[1] == 'ours'))
    rows = json.loads(Path(args.json).read_text()) if args.append and args.json and Path(args.json).is_file() else []
    argv = sys.argv[1:]
    for one in runs:
        res = subprocess.run([sys.executable, __file__, *argv, '--one', *one], capture_output=True, text=True)
        if res.returncode:
            print(f'{" ".join(one)}: failed\n{res.stderr[-3000:]}', flush=True)
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f'{r["model"]:<26}{r["impl"] or "":<6}{r["mode"]:<9} wall {r["wall_ms"]:8.1f} ms  issue '
              f'{r["issue_ms"]:8.1f} ms  device {r["device_ms"]:8.1f} ms ({r["device_share"]:.0%})  '
              f'{r["launches"]:6.0f} kernels  {r["img_s"]:8.0f} img/s  (warmup {r["warmup_s"]:.0f} s)', flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        if args.markdown:
            Path(args.markdown).write_text(markdown(rows))


if __name__ == '__main__':
    main()
