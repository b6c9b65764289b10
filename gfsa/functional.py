"""The GFSA filter: ``H = w0·I + w1·A + wK·(A + (K−1)(A² − A))`` applied to self-attention.

This module is the whole of the math and imports only torch, so that it can be read in one sitting
and dropped into any model. Expanded, the filter is ``w0·I + c1·A + c2·A²`` with
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
  of the two for the shape: on CPU the explicit blocks up to 2048 tokens (1024 in bf16/fp16; 512
  causal) and the flash kernel above (crossover measured on a 2-core CPU: docs/performance.md), on GPU ``fused``.

``gfsa_linear_attention`` is GFSA on Efficient Attention (a linear Transformer), O(n·d²).

Coefficients are plain numbers or tensors: a scalar, a per-head ``(H,)`` vector (reshaped to
``(H, 1, 1)``), or anything already broadcastable to ``(B, H, L, D)``. Tensors may require grad.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

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

IMPLS = ("auto", "fused", "materialized")
DROPOUT_ORDERS = ("before", "after")

Coefficient = float | Tensor


def _check_K(K: float) -> None:
    if isinstance(K, bool) or not isinstance(K, (int, float)) or not K >= 1:
        raise ValueError(f"GFSA order K must be a number >= 1 (K=1 is first order), got K={K!r}")


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
        inplace = owned and shape == out.shape and torch.result_type(t, coef) in (out.dtype, t.dtype)
        inplace = inplace and torch.promote_types(out.dtype, torch.result_type(t, coef)) == out.dtype
        out, owned = _add(out, coef, t, inplace), True
    return out.to(ref.dtype) if out is not None else torch.zeros_like(ref)


def _filtered(attend, value: Tensor, w0: Coefficient, c1: Coefficient, c2: Coefficient) -> Tensor:
    """``(w0·I + c1·A + c2·A²)·V`` as ``w0·V + A·(c1·V + c2·A·V)``, where ``attend(X) = A·X``.

    Same cost as ``w0·V + c1·A·V + c2·A·(A·V)``, but one n×d tensor fewer is alive during the
    backward: the fused path's peak drops from ~10.3 to ~9.3 n×d tensors above its inputs (SDPA: ~5.3).
    """
    av = attend(value) if not _is_zero(c2) else None
    inner = _combine(value, [(c1, value), (c2, av)])
    out = attend(inner)
    return _combine(out, [(1, out), (w0, value)])


def filter_coefficients(w0: Coefficient, w1: Coefficient, wK: Coefficient, K: float):
    """``(w0, c1, c2)`` of the expanded filter ``w0·I + c1·A + c2·A²``."""
    _check_K(K)
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
        if empty.device.type == "cpu" and not empty.any():
            empty = None  # the common case, found on the (small) mask instead of two passes over the scores
    if empty is not None:
        # A row with every key masked: softmax would give NaN values AND NaN gradients (masking the
        # output afterwards leaves NaN·0 in the backward). Softmax a finite row, then zero it.
        scores = scores.masked_fill(empty, 0.0)
    # Half-precision scores are normalised in fp32, as fused kernels do.
    probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32))
    if empty is not None:
        probs = probs.masked_fill(empty, 0.0)
    return probs.to(scores.dtype)


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
    _check_K(K)
    if is_causal and attn_mask is not None:  # same error on every path, not SDPA's RuntimeError on some
        raise ValueError("pass either attn_mask or is_causal=True, not both (as in SDPA)")
    square = query.shape[-2] == key.shape[-2]
    if not square and not pad_to_square:
        return F.scaled_dot_product_attention(
            query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
        )
    if impl == "auto":
        impl = auto_impl(query, dropout_p, is_causal) if square else "materialized"
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


# Exact fast paths. Both run the filter per (batch, head) block inside one autograd.Function that saves
# only n×d tensors (A·V and the output) and recomputes the rest in its backward.

# SDPA's own CPU flash-attention kernel, called directly: both passes share one logsumexp.
_FLASH_FWD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_FLASH_BWD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
_FLASH_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

# ``auto`` on CPU without dropout: the explicit-A blocks up to this length, the flash kernel above it
# (crossover of forward+backward time measured on this suite's 2-core CPU; docs/performance.md).
# Causal attention crosses over earlier: the flash kernel skips the masked half, explicit blocks do not.
# In bf16/fp16 the explicit blocks fall behind sooner (at 2048 tokens: 2.9× SDPA against fused's 2.1×).
AUTO_EXPLICIT_MAX_LEN = {
    "fp32": {"full": 2048, "causal": 512},
    "half": {"full": 1024, "causal": 512},
}


def auto_impl(query: Tensor, dropout_p: float = 0.0, is_causal: bool = False) -> str:
    """``auto``: the official dropout semantics need A; otherwise the faster exact path for this shape,
    device and dtype (``query.dtype``: under autocast the projections already return bf16/fp16)."""
    if dropout_p > 0:
        return "materialized"
    if query.device.type != "cpu":
        return "fused"
    table = AUTO_EXPLICIT_MAX_LEN["half" if query.dtype in (torch.bfloat16, torch.float16) else "fp32"]
    return "materialized" if query.shape[-2] <= table["causal" if is_causal else "full"] else "fused"


def _slice(t, b: slice, h: slice):
    """Batch slice ``b`` and head slice ``h`` of a tensor broadcastable to (B, H, L, D) (aligned from the right)."""
    if not isinstance(t, Tensor):
        return t
    index = [slice(None)] * t.dim()
    if t.dim() >= 4 and t.shape[-4] > 1:
        index[-4] = b
    if t.dim() >= 3 and t.shape[-3] > 1:
        index[-3] = h
    return t[tuple(index)]


def _blocks(B: int, H: int, head_bytes: int, budget: int) -> list[tuple[slice, slice]]:
    """(batch, head) slices of about ``budget`` bytes each: whole batch elements when they fit, else head groups."""
    heads = max(1, budget // max(head_bytes, 1))
    if heads >= B * H:
        return [(slice(None), slice(None))]
    if heads >= H:
        step = heads // H
        return [(slice(b, b + step), slice(None)) for b in range(0, B, step)]
    return [(slice(b, b + 1), slice(h, h + heads)) for b in range(B) for h in range(0, H, heads)]


def _coef_grad(a: Tensor, b: Tensor, coef: Tensor) -> Tensor:
    """The gradient of ``Σ coef·b`` under upstream gradient ``a``, summed to the coefficient's shape."""
    return (a * b).to(coef.dtype).sum_to_size(coef.shape)


