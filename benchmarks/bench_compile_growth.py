"""What growth costs a compiled training run: compilations, their seconds, and the recompile limit.

A compiled Tokenformer-ViT is trained for a few steps and evaluated at each of 1 + GROWTHS sizes
(4 growths by default, as a long job might), under one of three ways of meeting a new size:

    reset    torch.compiler.reset() at each growth (what the job does): the new size compiles afresh
    limit    keep the cache, and raise dynamo's recompile limit above what the growths need
    dynamic  let dynamo trace the token dimension symbolically (parameters' shapes not static), so
             that one dynamic graph serves every later size
    none     keep the cache and the default limit: what a job without any of these would get

Inductor's caches are off unless --cache, so that every strategy pays for its own compilations.
For each it prints the graphs compiled per size and phase (train, eval), the seconds of the first
train and eval step at each size (compilation included), the median step after, and whether a step
ran uncompiled because the limit was hit.

    python benchmarks/bench_compile_growth.py                      # CPU, inductor, every strategy
    python benchmarks/bench_compile_growth.py --device cuda --amp bf16 --model tokenformer_vit_tiny --img-size 224 \\
        --patch-size 16 --depth 12 --batch 128 --json out.json
"""
import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch._functorch.config
import torch._inductor.config
import timm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tokenformer_vit  # noqa: E402,F401
from tokenformer_vit.growth import grow_training_state  # noqa: E402

STRATEGIES = ('reset', 'limit', 'dynamic', 'none')


class CountingBackend:
    """inductor (or `backend`), counting the graphs it compiles and the seconds they take."""

    def __init__(self, backend: str):
        self.backend, self.graphs = backend, 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        if self.backend == 'inductor':
            from torch._inductor.compile_fx import compile_fx
            return compile_fx(gm, example_inputs)
        return torch._dynamo.lookup_backend(self.backend)(gm, example_inputs)


