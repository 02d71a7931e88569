"""Growth in width, by job (docs/design.md, "Growth"): `model.py` grows a model in memory (the per-layer
rule, `grow_tokens`), `training.py` a training run (model, EMA, optimizer state, schedule, τ ramp),
`plan.py` says which growths a run makes and when, `state_dict.py` grows checkpoints on disk. The
command that grows a checkpoint file is `python -m tokenformer_vit.grow_checkpoint`."""
from ..errors import GrowthError
from ..tokenformer_vit import token_counts
from .model import EXACT_NORMS, GROWTH_MODES, check_exact, grow_model, grow_pattention, grow_tokens
from .plan import GROW_SCHEDULES, GrowthEvent, GrowthPlan
from .state_dict import grow_checkpoint, grow_state_dict
from .training import TauRamp, grow_optimizer, grow_training_state, kind_taus, tau_ramp_record

__all__ = ['GrowthError', 'token_counts', 'EXACT_NORMS', 'GROWTH_MODES', 'check_exact', 'grow_model', 'grow_pattention',
           'grow_tokens', 'GROW_SCHEDULES', 'GrowthEvent', 'GrowthPlan', 'grow_checkpoint', 'grow_state_dict',
           'TauRamp', 'grow_optimizer', 'grow_training_state', 'kind_taus', 'tau_ramp_record']