def _second_pass(v: Tensor, a_v: Tensor, out: Tensor, w0, c1, c2) -> tuple[Tensor, Tensor]:
    """The second pass's values ``c1·V + c2·A·V`` and output ``out − w0·V``, recomputed for the backward."""
    return _combine(v, [(c1, v), (c2, a_v)]), out if _is_zero(w0) else _combine(v, [(1, out), (-w0, v)])


class _FlashBlocks:
    """Two calls of SDPA's CPU flash kernel per block: exactly what SDPA computes there, O(n) memory.
    Blocks of ~4 MiB of ``query`` keep the backward's n×d temporaries small next to the gradients."""

    budget = 4 * 2**20

    @staticmethod
    def head_bytes(query: Tensor, key: Tensor) -> int:
        return query.shape[-2] * query.shape[-1] * query.element_size()

    @staticmethod
    def forward(q, k, v, mask, is_causal, scale, c1, c2):
        a_v, lse = _FLASH_FWD(q, k, v, 0.0, is_causal, attn_mask=mask, scale=scale)
        inner = _combine(v, [(c1, v), (c2, a_v)])
        out, _ = _FLASH_FWD(q, k, inner, 0.0, is_causal, attn_mask=mask, scale=scale)
        return a_v, out, lse

    @staticmethod
    def backward(q, k, v, a_v, out, coefs, lse, grad, mask, is_causal, scale):
        """(dQ, dK, d inner, dV of the first pass): the second pass's backward, then the first's."""
        inner, out2 = _second_pass(v, a_v, out, *coefs)
        dq, dk, d_inner = _FLASH_BWD(grad, q, k, inner, out2, lse, 0.0, is_causal, attn_mask=mask, scale=scale)
        del inner, out2
        c2 = coefs[2]
        # In d_inner's (the kernel's) layout: a gradient in any other layout is copied by the kernel.
        d_av = torch.mul(d_inner, c2, out=torch.empty_like(d_inner))
        dq1, dk1, dv = _FLASH_BWD(d_av, q, k, v, a_v, lse, 0.0, is_causal, attn_mask=mask, scale=scale)
        return dq.add_(dq1), dk.add_(dk1), d_inner, dv


