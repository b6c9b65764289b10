"""GFSA for timm vision models by swapping the attention module's class.

The subclasses override only ``forward``; parameters, buffers and state-dict keys stay those of
timm, so timm checkpoints load into a patched model (only the ``….gfsa.*`` keys are missing).
Unselected layers keep timm's own class and code path.
"""

from __future__ import annotations

import torch
from timm.layers import Attention
from timm.models.cait import Cait, TalkingHeadAttn
from timm.models.swin_transformer import SwinTransformer, WindowAttention
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from gfsa.nn.attention import apply_gfsa, apply_gfsa_to_probs
from gfsa.nn.patching import SUPPORTED, AttentionLayer, UnsupportedModelError


class GFSAAttention(Attention):
    """ViT/DeiT attention; the filter runs on the fused (SDPA) path."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        dropout_p = self.attn_drop.p if self.training else 0.0
        x = apply_gfsa(self, q, k, v, attn_mask, is_causal, self.scale, dropout_p)
        x = self.norm(x.transpose(1, 2).reshape(B, N, self.attn_dim))
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


class GFSATalkingHeadAttn(TalkingHeadAttn):
    """CaiT patch attention: the filter acts on the matrix after the post-softmax head mix (as the
    official code does), which is not row-stochastic, so it is formed explicitly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = self.proj_l((q @ k.transpose(-2, -1)).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        attn = self.proj_w(attn.softmax(dim=-1).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        dropout_p = self.attn_drop.p if self.training else 0.0
        x = apply_gfsa_to_probs(self, attn, v, dropout_p).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class GFSAWindowAttention(WindowAttention):
    """Swin window attention: relative-position bias and shift mask (−100) join as one float mask,
    so the fused path stays exact."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B_, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self._get_rel_pos_bias()
        if mask is not None:
            num_win = mask.shape[0]
            mask = mask.view(1, num_win, 1, N, N).expand(B_ // num_win, -1, self.num_heads, -1, -1)
            bias = bias + mask.reshape(-1, self.num_heads, N, N)
        dropout_p = self.attn_drop.p if self.training else 0.0
        x = apply_gfsa(self, q, k, v, bias.to(q.dtype), False, self.scale, dropout_p)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B_, N, -1)))


SWAPS = {Attention: GFSAAttention, TalkingHeadAttn: GFSATalkingHeadAttn, WindowAttention: GFSAWindowAttention}


def _blocks(model: nn.Module) -> list[nn.Module]:
    if isinstance(model, Cait):  # patch self-attention only; class-attention blocks stay untouched
        return list(model.blocks)
    if isinstance(model, VisionTransformer):
        return list(model.blocks)
    if isinstance(model, SwinTransformer):  # all stages, in depth order
        return [blk for stage in model.layers for blk in stage.blocks]
    raise UnsupportedModelError(
        f"gfsa.patch does not support timm model {type(model).__name__}; supported: {SUPPORTED}"
    )


def attention_layers(model: nn.Module) -> list[AttentionLayer]:
    out = []
    for blk in _blocks(model):
        attn = getattr(blk, "attn", None)  # e.g. ParallelThingsBlock has ``attns`` instead
        if type(attn) not in SWAPS and type(attn) not in SWAPS.values():  # patched models enumerate too
            what = f"attention {type(attn).__name__}" if attn is not None else f"block {type(blk).__name__}"
            raise UnsupportedModelError(f"gfsa.patch does not support the timm {what}; supported: {SUPPORTED}")
        out.append(AttentionLayer([(attn, False)], attn.num_heads))
    return out


def install(model: nn.Module, layers: list[AttentionLayer], chosen: list[int]) -> None:
    for idx in chosen:
        for attn, _ in layers[idx].modules:
            attn.__class__ = SWAPS.get(type(attn), type(attn))  # idempotent: compared methods install too
