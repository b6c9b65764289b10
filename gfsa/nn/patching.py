"""``gfsa.patch``: put GFSA into an existing model, in place.

An adapter per model family (``gfsa/nn/adapters/``) knows (a) the model's attention modules in depth
order and (b) how to route their attention through :mod:`gfsa.nn.attention`. Adapters are found in a
registry, like transformers' AttentionInterface: :func:`register_adapter` adds one for a family this
suite does not know, without editing it. The coefficients live on the attention modules as a child
``gfsa`` (:class:`~gfsa.nn.attention.GFSACoefficients`), so state-dict keys of the original model are
untouched and a pretrained checkpoint loads with only the ``….gfsa.*`` keys missing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType

import torch
from torch import nn

from gfsa.nn.attention import GFSACoefficients
from gfsa.nn.layers import select_layers
from gfsa.nn.settings import GFSASettings


class UnsupportedModelError(TypeError):
    """A model that no adapter knows how to patch."""


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


def _defines(name: str) -> Callable[[nn.Module], bool]:
    return lambda model: hasattr(model, name)


def _from_library(prefix: str) -> Callable[[nn.Module], bool]:
    # The class or one of its bases: a user's subclass of a transformers/timm model is still one.
    return lambda model: any(cls.__module__.startswith(prefix) for cls in type(model).__mro__)


# name -> (does it handle this model, the adapter module or its import path). First match wins;
# matching never imports a library, so listing adapters stays cheap.
_ADAPTERS: dict[str, tuple[Callable[[nn.Module], bool], ModuleType | str]] = {
    "native": (_defines("gfsa_attention_modules"), "gfsa.nn.adapters.native"),
    "transformers": (_from_library("transformers."), "gfsa.nn.adapters.hf"),
    "timm": (_from_library("timm."), "gfsa.nn.adapters.timm"),
}
SUPPORTED = (
    "transformers: any model whose attention goes through its attention interface (bert, roberta, albert, "
    "distilbert, gpt2, llama, qwen2, qwen3, mistral, gemma3, phi3, t5, bart, mbart, plbart, whisper, vit, dinov2, "
    "speech_to_text, ...); timm: VisionTransformer/DeiT and models on timm.layers.Attention or AttentionRope, "
    "Eva, Beit, Cait, SwinTransformer, SwinTransformerV2; in-repo models with gfsa_attention_modules(); "
    "others through gfsa.nn.register_adapter"
)


def register_adapter(name: str, matches: Callable[[nn.Module], bool], adapter: ModuleType | str) -> None:
    """Teach :func:`patch` a model family: ``adapter`` (a module or its import path) defines
    ``attention_layers(model) -> list[AttentionLayer]`` and ``install(model, layers, chosen)``, and
    optionally ``check(model)`` (refuse what the family cannot do) and ``record(model, settings)``.
    Registered adapters are tried before the built-in ones."""
    global _ADAPTERS
    _ADAPTERS = {name: (matches, adapter), **{k: v for k, v in _ADAPTERS.items() if k != name}}


def find_adapter(model: nn.Module) -> ModuleType:
    for matches, adapter in _ADAPTERS.values():
        if matches(model):
            return importlib.import_module(adapter) if isinstance(adapter, str) else adapter
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
    *,
    settings: GFSASettings | None = None,
) -> nn.Module:
    """Add GFSA to ``model``'s selected layers, in place; returns ``model``.

    The arguments are those of :class:`~gfsa.nn.settings.GFSASettings` (or pass ``settings``): ``w0, w1,
    wK`` are the initial values (the defaults 0, 1, 0 leave outputs unchanged) and ``learn`` names the
    learnable ones (default only ``wK``, as in the official code). ``layers`` is a spec for
    :func:`gfsa.select_layers`. Cross-attention modules of selected decoder layers stay plain attention
    unless ``cross_attention="pad"`` (the official code's zero-padding).
    """
    if settings is None:
        settings = GFSASettings(layers, K, w0, w1, wK, tuple(learn), impl, dropout_order, cross_attention)
    adapter = find_adapter(model)
    # gfsa_layers is set even when no layer was chosen (layers="none" still installs the adapter).
    if hasattr(model, "gfsa_layers") or any(isinstance(m, GFSACoefficients) for m in model.modules()):
        if getattr(model, "gfsa_settings", None) == settings:
            return model  # already patched so (e.g. loaded by gfsa.from_pretrained): its trained coefficients stay
        raise ValueError(
            f"this model is already patched with GFSA ({_describe(getattr(model, 'gfsa_settings', None))}), not "
            f"with {_describe(settings)}: patch the original model once, or pass the settings it has"
        )
    all_layers: list[AttentionLayer] = adapter.attention_layers(model)
    chosen = select_layers(settings.layer_spec(), len(all_layers))
    if hasattr(adapter, "check"):  # what the family cannot do, refused before the model is changed
        adapter.check(model)
    shared: dict[int, GFSACoefficients] = {}
    for idx in chosen:
        layer = all_layers[idx]
        for module, cross in layer.modules:
            if cross and settings.cross_attention == "plain":
                continue  # plain cross-attention: nothing to learn there
            if layer.shared and id(module) in shared:
                shared[id(module)].shared_layers.append(layer.call_index)
                continue
            coeffs = GFSACoefficients(layer.num_heads, settings, layer=idx, cross=cross)
            ref = next(module.parameters(), None)
            if ref is not None:  # float64 models get float64 coefficients; lower precisions keep fp32 ones
                coeffs.to(device=ref.device, dtype=torch.float64 if ref.dtype == torch.float64 else None)
            if layer.shared:
                coeffs.shared_layers = [layer.call_index]
                shared[id(module)] = coeffs
            module.gfsa = coeffs
    adapter.install(model, all_layers, chosen)
    model.gfsa_layers = chosen
    model.gfsa_settings = settings
    if hasattr(adapter, "record"):  # e.g. transformers: config.gfsa, which save_pretrained writes
        adapter.record(model, settings)
    return model


def _describe(settings: GFSASettings | None) -> str:
    if settings is None:
        return "unknown settings"
    s = settings
    return f"layers={s.layer_spec()}, K={s.K}, learn={list(s.learn)}, impl={s.impl}"


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
