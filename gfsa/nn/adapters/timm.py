"""GFSA for timm models by swapping each attention module's class.

Every module of a known attention class is found wherever it sits (ViT/DeiT and every model built on
timm's shared ``Attention`` / ``AttentionRope`` layer, EVA / EVA-02 with RoPE, BEiT with its relative
position bias, CaiT's talking heads, Swin and Swin V2 windows), grouped into layers by its block
(``…blocks.<n>``, so parallel-attention blocks are one layer), in depth order. An attention module of
a class this adapter does not know stops ``patch`` with its name, never a partly patched model.

The subclasses override only ``forward``: parameters, buffers and state-dict keys stay timm's, so timm
checkpoints load into a patched model (only the ``….gfsa.*`` keys are missing). Unselected layers keep
timm's own class and code path.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from timm.layers import Attention, AttentionRope, apply_rot_embed_cat
from timm.models.beit import Attention as BeitAttention
from timm.models.cait import TalkingHeadAttn
from timm.models.eva import EvaAttention
from timm.models.swin_transformer import WindowAttention
from timm.models.swin_transformer_v2 import WindowAttention as WindowAttentionV2
from torch import nn

from gfsa.nn.attention import apply_gfsa, apply_gfsa_to_probs
from gfsa.nn.patching import SUPPORTED, AttentionLayer, UnsupportedModelError

# Attention modules GFSA leaves alone by design: CaiT's class attention (one query: no A²), pooling heads.
EXEMPT = ("ClassAttn", "AttentionPoolLatent", "AttentionPool2d", "RotAttentionPool2d")
_BLOCK = re.compile(r"^(.*\bblocks\.\d+)(\.|$)")


def _dropout(module: nn.Module) -> float:
    return module.attn_drop.p if module.training else 0.0


def _rope(module: nn.Module, t: torch.Tensor, rope: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if rope is None:
        return t
    npt = module.num_prefix_tokens
    half = getattr(module, "rotate_half", False)
    return torch.cat([t[:, :, :npt, :], apply_rot_embed_cat(t[:, :, npt:, :], rope, half=half)], dim=2).type_as(like)


def _biased_qkv(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """BEiT / EVA / Swin V2 projections: qkv with separate q and v biases (k has none)."""
    if module.q_bias is None:
        return module.qkv(x)
    qkv_bias = torch.cat((module.q_bias, module.k_bias, module.v_bias))
    if module.qkv_bias_separate:
        return module.qkv(x) + qkv_bias
    return F.linear(x, weight=module.qkv.weight, bias=qkv_bias)


class GFSAAttention(Attention):
    """ViT/DeiT attention (timm's shared layer); the filter runs on the fused (SDPA) path."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        x = apply_gfsa(self, q, k, v, attn_mask, is_causal, self.scale, _dropout(self))
        x = self.norm(x.transpose(1, 2).reshape(B, N, self.attn_dim))
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


class GFSAAttentionRope(AttentionRope):
    """timm's shared attention with rotary embeddings and grouped-query heads."""

    def forward(self, x, rope=None, attn_mask=None, is_causal: bool = False):
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        if self.qkv is not None:
            q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q = self.q_proj(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)
            k = self.k_proj(x).reshape(B, N, self.num_kv_heads, self.head_dim).transpose(1, 2)
            v = self.v_proj(x).reshape(B, N, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = self.q_norm(q), self.k_norm(k)
        q, k = _rope(self, q, rope, v), _rope(self, k, rope, v)
        if self.num_kv_groups > 1:
            k = k.repeat_interleave(self.num_kv_groups, dim=1)
            v = v.repeat_interleave(self.num_kv_groups, dim=1)
        x = apply_gfsa(self, q, k, v, attn_mask, is_causal, self.scale, _dropout(self))
        x = self.norm(x.transpose(1, 2).reshape(B, N, -1))
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


class GFSAEvaAttention(EvaAttention):
    """EVA / EVA-02: rotary embeddings on the patch tokens (not the prefix tokens), then the filter."""

    def forward(self, x, rope=None, attn_mask=None, is_causal: bool = False):
        B, N, C = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        if self.qkv is not None:
            q, k, v = _biased_qkv(self, x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q = self.q_proj(x).reshape(B, N, self.num_heads, -1).transpose(1, 2)
            k = self.k_proj(x).reshape(B, N, self.num_heads, -1).transpose(1, 2)
            v = self.v_proj(x).reshape(B, N, self.num_heads, -1).transpose(1, 2)
        q, k = self.q_norm(q), self.k_norm(k)
        q, k = _rope(self, q, rope, v), _rope(self, k, rope, v)
        x = apply_gfsa(self, q, k, v, attn_mask, is_causal, self.scale, _dropout(self))
        x = self.norm(x.transpose(1, 2).reshape(B, N, C))
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


class GFSABeitAttention(BeitAttention):
    """BEiT: the relative position bias (the layer's own and the model's shared one) is an additive
    mask, so the fused path stays exact."""

    def forward(self, x: torch.Tensor, shared_rel_pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = _biased_qkv(self, x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self._get_rel_pos_bias() if self.relative_position_bias_table is not None else None
        if shared_rel_pos_bias is not None:
            bias = shared_rel_pos_bias if bias is None else bias + shared_rel_pos_bias
        bias = None if bias is None else bias.to(q.dtype)
        x = apply_gfsa(self, q, k, v, bias, False, self.scale, _dropout(self))
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, -1)))


class GFSATalkingHeadAttn(TalkingHeadAttn):
    """CaiT patch attention: the filter acts on the matrix after the post-softmax head mix (as the
    official code does), which is not row-stochastic, so it is formed explicitly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = self.proj_l((q @ k.transpose(-2, -1)).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        attn = self.proj_w(attn.softmax(dim=-1).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = apply_gfsa_to_probs(self, attn, v, _dropout(self)).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


def _window_mask(bias: torch.Tensor, mask: torch.Tensor | None, batch_windows: int, heads: int, n: int):
    """The relative-position bias plus Swin's shift mask (−100 between regions) as one float mask."""
    if mask is None:
        return bias
    num_win = mask.shape[0]
    mask = mask.view(1, num_win, 1, n, n).expand(batch_windows // num_win, -1, heads, -1, -1)
    return bias + mask.reshape(-1, heads, n, n)


class GFSAWindowAttention(WindowAttention):
    """Swin window attention: relative-position bias and shift mask (−100) join as one float mask, so
    the fused path stays exact."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B_, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = _window_mask(self._get_rel_pos_bias(), mask, B_, self.num_heads, N)
        x = apply_gfsa(self, q, k, v, bias.to(q.dtype), False, self.scale, _dropout(self))
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B_, N, -1)))


class GFSAWindowAttentionV2(WindowAttentionV2):
    """Swin V2 cosine attention: scores ``normalize(q)·normalize(k)ᵀ·τ + 16·sigmoid(CPB bias)`` are
    SDPA's with queries ``normalize(q)·τ`` (τ per head), keys ``normalize(k)`` and scale 1."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B_, N, C = x.shape
        q, k, v = _biased_qkv(self, x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        logit_scale = torch.clamp(self.logit_scale, max=math.log(1.0 / 0.01)).exp()  # (heads, 1, 1)
        q, k = F.normalize(q, dim=-1) * logit_scale, F.normalize(k, dim=-1)
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        bias = table[self.relative_position_index.view(-1)].view(N, N, -1).permute(2, 0, 1).contiguous()
        bias = _window_mask(16 * torch.sigmoid(bias).unsqueeze(0), mask, B_, self.num_heads, N)
        x = apply_gfsa(self, q, k, v, bias.to(q.dtype), False, 1.0, _dropout(self))
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B_, N, C)))


SWAPS = {
    Attention: GFSAAttention,
    AttentionRope: GFSAAttentionRope,
    EvaAttention: GFSAEvaAttention,
    BeitAttention: GFSABeitAttention,
    TalkingHeadAttn: GFSATalkingHeadAttn,
    WindowAttention: GFSAWindowAttention,
    WindowAttentionV2: GFSAWindowAttentionV2,
}
_KNOWN = (*SWAPS, *SWAPS.values())  # patched models enumerate too (compared methods install again)


def _looks_like_attention(module: nn.Module) -> bool:
    """An attention module (not a block named after its attention): a class named so, with heads."""
    name = type(module).__name__
    return ("Attention" in name or name.endswith("Attn")) and "Block" not in name and name not in EXEMPT


def attention_layers(model: nn.Module) -> list[AttentionLayer]:
    layers: dict[str, AttentionLayer] = {}
    for path, m in model.named_modules():
        if type(m) in _KNOWN:
            match = _BLOCK.match(path)
            key = match.group(1) if match else path.rpartition(".")[0]
            layers.setdefault(key, AttentionLayer([], m.num_heads)).modules.append((m, False))
        elif _looks_like_attention(m) and not any(type(c) in _KNOWN for c in m.children()):
            raise UnsupportedModelError(
                f"gfsa.patch does not support the timm attention {type(m).__name__} ({path}); supported: {SUPPORTED}"
            )
    if not layers:
        raise UnsupportedModelError(
            f"gfsa.patch found no attention layer it knows in timm model {type(model).__name__}; supported: {SUPPORTED}"
        )
    return list(layers.values())


def install(model: nn.Module, layers: list[AttentionLayer], chosen: list[int]) -> None:
    for idx in chosen:
        for attn, _ in layers[idx].modules:
            attn.__class__ = SWAPS.get(type(attn), type(attn))  # idempotent: compared methods install too
