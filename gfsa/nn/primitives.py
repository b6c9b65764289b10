"""What both the formula (:mod:`gfsa.nn.functional`) and the fast paths (:mod:`gfsa.nn.kernels`) are
built from: sums of coefficient × tensor terms without temporaries (Horner's form of the filter,
per-head coefficients), and the explicit softmax attention matrix with SDPA's mask semantics."""

from __future__ import annotations

import math

import torch
from torch import Tensor

Coefficient = float | Tensor


def _per_head(w: Coefficient, ref: Tensor) -> Coefficient:
    """A per-head ``(H,)`` coefficient becomes ``(H, 1, 1)`` so it broadcasts over (…, H, L, D)."""
    if not isinstance(w, Tensor):
        return float(w)
    # Keep fp32 coefficients in fp32 under autocast: in bf16, 1 − 2·0.001 would round to 0.996.
    w = w.to(dtype=torch.promote_types(w.dtype, ref.dtype))
    return w.reshape(-1, 1, 1) if w.dim() == 1 else w


def _is_zero(w: Coefficient) -> bool:
    # Only plain numbers are inspected: reading a tensor's value would force a device sync.
    return not isinstance(w, Tensor) and w == 0


def _is_one(w: Coefficient) -> bool:
    return not isinstance(w, Tensor) and w == 1


def _add(out: Tensor, coef: Coefficient, t: Tensor, inplace: bool = True) -> Tensor:
    """``out + coef·t`` without a temporary for ``coef·t``."""
    if isinstance(coef, Tensor):
        return out.addcmul_(t, coef) if inplace else torch.addcmul(out, t, coef)
    return out.add_(t, alpha=coef) if inplace else torch.add(out, t, alpha=coef)


def _accumulate(out: Tensor, terms: list[tuple[Coefficient, Tensor]]) -> Tensor:
    """``out += Σ coef·tensor`` in place, skipping terms whose coefficient is the number 0."""
    for coef, t in terms:
        if not _is_zero(coef):
            _add(out, _per_head(coef, out), t)
    return out


def _combine(ref: Tensor, terms: list[tuple[Coefficient, Tensor | None]]) -> Tensor:
    """``Σ coef·tensor`` in ``ref``'s dtype, skipping terms whose coefficient is the number 0.

    One allocation where shapes and dtypes allow: the first product, the other terms accumulated into
    it in place. These n×d temporaries are what GFSA's peak memory above SDPA's is made of.
    """
    out, owned = None, False
    for coef, t in terms:
        if t is None or _is_zero(coef):
            continue
        coef = _per_head(coef, ref)
        if out is None:
            out, owned = (t, False) if _is_one(coef) else (t * coef, True)
            continue
        shape = torch.broadcast_shapes(out.shape, t.shape, coef.shape if isinstance(coef, Tensor) else ())
        product = _result_type(t, coef)
        inplace = owned and shape == out.shape and product in (out.dtype, t.dtype)
        inplace = inplace and torch.promote_types(out.dtype, product) == out.dtype
        out, owned = _add(out, coef, t, inplace), True
    return out.to(ref.dtype) if out is not None else torch.zeros_like(ref)


def _result_type(t: Tensor, coef: Coefficient) -> torch.dtype:
    """``torch.result_type(t, coef)`` from dtypes and dimensions only: torch.compile cannot trace
    ``torch.result_type`` (a torch op returning a dtype is a graph break) but folds ``promote_types``.
    As result_type: a Python number or a 0-dim tensor does not raise the dtype of a dimensioned
    tensor of the same category."""
    if not isinstance(coef, Tensor):
        return t.dtype if t.is_floating_point() or not isinstance(coef, float) else torch.get_default_dtype()
    if coef.dim() == 0 and t.dim() > 0 and coef.is_floating_point() == t.is_floating_point():
        return t.dtype
    if t.dim() == 0 and coef.dim() > 0 and coef.is_floating_point() == t.is_floating_point():
        return coef.dtype
    return torch.promote_types(t.dtype, coef.dtype)


def _filtered(attend, value: Tensor, w0: Coefficient, c1: Coefficient, c2: Coefficient) -> Tensor:
    """``(w0·I + c1·A + c2·A²)·V`` as ``w0·V + A·(c1·V + c2·A·V)``, where ``attend(X) = A·X``.

    Same cost as ``w0·V + c1·A·V + c2·A·(A·V)``, but one n×d tensor fewer is alive during the
    backward: the fused path's peak drops from ~10.3 to ~9.3 n×d tensors above its inputs (SDPA: ~5.3).
    """
    av = attend(value) if not _is_zero(c2) else None
    inner = _combine(value, [(c1, value), (c2, av)])
    out = attend(inner)
    return _combine(out, [(1, out), (w0, value)])


def attention_probs(
    query: Tensor,
    key: Tensor,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """The row-stochastic ``A = softmax(Q·Kᵀ·scale + mask)`` with SDPA's mask semantics.

    A bool mask is True where a query may attend; a float mask is added to the scores. Rows whose
    keys are all masked come out as zeros (as SDPA's math path does) instead of NaN.
    """
    if is_causal and attn_mask is not None:
        raise ValueError("pass either attn_mask or is_causal=True, not both (as in SDPA)")
    Lq, Lk = query.shape[-2], key.shape[-2]
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = (query * scale) @ key.transpose(-2, -1)  # scaling Q is an n×d op, scaling the scores n×n
    empty = None
    if is_causal:  # top-left aligned, as SDPA: no row is empty
        scores.masked_fill_(torch.ones(Lq, Lk, dtype=torch.bool, device=query.device).triu(1), float("-inf"))
    elif attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores.masked_fill_(~attn_mask, float("-inf"))
            empty = ~attn_mask.any(dim=-1, keepdim=True)
        else:
            scores = scores + attn_mask
            empty = torch.isneginf(attn_mask).all(dim=-1, keepdim=True)  # scores are finite: rows the mask empties
        # The common case, found on the (small) mask instead of two passes over the scores. Not while
        # compiling: reading a tensor's value is a graph break there, and the masked fill is exact anyway.
        if empty.device.type == "cpu" and not torch.compiler.is_compiling() and not empty.any():
            empty = None
    if empty is not None:
        # A row with every key masked: softmax would give NaN values AND NaN gradients (masking the
        # output afterwards leaves NaN·0 in the backward). Softmax a finite row, then zero it.
        scores = scores.masked_fill(empty, 0.0)
    # Half-precision scores are normalised in fp32, as fused kernels do.
    probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32))
    if empty is not None:
        probs = probs.masked_fill(empty, 0.0)
    return probs.to(scores.dtype)
