"""Growth in width: append parameter tokens to every Pattention of a Tokenformer-ViT, of a model,
its optimizer, a state dict or a whole training run (docs/design.md, "Growth").

In `preserve` mode the grown model computes the same function as before, to float
rounding: the new key tokens are zero (their scores are 0, so ‖A‖ is unchanged and GeLU(0) = 0),
τ keeps its old value, and the new value tokens are small random numbers (non-zero, so that the new
keys receive a gradient: dL/dK_new ∝ GeLU'(0) · dY · V_newᵀ). In `paper` mode the new rows are
initialised like fresh tokens and τ is recomputed from the new count, as the official code does,
which changes the function. `ramp` mode grows as `preserve` does, and then the training run moves τ
linearly from its kept value to √(new n) over a number of steps (`TauRamp`): it starts
function-preserving and ends with the τ of a model built at the new size.
"""
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from .errors import GrowthError
from .pattention import Pattention
from .tokenformer_vit import TokenformerViT, pattention_kinds, token_counts

__all__ = ['GROWTH_MODES', 'GROW_SCHEDULES', 'GrowthError', 'grow_tokens', 'grow_pattention', 'grow_model',
           'grow_optimizer', 'grow_training_state', 'kind_taus', 'tau_ramp_record', 'TauRamp', 'GrowthEvent', 'GrowthPlan', 'token_counts', 'grow_state_dict',
           'grow_checkpoint']

GROWTH_MODES = ('preserve', 'paper', 'ramp')
GROW_SCHEDULES = ('continue', 'restart')  # what the learning-rate schedule does at a growth


EXACT_NORMS = ('l2_gelu', 'gelu_l2')  # the norms whose zero scores weigh nothing: 'preserve' and 'ramp' are exact


def check_exact(mode: str, norm: str, what: str = 'the model') -> None:
    """The one rule of function-keeping growth: 'preserve' and 'ramp' need an EXACT_NORMS norm;
    softmax gives the new tokens' zero scores a weight. Checked by the layer, the job's flags and the
    grow command alike."""
    if mode in ('preserve', 'ramp') and norm not in EXACT_NORMS:
        raise GrowthError(f'{mode} growth is exact only for the {" and ".join(EXACT_NORMS)} norms, and {what} uses '
                          f'pattention_norm={norm} (softmax gives zero scores a weight): grow in paper mode.')


def _check_mode(mode: str) -> None:
    if mode not in GROWTH_MODES:
        raise GrowthError(f"Unknown growth mode {mode!r}: use 'preserve' (function-preserving), 'paper' or 'ramp'.")


def _check_grows(old: Tuple[int, int], new: Tuple[int, int]) -> None:
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
    _check_mode(mode)
    old_n = key.shape[0]
    if num_tokens < old_n:
        raise GrowthError(f'Cannot shrink a Pattention from {old_n} to {num_tokens} tokens: growth only appends tokens.')
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
    _check_mode(mode)
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

    _check_mode(mode)
    if not isinstance(model, TokenformerViT):
        raise GrowthError(f'grow_model needs a TokenformerViT, got {type(model).__name__}.')
    attn_tokens = model.attn_tokens if attn_tokens is None else int(attn_tokens)
    ffn_tokens = model.ffn_tokens if ffn_tokens is None else int(ffn_tokens)
    _check_grows((model.attn_tokens, model.ffn_tokens), (attn_tokens, ffn_tokens))
    pairs, counts = [], dict(attn=attn_tokens, ffn=ffn_tokens)
    for kind, layer in _pattentions(model):
        pairs += grow_pattention(layer, counts[kind], mode, generator)
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


def _pattentions(model: nn.Module) -> List[Tuple[str, Pattention]]:
    """(kind, layer) of every Pattention of a TokenformerViT, in module order (the model file's schema)."""
    kinds = pattention_kinds(name for name, _ in model.named_parameters())
    return [(kind, model.get_submodule(prefix[:-1])) for prefix, kind in kinds.items()]


def _kind_layers(model: nn.Module) -> Dict[str, List[Pattention]]:
    """The Pattentions of a TokenformerViT by kind: 'attn' (q, k, v, proj) and 'ffn'."""
    layers = dict(attn=[], ffn=[])
    for kind, layer in _pattentions(model):
        layers[kind].append(layer)
    return layers


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
            self._layers = _kind_layers(self.model)
        with torch.no_grad():
            for kind, layers in self._layers.items():
                start, end = ramp[kind]
                for layer in layers:
                    layer.tau.fill_(end if frac == 1 else start + (end - start) * frac)


# ----------------------------------------------------------------------------------------------------------------
# the plan: which growths a run makes, and when


@dataclass(frozen=True)
class GrowthEvent:
    """One planned growth: at the start of `epoch` (0-based), to these token counts, in `mode`
    (None: the plan's)."""
    epoch: int
    attn_tokens: int
    ffn_tokens: int
    mode: Optional[str] = None

    def __str__(self) -> str:
        return f'{self.epoch}:{self.attn_tokens}:{self.ffn_tokens}' + (f':{self.mode}' if self.mode else '')


