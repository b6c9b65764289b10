"""Exact GFSA with a transformers KV cache: the rows of ``A·V`` are cached beside the keys and values.

In causal attention row i of ``A`` (and so of ``A·V``) depends only on positions <= i. With
``H·V = w0·V + A·(c1·V + c2·A·V)``, a new token (or chunk) needs its own row ``a_i`` of ``A`` over the
cached keys plus itself, its row of ``A·V`` (``a_i·V``), and the cached rows of ``A·V``:
``out_i = w0·v_i + a_i·(c1·V + c2·(A·V))``, two attention passes over the cache, O(n·d) per token.
Prefill (an empty cache, any q_len) computes every prompt row of ``A·V`` and stores it.

Where the ``A·V`` rows live: in a second cache layer of the same class (``layer.gfsa_av``) that is
updated with the new rows right after the real layer got the new keys/values, so its stored rows stay
aligned with the keys whatever the class does (DynamicLayer appends; DynamicSlidingWindowLayer keeps the
last ``sliding_window − 1``). The real layer's class is swapped to a subclass that forwards every
cache operation (beam-search ``reorder_cache``, ``crop``, ``batch_select_indices``,
``batch_repeat_interleave``, ``reset``, offloading) to that second layer as well.

How the attention function gets the cache: it is not an argument of the attention interface, so a
forward pre-hook on each patched causal self-attention module copies the module's ``cache`` keyword
into the module's ``**kwargs`` under ``gfsa_cache``; every transformers attention module forwards its
``**kwargs`` to the interface. No module attribute is mutated (torch.compile-friendly).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer, EncoderDecoderCache

from gfsa.nn.functional import attention_probs, filter_coefficients, gfsa_filter
from gfsa.nn.primitives import _is_zero, _per_head

CACHE_KWARG = "gfsa_cache"
SUPPORTED_LAYERS = "DynamicLayer, DynamicSlidingWindowLayer (DynamicCache)"


class UnsupportedCacheError(TypeError):
    """A cache whose layers cannot keep the rows of A·V."""


def _keeps_av(base: type) -> type:
    """``base`` with a twin ``gfsa_av`` (the A·V rows): every operation on the keys and values is applied
    to the twin too, so its rows stay aligned with the keys. A direct subclass (not a mixin), because
    ``layer.__class__ = …`` refuses a class whose bases add a mixin ("object layout differs")."""

    class Layer(base):
        gfsa_av: DynamicLayer

        def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
            super().reorder_cache(beam_idx)
            self.gfsa_av.reorder_cache(beam_idx)

        def crop(self, tokens_to_remove: int) -> None:
            super().crop(tokens_to_remove)
            self.gfsa_av.crop(tokens_to_remove)

        def batch_repeat_interleave(self, repeats: int) -> None:
            super().batch_repeat_interleave(repeats)
            self.gfsa_av.batch_repeat_interleave(repeats)

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            super().batch_select_indices(indices)
            self.gfsa_av.batch_select_indices(indices)

        def reset(self) -> None:
            super().reset()
            self.gfsa_av.reset()

        def offload(self):
            super().offload()
            self.gfsa_av.offload()

        def prefetch(self):
            super().prefetch()
            self.gfsa_av.prefetch()

        def activate_past_recording(self, **kwargs):
            super().activate_past_recording(**kwargs)
            self.gfsa_av.activate_past_recording(**kwargs)

    Layer.__name__ = Layer.__qualname__ = f"GFSA{base.__name__}"  # picklable as a module-level name
    return Layer


GFSADynamicLayer = _keeps_av(DynamicLayer)
GFSADynamicSlidingWindowLayer = _keeps_av(DynamicSlidingWindowLayer)


def _sliding_twin(layer: DynamicSlidingWindowLayer) -> DynamicSlidingWindowLayer:
    twin = DynamicSlidingWindowLayer(sliding_window=layer.sliding_window)
    twin.record_past = layer.record_past
    return twin


# exact class -> (twin factory, swapped class). Static, quantized and linear-attention layers are not here:
# StaticLayer returns its whole buffer (the new value rows are not the last ones), quantized layers would
# quantize A·V, linear-attention layers have no per-token rows.
_TWINS = {
    DynamicLayer: (lambda layer: DynamicLayer(), GFSADynamicLayer),
    DynamicSlidingWindowLayer: (_sliding_twin, GFSADynamicSlidingWindowLayer),
}


def _av_layer(layer, q_len: int, where: str):
    """The layer's A·V twin, created (and the layer's class swapped) on the first call."""
    twin = getattr(layer, "gfsa_av", None)
    if twin is not None:
        return twin
    entry = _TWINS.get(type(layer))
    if entry is None:
        raise UnsupportedCacheError(
            f"GFSA cached decoding: {where} uses a {type(layer).__name__} cache layer, which cannot keep A·V rows "
            f"(supported: {SUPPORTED_LAYERS}); use cache_implementation='dynamic' or use_cache=False"
        )
    if layer.get_seq_length() != q_len:
        raise UnsupportedCacheError(
            f"GFSA cached decoding: {where}'s cache held {layer.get_seq_length() - q_len} tokens before GFSA saw it "
            "(their A·V rows are missing); build the cache with the patched model"
        )
    make, swapped = entry
    twin = make(layer)
    layer.__class__ = swapped
    layer.gfsa_av = twin
    return twin


def self_attention_layer(cache, module: nn.Module):
    """The cache layer of ``module``'s self-attention (encoder-decoder caches hold two caches)."""
    if isinstance(cache, EncoderDecoderCache):
        cache = cache.self_attention_cache
    idx = getattr(module, "layer_idx", None)
    if not isinstance(idx, int):
        raise UnsupportedCacheError(f"GFSA cached decoding: {type(module).__name__} has no layer_idx")
    return cache.layers[idx]


