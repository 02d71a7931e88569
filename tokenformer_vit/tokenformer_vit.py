""" Tokenformer Vision Transformer (Tokenformer-ViT)

A PyTorch implementation of the vision model of:
`TokenFormer: Rethinking Transformer Scaling with Tokenized Model Parameters`
    - https://arxiv.org/abs/2410.23168 (Wang et al., 2024)

Every projection of a ViT block is a Pattention layer (token-parameter attention): the Q/K/V and
output projections of attention (`attn_tokens` parameter tokens each) and the whole MLP, which is a
single Pattention with `ffn_tokens` tokens. Per-block LayerNorms carry no scale or shift, as in the
paper; patch embedding, class token, position embedding, final norm and head are timm's ViT ones.

Because parameters are tokens, a model grows in width by appending parameter tokens
(`attn_tokens=`, `ffn_tokens=` name any grown size at creation time).
"""
import re
from typing import Any, Dict, Iterable, List, Literal, Optional, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath,
    PatchEmbed,
    calculate_drop_path_rates,
    get_device_dtype,
    global_pool_nlc,
    register_notrace_module,
    resample_abs_pos_embed,
    trunc_normal_,
)
from timm.models import (build_model_with_cfg, checkpoint, checkpoint_seq, clean_state_dict, generate_default_cfgs,
                         register_model)
from timm.models._builder import resolve_pretrained_cfg
from timm.models._features import feature_take_indices
from timm.models._input import update_model_args, update_model_input_size

from .errors import GrowthError
from .pattention import Pattention, stacked_pattention

__all__ = ['TokenformerViT', 'TokenformerAttention', 'TokenformerBlock', 'pattention_kinds', 'token_counts',
           'token_counts_or_none']

# leaves for torch.fx: their fast paths are an autograd.Function that symbolic tracing cannot enter
register_notrace_module(Pattention)


@register_notrace_module  # a leaf for torch.fx (above): Q, K and V run as one stacked Pattention
class TokenformerAttention(nn.Module):
    """Multi-head self-attention whose Q, K, V and output projections are Pattention layers."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            attn_tokens: int,
            pattention_norm: str = 'l2_gelu',
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            pattention_impl: str = 'torch',
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim={dim} must be divisible by num_heads={num_heads}.')
        pk = {'norm': pattention_norm, 'impl': pattention_impl, 'device': device, 'dtype': dtype}
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = Pattention(dim, dim, attn_tokens, **pk)
        self.k = Pattention(dim, dim, attn_tokens, **pk)
        self.v = Pattention(dim, dim, attn_tokens, **pk)
        self.attn_drop = attn_drop
        self.proj = Pattention(dim, dim, attn_tokens, **pk)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, N, C = x.shape
        if torch.jit.is_scripting() or 'triton' in (self.q.impl, self.k.impl, self.v.impl):
            q = self.q(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
            k = self.k(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
            v = self.v(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        else:
            q, k, v = self._qkv(x)
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop if self.training else 0.)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))

    @torch.jit.unused
    def _qkv(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Q, K and V read the same input with the same token count: one stacked Pattention, two
        # batched GEMMs instead of six (the state dict keeps the three layers)
        B, N, C = x.shape
        qkv = stacked_pattention(x.reshape(B * N, C), (self.q, self.k, self.v))
        return qkv.view(3, B, N, self.num_heads, self.head_dim).transpose(2, 3).unbind(0)


class TokenformerBlock(nn.Module):
    """Pre-norm block: x + Attn(LN(x)), then x + FFN(LN(x)), with a single Pattention as the FFN."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            attn_tokens: int,
            ffn_tokens: int,
            pattention_norm: str = 'l2_gelu',
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            drop_path: float = 0.,
            pattention_impl: str = 'torch',
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        # no scale/shift in the block norms: the paper's ablation costs -0.1 top-1 only
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False, **dd)
        self.attn = TokenformerAttention(
            dim, num_heads, attn_tokens, pattention_norm, attn_drop=attn_drop, proj_drop=proj_drop,
            pattention_impl=pattention_impl, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False, **dd)
        self.ffn = Pattention(dim, dim, ffn_tokens, norm=pattention_norm, impl=pattention_impl, **dd)
        self.ffn_drop = nn.Dropout(proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), attn_mask=attn_mask))
        x = x + self.drop_path2(self.ffn_drop(self.ffn(self.norm2(x))))
        return x