@dataclass(frozen=True)
class GrowthPlan:
    """The growths of a training run, parsed once from --grow (a string "E:A:F[:MODE],...", or a YAML
    list of such strings or of dicts), checked once against the model it grows (`check`), and asked
    what happens at an epoch (`at`). `mode` is --grow-mode, `schedule` --grow-schedule (what the
    learning rate does at a growth), `ramp_epochs` --tau-ramp-epochs. `str(plan)` is its --grow value."""
    events: Tuple[GrowthEvent, ...] = ()
    mode: str = 'paper'
    schedule: str = 'restart'
    ramp_epochs: float = 1.0

    @classmethod
    def parse(cls, value, mode: str = 'paper', schedule: str = 'restart', ramp_epochs: float = 1.0) -> 'GrowthPlan':
        """The plan of a --grow value; one sentence (GrowthError) for an entry that is not one."""
        if isinstance(value, GrowthPlan):
            value = list(value.events)
        items = value.split(',') if isinstance(value, str) else list(value or [])
        events = sorted((_parse_event(item) for item in items if item != ''), key=lambda e: e.epoch)
        for a, b in zip(events, events[1:]):
            if a.epoch == b.epoch or b.attn_tokens < a.attn_tokens or b.ffn_tokens < a.ffn_tokens:
                raise GrowthError(f'--grow events must be at different epochs and never shrink: {a} then {b}.')
        return cls(tuple(events), mode, schedule, float(ramp_epochs))

    def __bool__(self) -> bool:
        return bool(self.events)

    def __str__(self) -> str:
        return ','.join(map(str, self.events))

    def mode_of(self, event: GrowthEvent) -> str:
        return event.mode or self.mode

    @staticmethod
    def done(event: GrowthEvent, history: List[Dict[str, Any]]) -> bool:
        """Whether a run's growth history holds this event (a resumed run does not repeat it)."""
        return any(g.get('epoch') == event.epoch and 'source' not in g and g['attn_tokens'][1] == event.attn_tokens
                   and g['ffn_tokens'][1] == event.ffn_tokens for g in history)

    def at(self, epoch: int, history: List[Dict[str, Any]] = ()) -> Optional[GrowthEvent]:
        """The growth to make at the start of `epoch`, or None (none planned, or already made)."""
        return next((e for e in self.events if e.epoch == epoch and not self.done(e, history)), None)

    def check(self, start: Tuple[int, int], history: List[Dict[str, Any]] = (), epochs: Optional[int] = None,
              resumed_at: Optional[int] = None) -> None:
        """Every growth still to come happens within `epochs`, not before `resumed_at` (the epoch a
        resumed run is in), and grows the model from `start`, its token counts now (after the growths
        in `history`), never shrinking it."""
        attn, ffn = start
        for event in self.events:
            if epochs is not None and event.epoch >= epochs:
                raise GrowthError(f'--grow at epoch {event.epoch} never happens in a run of --epochs {epochs} '
                                  f'(epochs count from 0): grow earlier or train longer.')
            if self.done(event, history):
                continue
            if resumed_at is not None and event.epoch < resumed_at:
                raise GrowthError(f'--grow {event} is before epoch {resumed_at}, where the run resumes, and the run '
                                  f'did not grow so then: resume with the --grow it was started with, or start a new '
                                  f'--output.')
            if event.attn_tokens < attn or event.ffn_tokens < ffn:
                raise GrowthError(f'--grow at epoch {event.epoch} to {event.attn_tokens}/{event.ffn_tokens} tokens '
                                  f'would shrink the model from {attn}/{ffn}: growth only appends tokens.')
            attn, ffn = event.attn_tokens, event.ffn_tokens

    def restart_steps(self, steps_per_epoch: int) -> List[int]:
        """The optimizer steps of the planned growths: where a 'restart' schedule's segments end."""
        return [e.epoch * steps_per_epoch for e in self.events]


def _parse_event(item) -> GrowthEvent:
    try:
        if isinstance(item, GrowthEvent):
            event = item
        elif isinstance(item, dict):
            event = GrowthEvent(int(item['epoch']), int(item['attn_tokens']), int(item['ffn_tokens']), item.get('mode'))
        else:
            parts = str(item).strip().split(':')
            if len(parts) not in (3, 4):
                raise ValueError
            event = GrowthEvent(int(parts[0]), int(parts[1]), int(parts[2]), parts[3] if len(parts) == 4 else None)
    except (KeyError, ValueError, TypeError):
        raise GrowthError(f'--grow entry {item!r} is not EPOCH:ATTN_TOKENS:FFN_TOKENS[:MODE], '
                          f'e.g. --grow 150:768:3072.') from None
    if event.epoch < 0 or event.attn_tokens < 1 or event.ffn_tokens < 1:
        raise GrowthError(f'--grow entry {item!r}: the epoch must be at least 0 and the token counts at least 1, '
                          f'e.g. --grow 150:768:3072.')
    if event.mode is not None and event.mode not in GROWTH_MODES:
        raise GrowthError(f'--grow entry {item!r}: unknown mode {event.mode!r}; use one of {", ".join(GROWTH_MODES)}.')
    return event


# ----------------------------------------------------------------------------------------------------------------
# state dicts (checkpoints on disk): what the grow command works on (token_counts: tokenformer_vit.py)

def grow_state_dict(state_dict: Dict[str, torch.Tensor], attn_tokens: int, ffn_tokens: int, mode: str,
                    generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
    """A copy of a Tokenformer-ViT state dict with every Pattention grown (as `grow_model` does)."""
    out, counts = dict(state_dict), dict(attn=attn_tokens, ffn=ffn_tokens)
    for prefix, kind in pattention_kinds(state_dict).items():
        names = [prefix + name for name in ('key_tokens', 'value_tokens', 'tau')]
        grown = grow_tokens(*(state_dict[n] for n in names), counts[kind], mode, generator=generator)
        out.update(zip(names, grown))
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
    _check_grows((old_attn, old_ffn), (attn, ffn))
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
