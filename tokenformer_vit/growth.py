"""Growth in width: append parameter tokens to every Pattention of a Tokenformer-ViT.

DESIGN §3. In `preserve` mode the grown model computes the same function as before, to float
rounding: the new key tokens are zero (their scores are 0, so ‖A‖ is unchanged and GeLU(0) = 0),
τ keeps its old value, and the new value tokens are small random numbers (non-zero, so that the new
keys receive a gradient: dL/dK_new ∝ GeLU'(0) · dY · V_newᵀ). In `paper` mode the new rows are
initialised like fresh tokens and τ is recomputed from the new count, as the official code does,
which changes the function.
"""
import math
from typing import List, Optional, Tuple

import torch
import torch.nn as nn

from .errors import UserError
from .pattention import Pattention

__all__ = ['GROWTH_MODES', 'GrowthError', 'grow_tokens', 'grow_pattention', 'grow_model', 'grow_optimizer']

GROWTH_MODES = ('preserve', 'paper')


class GrowthError(UserError):
    """A growth request that cannot be carried out; the message names the fix."""


def _check_mode(mode: str) -> None:
    if mode not in GROWTH_MODES:
        raise GrowthError(f"Unknown growth mode {mode!r}: use 'preserve' (function-preserving) or 'paper'.")


def grow_tokens(key: torch.Tensor, value: torch.Tensor, tau: torch.Tensor, num_tokens: int, mode: str = 'preserve',
                key_std: float = 0.02, value_std: float = 0.02, generator: Optional[torch.Generator] = None
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The grown (key, value, τ) of one Pattention: K and V with rows appended up to `num_tokens`.

    preserve: new keys zero, new values normal(0, value_std), τ kept.
    paper: new keys normal(0, key_std), new values normal(0, value_std), τ = √num_tokens.
    """
    _check_mode(mode)
    old_n = key.shape[0]
    if num_tokens < old_n:
        raise GrowthError(f'Cannot shrink a Pattention from {old_n} to {num_tokens} tokens: growth only appends tokens.')
    extra = num_tokens - old_n

    def normal(cols: int, std: float, like: torch.Tensor) -> torch.Tensor:
        # drawn on the CPU in fp32, so that a seed gives the same tokens on every device and dtype
        t = torch.empty(extra, cols).normal_(0.0, std, generator=generator)
        return t.to(device=like.device, dtype=like.dtype)

    if mode == 'preserve':
        new_keys = torch.zeros(extra, key.shape[1], device=key.device, dtype=key.dtype)
        new_tau = tau.clone()
    else:
        new_keys = normal(key.shape[1], key_std, key)
        new_tau = torch.full_like(tau, math.sqrt(num_tokens))
    return torch.cat([key, new_keys]), torch.cat([value, normal(value.shape[1], value_std, value)]), new_tau


def grow_pattention(layer: Pattention, num_tokens: int, mode: str = 'preserve',
                    generator: Optional[torch.Generator] = None) -> List[Tuple[nn.Parameter, nn.Parameter]]:
    """Append rows to K and V of one Pattention so that it holds `num_tokens` tokens, in place.

    Returns the (old, new) pairs of replaced parameters, for `grow_optimizer`.
    """
    _check_mode(mode)
    if num_tokens == layer.num_tokens:
        return []
    if mode == 'preserve' and layer.norm == 'softmax':
        raise GrowthError("mode='preserve' is exact only for the 'l2_gelu' and 'gelu_l2' norms "
                          "(softmax gives zero scores a non-zero weight): use mode='paper'.")
    old_key, old_value = layer.key_tokens, layer.value_tokens
    with torch.no_grad():
        key, value, tau = grow_tokens(old_key.detach(), old_value.detach(), layer.tau, num_tokens, mode,
                                      layer.key_std, layer.value_std, generator)
        layer.key_tokens = nn.Parameter(key, requires_grad=old_key.requires_grad)
        layer.value_tokens = nn.Parameter(value, requires_grad=old_value.requires_grad)
        layer.tau.copy_(tau)
    return [(old_key, layer.key_tokens), (old_value, layer.value_tokens)]


def grow_model(model: nn.Module, attn_tokens: Optional[int] = None, ffn_tokens: Optional[int] = None,
               mode: str = 'preserve', generator: Optional[torch.Generator] = None
               ) -> List[Tuple[nn.Parameter, nn.Parameter]]:
    """Grow every Pattention of a TokenformerViT (or its EMA copy) in place.

    The attention projections (q, k, v, proj) grow to `attn_tokens`, the FFN to `ffn_tokens`; either
    may be None to keep it. Afterwards the model's recorded arguments name the new sizes, so
    `timm.models.save_for_hf` writes them. Returns the (old, new) parameter pairs for `grow_optimizer`.
    """
    from timm.models._input import update_model_args
    from .tokenformer_vit import TokenformerViT

    _check_mode(mode)
    if not isinstance(model, TokenformerViT):
        raise GrowthError(f'grow_model needs a TokenformerViT, got {type(model).__name__}.')
    attn_tokens = model.attn_tokens if attn_tokens is None else int(attn_tokens)
    ffn_tokens = model.ffn_tokens if ffn_tokens is None else int(ffn_tokens)
    for what, old, new in (('attn_tokens', model.attn_tokens, attn_tokens), ('ffn_tokens', model.ffn_tokens, ffn_tokens)):
        if new < old:
            raise GrowthError(f'Cannot shrink {what} from {old} to {new}: growth only appends tokens.')
    pairs = []
    for block in model.blocks:
        for layer in (block.attn.q, block.attn.k, block.attn.v, block.attn.proj):
            pairs += grow_pattention(layer, attn_tokens, mode, generator)
        pairs += grow_pattention(block.ffn, ffn_tokens, mode, generator)
    model.attn_tokens, model.ffn_tokens = attn_tokens, ffn_tokens
    update_model_args(model, attn_tokens=attn_tokens, ffn_tokens=ffn_tokens)
    return pairs


def grow_optimizer(optimizer: torch.optim.Optimizer, pairs: List[Tuple[nn.Parameter, nn.Parameter]]) -> None:
    """Swap grown parameters into an optimizer, keeping the old tokens' state exactly.

    Per-parameter state shaped like the parameter is extended for the new rows: first moments and
    momentum buffers with zeros; second moments (Adam's and LAMB's `exp_avg_sq`) with the mean of
    the old rows, column by column. Why: torch keeps one step count per tensor, so the new rows
    share the old, large count and get no bias correction. With a zero second moment their first
    updates would be m/√v ≈ (1 − β₁)/√(1 − β₂) ≈ 3 to 6 times the size of a fresh Adam's (β₂ =
    0.999). Seeded with the old rows' second moment (parameter tokens are exchangeable, so that is
    the natural prior for a new token's gradient scale), a new row's update starts near zero and
    ramps up with its first moment, a built-in warmup. Scalar state (the step) is kept.
    """
    new_of = {id(old): new for old, new in pairs}
    for group in optimizer.param_groups:
        for i, p in enumerate(group['params']):
            new = new_of.get(id(p))
            if new is None:
                continue
            group['params'][i] = new
            state = optimizer.state.pop(p, None)
            if not state:
                continue
            grown = {}
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == p.shape:
                    extra = new.shape[0] - p.shape[0]
                    if 'sq' in key:
                        fill = value.mean(dim=0, keepdim=True).expand(extra, *value.shape[1:])
                    else:
                        fill = value.new_zeros(extra, *value.shape[1:])
                    value = torch.cat([value, fill.to(value.dtype)])
                grown[key] = value
            optimizer.state[new] = grown