class _ExplicitBlocks:
    """``A`` formed per block of heads (≤ 8 MiB, near the caches): fewer FLOPs than two flash passes
    (both products share one ``A``: 10 instead of 14 n²·d), exact. ``A`` is kept for the backward
    while it is no larger than ``keep_ratio`` value tensors (n ≤ 4·d: ViT/BERT lengths, where the
    recomputation would cost a tenth of the time); longer sequences recompute it (O(n) saved memory).
    On CPU it beats the flash kernel up to a few thousand tokens."""

    budget = 8 * 2**20
    keep_ratio = 4

    @staticmethod
    def head_bytes(query: Tensor, key: Tensor) -> int:
        return query.shape[-2] * key.shape[-2] * max(query.element_size(), 4)

    @staticmethod
    def forward(q, k, v, mask, is_causal, scale, c1, c2):
        q, k, v = (t.contiguous() for t in (q, k, v))  # models hand (B, L, H, D) views: batched GEMMs copy those
        A = attention_probs(q, k, mask, is_causal, scale)
        a_v = A @ v
        kept = A if k.shape[-2] <= _ExplicitBlocks.keep_ratio * v.shape[-1] else None
        return a_v, A @ _combine(v, [(c1, v), (c2, a_v)]), kept

    @staticmethod
    def backward(q, k, v, a_v, out, coefs, kept, grad, mask, is_causal, scale):
        q, k, v, grad = (t.contiguous() for t in (q, k, v, grad))
        A = attention_probs(q, k, mask, is_causal, scale) if kept is None else kept
        inner, out2 = _second_pass(v, a_v, out, *coefs)
        c2 = coefs[2]
        d_inner = A.mT @ grad
        d_av = _combine(d_inner, [(c2, d_inner)])
        dv = A.mT @ d_av
        # dA for both products at once, then softmax's backward: dS = A ∘ (dA − rowsum(dA ∘ A)).
        dA = torch.cat([grad, d_av], dim=-1) @ torch.cat([inner, v], dim=-1).mT
        rowsum = torch.linalg.vecdot(grad, out2) + torch.linalg.vecdot(d_av, a_v)
        dS = dA.sub_(rowsum.unsqueeze(-1)).mul_(A)
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        return (dS @ k).mul_(scale), (dS.mT @ q).mul_(scale), d_inner, dv


class _BlockedGFSA(torch.autograd.Function):
    """``w0·V + A·(c1·V + c2·A·V)`` per (batch, head) block with one of the kernels above.

    Why a Function: both passes share Q, K and mask, so their backwards share ``A`` (or its
    logsumexp: the kernel's ``state``); only ``A·V``, the output and that state are saved,
    ``c1·V + c2·A·V`` and the second pass's output are recomputed (a few n×d element-wise ops), and
    the coefficients' gradients are folded into the same loop. Exactness is tested against the naive
    formula (float64 gradcheck).
    """

    @staticmethod
    def forward(ctx, kernel, query, key, value, w0, c1, c2, attn_mask, is_causal, scale):
        B, H = query.shape[:2]
        blocks = _blocks(B, H, kernel.head_bytes(query, key), kernel.budget)
        for b, h in blocks:
            v, m = _slice(value, b, h), _slice(attn_mask, b, h)
            w0s, c1s, c2s = (_slice(c, b, h) for c in (w0, c1, c2))
            a_v, out, state = kernel.forward(query[b, h], key[b, h], v, m, is_causal, scale, c1s, c2s)
            _accumulate(out, [(w0s, v)])
            if len(blocks) > 1:
                if b.start in (None, 0) and h.start in (None, 0):
                    full = [torch.empty_like(value), torch.empty_like(value)]
                    full.append(None if state is None else state.new_empty(B, H, *state.shape[2:]))
                for buf, part in zip(full, (a_v, out, state)):
                    if buf is not None:
                        buf[b, h] = part
        if len(blocks) > 1:
            a_v, out, state = full
        coefs = (w0, c1, c2)
        ctx.numbers = [None if isinstance(c, Tensor) else c for c in coefs]
        tensors = [c for c in coefs if isinstance(c, Tensor)]
        ctx.save_for_backward(query, key, value, a_v, out, state, attn_mask, *tensors)
        ctx.kernel, ctx.blocks, ctx.is_causal, ctx.scale = kernel, blocks, is_causal, scale
        return out

    @staticmethod
    def backward(ctx, grad):
        query, key, value, a_v, out, state, mask, *tensors = ctx.saved_tensors
        it = iter(tensors)
        coefs = [next(it) if c is None else c for c in ctx.numbers]
        wants = [isinstance(c, Tensor) and ctx.needs_input_grad[4 + i] for i, c in enumerate(coefs)]
        coef_grads = [torch.zeros_like(c) if want else None for c, want in zip(coefs, wants)]
        grads = None
        for b, h in ctx.blocks:
            q, k, v, av, g, m = (_slice(t, b, h) for t in (query, key, value, a_v, grad, mask))
            w0, c1, c2 = (_slice(c, b, h) for c in coefs)
            state_s = None if state is None else state[b, h]
            dq, dk, d_inner, dv = ctx.kernel.backward(
                q, k, v, av, out[b, h], (w0, c1, c2), state_s, g, m, ctx.is_causal, ctx.scale
            )
            for want, full, coef, (x, y) in zip(wants, coef_grads, (w0, c1, c2), ((g, v), (d_inner, v), (d_inner, av))):
                if want:
                    _slice(full, b, h).add_(_coef_grad(x, y, coef))
            _accumulate(dv, [(c1, d_inner), (w0, g)])
            if len(ctx.blocks) == 1:
                grads = dq, dk, dv
                break
            if grads is None:  # in the layout of the first block's gradients (the flash kernel's (B, L, H, D))
                grads = [_empty_like_layout(part, full) for part, full in zip((dq, dk, dv), (query, key, value))]
            for full, part in zip(grads, (dq, dk, dv)):
                full[b, h] = part
            del dq, dk, dv, d_inner  # before the next block allocates its own
        return (None, *grads, *coef_grads, None, None, None)


