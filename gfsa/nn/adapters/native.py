"""GFSA for the suite's own models (and yours): no class swap, no registry.

A model opts in by defining ``gfsa_attention_modules()``: its attention modules in depth order,
each with a ``num_heads`` attribute, whose forward computes attention with
``gfsa.nn.attention.apply_gfsa(self, q, k, v, …)`` (or ``apply_gfsa_to_probs`` when it forms the attention
matrix itself). Without a ``gfsa`` child those calls are plain attention, so the same code serves
baseline and GFSA runs.
"""

from __future__ import annotations

from torch import nn

from gfsa.nn.patching import AttentionLayer


def attention_layers(model: nn.Module) -> list[AttentionLayer]:
    return [
        AttentionLayer([(m, bool(getattr(m, "is_cross_attention", False)))], m.num_heads)
        for m in model.gfsa_attention_modules()
    ]


def install(model: nn.Module, layers: list[AttentionLayer], chosen: list[int]) -> None:
    """Nothing to install: the modules already call ``apply_gfsa``."""
