"""Growth of a training run in memory: the model, its EMA, the optimizer's state and the schedule
grow together (`grow_training_state`, the one way the job and every study grow), and a 'ramp'
growth's τ moves as a schedule (`TauRamp`)."""
import math
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ..errors import GrowthError
from .model import grow_model, kind_layers

__all__ = ['grow_optimizer', 'grow_training_state', 'kind_taus', 'tau_ramp_record', 'TauRamp']


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
    'ramp' mode the τ ramp that `TauRamp` then follows over `ramp_epochs` epochs.
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



def kind_taus(model: nn.Module) -> Dict[str, float]:
    """The one τ that every Pattention of a kind holds (our models build them alike)."""
    taus = {}
    for kind, layers in kind_layers(model).items():
        values = {float(layer.tau) for layer in layers}
        if len(values) != 1:
            raise GrowthError(f'The {kind} Pattentions hold different τ ({sorted(values)}): a τ ramp needs one per '
                              'kind.')
        taus[kind] = values.pop()
    return taus


def tau_ramp_record(taus_before: Dict[str, float], model: nn.Module, epochs: float) -> Dict[str, Any]:
    """The ramp of a 'ramp' growth: over `epochs` epochs, each kind's τ from its kept value to √(new n)."""
    new_n = dict(attn=model.attn_tokens, ffn=model.ffn_tokens)
    return dict(epochs=float(epochs), **{kind: [tau, math.sqrt(new_n[kind])] for kind, tau in taus_before.items()})


class TauRamp:
    """The τ of a 'ramp' growth in progress, a schedule stepped with the learning rate: after optimizer
    step `step_update(step)`, τ = from + (to − from)·(step − start)/length, reaching `to` at start +
    length, where length is the ramp's epochs in steps (at least one). It follows the run's latest
    growth (`history`, the run's own list): a later growth ends it, and one without a ramp sets none."""

    def __init__(self, model: nn.Module, history: List[Dict[str, Any]], steps_per_epoch: int):
        self.model, self.history, self.steps_per_epoch = model, history, steps_per_epoch
        self._layers = None  # found once: growth replaces a layer's tensors, never the layer

    def step_update(self, num_updates: int, metric=None) -> None:
        ramp = self.history[-1].get('tau_ramp') if self.history else None
        if not ramp:
            return
        start_step, length = self.history[-1]['step'], max(1, round(ramp['epochs'] * self.steps_per_epoch))
        if not start_step <= num_updates <= start_step + length:
            return
        frac = (num_updates - start_step) / length
        if self._layers is None:
            self._layers = kind_layers(self.model)
        with torch.no_grad():
            for kind, layers in self._layers.items():
                start, end = ramp[kind]
                for layer in layers:
                    layer.tau.fill_(end if frac == 1 else start + (end - start) * frac)
