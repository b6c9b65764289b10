"""``gfsa.patch``: put GFSA into an existing model, in place.

Each model family has one adapter file here that knows (a) the model's attention modules in depth
order and (b) how to route their attention through :func:`gfsa.functional.gfsa_attention`.
The coefficients live on the attention modules as a child ``gfsa`` (:class:`GFSACoefficients`),
so state-dict keys of the original model are untouched and a pretrained checkpoint loads with
only the ``….gfsa.*`` keys missing.

In-repo models take part by defining ``gfsa_attention_modules()`` (ordered attention modules whose
forward calls :func:`apply_gfsa` with ``self``, or :func:`apply_gfsa_linear` for linear attention);
see ``gfsa/patch/native.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gfsa.functional import DROPOUT_ORDERS, IMPLS, _check_K, gfsa_apply, gfsa_attention, gfsa_linear_attention
from gfsa.layers import select_layers

COEFFICIENTS = ("w0", "w1", "wK")
CROSS_ATTENTION = ("plain", "pad")
SUPPORTED = (
    "transformers: bert, roberta, albert, gpt2, t5, bart, plbart, mbart, speech_to_text; "
    "timm: VisionTransformer/DeiT, Cait, SwinTransformer; "
    "in-repo models with gfsa_attention_modules()"
)


class UnsupportedModelError(TypeError):
    """A model that no adapter knows how to patch."""


@dataclass(frozen=True)
class GFSASettings:
    """Per-module settings that are not parameters."""

    K: float = 3
    impl: str = "auto"
    dropout_order: str = "after"
    cross_attention: str = "plain"  # plain: no A² for cross-attention; pad: the official zero-padding

    def __post_init__(self):
        _check_K(self.K)
        if self.impl not in IMPLS:
            raise ValueError(f"gfsa.impl={self.impl!r}: choose one of {', '.join(IMPLS)}")
        if self.dropout_order not in DROPOUT_ORDERS:
            raise ValueError(f"gfsa.dropout_order={self.dropout_order!r}: choose one of {', '.join(DROPOUT_ORDERS)}")
        if self.cross_attention not in CROSS_ATTENTION:
            raise ValueError(
                f"gfsa.cross_attention={self.cross_attention!r}: choose one of {', '.join(CROSS_ATTENTION)}"
            )


class GFSACoefficients(nn.Module):
    """``w0, w1, wK`` of one attention module, one value per head; learnable ones are Parameters.

    ``layers`` is set for modules shared by several layers (ALBERT): the filter is applied only on
    those calls (counted since the last :func:`reset_call_counters`), with shared coefficients.
    """

    def __init__(
        self,
        num_heads: int,
        settings: GFSASettings,
        w0: float = 0.0,
        w1: float = 1.0,
        wK: float = 0.0,
        learn: Iterable[str] = ("wK",),
        layer: int | None = None,
        cross: bool = False,
    ):
        super().__init__()
        learn = set(learn)
        for name, init in zip(COEFFICIENTS, (w0, w1, wK), strict=True):
            t = torch.full((num_heads,), float(init))
            if name in learn:
                self.register_parameter(name, nn.Parameter(t))
            else:
                self.register_buffer(name, t)
        self.num_heads = num_heads
        self.settings = settings
        self.layer = layer
        self.cross = cross
        self.shared_layers: list[int] | None = None
        self.calls = 0

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
        return _method_output(module, out, value, attn_mask, is_causal)
    s = g.settings
    out = gfsa_attention(
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
    return _method_output(module, out, value, attn_mask, is_causal)


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
    return _method_output(module, out, value, mask)


def _method_output(module: nn.Module, out: torch.Tensor, value: torch.Tensor, attn_mask=None, is_causal=False):
    """Compared methods that act on each head's attention output (AttnScale, ``gfsa/methods/``)."""
    method = getattr(module, "attnscale", None)
    return out if method is None else method(out, value, attn_mask, is_causal)


def apply_gfsa_to_probs(module: nn.Module, attn: torch.Tensor, value: torch.Tensor, dropout_p: float = 0.0):
    """``H·V`` for modules that form their attention matrix themselves (CaiT, Graphormer)."""
    g: GFSACoefficients | None = getattr(module, "gfsa", None)
    if g is None or not g.active():
        if dropout_p > 0:
            attn = torch.nn.functional.dropout(attn, dropout_p)
        return _method_output(module, attn @ value, value)
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
    return _method_output(module, out, value)


