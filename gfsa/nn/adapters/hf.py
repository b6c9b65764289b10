"""GFSA for any transformers model whose attention goes through the attention interface.

No table of model types: an attention module is one whose ``forward`` calls
``ALL_ATTENTION_FUNCTIONS.get_interface(...)`` (the heuristic transformers itself uses to allow
``set_attn_implementation``); layers are grouped by module path (encoder layers, then decoder layers);
self- vs cross-attention and causality come from module attributes and names. What a family hands the
interface is honoured: grouped-query attention, sliding-window and padding masks, RoPE (applied
before the call), T5's position bias, Whisper's pre-scaled queries. A keyword GFSA cannot honour
(logit soft-capping, attention sinks) is a one-line error, at ``patch`` and at run time.

Importing this module registers the implementation ``"gfsa"`` and its mask function (SDPA's bool
masks, True = attend): without a registered mask function transformers silently passes
``attention_mask=None`` to a custom implementation and padding would be ignored. The name is not
written to ``config.json``; :func:`gfsa.nn.saving.from_pretrained` asks for it again, and
``patch`` records its settings in ``model.config.gfsa`` so that ``save_pretrained`` keeps them.

Causal self-attention with a KV cache (``generate()``, ``use_cache=True``) is exact: the cache also
keeps the rows of ``A·V`` (:mod:`gfsa.nn.adapters.hf_cache`).
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import create_position_bias_mask, repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from gfsa.nn.adapters import hf_cache
from gfsa.nn.attention import GFSACoefficients, apply_gfsa, reset_call_counters, routed
from gfsa.nn.functional import attention_probs, gfsa_apply, gfsa_filter
from gfsa.nn.patching import AttentionLayer, UnsupportedModelError
from gfsa.nn.settings import GFSASettings

IMPLEMENTATION = "gfsa"

# Last path component (or class-name part) of cross-attention modules in transformers' modeling files.
CROSS_NAMES = ("encoder_attn", "crossattention", "EncDecAttention", "cross_attn", "cross_attention")
# Interface keywords whose meaning GFSA cannot reproduce: the filter needs a row-stochastic softmax A.
UNSUPPORTED_KWARGS = {
    "softcap": "attention logit soft-capping (tanh on the scores)",
    "s_aux": "attention sinks (an extra softmax column: rows of A no longer sum to 1)",
}
# The same, found before the first forward: config attribute / module tensor -> the keyword it becomes.
UNSUPPORTED_CONFIG = {"attn_logit_softcapping": "softcap"}
UNSUPPORTED_PARAMS = {"sinks": "s_aux"}
_LAYER_PREFIX = re.compile(r"^(.*?\.\d+)(\.|$)")


class UnsupportedAttentionError(UnsupportedModelError):
    """A model whose attention uses a feature GFSA cannot honour."""


# -- finding the attention modules -----------------------------------------------------------------
_CALLS_INTERFACE: dict[type, bool] = {}


def calls_attention_interface(cls: type) -> bool:
    """Whether ``cls.forward`` dispatches through ``ALL_ATTENTION_FUNCTIONS`` (cached per class)."""
    if cls not in _CALLS_INTERFACE:
        try:
            src = inspect.getsource(cls.forward)
        except (OSError, TypeError):
            src = ""
        _CALLS_INTERFACE[cls] = "ALL_ATTENTION_FUNCTIONS" in src and "get_interface(" in src
    return _CALLS_INTERFACE[cls]


@dataclass
class Site:
    """One attention module as the adapter sees it."""

    path: str
    module: nn.Module
    layer_key: str
    cross: bool
    num_heads: int


def _num_heads(module: nn.Module) -> int:
    for attr in ("num_heads", "num_attention_heads", "n_heads", "n_head"):
        n = getattr(module, attr, None)
        if isinstance(n, int):
            return n
    n = getattr(getattr(module, "config", None), "num_attention_heads", None)
    if isinstance(n, int):
        return n
    raise UnsupportedModelError(f"gfsa.patch cannot tell the number of heads of {type(module).__name__}")


def _is_cross(path: str, module: nn.Module) -> bool:
    return (
        bool(getattr(module, "is_cross_attention", False))
        or path.rsplit(".", 1)[-1] in CROSS_NAMES
        or "crossattention." in path
        or "Cross" in type(module).__name__
    )


def attention_sites(model: nn.Module) -> list[Site]:
    """Every module that calls the attention interface inside the numbered layers, in depth order."""
    sites = []
    for path, m in model.named_modules():
        if not calls_attention_interface(type(m)):
            continue
        match = _LAYER_PREFIX.match(path)
        if match is None:  # e.g. a pooling head's attention outside the numbered layers
            continue
        sites.append(Site(path, m, match.group(1), _is_cross(path, m), _num_heads(m)))
    return sites


def _family(model_or_module: nn.Module) -> str:
    config = getattr(model_or_module, "config", None)
    return getattr(config, "model_type", None) or type(model_or_module).__name__


def attention_layers(model: nn.Module) -> list[AttentionLayer]:
    """The layers (encoder layers first, then decoder layers) with their attention modules."""
    if not isinstance(model, PreTrainedModel):
        raise UnsupportedModelError(f"{type(model).__name__} is not a transformers PreTrainedModel")
    if model.config.model_type == "albert":  # one module shared by all layers: the call index tells them apart
        return _albert_layers(model)
    layers: dict[str, AttentionLayer] = {}
    for s in attention_sites(model):
        layers.setdefault(s.layer_key, AttentionLayer([], s.num_heads)).modules.append((s.module, s.cross))
    if not layers:
        raise UnsupportedModelError(
            f"gfsa.patch cannot patch {_family(model)} ({type(model).__name__}): none of its modules calls "
            "transformers' attention interface (ALL_ATTENTION_FUNCTIONS), which GFSA plugs into"
        )
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


def check(model: nn.Module) -> None:
    check_supported(model)


def check_supported(model: nn.Module) -> None:
    """One-line errors, before the model is changed, for features GFSA cannot honour."""
    configs = [model.config, *(getattr(model.config, k, None) for k in getattr(model.config, "sub_configs", {}))]
    for cfg in configs:
        for attr, kw in UNSUPPORTED_CONFIG.items():
            if getattr(cfg, attr, None) is not None:
                raise UnsupportedAttentionError(
                    f"gfsa.patch: {cfg.model_type} passes {kw}= ({UNSUPPORTED_KWARGS[kw]}; config.{attr}="
                    f"{getattr(cfg, attr)}), which GFSA cannot honour"
                )
    for s in attention_sites(model):
        for name, kw in UNSUPPORTED_PARAMS.items():
            if isinstance(getattr(s.module, name, None), torch.Tensor):
                raise UnsupportedAttentionError(
                    f"gfsa.patch: {_family(s.module)} passes {kw}= ({UNSUPPORTED_KWARGS[kw]}; {s.path}.{name}), "
                    "which GFSA cannot honour"
                )


def install(model: nn.Module, layers: list[AttentionLayer], chosen: list[int]) -> None:
    model.set_attn_implementation(IMPLEMENTATION)
    # set_attn_implementation only warns, changing nothing, for models whose source fails its heuristic
    stale = [
        s.path
        for s in attention_sites(model)
        if getattr(getattr(s.module, "config", None), "_attn_implementation", IMPLEMENTATION) != IMPLEMENTATION
    ]
    if stale:
        raise UnsupportedModelError(f"gfsa.patch: set_attn_implementation('gfsa') did not reach {stale[0]}")
    for layer in layers:
        for module, cross in layer.modules:
            if isinstance(getattr(module, "gfsa", None), GFSACoefficients) and not cross and module.is_causal:
                hf_cache.install_cache_hook(module)
    if any(layer.shared for layer in layers):  # ALBERT: count the shared module's calls per pass
        model.base_model.encoder.register_forward_pre_hook(lambda m, args: reset_call_counters(m))


def record(model: nn.Module, settings: GFSASettings) -> None:
    """``save_pretrained`` writes ``config.gfsa``; :func:`gfsa.nn.saving.from_pretrained` reads it back."""
    model.config.gfsa = settings.to_config()


# -- the attention implementation --------------------------------------------------------------------
def wants_attentions(kwargs: dict) -> bool:
    """Whether the caller asked for attention weights: the interface keyword where the module forwards it,
    else the collector ``@capture_outputs`` fills (GPT-2 keeps ``output_attentions`` for itself)."""
    if kwargs.get("output_attentions"):
        return True
    try:  # private transformers API, present in 5.x: absent, only the keyword counts
        from transformers.utils.output_capturing import _active_collector
    except ImportError:
        return False
    collected = _active_collector.get()
    return bool(collected) and "attentions" in collected


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
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The ``"gfsa"`` attention implementation: ((B, Lq, H, Dv), the filtered matrix H or None).
    Modules without coefficients or hooks, when no weights are asked for, take transformers' own SDPA."""
    cache = kwargs.pop(hf_cache.CACHE_KWARG, None)
    for kw, what in UNSUPPORTED_KWARGS.items():
        if kwargs.get(kw) is not None:
            raise UnsupportedAttentionError(
                f"GFSA: {_family(module)} ({type(module).__name__}) passes {kw}= ({what}), which GFSA cannot honour"
            )
    g: GFSACoefficients | None = getattr(module, "gfsa", None)
    want = wants_attentions(kwargs)
    if not routed(module) and not want:
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
    if g is not None and g.num_heads != query.shape[1]:
        raise RuntimeError(f"GFSA: {type(module).__name__} has {query.shape[1]} heads, coefficients for {g.num_heads}")
    cross = g.cross if g is not None else _is_cross("", module)
    causal = bool(getattr(module, "is_causal", False) if is_causal is None else is_causal) and not cross
    if position_bias is not None:  # T5: the relative position bias becomes part of an additive mask
        attention_mask = create_position_bias_mask(
            position_bias, attention_mask, causal and attention_mask is None and q_len > 1, query, key
        )
        causal = False
    # Training forwards (use_cache=True is many configs' default) take the memory-lean kernels below: the
    # cache's A·V rows are only needed to extend it, and in training there is nothing to extend.
    extend = cache is not None and dropout == 0 and not (module.training and q_len == kv_len)
    if g is not None and not cross and extend:
        out, H = hf_cache.cached_gfsa(module, g, cache, query, key, value, attention_mask, causal, scaling, want)
        return out.transpose(1, 2).contiguous(), H
    if g is not None and not cross and q_len != kv_len:
        raise RuntimeError(
            f"GFSA self-attention got {q_len} queries for {kv_len} keys without a KV cache it can extend "
            f"({type(module).__name__}): pass the model's cache (generate() does) or use_cache=False"
        )
    causal = causal and attention_mask is None and q_len > 1  # SDPA: is_causal only without a mask
    if not want:
        out = apply_gfsa(module, query, key, value, attention_mask, causal, scaling, dropout)
        return out.transpose(1, 2).contiguous(), None
    # output_attentions: form A and return the filtered H (A itself for modules without coefficients)
    A = attention_probs(query, key, attention_mask, causal, scaling)
    active = g is not None and g.active() and not (g.cross and g.settings.cross_attention == "plain")
    if not active:
        H = A
        out = F.dropout(A, dropout, training=module.training) @ value
    else:
        s = g.settings
        pad = g.cross and s.cross_attention == "pad"
        H = gfsa_filter(A, g.w0, g.w1, g.wK, s.K, pad_to_square=pad)
        out = gfsa_apply(
            A, value, g.w0, g.w1, g.wK, s.K, dropout_p=dropout, dropout_order=s.dropout_order, pad_to_square=pad
        )
    return out.transpose(1, 2).contiguous(), H


AttentionInterface.register(IMPLEMENTATION, gfsa_attention_forward)
AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)
