"""Pattention: token-parameter attention, the layer that replaces every linear projection.

Wang et al., 2024, "TokenFormer: Rethinking Transformer Scaling with Tokenized Model Parameters"
(arXiv 2410.23168), equation (2):

    Pattention(X) = Θ(X · Kᵀ) · V

X (m × d_in) are the input tokens (queries), K (n × d_in) the key parameter tokens and V (n × d_out)
the value parameter tokens. Θ replaces softmax; it acts on each row A of scores (length n):

    l2_gelu  (default, the paper's)  GeLU(τ · A / ‖A‖₂)
    gelu_l2                          τ · GeLU(A) / ‖GeLU(A)‖₂
    softmax                          τ² · exp(A) / ‖exp(A)‖₁      (the official code's n · softmax(A))

τ is √n when the layer is built and is kept as state (saved in the state dict): a layer grown by
appending zero key tokens keeps its old τ, and then computes exactly what it computed before.

Where the official code divides by ‖·‖₂ (NaN for an all-zero row), we divide by √(‖·‖₂² + ε) with
ε = 1e-6 on the *squared norm*, which is independent of n: growth stays exact, a zero row gives a
zero output and a bounded gradient, and for any real score row (‖A‖₂² is ~10¹–10³ here) the change
is below 1e-8 relative.
"""
import contextlib
import math
import numbers
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .triton_env import interpreting

__all__ = ['Pattention', 'PATTENTION_NORMS', 'PATTENTION_IMPLS', 'pattention', 'stacked_pattention',
           'set_pattention_impl', 'theta']

PATTENTION_NORMS = ('l2_gelu', 'gelu_l2', 'softmax')
NORM_EPS = 1e-6
# 'torch' (the default): the formula in PyTorch ops, everywhere; 'triton': the Triton row kernels of
# triton_pattention.py (l2_gelu only, CUDA tensors, or CPU tensors under TRITON_INTERPRET=1), opt-in,
# since on an H200 they trained slower than the torch path at every size (docs/gpu.md).
PATTENTION_IMPLS = ('torch', 'triton')


def _accumulation_dtype(a: torch.Tensor) -> Optional[torch.dtype]:
    # fp16/bf16 scores: their squared norm can overflow fp16, so it is accumulated in fp32
    return torch.float32 if a.dtype in (torch.float16, torch.bfloat16) else None


def _inv_norm(a: torch.Tensor, tau: torch.Tensor, eps: float) -> torch.Tensor:
    """τ / √(‖a‖² + ε) per row (the reference formulation: out of place, so autograd can see it)."""
    sq = torch.linalg.vector_norm(a, dim=-1, keepdim=True, dtype=_accumulation_dtype(a)).square()
    return tau * torch.rsqrt(sq + eps)


def _row_scale(a: torch.Tensor, tau: torch.Tensor, eps: float) -> torch.Tensor:
    """τ / √(‖a‖² + ε) per row, as `_inv_norm`, in as few ops as possible (the fast path's)."""
    norm = torch.linalg.vector_norm(a, dim=-1, keepdim=True, dtype=_accumulation_dtype(a))
    return norm.square_().add_(eps).rsqrt_().mul_(tau)


def theta(scores: torch.Tensor, norm: str, tau: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """Θ, the modified softmax of the paper, over the last dimension (the reference formulation).

    τ is a 0-d tensor, or one τ per leading slice for stacked layers (shape (G, 1, 1))."""
    if norm == 'l2_gelu':
        return F.gelu(scores * _inv_norm(scores, tau, eps).to(scores.dtype))
    if norm == 'gelu_l2':
        g = F.gelu(scores)
        return g * _inv_norm(g, tau, eps).to(g.dtype)
    if norm == 'softmax':
        # exp(A)/‖exp(A)‖₁ is softmax(A): computed stably, without the official code's raw exp
        return F.softmax(scores.float(), dim=-1).to(scores.dtype) * tau.to(scores.dtype).square()
    raise ValueError('Unknown Pattention norm ' + norm + ': use one of l2_gelu, gelu_l2, softmax.')


def _stack(keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor], taus: Sequence[torch.Tensor]):
    """(K, V, τ) of one layer, or of G layers stacked: (G × n × d_in), (G × n × d_out), (G × 1 × 1)."""
    if len(keys) == 1:
        return keys[0], values[0], taus[0]
    return torch.stack(keys), torch.stack(values), torch.stack(taus).view(-1, 1, 1)


