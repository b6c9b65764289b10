"""GFSA: graph-filter-based self-attention (Choi et al., NeurIPS 2024), as a library and a suite.

Layers, each importing only the ones below it (docs/architecture.md; a test enforces it):

- ``gfsa.nn``: the library (the filter, layer selection, settings, ``patch`` and its adapters); torch only.
- ``gfsa.zoo``: backbones, tasks (datamodules), recipes (LightningModules) and the compared methods.
- ``gfsa.runner``: a config → a trained run and its results record (Hydra, Lightning, W&B).
- ``gfsa.ops``: sweeps, reports, analysis and benchmarks over runs.
- ``gfsa.cli``: the ``gfsa`` command; ``gfsa.utils``: pure-Python helpers every layer may use.

``import gfsa`` is light: the library's names below load on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "gfsa_attention": "gfsa.nn.functional",
    "gfsa_filter": "gfsa.nn.functional",
    "select_layers": "gfsa.nn.layers",
    "LayerSpecError": "gfsa.nn.layers",
    "GFSASettings": "gfsa.nn.settings",
    "patch": "gfsa.nn.patching",
    "patched_layers": "gfsa.nn.patching",
    "added_parameters": "gfsa.nn.patching",
    "gfsa_parameters": "gfsa.nn.patching",
    "register_adapter": "gfsa.nn.patching",
    "UnsupportedModelError": "gfsa.nn.patching",
    "from_pretrained": "gfsa.nn.saving",
    "create_model": "gfsa.nn.saving",
    "save_timm": "gfsa.nn.saving",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