@dataclass
class AttentionLayer:
    """One layer as an adapter sees it: its attention modules and their head count.

    ``modules`` holds (module, is_cross_attention) pairs: a decoder block has a self- and a
    cross-attention module. ``shared`` modules are reused by several layers (ALBERT); the
    ``call_index``-th call of such a module within one forward pass belongs to this layer.
    """

    modules: list[tuple[nn.Module, bool]]
    num_heads: int
    shared: bool = False
    call_index: int | None = None


def reset_call_counters(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, GFSACoefficients):
            m.calls = 0


def _adapter(model: nn.Module):
    if hasattr(model, "gfsa_attention_modules"):
        from gfsa.patch import native

        return native
    # The class or one of its bases: a user's subclass of a transformers/timm model is still one.
    mods = [cls.__module__ for cls in type(model).__mro__]
    if any(mod.startswith("transformers.") for mod in mods):
        from gfsa.patch import hf

        return hf
    if any(mod.startswith("timm.") for mod in mods):
        from gfsa.patch import timm

        return timm
    raise UnsupportedModelError(f"gfsa.patch cannot patch {type(model).__name__}; supported: {SUPPORTED}")


def patch(
    model: nn.Module,
    layers: str | int | Sequence[int] | None = "all",
    K: float = 3,
    w0: float = 0.0,
    w1: float = 1.0,
    wK: float = 0.0,
    learn: Iterable[str] = ("wK",),
    impl: str = "auto",
    dropout_order: str = "after",
    cross_attention: str = "plain",
) -> nn.Module:
    """Add GFSA to ``model``'s selected layers, in place; returns ``model``.

    ``w0, w1, wK`` are the initial values (the defaults 0, 1, 0 leave outputs unchanged) and
    ``learn`` names the learnable ones (default only ``wK``, as in the official code). ``layers``
    is a spec for :func:`gfsa.select_layers`. Cross-attention modules of selected decoder layers
    stay plain attention unless ``cross_attention="pad"`` (the official code's zero-padding).
    """
    settings = GFSASettings(K=K, impl=impl, dropout_order=dropout_order, cross_attention=cross_attention)
    learn = tuple(learn)
    unknown = set(learn) - set(COEFFICIENTS)
    if unknown:
        raise ValueError(f"gfsa.learn={list(learn)}: unknown coefficient(s) {sorted(unknown)}; choose from w0, w1, wK")
    adapter = _adapter(model)
    # gfsa_layers is set even when no layer was chosen (layers="none" still installs the adapter).
    if hasattr(model, "gfsa_layers") or any(isinstance(m, GFSACoefficients) for m in model.modules()):
        raise ValueError("this model is already patched with GFSA; patch the original model once")
    all_layers: list[AttentionLayer] = adapter.attention_layers(model)
    chosen = select_layers(layers, len(all_layers))
    shared: dict[int, GFSACoefficients] = {}
    for idx in chosen:
        layer = all_layers[idx]
        for module, cross in layer.modules:
            if cross and cross_attention == "plain":
                continue  # plain cross-attention: nothing to learn there
            if layer.shared and id(module) in shared:
                shared[id(module)].shared_layers.append(layer.call_index)
                continue
            coeffs = GFSACoefficients(layer.num_heads, settings, w0, w1, wK, learn, layer=idx, cross=cross)
            ref = next(module.parameters(), None)
            if ref is not None:
                coeffs.to(device=ref.device)
            if layer.shared:
                coeffs.shared_layers = [layer.call_index]
                shared[id(module)] = coeffs
            module.gfsa = coeffs
    adapter.install(model, all_layers, chosen)
    model.gfsa_layers = chosen
    return model


def patched_layers(model: nn.Module) -> list[int]:
    """0-based indices of the layers that :func:`patch` gave GFSA (empty if unpatched)."""
    return list(getattr(model, "gfsa_layers", []))


def gfsa_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learnable GFSA coefficients, e.g. to exempt them from weight decay."""
    out = []
    for m in model.modules():
        if isinstance(m, GFSACoefficients):
            out.extend(m.parameters(recurse=False))
    return out


def added_parameters(model: nn.Module) -> int:
    """How many learnable parameters GFSA added (the paper's count: one wK per head per module)."""
    return sum(p.numel() for p in gfsa_parameters(model))
