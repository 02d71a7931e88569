"""Growth of checkpoints on disk, what the grow_checkpoint command works on: a state dict grown by
the same per-layer rule as a model in memory (model.grow_tokens), and a whole checkpoint dict with
its EMA and growth history."""
import time
from typing import Any, Dict, List, Optional

import torch

from ..tokenformer_vit import pattention_kinds, token_counts
from .model import check_grows, check_mode, grow_tokens

__all__ = ['grow_state_dict', 'grow_checkpoint']

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
    from timm.models import clean_state_dict
    check_mode(mode)
    old_attn, old_ffn = token_counts(ckpt['state_dict'], source)
    attn = old_attn if attn_tokens is None else int(attn_tokens)
    ffn = old_ffn if ffn_tokens is None else int(ffn_tokens)
    check_grows((old_attn, old_ffn), (attn, ffn))
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