class _L2GeluPattention(torch.autograd.Function):
    """Θ = l2_gelu Pattention with a hand-written backward, for G ≥ 1 layers that read the same input.

    Arguments: ε, the matmul dtype (None: the input's), x (m × d_in), then the G keys (n × d_in),
    the G values (n × d_out) and the G τ (0-d). One layer gives Y (m × d_out); G layers give
    (G × m × d_out), their tokens stacked so that each matmul is one batched GEMM.

    Autograd would keep three (m × n) tensors per layer (the scores, the normalised scores and the
    GeLU output) and dispatch about twice the ops; this keeps one, the normalised scores
    Z = S·A (S = τ/√(‖A‖² + ε), one per row), recomputes GeLU(Z) in backward, and works in place.
    Stacking and casting happen inside, so that backward hands each parameter its gradient in its
    own dtype with one cast and one split per stack.
    """

    @staticmethod
    def forward(ctx, eps, dtype, x, *params):
        g = len(params) // 3
        key, value, tau = _stack(params[:g], params[g:2 * g], params[2 * g:])
        ctx.dtypes = (x.dtype, key.dtype, value.dtype)
        if dtype is not None:
            x, key, value = x.to(dtype), key.to(dtype), value.to(dtype)
        mm, x, z, s = _normalised_scores(x, key, tau, eps)
        y = mm(F.gelu(z), value)
        ctx.save_for_backward(x, key, value, tau, z, s)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, key, value, tau, z, s = ctx.saved_tensors
        g = len(ctx.needs_input_grad[3:]) // 3
        x_dtype, key_dtype, value_dtype = ctx.dtypes
        mm = torch.mm if g == 1 else torch.bmm
        # through the second matmul and GeLU: dZ = GeLU'(Z) ⊙ (dY · Vᵀ), in place
        dz = mm(dy, value.mT)
        torch.ops.aten.gelu_backward.grad_input(dz, z, grad_input=dz)
        h = F.gelu(z)
        needs = ctx.needs_input_grad  # (ε, dtype, x, keys..., values..., taus...)
        dvalue = mm(h.mT, dy).to(value_dtype) if any(needs[3 + g:3 + 2 * g]) else None
        # through Z = S·A with S = τ/√(‖A‖² + ε):  dA = S ⊙ (dZ − Z (Z·dZ) / τ²), in place
        coef = torch.mul(z, dz, out=h).sum(-1, keepdim=True).div_(tau.square())
        da = dz.addcmul_(z, coef, value=-1).mul_(s)
        dx = dkey = None
        if needs[2]:
            dx = mm(da, key)
            dx = (dx if g == 1 else dx.sum(0)).to(x_dtype)
        if any(needs[3:3 + g]):
            dkey = mm(da.mT, x).to(key_dtype)
        if g == 1:
            return None, None, dx, dkey, dvalue, None
        split = lambda t: t.unbind(0) if t is not None else (None,) * g  # noqa: E731
        return (None, None, dx, *split(dkey), *split(dvalue)) + (None,) * g


def _normalised_scores(x: torch.Tensor, key: torch.Tensor, tau: torch.Tensor, eps: float):
    """(the matmul for these shapes, x as it enters it, Z = S·X·Kᵀ, S): one layer (2-D K, torch.mm)
    or a stack (3-D K, torch.bmm over x broadcast to each layer)."""
    mm, x = (torch.mm, x) if key.dim() == 2 else (torch.bmm, x.expand(key.shape[0], -1, -1))
    z = mm(x, key.mT)
    s = _row_scale(z, tau, eps)
    return mm, x, z.mul_(s), s


def _l2_gelu_inference(x: torch.Tensor, key: torch.Tensor, value: torch.Tensor, tau: torch.Tensor,
                       eps: float) -> torch.Tensor:
    """The fast path's forward when nothing is saved for backward: GeLU in place on the scores."""
    mm, _, z, _ = _normalised_scores(x, key, tau, eps)
    return mm(torch.ops.aten.gelu_(z), value)