class TokenformerViT(nn.Module):
    """ Tokenformer Vision Transformer

    A ViT whose projections are Pattention layers: `TokenFormer: Rethinking Transformer Scaling with
    Tokenized Model Parameters` - https://arxiv.org/abs/2410.23168
    """
    dynamic_img_size: torch.jit.Final[bool]

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: Union[int, Tuple[int, int]] = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: Literal['', 'avg', 'avgmax', 'max', 'token'] = 'token',
            embed_dim: int = 768,
            depth: int = 12,
            num_heads: int = 12,
            attn_tokens: int = 768,
            ffn_tokens: int = 3072,
            pattention_norm: str = 'l2_gelu',
            pattention_impl: str = 'torch',
            class_token: bool = True,
            fc_norm: Optional[bool] = None,
            dynamic_img_size: bool = False,
            dynamic_img_pad: bool = False,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            weight_init: Literal['skip', ''] = '',
            device=None,
            dtype=None,
    ) -> None:
        """
        Args:
            img_size: Input image size.
            patch_size: Patch size.
            in_chans: Number of image input channels.
            num_classes: Number of classes for classification head.
            global_pool: Type of global pooling for final sequence (default: 'token').
            embed_dim: Transformer embedding dimension.
            depth: Depth of transformer.
            num_heads: Number of attention heads.
            attn_tokens: Parameter tokens of each of the Q, K, V and output Pattentions.
            ffn_tokens: Parameter tokens of the FFN Pattention.
            pattention_norm: Θ of every Pattention: 'l2_gelu' (the paper's), 'gelu_l2' or 'softmax'.
            pattention_impl: 'torch' or 'triton' (Triton kernels; l2_gelu on CUDA); speed only.
            class_token: Use class token.
            fc_norm: Move final norm after pool (instead of before), if None, enabled when global_pool == 'avg'.
            dynamic_img_size: Accept any input size, resampling the position embedding on the fly.
            dynamic_img_pad: Pad inputs whose size is not a multiple of the patch size.
            drop_rate: Head dropout rate.
            pos_drop_rate: Position embedding dropout rate.
            proj_drop_rate: Dropout after each attention and FFN output.
            attn_drop_rate: Attention dropout rate.
            drop_path_rate: Stochastic depth rate.
            weight_init: '' initialises the weights, 'skip' leaves them to a checkpoint.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        assert global_pool in ('', 'avg', 'avgmax', 'max', 'token'), \
            'Only avg, avgmax, max, token pooling (or none) is supported.'
        assert class_token or global_pool != 'token', 'Token pooling needs the class token.'
        use_fc_norm = global_pool in ('avg', 'avgmax', 'max') if fc_norm is None else fc_norm

        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1 if class_token else 0
        self.has_class_token = class_token
        self.attn_tokens = attn_tokens
        self.ffn_tokens = ffn_tokens
        self.pattention_impl = pattention_impl
        self.dynamic_img_size = dynamic_img_size
        self.grad_checkpointing = False

        embed_args = {}
        if dynamic_img_size:
            # flatten deferred until after pos embed
            embed_args.update(dict(strict_img_size=False, output_fmt='NHWC'))
        self.patch_embed = PatchEmbed(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            dynamic_img_pad=dynamic_img_pad,
            **embed_args,
            **dd,
        )
        num_patches = self.patch_embed.num_patches
        reduction = self.patch_embed.feat_ratio()

        self.cls_token = nn.Parameter(torch.empty(1, 1, embed_dim, **dd)) if class_token else None
        self.pos_embed = nn.Parameter(torch.empty(1, num_patches + self.num_prefix_tokens, embed_dim, **dd))
        self.pos_drop = nn.Dropout(p=pos_drop_rate)

        dpr = calculate_drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(*[
            TokenformerBlock(
                dim=embed_dim,
                num_heads=num_heads,
                attn_tokens=attn_tokens,
                ffn_tokens=ffn_tokens,
                pattention_norm=pattention_norm,
                pattention_impl=pattention_impl,
                proj_drop=proj_drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=dpr[i],
                **dd,
            )
            for i in range(depth)])
        self.feature_info = [
            dict(module=f'blocks.{i}', num_chs=embed_dim, reduction=reduction) for i in range(depth)]
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6, **dd) if not use_fc_norm else nn.Identity()
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6, **dd) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()

        if weight_init != 'skip':
            self.init_weights()

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """nn.Module's, but a checkpoint of other token counts (a grown or smaller model) is named as
        such, with the create_model arguments that build a model it fits."""
        counts = token_counts_or_none(clean_state_dict(state_dict))  # None: leave the checks to torch
        if counts is not None and counts != (self.attn_tokens, self.ffn_tokens):
            raise RuntimeError(
                f'The checkpoint has attn_tokens={counts[0]}, ffn_tokens={counts[1]}, but this model was built with '
                f'attn_tokens={self.attn_tokens}, ffn_tokens={self.ffn_tokens}: pass attn_tokens={counts[0]}, '
                f'ffn_tokens={counts[1]} to create_model (or --model-kwargs), or grow the model first.')
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def init_weights(self) -> None:
        """timm's ViT init for embeddings, norms and head; Pattentions initialise themselves."""
        trunc_normal_(self.pos_embed, std=.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            init_weights_tokenformer(m)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Embeddings do not decay; parameter tokens do (they are 2-D, as in the paper)."""
        return {'pos_embed', 'cls_token'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Union[str, List]]:
        return dict(
            stem=r'^cls_token|pos_embed|patch_embed',  # stem and embed
            blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))]
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        dd = get_device_dtype(self)
        self.num_classes = num_classes
        if global_pool is not None:
            assert global_pool in ('', 'avg', 'avgmax', 'max', 'token'), \
                'Only avg, avgmax, max, token pooling (or none) is supported.'
            assert global_pool != 'token' or self.has_class_token, 'Token pooling needs the class token.'
            self.global_pool = global_pool
            # norm placement is fixed at construction, keep the current one for reconstruction
            update_model_args(self, fc_norm=not isinstance(self.fc_norm, nn.Identity))
        self.head = nn.Linear(self.embed_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.head.train(self.training)

    def set_input_size(
            self,
            img_size: Optional[Tuple[int, int]] = None,
            patch_size: Optional[Tuple[int, int]] = None,
    ) -> None:
        """Update the input image resolution and patch size, resampling the position embedding."""
        prev_grid_size = self.patch_embed.grid_size
        self.patch_embed.set_input_size(img_size=img_size, patch_size=patch_size)
        num_new_tokens = self.patch_embed.num_patches + self.num_prefix_tokens
        if num_new_tokens != self.pos_embed.shape[1] or self.patch_embed.grid_size != prev_grid_size:
            self.pos_embed = nn.Parameter(resample_abs_pos_embed(
                self.pos_embed,
                new_size=self.patch_embed.grid_size,
                old_size=prev_grid_size,
                num_prefix_tokens=self.num_prefix_tokens,
                verbose=True,
            ), requires_grad=self.pos_embed.requires_grad)
        update_model_input_size(self, self.patch_embed.img_size, patch_size=patch_size)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_img_size:
            B, H, W, C = x.shape
            pos_embed = resample_abs_pos_embed(
                self.pos_embed,
                new_size=(H, W),
                old_size=self.patch_embed.grid_size,
                num_prefix_tokens=self.num_prefix_tokens,
            )
            x = x.view(B, -1, C)
        else:
            pos_embed = self.pos_embed
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + pos_embed
        return self.pos_drop(x)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """ Forward features that returns intermediates.

        Args:
            x: Input image tensor
            indices: Take last n blocks if int, all if None, select matching indices if sequence
            return_prefix_tokens: Return both prefix and spatial intermediate tokens
            norm: Apply norm layer to all intermediates
            stop_early: Stop iterating over blocks when last desired intermediate hit
            output_fmt: Shape of intermediate feature outputs
            intermediates_only: Only return intermediate features
        Returns:
            A tuple with (final_features, intermediates), or the list of intermediate features.
        """
        assert output_fmt in ('NCHW', 'NLC'), 'Output format must be one of NCHW or NLC.'
        reshape = output_fmt == 'NCHW'
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)

        B, _, height, width = x.shape
        x = self.patch_embed(x)
        x = self._pos_embed(x)

        if torch.jit.is_scripting() or not stop_early:  # can't slice blocks in torchscript
            blocks = self.blocks
        else:
            blocks = self.blocks[:max_index + 1]
        for i, blk in enumerate(blocks):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x)
            else:
                x = blk(x)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm else x)

        # split prefix (class) and spatial feature tokens
        prefix_tokens = [y[:, 0:self.num_prefix_tokens] for y in intermediates]
        intermediates = [y[:, self.num_prefix_tokens:] for y in intermediates]
        if reshape:
            H, W = self.patch_embed.dynamic_feat_size((height, width))
            intermediates = [y.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous() for y in intermediates]
        if not torch.jit.is_scripting() and return_prefix_tokens and self.num_prefix_tokens:
            # return_prefix not support in torchscript due to poor type handling
            intermediates = list(zip(intermediates, prefix_tokens))

        if intermediates_only:
            return intermediates

        x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Prune layers not required for specified intermediates."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]  # truncate blocks
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.fc_norm = nn.Identity()
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = self._pos_embed(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        x = self.norm(x)
        return x

    def pool(self, x: torch.Tensor, pool_type: Optional[str] = None) -> torch.Tensor:
        pool_type = self.global_pool if pool_type is None else pool_type
        return global_pool_nlc(x, pool_type=pool_type, num_prefix_tokens=self.num_prefix_tokens)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x)
        x = self.fc_norm(x)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = self.forward_head(x)
        return x


def init_weights_tokenformer(module: nn.Module) -> None:
    """timm's ViT init for the non-Pattention layers (linear head: truncated normal, zero bias)."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, Pattention):
        module.reset_parameters()


# The Pattention layers of a Tokenformer-ViT, by parameter name: each block's attention projections
# follow `attn_tokens`, its FFN `ffn_tokens` (DDP's and torch.compile's prefixes allowed). Growth, of
# a model in memory and of a state dict on disk, and the checkpoint tools read the layers from here.
_KEY_TOKENS = re.compile(r'^(?:module\.)?(?:_orig_mod\.)?blocks\.\d+\.(attn\.(?:q|k|v|proj)|ffn)\.key_tokens$')


def pattention_kinds(names: Iterable[str]) -> Dict[str, str]:
    """{prefix: 'attn' or 'ffn'} of every Pattention whose key tokens are among `names` (state-dict
    keys or `named_parameters` names), in their order; `prefix + 'key_tokens'`, `'value_tokens'` and
    `'tau'` name its tensors."""
    kinds = {}
    for name in names:
        match = _KEY_TOKENS.match(name)
        if match:
            kinds[name[:-len('key_tokens')]] = 'ffn' if match.group(1) == 'ffn' else 'attn'
    return kinds


def token_counts(state_dict: Dict[str, torch.Tensor], source: str = 'checkpoint') -> Tuple[int, int]:
    """(attn_tokens, ffn_tokens) of a Tokenformer-ViT state dict."""
    counts = dict(attn=set(), ffn=set())
    for prefix, kind in pattention_kinds(state_dict).items():
        counts[kind].add(state_dict[prefix + 'key_tokens'].shape[0])
    attn, ffn = counts['attn'], counts['ffn']
    if not attn or not ffn:
        raise GrowthError(f'{source} is not a Tokenformer-ViT checkpoint: it has no blocks.N.attn.q.key_tokens '
                          f'or blocks.N.ffn.key_tokens (pass one of a tokenformer_vit_* model).')
    if len(attn) > 1 or len(ffn) > 1:
        raise GrowthError(f'{source} has Pattentions of mixed token counts ({sorted(attn)}, {sorted(ffn)}): '
                          f'grow it with tokenformer_vit.grow_model instead.')
    return attn.pop(), ffn.pop()


def token_counts_or_none(state_dict: Dict[str, torch.Tensor]) -> Optional[Tuple[int, int]]:
    """`token_counts`, or None for a state dict that is not a whole Tokenformer-ViT's (another timm model's)."""
    try:
        return token_counts(state_dict)
    except GrowthError:
        return None


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: TokenformerViT) -> Dict[str, torch.Tensor]:
    """Unwrap training checkpoints and adapt a state dict to the model (prefixes, position embedding)."""
    for wrapper in ('model', 'state_dict'):
        if isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
    out_dict = {}
    for k, v in state_dict.items():
        for prefix in ('module.', '_orig_mod.'):  # DDP and torch.compile wrappers
            if k.startswith(prefix):
                k = k[len(prefix):]
        if k == 'pos_embed' and v.shape[1] != model.pos_embed.shape[1]:
            num_prefix_tokens = model.num_prefix_tokens
            v = resample_abs_pos_embed(
                v,
                new_size=model.patch_embed.grid_size,
                num_prefix_tokens=num_prefix_tokens,
                verbose=True,
            )
        out_dict[k] = v
    return out_dict


