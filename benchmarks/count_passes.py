"""Passes over the (m × n) score tensor in the code torch.compile generates for one Pattention.

A Pattention's training step needs its two matmuls' passes over the scores A = X·Kᵀ (m × n): GEMM 1
writes A, GEMM 2 reads Θ(A), and backward writes dH = dY·Vᵀ and reads dA or Θ(A) for dX, dK and dV:
6 passes for the bare matmuls (docs/gpu.md). Everything Θ adds (the row norm, the scale, GeLU and
their backward) is more passes, each costing on a GPU about as much as 180·n multiply-adds a row.
This script compiles one Pattention's forward and backward, takes inductor's generated code
(what TORCH_LOGS=output_code prints) and counts, kernel by kernel, the reads and writes of tensors
with m × n elements: GEMMs (cuBLAS calls, or Triton templates under max-autotune, whose prologue
and epilogue fusion folds elementwise work into them) and fused Triton or C++ kernels. In a Triton
kernel each `tl.load`/`tl.store` statement of a score-sized pointer counts once (a looped reduction
that reads its row twice counts twice); elsewhere each score-sized argument counts once. It also
counts the score-sized tensors the forward saves for backward.

    python benchmarks/count_passes.py --device cuda --mode max-autotune-no-cudagraphs --code-dir OUT
    python benchmarks/count_passes.py              # CPU: C++ kernels, a dry run of the parser
"""
import argparse
import json
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tokenformer_vit import Pattention  # noqa: E402

_KERNEL = re.compile(r"^(\w+) = async_compile\.(\w+)\(", re.M)
_ALLOC = re.compile(r"(\w+) = empty_strided_\w+\(\(([^)]*)\)")
_VIEW = re.compile(r"(\w+) = reinterpret_tensor\((\w+), \(([^)]*)\)")
_ASSERT = re.compile(r"assert_size_stride\((\w+), \(([^)]*)\)")
_ASSERT_GROUPED = re.compile(r"assert_size_stride_grouped\(\(([^)]*)\), \(((?:\([^)]*\),? ?)*)\)")
_REUSE = re.compile(r"^\s*(\w+) = (\w+); del \2\b", re.M)


def _numel(shape: str) -> int:
    dims = [d.strip() for d in shape.split(',') if d.strip()]
    n = 1
    for d in dims:
        if not d.isdigit():
            return -1  # symbolic: not one of ours
        n *= int(d)
    return n


def _split_args(text: str):
    """Top-level comma-separated arguments of a call."""
    out, depth, cur = [], 0, ''
    for ch in text:
        if ch in '([{':
            depth += 1
        elif ch in ')]}':
            depth -= 1
        if ch == ',' and depth == 0:
            out.append(cur.strip())
            cur = ''
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def _kernel_params(code: str):
    """{kernel name: [(param, reads, writes)]} of every kernel the module defines."""
    kernels = {}
    for match in _KERNEL.finditer(code):
        name, kind = match.groups()
        body = code[match.end():code.find("''')", match.end())]
        if kind == 'triton':
            sig = re.search(r"def \w+\((.*?)\):", body, re.S)
        else:
            sig = re.search(r"kernel\((.*?)\)", body, re.S)
        if not sig:
            continue
        params = [p.split(':')[0].split()[-1].strip('*&') for p in sig.group(1).split(',') if p.strip()]
        template = kind == 'triton' and 'template' in body[:2000].lower()
        rows = []
        for p in params:
            reads = p.startswith(('in_ptr', 'in_out_ptr', 'arg_'))
            writes = p.startswith(('out_ptr', 'in_out_ptr'))
            if kind == 'triton' and not template:
                # each load or store statement of the pointer is one pass over its tensor
                reads = len(re.findall(r"tl\.load\(" + p + r"\b", body)) if reads else 0
                writes = len(re.findall(r"tl\.store\(" + p + r"\b", body)) if writes else 0
            rows.append((p, int(reads), int(writes)))
        kernels[name] = rows
    return kernels