def cached_gfsa(module, g, cache, query, key, value, attn_mask, is_causal: bool, scale, want_weights: bool = False):
    """GFSA rows for the ``q_len`` new queries over all cached keys; stores their A·V rows.
    Returns (out (B, H, q, Dv), H or None).

    ``query`` (B, H, q, D); ``key``/``value`` (B, H, kv, D): the cache's states including the new ones
    (GQA already repeated). ``attn_mask`` as the model built it for this layer (bool or float, sliding
    window included) or None: then no mask for one query, causal for a square prefill, and a
    bottom-right causal mask for a chunk after cached tokens. ``want_weights`` (output_attentions):
    only at prefill, where the whole A is at hand.
    """
    q_len, kv_len = query.shape[2], key.shape[2]
    layer = self_attention_layer(cache, module)
    causal = False
    if attn_mask is None and q_len > 1 and is_causal:
        if q_len == kv_len:
            causal = True
        else:  # chunked prefill: SDPA's is_causal would align top-left
            attn_mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)

    if want_weights:
        if q_len != kv_len:
            raise RuntimeError(
                "GFSA: output_attentions after cached tokens cannot return H (its rows need A over the whole "
                "prefix); call with use_cache=False"
            )
        A = attention_probs(query, key, attn_mask, causal, scale)
        _av_layer(layer, q_len, type(module).__name__).update(A @ value, value[..., :0])
        H = gfsa_filter(A, g.w0, g.w1, g.wK, g.settings.K)
        return H @ value, H

    def attend(v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(query, key, v, attn_mask=attn_mask, is_causal=causal, scale=scale)

    w0, c1, c2 = filter_coefficients(g.w0, g.w1, g.wK, g.settings.K)
    w0, c1, c2 = (_per_head(c, value) for c in (w0, c1, c2))
    if _is_zero(c2):  # K = 1: no A² term, nothing to cache
        inner = value * c1
    else:
        a_v = attend(value)  # rows of A·V for the new queries
        av_all, _ = _av_layer(layer, q_len, type(module).__name__).update(a_v, a_v[..., :0])
        if av_all.shape[-2] != kv_len:
            raise UnsupportedCacheError(
                f"GFSA cached decoding: A·V rows ({av_all.shape[-2]}) out of step with the keys ({kv_len})"
            )
        inner = value * c1 + av_all * c2
    return attend(inner) + value[:, :, kv_len - q_len :] * w0, None


def _cache_param_index(cls: type) -> int | None:
    params = list(inspect.signature(cls.forward).parameters)[1:]  # without self
    for name in ("cache", "past_key_values", "past_key_value"):
        if name in params:
            return params.index(name)
    return None


def install_cache_hook(module: nn.Module) -> None:
    """Copy the module's ``cache`` argument into its ``**kwargs`` (as ``gfsa_cache``) so that it reaches the
    attention function. Only added when a cache is present: without one the call is unchanged."""
    index = _cache_param_index(type(module))

    def hook(mod, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values", kwargs.get("past_key_value")))
        if cache is None and index is not None and index < len(args):
            cache = args[index]
        if cache is None:
            return None
        return args, {**kwargs, CACHE_KWARG: cache}

    module.register_forward_pre_hook(hook, with_kwargs=True)
