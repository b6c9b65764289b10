"""AttnScale (Wang et al., ICLR 2022, "Anti-Oversmoothing in Deep Vision Transformers via the Fourier
Domain Analysis"): split each head's attention matrix into its DC part ``A_dc`` (uniform over the keys)
and the rest, and amplify the rest by ``1 + ω`` with one learnable ``ω`` per head, init 0.

``(A_dc + (1+ω)·(A − A_dc))·V = (1+ω)·A·V − ω·A_dc·V``, so the method works on the attention output
and never forms ``A`` (fused attention paths keep working). ``A_dc`` is uniform over the keys a query
may attend (all keys for ViT/DeiT, as the official code; padding and causal masks are respected).
With attention dropout active, dropout acts on ``A`` only (the official code drops the rescaled matrix).
"""

from __future__ import annotations

import torch
from torch import nn


def mean_over_keys(value: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False):
    """``A_dc·V``: the mean of the values over the keys each query may attend, shape (…, Lq, D)."""
    Lk = value.shape[-2]
    if attn_mask is None and not is_causal:
        return value.mean(dim=-2, keepdim=True)
    if is_causal:
        Lq = Lk if attn_mask is None else attn_mask.shape[-2]
        allowed = torch.ones(Lq, Lk, dtype=torch.bool, device=value.device).tril()  # top-left aligned, as SDPA
    elif attn_mask.dtype == torch.bool:
        allowed = attn_mask
    else:  # additive float masks: large negative entries (-inf, finfo.min) mask a key; biases do not
        allowed = attn_mask > -1e4
    weights = allowed.to(value.dtype)
    weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1.0)
    return weights @ value


class AttnScale(nn.Module):
    """One attention module's ``ω`` (one per head); ``ω = 0`` is plain attention."""

    def __init__(self, num_heads: int, init: float = 0.0, learn: bool = True):
        super().__init__()
        omega = torch.full((num_heads,), float(init))
        if learn:
            self.omega = nn.Parameter(omega)
        else:
            self.register_buffer("omega", omega)

    def forward(self, out: torch.Tensor, value: torch.Tensor, attn_mask=None, is_causal: bool = False):
        """``out = A·V`` of shape (B, H, Lq, D) → ``(1+ω)·A·V − ω·A_dc·V``."""
        w = self.omega.to(out.dtype).view(-1, 1, 1)
        return (1 + w) * out - w * mean_over_keys(value, attn_mask, is_causal)
