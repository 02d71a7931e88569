"""Pattention against its lower bound, the two bare matmuls X·Kᵀ and (·)·V of the same shapes.

Prints forward and forward+backward milliseconds of each implementation (`torch`, and on CUDA the
fused Triton kernels, `fused`) and their ratio to the bare matmuls, for each token count. Within a
token count the implementations are timed call by call in alternation and the medians are
reported, so that drift in the speed of a shared machine falls on all alike. On CUDA each call is
timed with CUDA events, over a few input sets in rotation so that the caches do not hold them.

    python benchmarks/bench_pattention.py [--tokens 768 3072] [--dim 768] [--batch 8] [--seq 197]
    python benchmarks/bench_pattention.py --device cuda --batch 64 --amp --json out.json
"""
import argparse
import contextlib
import json
import statistics
import time

import torch

from tokenformer_vit import Pattention


def bare_matmuls(x: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return (x @ key.t()) @ value


class Timer:
    """(milliseconds of one call, milliseconds the host spent issuing it): CUDA events on a GPU, the
    host clock around a sync elsewhere (where the two are the same). On a GPU, a call whose host
    time reaches its device time is bound by the host (Python, dispatch and launches), not the GPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith('cuda')

    def __call__(self, fn):
        t0 = time.perf_counter()
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            host = (time.perf_counter() - t0) * 1e3
            end.synchronize()
            return start.elapsed_time(end), host
        fn()
        ms = (time.perf_counter() - t0) * 1e3
        return ms, ms


def interleaved_ms(fns, iters: int, device: str, warmup: int = 5):
    """Median (milliseconds, host milliseconds) of each function, calling them in turn, one call at a time."""
    timer = Timer(device)
    times = [[] for _ in fns]
    for i in range(warmup + iters):
        for fn, t in zip(fns, times):
            ms = timer(fn)
            if i >= warmup:
                t.append(ms)
    return [tuple(statistics.median(x) for x in zip(*t)) for t in times]


def measure(n: int, dim: int, batch: int, seq: int, iters: int, device: str, amp: bool, impls):
    torch.manual_seed(0)
    layers = {impl: Pattention(dim, dim, n, impl=impl).to(device) for impl in impls}
    for layer in layers.values():
        layer.load_state_dict(layers[impls[0]].state_dict())
    key, value = layers[impls[0]].key_tokens, layers[impls[0]].value_tokens
    sets = 4 if device.startswith('cuda') else 1  # rotate inputs past the L2 cache
    xs = [torch.randn(batch, seq, dim, device=device, requires_grad=True) for _ in range(sets)]
    dys = [torch.randn(batch, seq, dim, device=device) for _ in range(sets)]
    ctx = (lambda: torch.autocast(device.split(':')[0], dtype=torch.bfloat16)) if amp else contextlib.nullcontext

    def rotating(make):
        state = {'i': 0}

        def run():
            i = state['i'] = (state['i'] + 1) % sets
            make(xs[i], dys[i])
        return run

    def fwd(f):
        def run(x, dy):
            with torch.no_grad(), ctx():
                f(x)
        return rotating(run)

    def fwd_bwd(f):
        def run(x, dy):
            with ctx():
                y = f(x)
            y.backward(dy)
        return rotating(run)

    fns = {'bare': lambda x: bare_matmuls(x, key, value)}
    fns.update({impl: layer for impl, layer in layers.items()})
    rows = []
    for name, wrap in (('fwd', fwd), ('fwd+bwd', fwd_bwd)):
        ms = interleaved_ms([wrap(f) for f in fns.values()], iters, device)
        row = dict(tokens=n, pass_=name, **{f'{k}_ms': v[0] for k, v in zip(fns, ms)},
                   **{f'{k}_host_ms': v[1] for k, v in zip(fns, ms)})
        for impl in impls:
            row[f'{impl}_ratio'] = row[f'{impl}_ms'] / row['bare_ms']
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--tokens', type=int, nargs='+', default=[768, 3072])
    parser.add_argument('--dim', type=int, default=768)
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--seq', type=int, default=197)
    parser.add_argument('--iters', type=int, default=60)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--amp', action='store_true', help='bf16 autocast (the GPU setting)')
    parser.add_argument('--impls', nargs='+', default=None, choices=['torch', 'triton'],
                        help='default: torch and fused on CUDA, torch elsewhere')
    parser.add_argument('--json', default=None, help='also write the rows to this file')
    args = parser.parse_args()
    impls = args.impls or (['torch', 'triton'] if args.device.startswith('cuda') else ['torch'])
    if args.device.startswith('cuda'):
        torch.backends.cuda.matmul.allow_tf32 = True

    dev = torch.cuda.get_device_name() if args.device.startswith('cuda') else f'cpu ({torch.get_num_threads()} threads)'
    print(f'{dev} amp={"bf16" if args.amp else "fp32"} x=({args.batch}, {args.seq}, {args.dim}) '
          f'torch={torch.__version__}')
    print(f'{"tokens":>6} {"pass":>8} {"bare ms":>8}' + ''.join(f' {i + " ms":>9} {"ratio":>6}' for i in impls))
    rows = []
    for n in args.tokens:
        for r in measure(n, args.dim, args.batch, args.seq, args.iters, args.device, args.amp, impls):
            rows.append(r)
            print(f'{r["tokens"]:>6} {r["pass_"]:>8} {r["bare_ms"]:>8.3f}'
                  + ''.join(f' {r[i + "_ms"]:>9.3f} {r[i + "_ratio"]:>6.3f}' for i in impls)
                  + ('   host ms: ' + ', '.join(f'{k} {r[k + "_host_ms"]:.3f}' for k in ['bare', *impls])
                     if args.device.startswith('cuda') else ''), flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(device=dev, amp='bf16' if args.amp else 'fp32', batch=args.batch, seq=args.seq,
                           dim=args.dim, torch=torch.__version__,
                           rows=[{('pass' if k == 'pass_' else k): v for k, v in r.items()} for r in rows]), f,
                           indent=1)


if __name__ == '__main__':
    main()