def _empty_like_layout(part: Tensor, full: Tensor) -> Tensor:
    """An empty tensor of ``full``'s shape whose dimension order follows ``part``'s strides."""
    order = sorted(range(part.dim()), key=lambda i: -part.stride(i))
    return full.new_empty([full.shape[i] for i in order]).permute([order.index(i) for i in range(full.dim())])


def _blocked(kernel, query, key, value, w0, c1, c2, attn_mask, is_causal, scale) -> Tensor | None:
    """The filter through :class:`_BlockedGFSA` with ``kernel``, or None where it does not apply."""
    if _is_zero(c2) or query.dim() != 4 or query.shape[:2] != key.shape[:2] or key.shape[:2] != value.shape[:2]:
        return None  # no second pass (one plain SDPA call is best), or a layout SDPA broadcasts
    if attn_mask is not None and attn_mask.requires_grad:
        return None  # the kernels return no gradient for the mask (a learnable bias): autograd path
    device = query.device.type
    if torch.is_autocast_enabled(device):  # as SDPA under autocast: inputs in the autocast dtype
        low = torch.get_autocast_dtype(device)
        query, key, value, attn_mask = (
            t.to(low) if t is not None and t.dtype == torch.float32 else t for t in (query, key, value, attn_mask)
        )
    if kernel is _FlashBlocks:
        if not _flash_eligible(query, key, value, attn_mask):
            return None
        if attn_mask is not None and attn_mask.dtype == torch.bool:  # SDPA's own conversion
            attn_mask = torch.zeros((), dtype=query.dtype, device=query.device).masked_fill(~attn_mask, float("-inf"))
    coefs = [_per_head(c, value) for c in (w0, c1, c2)]
    with torch.autocast(device, enabled=False):
        return _BlockedGFSA.apply(kernel, query, key, value, *coefs, attn_mask, is_causal, scale)


def _flash_eligible(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None) -> bool:
    """Whether SDPA itself would run the CPU flash kernel on these inputs (its checks), so calling it is exact."""
    return (
        _FLASH_FWD is not None
        and query.device.type == "cpu"
        and query.dtype in _FLASH_DTYPES
        and query.dtype == key.dtype == value.dtype
        and query.shape[-1] == key.shape[-1] == value.shape[-1]
        and all(t.stride(-1) == 1 for t in (query, key, value))
        and (attn_mask is None or (attn_mask.dim() in (2, 4) and attn_mask.dtype in (torch.bool, query.dtype)))
    )


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
