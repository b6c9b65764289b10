"""The GFSA library: the filter (``functional``), layer selection (``layers``), the typed settings
(``settings``) and ``patch`` with one adapter per model family (``adapters/``). Imports only torch
(the adapters also timm or transformers, when a model of theirs is patched).

Names load on first use, so ``gfsa.nn.layers`` and ``gfsa.nn.settings`` stay importable without torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "gfsa_attention": "functional",
    "gfsa_filter": "functional",
    "gfsa_apply": "functional",
    "gfsa_linear_attention": "functional",
    "attention_probs": "functional",
    "select_layers": "layers",
    "normalize_spec": "layers",
    "LayerSpecError": "layers",
    "GFSASettings": "settings",
    "GFSACoefficients": "attention",
    "apply_gfsa": "attention",
    "apply_gfsa_to_probs": "attention",
    "apply_gfsa_linear": "attention",
    "add_output_hook": "attention",
    "patch": "patching",
    "patched_layers": "patching",
    "gfsa_parameters": "patching",
    "added_parameters": "patching",
    "register_adapter": "patching",
    "find_adapter": "patching",
    "AttentionLayer": "patching",
    "UnsupportedModelError": "patching",
    "from_pretrained": "saving",
    "create_model": "saving",
    "save_timm": "saving",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
