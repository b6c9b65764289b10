"""The GFSA filter: ``H = w0·I + w1·A + wK·(A + (K−1)(A² − A))`` applied to self-attention.

This module is the math, readable in one sitting; like the rest of :mod:`gfsa.nn` it imports only
torch (its building blocks are in ``primitives.py``, the fast exact paths in ``kernels.py``). Expanded, the filter is ``w0·I + c1·A + c2·A²`` with
``c1 = w1 + (2 − K)·wK`` and ``c2 = (K − 1)·wK``. Because ``A²·V = A·(A·V)``, the filtered output
is ``w0·V + A·(c1·V + c2·A·V)`` (Horner's form): two ordinary attention passes with the same
queries, keys and mask, never ``A @ A`` (the official code's O(n³) step). Exact paths, all tested
against the naive formula (float64 gradcheck):

- ``fused``: SDPA's kernels, never an n×n tensor. On CPU an autograd.Function calls SDPA's flash
  kernel directly (both passes share one logsumexp; the backward saves only n×d tensors); elsewhere,
  or for inputs SDPA would not send to that kernel, two ``scaled_dot_product_attention`` calls.
- ``materialized``: ``A`` formed explicitly. Without dropout, per block of heads inside an
  autograd.Function (10 instead of 14 n²·d FLOPs) that keeps ``A`` for the backward while n ≤ 4·d and
  recomputes it above (then O(n·d) saved memory); with dropout, for the whole batch, as the official
  code's dropout semantics need.
- ``auto``: ``materialized`` with attention dropout (exact official semantics); otherwise the faster
  of the two for the shape, from a table (``dispatch.AUTO_EXPLICIT_MAX_LEN``: on CPU the explicit blocks
  up to 1024 tokens or so, 512 causal in fp32, the flash kernel above; on GPU ``fused``), or measured on first use
  with ``GFSA_AUTOTUNE=1`` / ``gfsa.nn.dispatch.autotune(True)`` (docs/performance.md).

``gfsa_linear_attention`` is GFSA on Efficient Attention (a linear Transformer), O(n·d²).

Coefficients are plain numbers or tensors: a scalar, a per-head ``(H,)`` vector (reshaped to
``(H, 1, 1)``), or anything already broadcastable to ``(B, H, L, D)``. Tensors may require grad.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gfsa.nn.dispatch import auto_impl
from gfsa.nn.kernels import _blocked, _ExplicitBlocks, _FlashBlocks
from gfsa.nn.primitives import Coefficient, _combine, _filtered, _is_zero, attention_probs
from gfsa.nn.settings import DROPOUT_ORDERS, IMPLS, check_K

__all__ = [
    "attention_probs",
    "auto_impl",
    "efficient_attention_features",
    "filter_coefficients",
    "gfsa_apply",
    "gfsa_attention",
    "gfsa_filter",
    "gfsa_linear_attention",
]


def filter_coefficients(w0: Coefficient, w1: Coefficient, wK: Coefficient, K: float):
    """``(w0, c1, c2)`` of the expanded filter ``w0·I + c1·A + c2·A²``."""
    check_K(K)
    return w0, w1 + (2 - K) * wK, 0.0 if K == 1 else (K - 1) * wK


def gfsa_filter(
    attn: Tensor,
    w0: Coefficient,
    w1: Coefficient,
    wK: Coefficient,
    K: float,
    *,
    pad_to_square: bool = False,
) -> Tensor:
    """The filtered matrix ``H`` for an explicit attention matrix of shape (…, Lq, Lk).

    Non-square matrices (cross-attention) have no ``A²`` and are returned unchanged, unless
    ``pad_to_square`` reproduces the official code: zero-pad to n×n, filter, slice back.
    """
    w0, c1, c2 = filter_coefficients(w0, w1, wK, K)
    Lq, Lk = attn.shape[-2:]
    if Lq != Lk and not pad_to_square:
        return attn
    n = max(Lq, Lk)
    A = F.pad(attn, (0, n - Lk, 0, n - Lq)) if Lq != Lk else attn
    eye = torch.eye(n, dtype=attn.dtype, device=attn.device)
    second = A @ A if not _is_zero(c2) else None
    return _combine(A, [(w0, eye), (c1, A), (c2, second)])[..., :Lq, :Lk]


def gfsa_apply(
    attn: Tensor,
    value: Tensor,
    w0: Coefficient,
    w1: Coefficient,
    wK: Coefficient,
    K: float,
    *,
    dropout_p: float = 0.0,
    dropout_order: str = "after",
    pad_to_square: bool = False,
) -> Tensor:
    """``H·V`` for an explicit attention matrix, with attention dropout before or after the filter.

    ``before`` (official NLP and graph code): ``A`` is dropped out first and ``A²`` uses the
    dropped-out ``A``. ``after`` (official vision, code and speech code): the filtered ``H`` is
    dropped out. Without dropout both are ``w0·V + A·(c1·V + c2·A·V)``, O(n²·d), no ``A @ A``.
    """
    if dropout_order not in DROPOUT_ORDERS:
        raise ValueError(f"dropout_order must be one of {DROPOUT_ORDERS}, got {dropout_order!r}")
    Lq, Lk = attn.shape[-2:]
    if dropout_order == "before" and dropout_p > 0:
        attn = F.dropout(attn, dropout_p)
    if Lq != Lk or (dropout_order == "after" and dropout_p > 0):
        # The filtered matrix itself is needed: cross-attention or dropout applied to H.
        H = gfsa_filter(attn, w0, w1, wK, K, pad_to_square=pad_to_square)
        if dropout_order == "after" and dropout_p > 0:
            H = F.dropout(H, dropout_p)
        return H @ value
    return _filtered(attn.matmul, value, *filter_coefficients(w0, w1, wK, K))


def gfsa_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    w0: Coefficient,
    w1: Coefficient,
    wK: Coefficient,
    K: float,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    impl: str = "auto",
    *,
    dropout_order: str = "after",
    pad_to_square: bool = False,
) -> Tensor:
    """GFSA self-attention: ``(w0·I + w1·A + wK·(A + (K−1)(A² − A)))·V``, shape (B, H, Lq, Dv).

    Same layout and mask semantics as ``torch.nn.functional.scaled_dot_product_attention``.
    ``impl``: ``fused`` runs two SDPA passes (values V, then c1·V + c2·A·V) and never forms an n×n tensor;
    with dropout it drops out each pass independently, which regularises like attention dropout but
    is not the official semantics. ``materialized`` forms ``A`` (per block of heads when there is no
    dropout) and applies dropout before or after the filter (``dropout_order``) exactly as the
    official code. ``auto`` (:func:`auto_impl`): ``materialized`` with attention dropout, otherwise
    whichever exact path is faster for the length, device and causality (module docstring).

    Cross-attention (Lq ≠ Lk) has no ``A²``: it is plain attention, unless ``pad_to_square``
    reproduces the official code's zero-padding (materialized only).
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if dropout_order not in DROPOUT_ORDERS:
        raise ValueError(f"dropout_order must be one of {DROPOUT_ORDERS}, got {dropout_order!r}")
    check_K(K)
    if is_causal and attn_mask is not None:  # same error on every path, not SDPA's RuntimeError on some
        raise ValueError("pass either attn_mask or is_causal=True, not both (as in SDPA)")
    square = query.shape[-2] == key.shape[-2]
    if not square and not pad_to_square:
        return F.scaled_dot_product_attention(
            query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
        )
    if impl == "auto" and not square:
        impl = "materialized"
    elif impl == "auto":

        def run(path, q, k, v, w0, w1, wK):  # what autotune times: this call on the path given
            return gfsa_attention(q, k, v, w0, w1, wK, K, attn_mask, is_causal, scale, dropout_p, path)

        inputs = (query, key, value, w0, w1, wK)
        impl = auto_impl(query, dropout_p, is_causal, attn_mask, (w0, w1, wK), run=run, inputs=inputs)
    if not square or (impl == "materialized" and dropout_p > 0):
        A = attention_probs(query, key, attn_mask, is_causal, scale)
        return gfsa_apply(
            A, value, w0, w1, wK, K, dropout_p=dropout_p, dropout_order=dropout_order, pad_to_square=pad_to_square
        )
    w0, c1, c2 = filter_coefficients(w0, w1, wK, K)
    if dropout_p == 0:
        kernel = _ExplicitBlocks if impl == "materialized" else _FlashBlocks
        out = _blocked(kernel, query, key, value, w0, c1, c2, attn_mask, is_causal, scale)
        if out is not None:
            return out

    def sdpa(v: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(
            query, key, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
        )

    if impl == "materialized":  # a mask that needs its gradient: autograd through the explicit A
        return _filtered(attention_probs(query, key, attn_mask, is_causal, scale).matmul, value, w0, c1, c2)
    return _filtered(sdpa, value, w0, c1, c2)


def efficient_attention_features(
    query: Tensor, key: Tensor, key_padding_mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``ρ_q(Q)`` (softmax over each query's features) and ``ρ_k(K)`` (softmax over the tokens, per feature)
    of Efficient Attention (Shen et al., 2021). ``A = ρ_q(Q)·ρ_k(K)ᵀ`` is row-stochastic (each row of
    ``ρ_q`` and each column of ``ρ_k`` sums to 1), so GFSA applies to it unchanged.

    ``key_padding_mask``: (B, L) bool, True for real tokens; padded keys get weight 0 in every row.
    """
    rho_q = query.softmax(dim=-1)
    if key_padding_mask is not None:
        key = key.masked_fill(~key_padding_mask[:, None, :, None], float("-inf"))
    return rho_q, key.softmax(dim=-2)


def gfsa_linear_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    w0: Coefficient,
    w1: Coefficient,
    wK: Coefficient,
    K: float,
    key_padding_mask: Tensor | None = None,
) -> Tensor:
    """GFSA on Efficient Attention in O(n·d²) time and O(n·d) memory, shape (B, H, L, Dv).

    With ``A = ρ_q·ρ_kᵀ``, ``A² = ρ_q·(ρ_kᵀ·ρ_q)·ρ_kᵀ``, so ``H·V = w0·V + ρ_q·(c1·I + c2·M)·(ρ_kᵀ·V)``
    with the d×d matrix ``M = ρ_kᵀ·ρ_q``: three n·d² products (plain Efficient Attention has two) and no
    n×n or extra n×d tensor (the paper's appendix: GFSA on a linear Transformer). With ``w0=0, w1=1,
    wK=0`` it is plain Efficient Attention.
    """
    w0, c1, c2 = filter_coefficients(w0, w1, wK, K)
    rho_q, rho_k = efficient_attention_features(query, key, key_padding_mask)
    rho_k_t = rho_k.transpose(-2, -1)
    context = rho_k_t @ value  # (B, H, d, Dv): what every row of A·V mixes
    second = None if _is_zero(c2) else (rho_k_t @ rho_q) @ context
    out = rho_q @ _combine(context, [(c1, context), (c2, second)])
    return _combine(out, [(1, out), (w0, value)])