def _autocast_dtype(x: torch.Tensor, key: torch.Tensor) -> Optional[torch.dtype]:
    """The dtype autocast runs the matmuls in on x's device, or None when autocast is off (then x
    must have the parameters' dtype). The custom function and op run outside autocast and cast to it."""
    device_type = x.device.type
    # torch.amp.is_autocast_available is a builtin that torch 2.11's dynamo cannot trace (a graph
    # break): under torch.compile the device is one that compiles, where autocast always exists
    if (torch.compiler.is_compiling() or torch.amp.is_autocast_available(device_type)) and \
            torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    if x.dtype != key.dtype:
        raise TypeError(f'Pattention got input of dtype {x.dtype} for parameters of dtype {key.dtype}: '
                        f'cast the input or the model, or run under torch.autocast.')
    return None


def _outside_autocast(x: torch.Tensor, dtype: Optional[torch.dtype]):
    """Autocast switched off for x's device while the custom paths run, when `_autocast_dtype` found
    it on (they cast to its dtype themselves)."""
    return torch.autocast(x.device.type, enabled=False) if dtype is not None else contextlib.nullcontext()


def _pattention(x: torch.Tensor, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor],
                taus: Sequence[torch.Tensor], norm: str, eps: float) -> torch.Tensor:
    if norm != 'l2_gelu':  # the reference formulation
        key, value, tau = _stack(keys, values, taus)
        if len(keys) > 1:
            x = x.expand(len(keys), -1, -1)
        return theta(x @ key.mT, norm, tau, eps) @ value
    dtype = _autocast_dtype(x, keys[0])
    with _outside_autocast(x, dtype):
        if torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in (*keys, *values))):
            return _L2GeluPattention.apply(eps, dtype, x, *keys, *values, *taus)
        key, value, tau = _stack(keys, values, taus)
        if dtype is not None:
            x, key, value = x.to(dtype), key.to(dtype), value.to(dtype)
        return _l2_gelu_inference(x, key, value, tau, eps)


def pattention(x: torch.Tensor, key: torch.Tensor, value: torch.Tensor, tau: torch.Tensor, norm: str = 'l2_gelu',
               eps: float = NORM_EPS) -> torch.Tensor:
    """Pattention as a function, Θ(x · Kᵀ) · V, on 2-D x (m × d_in) through the fastest torch path:
    K (n × d_in), V (n × d_out) and a 0-d τ give (m × d_out).

    Under autocast the matmuls run in autocast's dtype; torch.compile traces the same autograd
    function and fuses its elementwise work.
    """
    return _pattention(x, (key,), (value,), (tau,), norm, eps)


def stacked_pattention(x: torch.Tensor, layers: Sequence['Pattention']) -> torch.Tensor:
    """Several Pattentions of one shape applied to the same 2-D x, as one layer of stacked tokens:
    (len(layers) × m × d_out) from two batched GEMMs. Q, K and V of attention run this way."""
    return _pattention(x, [layer.key_tokens for layer in layers], [layer.value_tokens for layer in layers],
                       [layer.tau for layer in layers], layers[0].norm, layers[0].eps)


