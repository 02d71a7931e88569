"""Tokenformer-ViT against timm's ViT of the same width: images/s and memory, in one run.

For each pair it prints inference images/s (eval, no grad), train-step images/s (forward,
backward and an AdamW step), the activation memory saved for backward (bytes of the distinct
tensors autograd keeps, counted with saved-tensor hooks) and, on CUDA, the peak memory of a train
step. Both models of a pair are timed step by step in alternation and medians are reported, so
drift in the machine's speed falls on both alike. Eager, and with --compile also torch.compile
(`--compile-mode regional` compiles each block instead of the whole model: identical blocks share
one compilation, so it compiles in a fraction of the time, for both models of a pair alike).
`--impls torch triton` times the Tokenformer once per Pattention implementation, each against the
same ViT in the same interleaved loop.

    python benchmarks/bench_model.py                       # CPU fp32: base_pm vs ViT-B
    python benchmarks/bench_model.py --pairs all --compile  # every size, eager and compiled
    python benchmarks/bench_model.py --device cuda --amp bf16 --batch 256 --train-batch 128 --json out.json
    python benchmarks/bench_model.py --device cuda --pairs tiny base_pm --impls torch triton --compile
    python benchmarks/bench_model.py --device cuda --pairs tiny --compile --only-compiled \\
        --inductor-mode reduce-overhead
"""
import argparse
import contextlib
import json
import statistics
import time

import torch
import timm

import tokenformer_vit  # noqa: F401  (registers the models)

PAIRS = {
    'tiny': ('tokenformer_vit_tiny', 'vit_tiny_patch16_224'),
    'small': ('tokenformer_vit_small', 'vit_small_patch16_224'),
    'base_pm': ('tokenformer_vit_base_pm', 'vit_base_patch16_224'),
    'base': ('tokenformer_vit_base', 'vit_base_patch16_224'),
    'large_pm': ('tokenformer_vit_large_pm', 'vit_large_patch16_224'),
    'large': ('tokenformer_vit_large', 'vit_large_patch16_224'),
}


def _sync(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def saved_activation_bytes(model: torch.nn.Module, x: torch.Tensor, amp_ctx) -> int:
    """Bytes of the distinct tensors autograd saves for backward in one forward pass."""
    params = {p.data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t: torch.Tensor):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), amp_ctx():
        out = model(x)
    del out
    return sum(seen.values())


class Runner:
    """One model's inference and train steps, built once."""

    def __init__(self, name: str, args, compiled: bool, impl: str = None, model_kwargs: dict = None):
        self.name = name
        self.device = args.device
        kwargs = dict(model_kwargs or {}, **({'pattention_impl': impl} if impl else {}))
        self.model = timm.create_model(name, **kwargs).to(args.device)
        size = self.model.patch_embed.img_size  # 224 unless model_kwargs say
        classes = max(1, getattr(self.model, 'num_classes', 1000))
        self.amp_ctx = (lambda: torch.autocast(args.device.split(':')[0], dtype=torch.bfloat16)) \
            if args.amp == 'bf16' else contextlib.nullcontext
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.fn = self.model
        self.cuda_graphs = compiled and args.inductor_mode in ('reduce-overhead', 'max-autotune')
        if compiled and args.compile_mode == 'regional':
            for block in self.model.blocks:
                block.compile(mode=args.inductor_mode)
        elif compiled:
            self.fn = torch.compile(self.model, mode=args.inductor_mode)
        self.x_inf = torch.randn(args.batch, 3, *size, device=args.device)
        self.x_train = torch.randn(args.train_batch, 3, *size, device=args.device)
        self.y_train = torch.randint(0, classes, (args.train_batch,), device=args.device)

    def infer(self) -> None:
        self.model.eval()
        with torch.no_grad(), self.amp_ctx():
            self.fn(self.x_inf)

    def train_step(self) -> None:
        self.model.train()
        if self.cuda_graphs:  # each step replays the graphs anew (their outputs are overwritten)
            torch.compiler.cudagraph_mark_step_begin()
        with self.amp_ctx():
            loss = torch.nn.functional.cross_entropy(self.fn(self.x_train), self.y_train)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def peak_train_bytes(self) -> int:
        if not self.device.startswith('cuda'):
            return 0
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.train_step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()


