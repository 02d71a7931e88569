"""A run's growth plan: which growths it makes and when, parsed once from --grow, checked against
the model it grows, and asked what happens at an epoch."""
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from ..errors import GrowthError
from .model import GROWTH_MODES

__all__ = ['GROW_SCHEDULES', 'GrowthEvent', 'GrowthPlan']

GROW_SCHEDULES = ('continue', 'restart')  # what the learning-rate schedule does at a growth


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

