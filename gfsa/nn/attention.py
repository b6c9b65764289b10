"""The attention path of a patched module: its coefficients, and the calls adapters route attention
through (:func:`apply_gfsa` for q/k/v, :func:`apply_gfsa_to_probs` for an explicit matrix,
:func:`apply_gfsa_linear` for linear attention).

A module without GFSA coefficients takes plain attention on the same path, so one code path serves
baseline and GFSA runs. Other methods that act on the attention output (e.g. the compared method
AttnScale) plug in through :func:`add_output_hook`, never by name.
"""

from __future__ import annotations

import torch
from torch import nn

from gfsa.nn.functional import gfsa_apply, gfsa_attention, gfsa_linear_attention
from gfsa.nn.settings import COEFFICIENTS, GFSASettings

_HOOKS = "_gfsa_output_hooks"  # names of child modules applied to the attention output, in order


class GFSACoefficients(nn.Module):
    """``w0, w1, wK`` of one attention module, one value per head (initial values from ``settings``);
    the ones in ``settings.learn`` are Parameters, the others buffers.

    ``shared_layers`` is set for modules shared by several layers (ALBERT): the filter is applied only
    on those calls (counted since the last :func:`reset_call_counters`), with shared coefficients.

    ``kernel`` is the function :func:`apply_gfsa` computes GFSA with (``gfsa_attention``'s signature);
    None is :func:`gfsa.nn.functional.gfsa_attention`. A seam for benchmarks and experiments (the
    benchmarks' official ``A @ A`` formulation plugs in here), not a setting: never saved or configured.
    """

    def __init__(self, num_heads: int, settings: GFSASettings, layer: int | None = None, cross: bool = False):
        super().__init__()
        for name in COEFFICIENTS:
            t = torch.full((num_heads,), float(getattr(settings, name)))
            if name in settings.learn:
                self.register_parameter(name, nn.Parameter(t))
            else:
                self.register_buffer(name, t)
        self.num_heads = num_heads
        self.settings = settings
        self.layer = layer
        self.cross = cross
        self.shared_layers: list[int] | None = None
        self.calls = 0
        self.kernel = None

    def extra_repr(self) -> str:
        learn = [n for n, _ in self.named_parameters(recurse=False)]
        s = self.settings
        return f"heads={self.num_heads}, K={s.K}, impl={s.impl}, learn={learn}, layer={self.layer}"

    def active(self) -> bool:
        """Whether this call of the module is filtered (always, except for shared modules)."""
        if self.shared_layers is None:
            return True
        call, self.calls = self.calls, self.calls + 1
        return call in self.shared_layers


def reset_call_counters(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, GFSACoefficients):
            m.calls = 0


def add_output_hook(module: nn.Module, name: str, hook: nn.Module) -> None:
    """Attach ``hook`` as child ``name`` of an attention module: ``hook(out, value, attn_mask, is_causal)``
    transforms the attention output (B, H, Lq, D) on every path of this module (GFSA's or plain)."""
    setattr(module, name, hook)
    setattr(module, _HOOKS, (*getattr(module, _HOOKS, ()), name))


def routed(module: nn.Module) -> bool:
    """Whether a module's attention must go through this path (it has coefficients or output hooks)."""
    return getattr(module, "gfsa", None) is not None or bool(getattr(module, _HOOKS, ()))


def _hooked(module: nn.Module, out: torch.Tensor, value: torch.Tensor, attn_mask=None, is_causal=False):
    for name in getattr(module, _HOOKS, ()):
        out = getattr(module, name)(out, value, attn_mask, is_causal)
    return out


def apply_gfsa(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Attention of ``module`` with its GFSA coefficients, or plain SDPA where it has none."""
    g: GFSACoefficients | None = getattr(module, "gfsa", None)
    if g is None or not g.active() or (g.cross and g.settings.cross_attention == "plain"):
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
        )
        return _hooked(module, out, value, attn_mask, is_causal)
    s = g.settings
    out = (g.kernel or gfsa_attention)(
        query,
        key,
        value,
        g.w0,
        g.w1,
        g.wK,
        s.K,
        attn_mask=attn_mask,
        is_causal=is_causal,
        scale=scale,
        dropout_p=dropout_p,
        impl=s.impl,
        dropout_order=s.dropout_order,
        pad_to_square=g.cross and s.cross_attention == "pad",
    )
    return _hooked(module, out, value, attn_mask, is_causal)


def apply_gfsa_linear(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Efficient (linear) attention of ``module`` with its GFSA coefficients, or plain Efficient Attention
    where it has none. ``key_padding_mask``: (B, L) bool, True for real tokens. ``impl`` and attention
    dropout do not apply: the filter is always computed in O(n·d²) without forming ``A``."""
    g: GFSACoefficients | None = getattr(module, "gfsa", None)
    if g is None or not g.active():
        out = gfsa_linear_attention(query, key, value, 0.0, 1.0, 0.0, 1, key_padding_mask)
    else:
        out = gfsa_linear_attention(query, key, value, g.w0, g.w1, g.wK, g.settings.K, key_padding_mask)
    mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
    return _hooked(module, out, value, mask)


def apply_gfsa_to_probs(module: nn.Module, attn: torch.Tensor, value: torch.Tensor, dropout_p: float = 0.0):
    """``H·V`` for modules that form their attention matrix themselves (CaiT, Graphormer)."""
    g: GFSACoefficients | None = getattr(module, "gfsa", None)
    if g is None or not g.active():
        if dropout_p > 0:
            attn = torch.nn.functional.dropout(attn, dropout_p)
        return _hooked(module, attn @ value, value)
    s = g.settings
    out = gfsa_apply(
        attn,
        value,
        g.w0,
        g.w1,
        g.wK,
        s.K,
        dropout_p=dropout_p,
        dropout_order=s.dropout_order,
        pad_to_square=g.cross and s.cross_attention == "pad",
    )
    return _hooked(module, out, value)
