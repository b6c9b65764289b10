"""Independent float64 reference (tests only) of SpeechBrain's relative-position attention (RelPosMHAXL + RelPosEncXL),
as used by the Branchformer encoder of the LibriSpeech recipes and by the official GFSA speech code.

Written from the formulas (NOTES.md §1), not from the SpeechBrain code: it never uses the pad/view
"rel_shift" trick, it evaluates every (query i, key j) pair from the relative distance r = i − j.

Formulas (per head h, head_dim d = E / H, query i, key j, distance r = i − j):

    W = in_proj_weight (3E × E, NO bias), self-attention layout: rows of head h are
        [h·3d : h·3d+d] → Q,  [h·3d+d : h·3d+2d] → K,  [h·3d+2d : h·3d+3d] → V
        (SpeechBrain: linear(x, in_proj_weight).view(B, T, H, 3d).chunk(3, -1)).
    u_h, v_h = pos_bias_u.reshape(H, d)[h], pos_bias_v.reshape(H, d)[h]
        (the SpeechBrain parameters are stored as (d, H) and reinterpreted by .view(1, 1, H, d)).
    e(r)[2m]   = sin(s(r) · ω_m),  e(r)[2m+1] = cos(r · ω_m),  ω_m = 10000^(−2m/E)
        s(r) = |r| in the legacy SpeechBrain table (use_legacy_symmetric=True: the ONLY behaviour of
        every released version before the option existed, and of the GFSA repo's attention.py),
        s(r) = r for Transformer-XL (use_legacy_symmetric=False).
    p_h(r) = (W_pos e(r))[h·d : (h+1)·d]          (linear_pos, no bias)
    S_h[i, j] = ((q_i + u_h)·k_j + (q_i + v_h)·p_h(i − j)) / sqrt(E)     ← scale 1/sqrt(d_model)!
    S_h[i, j] = −inf where key j is padding (key_padding_mask True)
    A_h = softmax_j(S_h)
    GFSA (official 'rd_gf' mode, optional):  A_h ← A_h + β_h · (A_h + (K−1)(A_h² − A_h))
    dropout on A_h (after the GFSA filter), then  o_i = concat_h (A_h V_h)_i,  out = W_o o + b_o.
"""

from __future__ import annotations

import math

import torch


def rel_table(r: torch.Tensor, E: int, legacy_symmetric: bool = True) -> torch.Tensor:
    """e(r) for integer distances r (any shape) → (*r.shape, E), float64."""
    r = r.to(torch.float64)
    m = torch.arange(E // 2, dtype=torch.float64)
    omega = torch.pow(torch.tensor(10000.0, dtype=torch.float64), -2.0 * m / E)
    s = r.abs() if legacy_symmetric else r
    e = torch.empty(*r.shape, E, dtype=torch.float64)
    e[..., 0::2] = torch.sin(s[..., None] * omega)
    e[..., 1::2] = torch.cos(r[..., None] * omega)
    return e


def relpos_mha_reference(
    x: torch.Tensor,  # (B, T, E)
    weights: dict,  # in_proj_weight (3E,E), pos_bias_u (d,H) or (H,d), pos_bias_v, linear_pos_weight (E,E),
    #                 out_proj_weight (E,E), out_proj_bias (E,)
    num_heads: int,
    key_padding_mask: torch.Tensor | None = None,  # (B, T) bool, True = padding (SpeechBrain convention)
    legacy_symmetric: bool = True,
    scale: float | None = None,  # None → 1/sqrt(E), SpeechBrain's value
    gfsa_beta: torch.Tensor | None = None,  # (H,) official GFSA coefficient (wK), None = plain attention
    gfsa_K: float = 3,
    attn_dropout_mask: torch.Tensor | None = None,  # (B,H,T,T) already scaled keep-mask (mask/(1-p)), or None
    return_attn: bool = False,
):
    f64 = torch.float64
    x = x.to(f64)
    B, T, E = x.shape
    H = num_heads
    d = E // H
    W = weights["in_proj_weight"].to(f64).reshape(H, 3, d, E)
    q = torch.einsum("bte,hde->bhtd", x, W[:, 0])
    k = torch.einsum("bte,hde->bhtd", x, W[:, 1])
    v = torch.einsum("bte,hde->bhtd", x, W[:, 2])
    u = weights["pos_bias_u"].to(f64).reshape(H, d)
    vb = weights["pos_bias_v"].to(f64).reshape(H, d)

    idx = torch.arange(T)
    r = idx[:, None] - idx[None, :]  # (T, T): r[i, j] = i − j
    e = rel_table(r, E, legacy_symmetric)  # (T, T, E)
    p = torch.einsum("ije,fe->ijf", e, weights["linear_pos_weight"].to(f64)).reshape(T, T, H, d)

    content = torch.einsum("bhid,bhjd->bhij", q + u[None, :, None, :], k)
    position = torch.einsum("bhid,ijhd->bhij", q + vb[None, :, None, :], p)
    s = (1.0 / math.sqrt(E)) if scale is None else scale
    S = (content + position) * s
    if key_padding_mask is not None:
        S = S.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    A = torch.softmax(S, dim=-1)
    if gfsa_beta is not None:
        A2 = A @ A
        A = A + gfsa_beta.to(f64)[None, :, None, None] * (A + (gfsa_K - 1) * (A2 - A))
    if attn_dropout_mask is not None:
        A = A * attn_dropout_mask.to(f64)
    o = (A @ v).transpose(1, 2).reshape(B, T, E)
    out = o @ weights["out_proj_weight"].to(f64).T + weights["out_proj_bias"].to(f64)
    return (out, A) if return_attn else out