def count(code: str, numel: int):
    """[(kernel, buffer, reads, writes)] of the score-sized tensors in one generated module, and the
    score-sized tensors it returns (a forward's returns beyond its output are saved for backward)."""
    sizes = {}
    for name, shape in _ALLOC.findall(code):
        sizes[name] = _numel(shape)
    for name, _, shape in _VIEW.findall(code):
        sizes[name] = _numel(shape)
    for name, shape in _ASSERT.findall(code):
        sizes[name] = _numel(shape)
    for names, shapes in _ASSERT_GROUPED.findall(code):
        for name, shape in zip([n.strip() for n in names.split(',') if n.strip()], re.findall(r"\(([^)]*)\)", shapes)):
            sizes[name] = _numel(shape)
    for new, old in _REUSE.findall(code):
        sizes.setdefault(new, sizes.get(old, -1))

    def size_of(arg: str) -> int:
        arg = arg.split('=', 1)[1].strip() if re.match(r"^\w+=", arg) else arg
        view = re.match(r"reinterpret_tensor\((\w+), \(([^)]*)\)", arg)
        return _numel(view.group(2)) if view else sizes.get(arg, -1)

    kernels = _kernel_params(code)
    call = code[code.find('def call('):]
    rows = []
    for line in call.splitlines():
        line = line.strip()
        ext = re.match(r"extern_kernels\.(\w+)\((.*)\)$", line)
        if ext:
            for arg in _split_args(ext.group(2)):
                if size_of(arg) == numel:
                    out = arg.startswith('out=')
                    rows.append((f'extern {ext.group(1)}', arg[:40], 0 if out else 1, 1 if out else 0))
            continue
        k = re.match(r"(\w+?)(?:\.run)?\((.*)\)$", line)
        if k and k.group(1) in kernels:
            args = [a for a in _split_args(k.group(2)) if not re.match(r"^\w+=", a)]
            for (param, reads, writes), arg in zip(kernels[k.group(1)], args):
                if size_of(arg) == numel and (reads or writes):
                    rows.append((k.group(1), arg[:40], reads, writes))
    ret = re.search(r"return \((.*)\)", call)
    returned = [a for a in _split_args(ret.group(1)) if size_of(a) == numel] if ret else []
    return rows, returned


def generated_code(args):
    from torch._inductor.utils import run_and_get_code
    torch.manual_seed(0)
    cuda = args.device.startswith('cuda')
    layer = Pattention(args.dim, args.dim, args.tokens).to(args.device)
    x = torch.randn(args.batch, args.seq, args.dim, device=args.device, requires_grad=True)
    compiled = torch.compile(layer, mode=args.mode)

    def step():
        with torch.autocast(args.device.split(':')[0], dtype=torch.bfloat16, enabled=cuda):
            y = compiled(x)
        y.float().sum().backward()

    _, codes = run_and_get_code(step)
    return codes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--mode', default='default', choices=['default', 'max-autotune-no-cudagraphs', 'max-autotune'])
    p.add_argument('--batch', type=int, default=None, help='images (CUDA 64, CPU 2), of --seq tokens each')
    p.add_argument('--seq', type=int, default=197)
    p.add_argument('--dim', type=int, default=768)
    p.add_argument('--tokens', type=int, default=2304, help="n: base_pm's FFN")
    p.add_argument('--code-dir', default=None, help='also write the generated modules here')
    p.add_argument('--json', default=None)
    args = p.parse_args()
    args.batch = args.batch or (64 if args.device.startswith('cuda') else 2)
    m, n = args.batch * args.seq, args.tokens
    if len({m * n, m * args.dim, n * args.dim}) < 3:
        raise SystemExit('choose --batch so that m·n differs from m·d and n·d: the count goes by element count')
    codes = generated_code(args)
    print(f'torch {torch.__version__}, {args.device}, mode {args.mode}: one Pattention, m = {m}, d = {args.dim}, '
          f'n = {n}; {len(codes)} generated modules (forward, backward)')
    result = dict(torch=torch.__version__, device=args.device, mode=args.mode, m=m, d=args.dim, n=n, modules=[])
    total = 0
    for i, code in enumerate(codes):
        if args.code_dir:
            Path(args.code_dir).mkdir(parents=True, exist_ok=True)
            (Path(args.code_dir) / f'pattention_{args.mode}_{i}.py').write_text(code)
        rows, returned = count(code, m * n)
        passes = sum(r + w for _, _, r, w in rows)
        total += passes
        print(f'module {i}: {passes} passes over score-sized tensors; returns {len(returned)} of them')
        for kernel, buf, r, w in rows:
            print(f'    {kernel[:70]:<72}{buf:<28} read {r}  write {w}')
        result['modules'].append(dict(passes=passes, returned=len(returned), rows=rows))
    result['passes'] = total
    print(f'total: {total} passes over the m × n scores per training step (the bare matmuls: 6)')
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == '__main__':
    main()
