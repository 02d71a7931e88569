"""Fused Triton kernels for `l2_gelu` Pattention, as a torch custom op (eager and torch.compile).

    Y = GeLU(S ⊙ A) · V,   A = X · Kᵀ,   S = τ / √(‖A‖² + ε) per row

The two matmuls stay with cuBLAS. Everything elementwise on the (m × n) score tensor A is one row
kernel per direction, because on a GPU in bf16 each separate pass over A costs about as much as the
matmuls' own work (docs/gpu.md):

- forward: read A once; write H = GeLU(S·A) for the second matmul and S (m fp32) for backward;
- backward: read dH = dY·Vᵀ and A once; recompute Z = S·A, GeLU'(Z) and the row dot Σ z·dz in
  registers; write dA = S ⊙ (dZ − Z·(Z·dZ)/τ²) over dH, and H = GeLU(Z) for dV.

Saved for backward: X, K, V, τ, A (the only m × n tensor) and S, as on the torch path.

The kernels take bf16, fp16 or fp32 scores and work in fp32. A row of up to `MAX_BLOCK_N` scores is
held whole by one program; longer rows are walked in chunks (each chunk read twice, the second time
from cache). Under `TRITON_INTERPRET=1` the kernels run on CPU tensors, which is how the tests check
them without a GPU.

This module imports Triton, so `Pattention` imports it only when the fused path is asked for.
"""
from typing import Tuple

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from .triton_env import interpreting

__all__ = ['l2_gelu_pattention']

MAX_BLOCK_N = 8192


# A program holds BLOCK_M rows of BLOCK_N scores; TILE is the number of scores it aims for, so that
# short rows (small n) are packed several to a program. The interpreter cannot time configs (it has
# no device events) and runs a program as numpy calls, so it gets the first config alone.
_CONFIGS = [triton.Config({'TILE': tile}, num_warps=warps)
            for tile, warps in ((4096, 4), (2048, 4), (4096, 8), (8192, 8), (8192, 16))]
_CONFIGS = _CONFIGS[:1] if interpreting() else _CONFIGS