def interleaved_seconds(fns, iters: int, warmup: int, device: str):
    times = [[] for _ in fns]
    for i in range(warmup + iters):
        for fn, t in zip(fns, times):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            if i >= warmup:
                t.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def run_pair(ours: str, base: str, args, compiled: bool) -> list:
    """One row per Pattention implementation of `ours`, each against `base` timed in the same loop."""
    runners = [Runner(base, args, compiled)] + [Runner(ours, args, compiled, impl) for impl in args.impls]
    inf = interleaved_seconds([r.infer for r in runners], args.iters, args.warmup, args.device)
    train = interleaved_seconds([r.train_step for r in runners], args.iters, args.warmup, args.device)
    saved = [saved_activation_bytes(r.model.train(), r.x_train, r.amp_ctx) for r in runners]
    peak = [r.peak_train_bytes() for r in runners]
    params = [sum(p.numel() for p in r.model.parameters()) for r in runners]
    rows = []
    for i, impl in enumerate(args.impls, start=1):
        row = dict(
            ours=ours, baseline=base, mode='compiled' if compiled else 'eager', impl=impl,
            compile_mode=args.compile_mode if compiled else None,
            inductor_mode=args.inductor_mode if compiled else None, params=params[i], baseline_params=params[0],
            infer_img_s=args.batch / inf[i], baseline_infer_img_s=args.batch / inf[0],
            train_img_s=args.train_batch / train[i], baseline_train_img_s=args.train_batch / train[0],
            saved_mib=saved[i] / 2 ** 20, baseline_saved_mib=saved[0] / 2 ** 20,
            peak_train_mib=peak[i] / 2 ** 20, baseline_peak_train_mib=peak[0] / 2 ** 20,
        )
        row['infer_ratio'] = row['infer_img_s'] / row['baseline_infer_img_s']
        row['train_ratio'] = row['train_img_s'] / row['baseline_train_img_s']
        row['saved_ratio'] = row['saved_mib'] / row['baseline_saved_mib']
        rows.append(row)
    del runners
    if args.device.startswith('cuda'):
        torch.cuda.empty_cache()
    return rows


def print_pair(pair_rows: list) -> None:
    """The baseline's line, then one line per implementation of ours with its ratios."""
    r = pair_rows[0]
    print(f'{r["baseline"]:<32}{r["mode"]:<9}{r["baseline_params"] / 1e6:>9.1f}'
          f'{r["baseline_infer_img_s"]:>12.1f}{"":>7}{r["baseline_train_img_s"]:>12.1f}{"":>7}'
          f'{r["baseline_saved_mib"]:>10.0f}{"":>7}{r["baseline_peak_train_mib"]:>10.0f}')
    for r in pair_rows:
        print(f'{r["ours"] + " " + r["impl"]:<32}{r["mode"]:<9}{r["params"] / 1e6:>9.1f}'
              f'{r["infer_img_s"]:>12.1f}{r["infer_ratio"]:>7.3f}{r["train_img_s"]:>12.1f}'
              f'{r["train_ratio"]:>7.3f}{r["saved_mib"]:>10.0f}{r["saved_ratio"]:>7.3f}'
              f'{r["peak_train_mib"]:>10.0f}', flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--pairs', nargs='+', default=['base_pm'], help=f'{", ".join(PAIRS)} or all')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--amp', choices=['none', 'bf16'], default=None,
                        help='bf16 autocast; default bf16 on CUDA, none on CPU')
    parser.add_argument('--batch', type=int, default=None, help='inference batch (CPU 16, CUDA 256)')
    parser.add_argument('--train-batch', type=int, default=None, help='train batch (CPU 8, CUDA 128)')
    parser.add_argument('--iters', type=int, default=15)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--compile', action='store_true', help='also measure torch.compile')
    parser.add_argument('--compile-mode', choices=['full', 'regional'], default='full',
                        help='compile the whole model, or each block (faster to compile)')
    parser.add_argument('--inductor-mode', default='default',
                        choices=['default', 'reduce-overhead', 'max-autotune-no-cudagraphs', 'max-autotune'],
                        help="torch.compile's mode: reduce-overhead replays CUDA graphs, max-autotune-no-cudagraphs "
                             "tunes inductor's GEMM templates and fuses elementwise work into them")
    parser.add_argument('--only-compiled', action='store_true', help='with --compile, skip the eager rows')
    parser.add_argument('--impls', nargs='+', default=['torch'], choices=['torch', 'triton'],
                        help="the Tokenformer's Pattention implementations to time")
    parser.add_argument('--json', default=None, help='write the rows to this file')
    args = parser.parse_args()
    cuda = args.device.startswith('cuda')
    args.amp = args.amp or ('bf16' if cuda else 'none')
    args.batch = args.batch or (256 if cuda else 16)
    args.train_batch = args.train_batch or (128 if cuda else 8)
    pairs = list(PAIRS) if args.pairs == ['all'] else args.pairs
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True

    dev = torch.cuda.get_device_name() if cuda else f'cpu ({torch.get_num_threads()} threads)'
    print(f'{dev}, amp={args.amp}, inference batch {args.batch}, train batch {args.train_batch}, '
          f'torch {torch.__version__}, timm {timm.__version__}')
    header = (f'{"model":<32}{"mode":<9}{"params M":>9}{"infer img/s":>12}{"ratio":>7}'
              f'{"train img/s":>12}{"ratio":>7}{"saved MiB":>10}{"ratio":>7}{"peak MiB":>10}')
    print(header)
    rows = []
    modes = [True] if args.compile and args.only_compiled else [False, True] if args.compile else [False]

    def write_json():  # after every pair, so that a run cut short keeps what it measured
        if args.json:
            with open(args.json, 'w') as f:
                json.dump(dict(device=dev, amp=args.amp, batch=args.batch, train_batch=args.train_batch,
                               compile_mode=args.compile_mode if args.compile else None,
                               inductor_mode=args.inductor_mode if args.compile else None, iters=args.iters,
                               torch=torch.__version__, timm=timm.__version__, rows=rows), f, indent=1)

    for key in pairs:
        ours, base = PAIRS[key]
        for compiled in modes:
            pair_rows = run_pair(ours, base, args, compiled)
            rows += pair_rows
            write_json()
            print_pair(pair_rows)

if __name__ == '__main__':
    main()
