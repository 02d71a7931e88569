"""Growth in width: append parameter tokens to every Pattention of a Tokenformer-ViT, of a model,
its optimizer, a state dict or a whole training run (docs/design.md, "Growth").

In `preserve` mode the grown model computes the same function as before, to float
rounding: the new key tokens are zero (their scores are 0, so ‖A‖ is unchanged and GeLU(0) = 0),
τ keeps its old value, and the new value tokens are small random numbers (non-zero, so that the new
keys receive a gradient: dL/dK_new ∝ GeLU'(0) · dY · V_newᵀ). In `paper` mode the new rows are
initialised like fresh tokens and τ is recomputed from the new count, as the official code does,
which changes the function. `ramp` mode grows as `preserve` does, and then the training run moves τ
linearly from its kept value to √(new n) over a number of steps (`ramp_tau`): it starts
function-preserving and ends with the τ of a model built at the new size.
"""
import math
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from .errors import GrowthError
from .pattention import Pattention
from .tokenformer_vit import _ATTN, _FFN, TokenformerViT, token_counts

__all__ = ['GROWTH_MODES', 'GROW_SCHEDULES', 'GrowthError', 'grow_tokens', 'grow_pattention', 'grow_model',
           'grow_optimizer', 'grow_training_state', 'kind_taus', 'tau_ramp_record', 'ramp_tau', 'token_counts', 'grow_state_dict',
           'grow_checkpoint']

GROWTH_MODES = ('preserve', 'paper', 'ramp')
GROW_SCHEDULES = ('continue', 'restart')  # what the learning-rate schedule does at a growth


def _check_mode(mode: str) -> None:
    if mode not in GROWTH_MODES:
        raise GrowthError(f"Unknown growth mode {mode!r}: use 'preserve' (function-preserving), 'paper' or 'ramp'.")