def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        'url': '',
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': None,
        'crop_pct': 0.875,
        'interpolation': 'bicubic',
        'fixed_input_size': True,
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj',
        'classifier': 'head',
        'license': 'apache-2.0',
        'paper_ids': 'arXiv:2410.23168',
        'paper_name': 'TokenFormer: Rethinking Transformer Scaling with Tokenized Model Parameters',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'tokenformer_vit_tiny': _cfg(),
    'tokenformer_vit_small': _cfg(),
    'tokenformer_vit_base': _cfg(),
    'tokenformer_vit_base_pm': _cfg(),
    'tokenformer_vit_large': _cfg(),
    'tokenformer_vit_large_pm': _cfg(),
})


def _create_tokenformer_vit(variant: str, pretrained: bool = False, **kwargs) -> TokenformerViT:
    if pretrained:
        cfg = resolve_pretrained_cfg(
            variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay')).to_dict()
        if not (cfg.get('file') or cfg.get('url') or cfg.get('hf_hub_id') or cfg.get('state_dict')):
            raise RuntimeError(
                f'No pretrained weights exist for {variant}: create it with pretrained=False, or load '
                f'your own checkpoint with timm.create_model({variant!r}, checkpoint_path=PATH).')
    out_indices = kwargs.pop('out_indices', 3)
    return build_model_with_cfg(
        TokenformerViT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


@register_model
def tokenformer_vit_tiny(pretrained: bool = False, **kwargs) -> TokenformerViT:
    """ Tokenformer-ViT-Tiny/16: dim 192, 12 blocks, 3 heads, 192 attention and 768 FFN tokens."""
    model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, attn_tokens=192, ffn_tokens=768)
    return _create_tokenformer_vit('tokenformer_vit_tiny', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def tokenformer_vit_small(pretrained: bool = False, **kwargs) -> TokenformerViT:
    """ Tokenformer-ViT-Small/16: dim 384, 12 blocks, 6 heads, 384 attention and 1536 FFN tokens."""
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, attn_tokens=384, ffn_tokens=1536)
    return _create_tokenformer_vit('tokenformer_vit_small', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def tokenformer_vit_base(pretrained: bool = False, **kwargs) -> TokenformerViT:
    """ Tokenformer-ViT-Base/16: dim 768, 12 blocks, 12 heads, 768 attention and 3072 FFN tokens."""
    model_args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, attn_tokens=768, ffn_tokens=3072)
    return _create_tokenformer_vit('tokenformer_vit_base', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def tokenformer_vit_base_pm(pretrained: bool = False, **kwargs) -> TokenformerViT:
    """ Tokenformer-ViT-Base/16 parameter-matched to ViT-B/16: 576 attention and 2304 FFN tokens."""
    model_args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, attn_tokens=576, ffn_tokens=2304)
    return _create_tokenformer_vit('tokenformer_vit_base_pm', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def tokenformer_vit_large(pretrained: bool = False, **kwargs) -> TokenformerViT:
    """ Tokenformer-ViT-Large/16: dim 1024, 24 blocks, 16 heads, 1024 attention and 4096 FFN tokens."""
    model_args = dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16, attn_tokens=1024, ffn_tokens=4096)
    return _create_tokenformer_vit('tokenformer_vit_large', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def tokenformer_vit_large_pm(pretrained: bool = False, **kwargs) -> TokenformerViT:
    """ Tokenformer-ViT-Large/16 parameter-matched to ViT-L/16: 768 attention and 3072 FFN tokens."""
    model_args = dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16, attn_tokens=768, ffn_tokens=3072)
    return _create_tokenformer_vit('tokenformer_vit_large_pm', pretrained=pretrained, **dict(model_args, **kwargs))
