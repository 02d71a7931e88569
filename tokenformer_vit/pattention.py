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
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .triton_env import interpreting

__all__ = ['Pattention', 'PATTENTION_NORMS', 'PATTENTION_IMPLS', 'set_pattention_impl', 'theta']

PATTENTION_NORMS = ('l2_gelu', 'gelu_l2', 'softmax')
NORM_EPS = 1e-6
# 'torch': the formula in PyTorch ops (the reference and the CPU path); 'fused': the Triton kernels of
# triton_pattention.py (l2_gelu only, CUDA tensors, or CPU tensors under TRITON_INTERPRET=1);
# 'auto': the fused path on CUDA once AUTO_PICKS_FUSED is set, else 'torch'.
PATTENTION_IMPLS = ('auto', 'fused', 'torch')
# The fused kernels pass the interpreter tests but have not yet been timed on a GPU, so 'auto' keeps
# the torch path everywhere: flip this only with GPU measurements in benchmarks/results/.
AUTO_PICKS_FUSED = False


def _inv_norm(a: torch.Tensor, tau: torch.Tensor, eps: float) -> torch.Tensor:
    """τ / √(‖a‖² + ε) per row, accumulated in fp32 so fp16/bf16 scores cannot overflow."""
    acc = torch.promote_types(a.dtype, torch.float32)
    sq = torch.linalg.vector_norm(a, dim=-1, keepdim=True, dtype=acc).square()
    return tau.to(acc) * torch.rsqrt(sq + eps)


