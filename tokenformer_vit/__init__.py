"""Tokenformer for vision: Pattention layers and a timm-registered ViT family built from them.

`import tokenformer_vit` registers the models with timm: `timm.create_model("tokenformer_vit_base")`.
"""
from .pattention import Pattention, PATTENTION_IMPLS, PATTENTION_NORMS, set_pattention_impl, theta
from .tokenformer_vit import TokenformerViT, TokenformerAttention, TokenformerBlock

__version__ = '0.1.0'
from .growth import GROWTH_MODES, GrowthError, grow_model, grow_optimizer, grow_pattention, grow_tokens
from .errors import UserError