def grow_tokens(key: torch.Tensor, value: torch.Tensor, tau: torch.Tensor, num_tokens: int, mode: str = 'preserve',
                key_std: float = 0.02, value_std: float = 0.02, generator: Optional[torch.Generator] = None
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The grown (key, value, τ) of one Pattention: K and V with rows appended up to `num_tokens`.

    preserve (and ramp): new keys zero, new values normal(0, value_std), τ kept.
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
    _check_mode(mode)
    if num_tokens == layer.num_tokens:
        return []
    if mode in ('preserve', 'ramp') and layer.norm == 'softmax':
        raise GrowthError(f"mode={mode!r} is exact only for the 'l2_gelu' and 'gelu_l2' norms "
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


def grow_training_state(model: nn.Module, attn_tokens: Optional[int], ffn_tokens: Optional[int],
                        mode: str = 'preserve', *, optimizer: Optional[torch.optim.Optimizer] = None,
                        ema: Optional[nn.Module] = None, scheduler=None, step: int = 0, seed: int = 0,
                        ramp_epochs: float = 1.0) -> Dict[str, Any]:
    """Grow a training run in place, the one way the job and every experiment grow:

    - the model, with new tokens drawn from `seed`;
    - its EMA copy (timm's ModelEmaV3 or a bare module), with the same new tokens;
    - the optimizer, whose state is carried over (`grow_optimizer`);
    - the learning-rate schedule, told of the growth at optimizer step `step`: one built with the
      'restart' policy (engine.LRSchedule) starts its warmup and cosine again there.

    Returns the growth's record for the run's history: step, [old, new] token counts, mode, and in
    'ramp' mode the τ ramp that `ramp_tau` then follows over `ramp_epochs` epochs.
    """
    old = (model.attn_tokens, model.ffn_tokens)
    taus = kind_taus(model) if mode == 'ramp' else None
    pairs = grow_model(model, attn_tokens, ffn_tokens, mode, torch.Generator().manual_seed(seed))
    if ema is not None:
        grow_model(getattr(ema, 'module', ema), attn_tokens, ffn_tokens, mode, torch.Generator().manual_seed(seed))
    if optimizer is not None:
        grow_optimizer(optimizer, pairs)
    if scheduler is not None and hasattr(scheduler, 'grown'):
        scheduler.grown(step)
    record = dict(step=step, attn_tokens=[old[0], model.attn_tokens], ffn_tokens=[old[1], model.ffn_tokens], mode=mode)
    if mode == 'ramp':
        record['tau_ramp'] = tau_ramp_record(taus, model, ramp_epochs)
    return record


def _kind_layers(model: nn.Module) -> Dict[str, List[Pattention]]:
    """The Pattentions of a TokenformerViT by kind: 'attn' (q, k, v, proj) and 'ffn'."""
    attn = [layer for b in model.blocks for layer in (b.attn.q, b.attn.k, b.attn.v, b.attn.proj)]
    return dict(attn=attn, ffn=[b.ffn for b in model.blocks])


def kind_taus(model: nn.Module) -> Dict[str, float]:
    """The one τ that every Pattention of a kind holds (our models build them alike)."""
    taus = {}
    for kind, layers in _kind_layers(model).items():
        values = {float(layer.tau) for layer in layers}
        if len(values) != 1:
            raise GrowthError(f'The {kind} Pattentions hold different τ ({sorted(values)}): a τ ramp needs one per kind.')
        taus[kind] = values.pop()
    return taus


def tau_ramp_record(taus_before: Dict[str, float], model: nn.Module, epochs: float) -> Dict[str, Any]:
    """The ramp of a 'ramp' growth: over `epochs` epochs, each kind's τ from its kept value to √(new n)."""
    new_n = dict(attn=model.attn_tokens, ffn=model.ffn_tokens)
    return dict(epochs=float(epochs), **{kind: [tau, math.sqrt(new_n[kind])] for kind, tau in taus_before.items()})


def ramp_tau(model: nn.Module, history: List[Dict[str, Any]], step: int, steps_per_epoch: int) -> None:
    """Set τ for optimizer step `step` while the run's latest growth is a 'ramp' one still in progress:
    τ = from + (to − from)·(step − start)/length, reaching `to` at start + length, where length is the
    ramp's epochs in steps (at least one). A later growth ends it."""
    ramp = history[-1].get('tau_ramp') if history else None
    if not ramp:
        return
    start_step, length = history[-1]['step'], max(1, round(ramp['epochs'] * steps_per_epoch))
    if not start_step <= step <= start_step + length:
        return
    frac = (step - start_step) / length
    with torch.no_grad():
        for kind, layers in _kind_layers(model).items():
            start, end = ramp[kind]
            for layer in layers:
                layer.tau.fill_(end if frac == 1 else start + (end - start) * frac)


# ----------------------------------------------------------------------------------------------------------------
# state dicts (checkpoints on disk): what the grow command works on (token_counts: tokenformer_vit.py)

def grow_state_dict(state_dict: Dict[str, torch.Tensor], attn_tokens: int, ffn_tokens: int, mode: str,
                    generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
    """A copy of a Tokenformer-ViT state dict with every Pattention grown (as `grow_model` does)."""
    out = dict(state_dict)
    for k in state_dict:
        if _ATTN.match(k) or _FFN.match(k):
            prefix = k[:-len('key_tokens')]
            n = attn_tokens if _ATTN.match(k) else ffn_tokens
            if state_dict[k].shape[0] == n:  # as grow_pattention: a layer that keeps its count keeps its τ
                continue
            key, value, tau = grow_tokens(state_dict[k], state_dict[prefix + 'value_tokens'],
                                          state_dict[prefix + 'tau'], n, mode, generator=generator)
            out[k], out[prefix + 'value_tokens'], out[prefix + 'tau'] = key, value, tau
    return out


def grow_checkpoint(ckpt: Dict[str, Any], attn_tokens: Optional[int], ffn_tokens: Optional[int],
                    mode: str = 'preserve', seed: int = 0, source: str = 'checkpoint') -> List[str]:
    """Grow a checkpoint dict (timm's format, as `checkpoint.read_checkpoint` returns it) in place.

    `state_dict` and `state_dict_ema` are grown with the same new tokens, their keys cleaned of DDP
    and torch.compile prefixes so that the result loads in timm; optimizer and scaler state, whose
    shapes no longer fit, is removed (the training job grows its optimizer in memory instead); the
    growth is appended to `growth_history`. Returns the names of the removed entries.
    """
    import time
    from timm.models import clean_state_dict
    _check_mode(mode)
    old_attn, old_ffn = token_counts(ckpt['state_dict'], source)
    attn = old_attn if attn_tokens is None else int(attn_tokens)
    ffn = old_ffn if ffn_tokens is None else int(ffn_tokens)
    for what, old, new in (('attn_tokens', old_attn, attn), ('ffn_tokens', old_ffn, ffn)):
        if new < old:
            raise GrowthError(f'Cannot shrink {what} from {old} to {new}: growth only appends tokens.')
    grown = {}
    for key in ('state_dict', 'state_dict_ema'):
        if isinstance(ckpt.get(key), dict):
            state = clean_state_dict(ckpt[key])
            token_counts(state, f'{source} [{key}]')
            grown[key] = grow_state_dict(state, attn, ffn, mode, torch.Generator().manual_seed(seed))
    ckpt.update(grown)  # only once every state dict has grown: a refused growth changes nothing
    dropped = [k for k in ('optimizer', 'amp_scaler', 'scaler') if k in ckpt]
    for k in dropped:
        del ckpt[k]
    event = dict(attn_tokens=[old_attn, attn], ffn_tokens=[old_ffn, ffn], mode=mode, seed=seed,
                 epoch=ckpt.get('epoch'), time=time.strftime('%Y-%m-%dT%H:%M:%S'), source=str(source))
    ckpt['growth_history'] = list(ckpt.get('growth_history') or []) + [event]
    return dropped
