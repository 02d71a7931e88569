"""Pattention against its lower bound, the two bare matmuls X·Kᵀ and (·)·V of the same shapes.

Prints forward and forward+backward milliseconds and their ratio, for each token count. The two
are timed call by call in alternation and the medians are reported, so that the drift in speed
of a shared machine falls on both alike.

    python benchmarks/bench_pattention.py [--tokens 768 3072] [--dim 768] [--batch 8] [--seq 197]
"""
import argparse
import contextlib
import statistics
import time

import torch

from tokenformer_vit import Pattention


def bare_matmuls(x: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return (x @ key.t()) @ value


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved_ms(fns, iters: int, warmup: int = 3):
    """Median milliseconds of each function, calling them in turn, one call at a time."""
    times = [[] for _ in fns]
    for i in range(warmup + iters):
        for fn, t in zip(fns, times):
            _sync()
            t0 = time.perf_counter()
            fn()
            _sync()
            if i >= warmup:
                t.append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(t) for t in times]


def measure(n: int, dim: int, batch: int, seq: int, iters: int, device: str, amp: bool):
    torch.manual_seed(0)
    layer = Pattention(dim, dim, n).to(device)
    key, value = layer.key_tokens, layer.value_tokens
    x = torch.randn(batch, seq, dim, device=device, requires_grad=True)
    dy = torch.randn(batch, seq, dim, device=device)
    ctx = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if amp else contextlib.nullcontext

    def fwd(f):
        def run():
            with torch.no_grad(), ctx():
                f()
        return run

    def fwd_bwd(f):
        def run():
            with ctx():
                y = f()
            y.backward(dy)
        return run

    cases = {
        'fwd': (fwd(lambda: bare_matmuls(x, key, value)), fwd(lambda: layer(x))),
        'fwd+bwd': (fwd_bwd(lambda: bare_matmuls(x, key, value)), fwd_bwd(lambda: layer(x))),
    }
    rows = []
    for name, (base_fn, ours_fn) in cases.items():
        b, o = interleaved_ms([base_fn, ours_fn], iters)
        rows.append((n, name, b, o, o / b))
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
    args = parser.parse_args()

    print(f'device={args.device} threads={torch.get_num_threads()} amp={"bf16" if args.amp else "fp32"} '
          f'x=({args.batch}, {args.seq}, {args.dim}) torch={torch.__version__}')
    print(f'{"tokens":>6} {"pass":>8} {"bare matmuls ms":>16} {"Pattention ms":>14} {"ratio":>6}')
    for n in args.tokens:
        for n_, name, b, o, r in measure(n, args.dim, args.batch, args.seq, args.iters,
                                          args.device, args.amp):
            print(f'{n_:>6} {name:>8} {b:>16.2f} {o:>14.2f} {r:>6.3f}')


if __name__ == '__main__':
    main()