def _sync(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def phase_seconds(phase: str, model, compiled, opt, amp, x, y, args) -> list:
    """Seconds of each of `args.steps` training steps (phase 'train') or evaluation steps ('eval')."""
    times = []
    for _ in range(args.steps):
        _sync(args.device)
        t0 = time.perf_counter()
        if phase == 'train':
            model.train()
            with amp():
                loss = torch.nn.functional.cross_entropy(compiled(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            model.eval()
            with torch.no_grad(), amp():
                compiled(x)
        _sync(args.device)
        times.append(time.perf_counter() - t0)
    return times


def run_strategy(strategy: str, args) -> dict:
    """Train and evaluate a compiled model at every size, meeting each growth the `strategy` way."""

    torch._dynamo.reset()
    if not args.cache:  # each strategy compiles from scratch: no graph compiled by an earlier one is reused
        torch._inductor.config.fx_graph_cache = False
        torch._functorch.config.enable_autograd_cache = False
    dyn = torch._dynamo.config
    saved = dict(recompile_limit=dyn.recompile_limit, force_parameter_static_shapes=dyn.force_parameter_static_shapes)
    if strategy == 'limit':
        dyn.recompile_limit = max(dyn.recompile_limit, 2 * (args.growths + 1) + 2)
    if strategy == 'dynamic':
        dyn.force_parameter_static_shapes = False
    torch.manual_seed(0)
    model = timm.create_model(args.model, img_size=args.img_size, patch_size=args.patch_size, depth=args.depth,
                              num_classes=10, attn_tokens=args.tokens[0], ffn_tokens=4 * args.tokens[0]).to(args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    backend = CountingBackend(args.backend)
    amp = (lambda: torch.autocast(args.device.split(':')[0], dtype=torch.bfloat16)) if args.amp == 'bf16' \
        else contextlib.nullcontext
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=args.device)
    y = torch.randint(0, 10, (args.batch,), device=args.device)
    rows = []
    try:
        for size_index, n in enumerate(args.tokens):
            if size_index:
                grow_training_state(model, n, 4 * n, 'paper', optimizer=opt, seed=size_index)
                if strategy == 'reset':
                    torch.compiler.reset()
            compiled = torch.compile(model, backend=backend)
            row = dict(attn_tokens=n, ffn_tokens=4 * n)
            for phase in ('train', 'eval'):
                before = backend.graphs
                times = phase_seconds(phase, model, compiled, opt, amp, x, y, args)
                row[f'{phase}_graphs'] = backend.graphs - before
                row[f'{phase}_first_s'] = times[0]
                row[f'{phase}_step_s'] = statistics.median(times[1:]) if len(times) > 1 else None
            # a size whose steps compiled nothing new either reused a graph (dynamic) or ran eagerly
            # (the limit was hit): the guard failures say which
            rows.append(row)
            print(f'{strategy:<8} size {n:>4}/{4 * n:<5} graphs train {row["train_graphs"]} eval {row["eval_graphs"]}  '
                  f'first step {row["train_first_s"]:7.2f} s  eval {row["eval_first_s"]:7.2f} s  '
                  f'then {row["train_step_s"] * 1e3:8.1f} ms / {row["eval_step_s"] * 1e3:7.1f} ms', flush=True)
    finally:
        dyn.recompile_limit = saved['recompile_limit']
        dyn.force_parameter_static_shapes = saved['force_parameter_static_shapes']
    hit = [r['attn_tokens'] for r in rows[1:] if r['train_graphs'] == 0 and strategy != 'dynamic']
    return dict(strategy=strategy, rows=rows, graphs=backend.graphs, sizes_uncompiled=hit,
                compile_seconds=sum(r['train_first_s'] + r['eval_first_s'] for r in rows))


def _drop_flag(argv, flag: str, values: int):
    """argv without `flag` and the `values` arguments after it."""
    if flag not in argv:
        return argv
    i = argv.index(flag)
    return argv[:i] + argv[i + 1 + values:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--strategies', nargs='+', default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--amp', choices=['none', 'bf16'], default=None, help='default bf16 on CUDA, none on CPU')
    p.add_argument('--backend', default='inductor', help='inductor, or a dynamo backend such as aot_eager')
    p.add_argument('--model', default='tokenformer_vit_tiny')
    p.add_argument('--img-size', type=int, default=32)
    p.add_argument('--patch-size', type=int, default=8)
    p.add_argument('--depth', type=int, default=2)
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--growths', type=int, default=4)
    p.add_argument('--base-tokens', type=int, default=32, help='attention tokens before the first growth')
    p.add_argument('--steps', type=int, default=3, help='train and eval steps at each size')
    p.add_argument('--cache', action='store_true',
                   help="keep inductor's caches, so that a strategy may reuse another's compiled graphs")
    p.add_argument('--json', default=None)
    args = p.parse_args()
    args.amp = args.amp or ('bf16' if args.device.startswith('cuda') else 'none')
    args.tokens = [args.base_tokens + 16 * i for i in range(args.growths + 1)]
    print(f'torch {torch.__version__}, {args.device}, amp {args.amp}, backend {args.backend}, {args.model} '
          f'depth {args.depth} at {args.img_size}px, batch {args.batch}, attention tokens {args.tokens}, '
          f'recompile limit {torch._dynamo.config.recompile_limit}')
    if len(args.strategies) == 1:
        results = [run_strategy(args.strategies[0], args)]
    else:  # each strategy in its own process, with inductor's on-disk code cache empty
        results = []
        for strategy in args.strategies:
            with tempfile.TemporaryDirectory() as tmp:
                argv = _drop_flag([a for a in sys.argv[1:] if a not in STRATEGIES], '--strategies', 0)
                cmd = [sys.executable, __file__, *_drop_flag(argv, '--json', 1), '--strategies', strategy,
                       '--json', f'{tmp}/r.json']
                subprocess.run(cmd, check=True, env={**os.environ, 'TORCHINDUCTOR_CACHE_DIR': f'{tmp}/inductor',
                                                    'TRITON_CACHE_DIR': f'{tmp}/triton'})
                results += json.loads(Path(f'{tmp}/r.json').read_text())['results']
    print(f'\n{"strategy":<9}{"graphs":>7}{"compile s":>11}  sizes run uncompiled')
    for r in results:
        print(f'{r["strategy"]:<9}{r["graphs"]:>7}{r["compile_seconds"]:>11.1f}  {r["sizes_uncompiled"] or "none"}')
    if args.json:
        Path(args.json).write_text(json.dumps(dict(torch=torch.__version__, device=args.device, amp=args.amp,
                                                   backend=args.backend, model=args.model, depth=args.depth,
                                                   img_size=args.img_size, batch=args.batch, tokens=args.tokens,
                                                   results=results), indent=1))


if __name__ == '__main__':
    main()