def _rows_per_program(args) -> int:
    return max(1, args['TILE'] // args['BLOCK_N'])


@triton.jit
def _gelu_and_grad(z):
    # exact (erf) GeLU, as F.gelu; the constants are 1/√2 and 1/√(2π)
    cdf = 0.5 * (1.0 + tl.erf(z * 0.7071067811865476))
    pdf = tl.exp(-0.5 * z * z) * 0.3989422804014327
    return z * cdf, cdf + z * pdf


@triton.jit
def _program_rows(M, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's row indices (int64, for tensors past 2³¹ elements), which are in range, and a
    block of column offsets."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    return rows.to(tl.int64), rows < M, tl.arange(0, BLOCK_N)


@triton.jit
def _load_tile(ptr, rows, row_ok, cols, N, stride):
    """The (rows × cols) tile of a row-major tensor in fp32, zero outside it, and its mask."""
    mask = row_ok[:, None] & (cols[None, :] < N)
    return tl.load(ptr + rows[:, None] * stride + cols[None, :], mask=mask, other=0.).to(tl.float32), mask


@triton.jit
def _store_tile(ptr, rows, cols, stride, value, mask):
    tl.store(ptr + rows[:, None] * stride + cols[None, :], value.to(ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=_CONFIGS, key=['N', 'BLOCK_N'])
@triton.heuristics({'BLOCK_M': _rows_per_program})
@triton.jit
def _l2_gelu_fwd_kernel(A, H, S, TAU, M, N, stride_a, stride_h, eps,
                        BLOCK_N: tl.constexpr, ONE_TILE: tl.constexpr, TILE: tl.constexpr,
                        BLOCK_M: tl.constexpr):
    """H = GeLU(S·A), S = τ/√(‖A‖² + ε), for BLOCK_M rows of A."""
    rows, row_ok, cols = _program_rows(M, BLOCK_M, BLOCK_N)
    tau = tl.load(TAU).to(tl.float32)
    if ONE_TILE:  # the whole row in registers: A is read once
        a, mask = _load_tile(A, rows, row_ok, cols, N, stride_a)
        s = tau / tl.sqrt(tl.sum(a * a, axis=1) + eps)
        h, _ = _gelu_and_grad(a * s[:, None])
        _store_tile(H, rows, cols, stride_h, h, mask)
    else:
        sq = tl.zeros([BLOCK_M], dtype=tl.float32)
        for start in range(0, N, BLOCK_N):
            a, _ = _load_tile(A, rows, row_ok, start + cols, N, stride_a)
            sq += tl.sum(a * a, axis=1)
        s = tau / tl.sqrt(sq + eps)
        for start in range(0, N, BLOCK_N):
            a, mask = _load_tile(A, rows, row_ok, start + cols, N, stride_a)
            h, _ = _gelu_and_grad(a * s[:, None])
            _store_tile(H, rows, start + cols, stride_h, h, mask)
    tl.store(S + rows, s, mask=row_ok)


# DA may be DH itself (dA overwrites dH): timing a config must not leave dH changed
@triton.autotune(configs=_CONFIGS, key=['N', 'BLOCK_N'], restore_value=['DH'])
@triton.heuristics({'BLOCK_M': _rows_per_program})
@triton.jit
def _l2_gelu_bwd_kernel(DH, A, S, TAU, DA, H, M, N, stride_dh, stride_a, stride_da, stride_h,
                        BLOCK_N: tl.constexpr, ONE_TILE: tl.constexpr, TILE: tl.constexpr,
                        BLOCK_M: tl.constexpr):
    """dA = S ⊙ (dZ − Z·(Z·dZ)/τ²) with Z = S·A, dZ = GeLU'(Z) ⊙ dH; and H = GeLU(Z) for dV."""
    rows, row_ok, cols = _program_rows(M, BLOCK_M, BLOCK_N)
    tau = tl.load(TAU).to(tl.float32)
    s = tl.load(S + rows, mask=row_ok, other=0.)
    if ONE_TILE:  # the whole row in registers: dH and A are read once
        a, mask = _load_tile(A, rows, row_ok, cols, N, stride_a)
        dh, _ = _load_tile(DH, rows, row_ok, cols, N, stride_dh)
        z = a * s[:, None]
        h, dgelu = _gelu_and_grad(z)
        dz = dh * dgelu
        coef = tl.sum(z * dz, axis=1) / (tau * tau)
        _store_tile(DA, rows, cols, stride_da, s[:, None] * (dz - z * coef[:, None]), mask)
        _store_tile(H, rows, cols, stride_h, h, mask)
    else:
        dot = tl.zeros([BLOCK_M], dtype=tl.float32)
        for start in range(0, N, BLOCK_N):
            a, _ = _load_tile(A, rows, row_ok, start + cols, N, stride_a)
            dh, _ = _load_tile(DH, rows, row_ok, start + cols, N, stride_dh)
            z = a * s[:, None]
            _, dgelu = _gelu_and_grad(z)
            dot += tl.sum(z * dh * dgelu, axis=1)
        coef = dot / (tau * tau)
        for start in range(0, N, BLOCK_N):
            a, mask = _load_tile(A, rows, row_ok, start + cols, N, stride_a)
            dh, _ = _load_tile(DH, rows, row_ok, start + cols, N, stride_dh)
            z = a * s[:, None]
            h, dgelu = _gelu_and_grad(z)
            _store_tile(DA, rows, start + cols, stride_da, s[:, None] * (dh * dgelu - z * coef[:, None]), mask)
            _store_tile(H, rows, start + cols, stride_h, h, mask)


def _block_n(n: int) -> Tuple[int, bool]:
    """Columns per program step, and whether that holds the whole row.

    Under torch.compile n can arrive symbolic; int() specializes it (one guard per token count), so
    that the block sizes and the autotune configs derived from them are plain integers."""
    n = int(n)
    block = min(triton.next_power_of_2(n), MAX_BLOCK_N)
    return block, block >= n


def _grid(m: int):
    return lambda meta: (triton.cdiv(m, meta['BLOCK_M']),)


def _theta_forward(a: torch.Tensor, tau: torch.Tensor, eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    m, n = a.shape
    h = torch.empty_like(a)
    s = torch.empty(m, device=a.device, dtype=torch.float32)
    block_n, one_tile = _block_n(n)
    if m:
        wrap_triton(_l2_gelu_fwd_kernel)[_grid(m)](
            a, h, s, tau, m, n, a.stride(0), h.stride(0), eps, BLOCK_N=block_n, ONE_TILE=one_tile)
    return h, s


@triton_op('tokenformer_vit::l2_gelu_pattention', mutates_args=())
def _pattention_op(x: torch.Tensor, key: torch.Tensor, value: torch.Tensor, tau: torch.Tensor,
                   eps: float) -> torch.Tensor:
    """Y = GeLU(S·X·Kᵀ)·V for inference: nothing is kept."""
    h, _ = _theta_forward(x @ key.t(), tau, eps)
    return h @ value


@triton_op('tokenformer_vit::l2_gelu_pattention_train', mutates_args=())
def _pattention_train_op(x: torch.Tensor, key: torch.Tensor, value: torch.Tensor, tau: torch.Tensor,
                         eps: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Y, and the scores A and row scales S that backward needs."""
    a = x @ key.t()
    h, s = _theta_forward(a, tau, eps)
    return h @ value, a, s


@triton_op('tokenformer_vit::l2_gelu_theta_backward', mutates_args={'dh'})
def _theta_backward_op(dh: torch.Tensor, a: torch.Tensor, s: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """dA, written over dH = dY·Vᵀ, and GeLU(S·A), returned: one pass over dH and A."""
    m, n = a.shape
    h = torch.empty_like(a)
    block_n, one_tile = _block_n(n)
    if m:
        wrap_triton(_l2_gelu_bwd_kernel)[_grid(m)](
            dh, a, s, tau, dh, h, m, n, dh.stride(0), a.stride(0), dh.stride(0), h.stride(0),
            BLOCK_N=block_n, ONE_TILE=one_tile)
    return h


def _setup_context(ctx, inputs, output):
    x, key, value, tau, _ = inputs
    _, a, s = output
    ctx.save_for_backward(x, key, value, tau, a, s)


def _backward(ctx, dy, _da, _ds):
    x, key, value, tau, a, s = ctx.saved_tensors
    dy = dy.contiguous()
    da = dy @ value.t()
    h = _theta_backward_op(da, a, s, tau)  # da holds dA from here on
    dx = da @ key if ctx.needs_input_grad[0] else None
    dkey = da.t() @ x if ctx.needs_input_grad[1] else None
    dvalue = h.t() @ dy if ctx.needs_input_grad[2] else None
    return dx, dkey, dvalue, None, None


_pattention_train_op.register_autograd(_backward, setup_context=_setup_context)


# Shapes only, for FakeTensor tracing. triton_op would trace the bodies themselves, but under the
# interpreter wrap_triton hands back the raw kernel, which cannot run on fake tensors.
@_pattention_op.register_fake
def _(x, key, value, tau, eps):
    return x.new_empty(x.shape[0], value.shape[1])


@_pattention_train_op.register_fake
def _(x, key, value, tau, eps):
    m, n = x.shape[0], key.shape[0]
    return x.new_empty(m, value.shape[1]), x.new_empty(m, n), x.new_empty(m, dtype=torch.float32)


@_theta_backward_op.register_fake
def _(dh, a, s, tau):
    return torch.empty_like(a)


def l2_gelu_pattention(x: torch.Tensor, key: torch.Tensor, value: torch.Tensor, tau: torch.Tensor,
                       eps: float) -> torch.Tensor:
    """Pattention with Θ = l2_gelu on 2-D x (m × d_in), through the fused kernels.

    x, key and value share one dtype; τ is a 0-d fp32 tensor on their device (read in the kernel,
    so no host sync).
    """
    x, key, value = x.contiguous(), key.contiguous(), value.contiguous()
    if torch.is_grad_enabled() and (x.requires_grad or key.requires_grad or value.requires_grad):
        return _pattention_train_op(x, key, value, tau, eps)[0]
    return _pattention_op(x, key, value, tau, eps)
