"""Helpers shared by the patch tests (core, timm, transformers): find and set GFSA coefficients."""

from __future__ import annotations

import torch

from gfsa.nn.attention import GFSACoefficients


def coefficient_modules(model) -> list[GFSACoefficients]:
    return [m for m in model.modules() if isinstance(m, GFSACoefficients)]


def set_coefficients(model, wK=None, w0=None, seed: int = 3) -> None:
    """Non-identity coefficients after patching: ``wK`` a number or "random" (per head)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for c in coefficient_modules(model):
            if wK == "random":
                c.wK.copy_(torch.rand(c.num_heads, generator=g) - 0.5)
            elif wK is not None:
                c.wK.fill_(wK)
            if w0 is not None:
                c.w0.fill_(w0)