def theta(scores: torch.Tensor, norm: str, tau: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """Θ, the modified softmax of the paper, over the last dimension (the reference formulation)."""
    if norm == 'l2_gelu':
        return F.gelu(scores * _inv_norm(scores, tau, eps).to(scores.dtype))
    if norm == 'gelu_l2':
        g = F.gelu(scores)
        return g * _inv_norm(g, tau, eps).to(g.dtype)
    if norm == 'softmax':
        # exp(A)/‖exp(A)‖₁ is softmax(A): computed stably, without the official code's raw exp
        return F.softmax(scores.float(), dim=-1).to(scores.dtype) * tau.to(scores.dtype).square()
    raise ValueError('Unknown Pattention norm ' + norm + ': use one of l2_gelu, gelu_l2, softmax.')


class _L2GeluPattention(torch.autograd.Function):
    """Θ = l2_gelu Pattention with a hand-written backward.

    Autograd would keep three (m × n) tensors per layer (the scores, the normalised scores and the
    GeLU output); this keeps one, the normalised scores Z = S·A (S = τ/√(‖A‖² + ε), one per row),
    and recomputes GeLU(Z) in backward. The row scale S is folded into the (m × d) side of the
    backward matmuls rather than applied to an (m × n) tensor, and the normalisation is a row norm
    plus one in-place scale, not `F.rms_norm`, because backward needs the row scale S itself.
    """

    @staticmethod
    def forward(ctx, x, key, value, tau, eps):
        z = x @ key.t()
        s = _inv_norm(z, tau, eps)
        z.mul_(s.to(z.dtype))
        y = F.gelu(z) @ value
        ctx.save_for_backward(x, key, value, tau, z, s)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, key, value, tau, z, s = ctx.saved_tensors
        dy = dy.contiguous()
        # through the second matmul and GeLU: dZ = GeLU'(Z) ⊙ (dY · Vᵀ), in place
        dz = dy @ value.t()
        torch.ops.aten.gelu_backward.grad_input(dz, z, grad_input=dz)
        h = F.gelu(z)
        dvalue = h.t() @ dy if ctx.needs_input_grad[2] else None
        # through Z = S·A with S = τ/√(‖A‖² + ε):  dA = S ⊙ (dZ − Z (Z·dZ) / τ²)
        coef = torch.mul(z, dz, out=h).sum(-1, keepdim=True).div_(tau.to(z.dtype).square())
        dz.addcmul_(z, coef, value=-1)
        s = s.to(dz.dtype)
        # dA = S ⊙ dZ', with S applied on the narrow (m × d) side of each matmul
        dx = (dz @ key).mul_(s) if ctx.needs_input_grad[0] else None
        dkey = dz.t() @ (x * s) if ctx.needs_input_grad[1] else None
        return dx, dkey, dvalue, None, None


class Pattention(nn.Module):
    """Token-parameter attention: Θ(X · Kᵀ) · V, a drop-in for a bias-free `nn.Linear`.

    Args:
        in_features: width of the input tokens (and of the key parameter tokens).
        out_features: width of the output (and of the value parameter tokens).
        num_tokens: number of parameter tokens n.
        norm: Θ, one of 'l2_gelu' (default, the paper's), 'gelu_l2', 'softmax'.
        tau: the scale τ; √num_tokens when None.
        key_std, value_std: standard deviations of the normal initialisation of K and V.
        impl: 'auto', 'fused' (Triton kernels, l2_gelu only) or 'torch'; see `PATTENTION_IMPLS`.
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
            impl: str = 'auto',
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        if norm not in PATTENTION_NORMS:
            raise ValueError(f"Unknown Pattention norm {norm!r}: use one of {', '.join(PATTENTION_NORMS)}.")
        _check_impl(impl, norm)
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
        impl = '' if self.impl == 'auto' else f', impl={self.impl}'
        return (f'in_features={self.in_features}, out_features={self.out_features}, '
                f'num_tokens={self.num_tokens}, norm={self.norm}{impl}')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._forward_reference(x)
        if self.impl == 'fused' or (self.impl == 'auto' and AUTO_PICKS_FUSED and self.norm == 'l2_gelu'
                                    and x.device.type == 'cuda'):
            return self._forward_fused(x)
        return self._forward_fast(x)

    def _forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        # Pattention(X) = Θ(X · Kᵀ) · V, as written in the paper
        return theta(x @ self.key_tokens.t(), self.norm, self.tau, self.eps) @ self.value_tokens

    def _cast_for_matmuls(self, x: torch.Tensor):
        """(x, K, V, autocast on?) in the dtype the matmuls run in: autocast's, else the input's."""
        key, value = self.key_tokens, self.value_tokens
        device_type = x.device.type
        autocast = torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
        if autocast:
            # the custom function and op run outside autocast, so cast as autocast would for the matmuls
            dtype = torch.get_autocast_dtype(device_type)
            x, key, value = x.to(dtype), key.to(dtype), value.to(dtype)
        elif x.dtype != key.dtype:
            raise TypeError(f'Pattention got input of dtype {x.dtype} for parameters of dtype {key.dtype}: '
                            f'cast the input or the model, or run under torch.autocast.')
        return x, key, value, autocast

    @torch.jit.unused
    def _forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        from .triton_pattention import l2_gelu_pattention
        if x.device.type != 'cuda' and not interpreting():
            raise RuntimeError(f"Pattention impl='fused' runs on CUDA tensors, got a {x.device.type} tensor: use "
                               f"impl='auto' or 'torch' there (or TRITON_INTERPRET=1 to test the kernels on the CPU).")
        x, key, value, autocast = self._cast_for_matmuls(x)
        lead = x.shape[:-1]
        with torch.autocast(x.device.type, enabled=False) if autocast else contextlib.nullcontext():
            y = l2_gelu_pattention(x.reshape(-1, x.shape[-1]), key, value, self.tau, self.eps)
        return y.reshape(*lead, y.shape[-1])

    @torch.jit.unused
    def _forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm != 'l2_gelu' or torch.compiler.is_compiling():
            # torch.compile fuses the reference formulation itself, and picks what to recompute
            return self._forward_reference(x)
        x, key, value, autocast = self._cast_for_matmuls(x)
        device_type = x.device.type
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        if torch.is_grad_enabled() and (x.requires_grad or key.requires_grad or value.requires_grad):
            with torch.autocast(device_type, enabled=False) if autocast else contextlib.nullcontext():
                y = _L2GeluPattention.apply(x2, key, value, self.tau, self.eps)
        else:
            # nothing to save for backward: normalise and activate the scores in place
            a = x2 @ key.t()
            a.mul_(_inv_norm(a, self.tau, self.eps).to(a.dtype))
            y = torch.ops.aten.gelu_(a) @ value
        return y.reshape(*lead, y.shape[-1])


def _check_impl(impl: str, norm: str) -> None:
    if impl not in PATTENTION_IMPLS:
        raise ValueError(f"Unknown Pattention impl {impl!r}: use one of {', '.join(PATTENTION_IMPLS)}.")
    if impl == 'fused':
        if norm != 'l2_gelu':
            raise ValueError(f"impl='fused' has kernels for norm='l2_gelu' only, not {norm!r}: use impl='torch'.")
        try:
            import triton  # noqa: F401
        except ImportError:
            raise ValueError("impl='fused' needs Triton, which is not installed: use impl='torch', or install "
                             "torch with CUDA (it brings Triton).") from None


def set_pattention_impl(model: nn.Module, impl: str) -> nn.Module:
    """Choose the implementation of every Pattention in `model` ('auto', 'fused' or 'torch'), in place.

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
