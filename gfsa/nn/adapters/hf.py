"""GFSA for Hugging Face transformers models through AttentionInterface (no copied modeling files).

Importing this module registers the attention implementation ``"gfsa"`` and its mask function
(SDPA's bool masks, True = attend). The mask registration matters: without it transformers
silently passes ``attention_mask=None`` to a custom implementation and padding is ignored.
The name is not saved in ``config.json``; :func:`gfsa.patch` sets it again after loading.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import create_position_bias_mask, repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from gfsa.nn.attention import apply_gfsa, reset_call_counters, routed
from gfsa.nn.patching import SUPPORTED, AttentionLayer, UnsupportedModelError

IMPLEMENTATION = "gfsa"

# Attention classes that call the attention interface, per config.model_type.
ATTENTION_CLASSES = {
    "bert": ("BertSelfAttention", "BertCrossAttention"),
    "roberta": ("RobertaSelfAttention", "RobertaCrossAttention"),
    "albert": ("AlbertAttention",),
    "gpt2": ("GPT2Attention",),
    "t5": ("T5Attention",),
    "bart": ("BartAttention",),
    "plbart": ("PLBartAttention",),
    "mbart": ("MBartAttention",),
    "speech_to_text": ("Speech2TextAttention",),
}
CROSS_NAMES = ("encoder_attn", "EncDecAttention", "crossattention.self")
_LAYER_PREFIX = re.compile(r"^(.*?\.\d+)(\.|$)")


def gfsa_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    position_bias: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The ``"gfsa"`` attention implementation; unpatched modules take transformers' own SDPA path."""
    g = getattr(module, "gfsa", None)
    if not routed(module):  # no coefficients and no output hook (a compared method): transformers' own SDPA
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            position_bias=position_bias,
            **kwargs,
        )
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    q_len, kv_len = query.shape[2], key.shape[2]
    cross = g.cross if g is not None else bool(getattr(module, "is_cross_attention", False))
    if g is not None and not cross and q_len != kv_len:
        raise RuntimeError(
            "GFSA self-attention needs the whole sequence at once (A² couples all positions); "
            "incremental decoding with a KV cache cannot compute it: call generate(..., use_cache=False)"
        )
    is_causal = getattr(module, "is_causal", False) if is_causal is None else is_causal
    is_causal = bool(is_causal and attention_mask is None and q_len > 1 and not cross)
    if position_bias is not None:  # T5: relative position bias is part of the additive mask
        attention_mask = create_position_bias_mask(position_bias, attention_mask, is_causal, query, key)
        is_causal = False
    out = apply_gfsa(module, query, key, value, attention_mask, is_causal, scaling, dropout)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(IMPLEMENTATION, gfsa_attention_forward)
AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)


def _num_heads(module: nn.Module, config) -> int:
    for attr in ("num_attention_heads", "num_heads", "n_heads"):
        n = getattr(module, attr, None)
        if isinstance(n, int):
            return n
    return config.num_attention_heads


def attention_layers(model: nn.Module) -> list[AttentionLayer]:
    if not isinstance(model, PreTrainedModel):
        raise UnsupportedModelError(
            f"{type(model).__name__} is not a transformers PreTrainedModel; supported: {SUPPORTED}"
        )
    config = model.config
    classes = ATTENTION_CLASSES.get(config.model_type)
    if classes is None:
        raise UnsupportedModelError(
            f"gfsa.patch does not support model_type '{config.model_type}'; supported: {SUPPORTED}"
        )
    if config.model_type == "albert":
        return _albert_layers(model)
    layers: dict[str, AttentionLayer] = {}
    for name, m in model.named_modules():
        if type(m).__name__ not in classes:
            continue
        match = _LAYER_PREFIX.match(name)
        if match is None:
            continue
        cross = (
            name.endswith(CROSS_NAMES) or "Cross" in type(m).__name__ or bool(getattr(m, "is_cross_attention", False))
        )
        layer = layers.setdefault(match.group(1), AttentionLayer([], _num_heads(m, config)))
        layer.modules.append((m, cross))
    return list(layers.values())


def _albert_layers(model: nn.Module) -> list[AttentionLayer]:
    """ALBERT reuses one layer group for several layers: the call index tells them apart."""
    config = model.config
    groups = model.base_model.encoder.albert_layer_groups
    per_group = config.num_hidden_layers / config.num_hidden_groups
    out = []
    for i in range(config.num_hidden_layers):
        g = int(i / per_group)
        first = next(j for j in range(config.num_hidden_layers) if int(j / per_group) == g)
        modules = [(layer.attention, False) for layer in groups[g].albert_layers]
        out.append(AttentionLayer(modules, config.num_attention_heads, shared=True, call_index=i - first))
    return out


def install(model: nn.Module, layers: list[AttentionLayer], chosen: list[int]) -> None:
    model.set_attn_implementation(IMPLEMENTATION)
    if any(layer.shared for layer in layers):  # ALBERT: count the shared module's calls per pass
        model.base_model.encoder.register_forward_pre_hook(lambda m, args: reset_call_counters(m))
