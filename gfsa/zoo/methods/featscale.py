"""FeatScale (Wang et al., ICLR 2022): re-weight the DC (token mean) and high-frequency (the rest) parts
of the attention block's output with learnable per-channel ``λ1, λ2`` (init 0, so it starts as an
identity): ``x + λ1·x_dc + λ2·(x − x_dc)``. Applied to the attention module's output, before the
residual addition, as the official code does."""

from __future__ import annotations

import torch
from torch import nn


class FeatScale(nn.Module):
    def __init__(self, dim: int, init: float = 0.0):
        super().__init__()
        self.lamb1 = nn.Parameter(torch.full((dim,), float(init)))
        self.lamb2 = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_dc = x.mean(dim=-2, keepdim=True)
        return x + self.lamb1 * x_dc + self.lamb2 * (x - x_dc)
