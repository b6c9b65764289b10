"""ContraNorm (Guo et al., ICLR 2023, "ContraNorm: A Contrastive Learning Perspective on Oversmoothing
and Beyond"): one gradient step of a uniformity (contrastive) loss that pushes token representations
apart, ``x ← x + s·(x − softmax(x̂·x̂ᵀ/τ)·x)`` with ``x̂`` the L2-normalised tokens.

This is the form of the official GLUE code (``(1+s)·x − s·softmax(…)·x``, no extra LayerNorm), applied
to the attention module's output. ``s`` is a fixed hyperparameter (``learnable=False``, the paper's
setting, 0 extra parameters) or a learnable per-channel vector initialised to ``s``. The published
method (s > 0) is not an identity at init; ``scale=0`` with ``learnable=true`` is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ContraNorm(nn.Module):
    def __init__(self, dim: int, scale: float = 0.1, temperature: float = 1.0, learnable: bool = False):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"method.temperature={temperature}: must be > 0")
        s = torch.full((dim,) if learnable else (), float(scale))
        if learnable:
            self.scale = nn.Parameter(s)
        else:
            self.register_buffer("scale", s)
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xn = F.normalize(x, dim=-1)
        sim = torch.softmax(xn @ xn.transpose(-2, -1) / self.temperature, dim=-1)
        return x + self.scale.to(x.dtype) * (x - sim @ x)
