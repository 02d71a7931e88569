"""Growth of a model in memory: append parameter tokens to every Pattention of a Tokenformer-ViT
(docs/design.md, "Growth"). `grow_tokens` is the one per-layer rule; a model (`grow_model`), its
training state (training.py) and a checkpoint's state dicts (state_dict.py) all grow through it.

In `preserve` mode the grown model computes the same function as before, to float
rounding: the new key tokens are zero (their scores are 0, so ‖A‖ is unchanged and GeLU(0) = 0),
τ keeps its old value, and the new value tokens are small random numbers (non-zero, so that the new
keys receive a gradient: dL/dK_new ∝ GeLU'(0) · dY · V_newᵀ). In `paper` mode the new rows are
initialised like fresh tokens and τ is recomputed from the new count, as the official code does,
which changes the function. `ramp` mode grows as `preserve` does, and then the training run moves τ
linearly from its kept value to √(new n) over a number of steps (training.TauRamp): it starts
function-preserving and ends with the τ of a model built at the new size.
"""
import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ..errors import GrowthError
from ..pattention import Pattention
from ..tokenformer_vit import TokenformerViT, pattention_kinds

__all__ = ['GROWTH_MODES', 'EXACT_NORMS', 'check_exact', 'check_mode', 'check_grows', 'grow_tokens',
           'grow_pattention', 'grow_model', 'pattentions', 'kind_layers']

GROWTH_MODES = ('preserve', 'paper', 'ramp')


EXACT_NORMS = ('l2_gelu', 'gelu_l2')  # the norms whose zero scores weigh nothing: 'preserve' and 'ramp' are exact


def check_exact(mode: str, norm: str, what: str = 'the model') -> None:
    """The one rule of function-keeping growth: 'preserve' and 'ramp' need an EXACT_NORMS norm;
    softmax gives the new tokens' zero scores a weight. Checked by the layer, the job's flags and the
    grow command alike."""
    if mode in ('preserve', 'ramp') and norm not in EXACT_NORMS:
        raise GrowthError(f'{mode} growth is exact only for the {" and ".join(EXACT_NORMS)} norms, and {what} uses '
                          f'pattention_norm={norm} (softmax gives zero scores a weight): grow in paper mode.')


def check_mode(mode: str) -> None:
    if mode not in GROWTH_MODES:
        raise GrowthError(f"Unknown growth mode {mode!r}: use 'preserve' (function-preserving), 'paper' or 'ramp'.")


def check_grows(old: Tuple[int, int], new: Tuple[int, int]) -> None:
    """A model's (attn_tokens, ffn_tokens) may only grow: the check of a model and of a checkpoint."""
    for what, a, b in zip(('attn_tokens', 'ffn_tokens'), old, new):
        if b < a:
            raise GrowthError(f'Cannot shrink {what} from {a} to {b}: growth only appends tokens.')


def grow_tokens(key: torch.Tensor, value: torch.Tensor, tau: torch.Tensor, num_tokens: int, mode: str = 'preserve',
                key_std: float = 0.02, value_std: float = 0.02, generator: Optional[torch.Generator] = None
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The grown (key, value, τ) of one Pattention: K and V with rows appended up to `num_tokens`.

    preserve (and ramp): new keys zero, new values normal(0, value_std), τ kept.
    paper: new keys normal(0, key_std), new values normal(0, value_std), τ = √num_tokens.
    The one per-layer rule of growth: `grow_pattention` (a model in memory) and `grow_state_dict`
    (a checkpoint) both call it.
    """
    check_mode(mode)
    old_n = key.shape[0]
    if num_tokens < old_n:
        raise GrowthError(f'Cannot shrink a Pattention from {old_n} to {num_tokens} tokens: growth only appends '
                          f'tokens.')
    if num_tokens == old_n:  # a layer that keeps its count keeps its tensors, τ included
        return key, value, tau
    extra = num_tokens - old_n

    def normal(cols: int, std: float, like: torch.Tensor) -> torch.Tensor:
        # drawn on the CPU in fp32, so that a seed gives the same tokens on every device and dtype
        t = torch.empty(extra, cols).normal_(0.0, std, generator=generator)
        return t.to(device=like.device, dtype=like.dtype)

    if mode in ('preserve', 'ramp'):
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
    check_mode(mode)
    if num_tokens == layer.num_tokens:
        return []
    check_exact(mode, layer.norm, 'this layer')
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

    check_mode(mode)
    if not isinstance(model, TokenformerViT):
        raise GrowthError(f'grow_model needs a TokenformerViT, got {type(model).__name__}.')
    attn_tokens = model.attn_tokens if attn_tokens is None else int(attn_tokens)
    ffn_tokens = model.ffn_tokens if ffn_tokens is None else int(ffn_tokens)
    check_grows((model.attn_tokens, model.ffn_tokens), (attn_tokens, ffn_tokens))
    pairs, counts = [], dict(attn=attn_tokens, ffn=ffn_tokens)
    for kind, layer in pattentions(model):
        pairs += grow_pattention(layer, counts[kind], mode, generator)
    model.attn_tokens, model.ffn_tokens = attn_tokens, ffn_tokens
    update_model_args(model, attn_tokens=attn_tokens, ffn_tokens=ffn_tokens)
    return pairs


def pattentions(model: nn.Module) -> List[Tuple[str, Pattention]]:
    """(kind, layer) of every Pattention of a TokenformerViT, in module order (the model file's schema)."""
    kinds = pattention_kinds(name for name, _ in model.named_parameters())
    return [(kind, model.get_submodule(prefix[:-1])) for prefix, kind in kinds.items()]


def kind_layers(model: nn.Module) -> Dict[str, List[Pattention]]:
    """The Pattentions of a TokenformerViT by kind: 'attn' (q, k, v, proj) and 'ffn'."""
    layers = dict(attn=[], ffn=[])
    for kind, layer in pattentions(model):
        layers[kind].append(layer)
    return layers
