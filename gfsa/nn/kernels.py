"""The exact fast paths of :func:`gfsa.nn.functional.gfsa_attention` (``auto`` chooses between them:
:mod:`gfsa.nn.dispatch`).

Both run the filter per (batch, head) block inside one autograd.Function that saves only n×d tensors
(A·V and the output) and recomputes the rest in its backward: ``fused`` calls SDPA's own CPU flash
kernel (two passes sharing one logsumexp), ``materialized`` forms ``A`` per block. Tested against the
naive formula in float64 (gradcheck).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gfsa.nn.primitives import _accumulate, _combine, _is_zero, _per_head, attention_probs

# SDPA's own CPU flash-attention kernel, called directly: both passes share one logsumexp.
_FLASH_FWD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_FLASH_BWD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
_FLASH_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


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
        # torch.compile refuses a non-contiguous out= tensor (a graph break): there the product is
        # taken without out= (same values; the compiler picks the layout).
        if torch.compiler.is_compiling():
            d_av = d_inner * c2
        else:
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


# ``autotune``: measure both exact paths instead of looking the choice up (opt-in, as
# torch.backends.cudnn.benchmark). The first call of each kind (AutotuneKey) times forward (+ backward when
# the inputs require grad) of both paths on that call's own inputs, interleaved, and keeps the faster for
# the process, and in $GFSA_AUTOTUNE_CACHE (a JSON file) when set, so later processes reuse it. Off by
# default: measured choices can differ between processes, and reruns of a run must be bit-identical.