class Pattention(nn.Module):
    """Token-parameter attention: Θ(X · Kᵀ) · V, a drop-in for a bias-free `nn.Linear`.

    Args:
        in_features: width of the input tokens (and of the key parameter tokens).
        out_features: width of the output (and of the value parameter tokens).
        num_tokens: number of parameter tokens n.
        norm: Θ, one of 'l2_gelu' (default, the paper's), 'gelu_l2', 'softmax'.
        tau: the scale τ; √num_tokens when None.
        key_std, value_std: standard deviations of the normal initialisation of K and V.
        impl: 'torch' or 'triton' (Triton kernels, l2_gelu only); see `PATTENTION_IMPLS`.
    """

    def __init__(
            self,
            in_features: int,
            out_features: int,
            num_tokens: int,
            norm: str = 'l2_gelu',
            tau: Optional[float] = None,
            key_std: float = 0.02,
            value_std: float = 0.02,
            eps: float = NORM_EPS,
            impl: str = 'torch',
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        if norm not in PATTENTION_NORMS:
            raise ValueError(f"Unknown Pattention norm {norm!r}: use one of {', '.join(PATTENTION_NORMS)}.")
        _check_impl(impl, norm)
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, numbers.Integral):
            raise ValueError(f'Pattention needs a whole number of parameter tokens, got num_tokens={num_tokens!r}.')
        if num_tokens < 1:
            raise ValueError(f'Pattention needs at least one parameter token, got num_tokens={num_tokens}.')
        dd = {'device': device, 'dtype': dtype}
        self.in_features = in_features
        self.out_features = out_features
        self.norm = norm
        self.impl = impl
        self.eps = eps
        self.key_std = key_std
        self.value_std = value_std
        self.key_tokens = nn.Parameter(torch.empty(num_tokens, in_features, **dd))
        self.value_tokens = nn.Parameter(torch.empty(num_tokens, out_features, **dd))
        tau = math.sqrt(num_tokens) if tau is None else float(tau)
        # τ is part of the function: a buffer, so it is saved, loaded and kept across growth
        self.register_buffer('tau', torch.tensor(tau, device=device, dtype=torch.float32))
        self.reset_parameters()

    @property
    def num_tokens(self) -> int:
        return self.key_tokens.shape[0]

    def reset_parameters(self) -> None:
        nn.init.normal_(self.key_tokens, std=self.key_std)
        nn.init.normal_(self.value_tokens, std=self.value_std)

    def extra_repr(self) -> str:
        impl = '' if self.impl == 'torch' else f', impl={self.impl}'
        return (f'in_features={self.in_features}, out_features={self.out_features}, '
                f'num_tokens={self.num_tokens}, norm={self.norm}{impl}')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._forward_reference(x)
        if self.impl == 'triton':
            return self._forward_triton(x)
        return self._forward_torch(x)

    def _forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        # Pattention(X) = Θ(X · Kᵀ) · V, as written in the paper
        return theta(x @ self.key_tokens.t(), self.norm, self.tau, self.eps) @ self.value_tokens

    @torch.jit.unused
    def _forward_triton(self, x: torch.Tensor) -> torch.Tensor:
        from .triton_pattention import l2_gelu_pattention
        if x.device.type != 'cuda' and not interpreting():
            raise RuntimeError(f"Pattention impl='triton' runs on CUDA tensors, got a {x.device.type} tensor: use "
                               f"impl='torch' there (or TRITON_INTERPRET=1 to test the kernels on the CPU).")
        key, value = self.key_tokens, self.value_tokens
        dtype = _autocast_dtype(x, key)
        if dtype is not None:
            x, key, value = x.to(dtype), key.to(dtype), value.to(dtype)
        lead = x.shape[:-1]
        with _outside_autocast(x, dtype):
            y = l2_gelu_pattention(x.reshape(-1, x.shape[-1]), key, value, self.tau, self.eps)
        return y.reshape(*lead, y.shape[-1])

    @torch.jit.unused
    def _forward_torch(self, x: torch.Tensor) -> torch.Tensor:
        y = pattention(x.reshape(-1, x.shape[-1]), self.key_tokens, self.value_tokens, self.tau, self.norm, self.eps)
        return y.view(*x.shape[:-1], y.shape[-1])


def _check_impl(impl: str, norm: str) -> None:
    if impl not in PATTENTION_IMPLS:
        raise ValueError(f"Unknown Pattention impl {impl!r}: use one of {', '.join(PATTENTION_IMPLS)}.")
    if impl == 'triton':
        if norm != 'l2_gelu':
            raise ValueError(f"impl='triton' has kernels for norm='l2_gelu' only, not {norm!r}: use impl='torch'.")
        try:
            import triton  # noqa: F401
        except ImportError:
            raise ValueError("impl='triton' needs Triton, which is not installed: use impl='torch', or install "
                             "torch with CUDA (it brings Triton).") from None


def set_pattention_impl(model: nn.Module, impl: str) -> nn.Module:
    """Choose the implementation of every Pattention in `model` ('torch' or 'triton'), in place.

    For models built or loaded elsewhere; `timm.create_model(..., pattention_impl=...)` sets it at
    creation. The choice changes speed only, not the function or the state dict.
    """
    layers = [m for m in model.modules() if isinstance(m, Pattention)]
    for layer in layers:
        _check_impl(impl, layer.norm)
    for layer in layers:
        layer.impl = impl
    if hasattr(model, 'pattention_impl'):
        model.pattention_impl = impl
    return model
