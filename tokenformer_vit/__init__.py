"""Tokenformer for vision: Pattention layers and a timm-registered ViT family built from them.

`import tokenformer_vit` registers the models with timm: `timm.create_model("tokenformer_vit_base")`.
The layers of the package, and where each part lives, are in docs/design.md ("Where things live").
"""
from .errors import UserError
from .pattention import Pattention, PATTENTION_IMPLS, PATTENTION_NORMS, set_pattention_impl, theta
from .tokenformer_vit import TokenformerViT, TokenformerAttention, TokenformerBlock
from .growth import (GROWTH_MODES, GROW_SCHEDULES, GrowthError, grow_model, grow_optimizer, grow_pattention,
                     grow_tokens, grow_training_state)

__all__ = ['UserError', 'Pattention', 'PATTENTION_IMPLS', 'PATTENTION_NORMS', 'set_pattention_impl', 'theta',
           'TokenformerViT', 'TokenformerAttention', 'TokenformerBlock', 'GROWTH_MODES', 'GROW_SCHEDULES',
           'GrowthError',
           'grow_model', 'grow_optimizer', 'grow_pattention', 'grow_tokens', 'grow_training_state']
__version__ = '0.1.0'
