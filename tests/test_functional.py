"""Numerics of gfsa.nn.functional against an independent per-head reference written from the official formula.

The reference below shares no code with the library: explicit (b, h) loops, a plain softmax, and
``H = w0·I + w1·A + wK·(A + (K−1)(A@A − A))`` spelled out as the official code does, so an error in
the library's expansion ``w0·V + A·(c1·V + c2·A·V)`` cannot hide in both.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from gfsa.nn import dispatch, kernels
from gfsa.nn.functional import attention_probs, gfsa_apply, gfsa_attention, gfsa_filter, gfsa_linear_attention

F64 = torch.float64
IMPLS = ("fused", "materialized", "auto")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def rand(*shape, dtype=F64, requires_grad=False):
    return torch.randn(*shape, dtype=dtype, requires_grad=requires_grad)


def coef_at(w, h: int):
    """The coefficient of head ``h`` for a python number, a 0-d, an (H,) or a (1, H, 1, 1) tensor."""
    if not isinstance(w, torch.Tensor) or w.numel() == 1:
        return w
    return w.reshape(-1)[h]


def naive_filter(A, w0, w1, wK, K):
    """The official code's filter, verbatim, for one (n, n) matrix."""
    eye = torch.eye(A.shape[-1], dtype=A.dtype)
    A_K = A + (K - 1) * (A @ A - A)
    return w0 * eye + w1 * A + wK * A_K


def naive_probs(q, k, mask=None, is_causal=False, scale=None):
    """softmax(q·kᵀ·scale + mask) for one head; rows with every key masked become 0 (SDPA's choice)."""
    Lq, Lk = q.shape[0], k.shape[0]
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = q @ k.T * scale
    if is_causal:
        s = s.masked_fill(~torch.ones(Lq, Lk, dtype=torch.bool).tril(), float("-inf"))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
    return torch.nan_to_num(torch.softmax(s, dim=-1), nan=0.0)


def naive_gfsa(q, k, v, w0, w1, wK, K, mask=None, is_causal=False, scale=None, heads_filter=None):
    """(B, H, Lq, Dv) by looping over batch and heads; ``heads_filter`` replaces the filter (for padding)."""
    B, H, Lq, _ = q.shape
    Lk = k.shape[-2]
    full_mask = None if mask is None else torch.broadcast_to(mask, (B, H, Lq, Lk))
    out = torch.zeros(B, H, Lq, v.shape[-1], dtype=q.dtype)
    for b in range(B):
        for h in range(H):
            A = naive_probs(q[b, h], k[b, h], None if mask is None else full_mask[b, h], is_causal, scale)
            coefs = coef_at(w0, h), coef_at(w1, h), coef_at(wK, h)
            Hm = heads_filter(A, *coefs) if heads_filter else naive_filter(A, *coefs, K)
            out[b, h] = Hm @ v[b, h]
    return out


def make_mask(kind: str, B: int, H: int, L: int, dtype=F64):
    """Masks of every layout SDPA accepts; no query row is fully masked (that case has its own test)."""
    keep = torch.rand(B, L) > 0.4
    keep[:, 0] = True  # key 0 is never padding, so every row keeps a key
    if kind == "none":
        return None
    if kind == "key_padding_bool":  # (B, 1, 1, L)
        return keep[:, None, None, :]
    if kind == "square_bool":  # (L, L), diagonal kept
        return (torch.rand(L, L) > 0.5) | torch.eye(L, dtype=torch.bool)
    if kind == "per_head_bool":  # (B, H, L, L)
        return (torch.rand(B, H, L, L) > 0.5) | torch.eye(L, dtype=torch.bool)
    if kind == "per_batch_bool":  # (B, 1, L, L)
        return (torch.rand(B, 1, L, L) > 0.5) | torch.eye(L, dtype=torch.bool)
    if kind == "padding_float":  # additive, -inf on padded key columns
        return torch.zeros(B, 1, 1, L, dtype=dtype).masked_fill(~keep[:, None, None, :], float("-inf"))
    if kind == "bias_float":  # finite additive bias such as a relative-position bias (1, H, L, L)
        return rand(1, H, L, L, dtype=dtype)
    if kind == "padding_and_bias_float":
        pad = torch.zeros(B, 1, 1, L, dtype=dtype).masked_fill(~keep[:, None, None, :], float("-inf"))
        return pad + rand(1, H, L, L, dtype=dtype)
    raise AssertionError(kind)


SHAPES = [  # B, H, L, Dq, Dv
    (1, 1, 1, 4, 4),
    (2, 3, 5, 4, 4),
    (2, 2, 7, 3, 5),
    (3, 2, 9, 6, 2),
    (1, 4, 16, 8, 8),
]
MASKS = [
    "none",
    "causal",
    "key_padding_bool",
    "square_bool",
    "per_head_bool",
    "per_batch_bool",
    "padding_float",
    "bias_float",
    "padding_and_bias_float",
]


def coefficients(kind: str, H: int):
    if kind == "float":
        return -0.05, 1.0, 0.3
    if kind == "per_head":
        return rand(H) * 0.1, 1 + rand(H) * 0.1, rand(H)
    if kind == "zero_dim":
        return torch.tensor(0.05, dtype=F64), torch.tensor(0.9, dtype=F64), torch.tensor(-0.4, dtype=F64)
    if kind == "broadcast_4d":
        return rand(1, H, 1, 1) * 0.1, 1.0, rand(1, H, 1, 1)
    raise AssertionError(kind)


def run_all(q, k, v, w0, w1, wK, K, mask=None, is_causal=False, scale=None):
    return {
        impl: gfsa_attention(q, k, v, w0, w1, wK, K, attn_mask=mask, is_causal=is_causal, scale=scale, impl=impl)
        for impl in IMPLS
    }


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mask_kind", MASKS)
def test_matches_naive_over_shapes_and_masks(shape, mask_kind):
    B, H, L, Dq, Dv = shape
    q, k, v = rand(B, H, L, Dq), rand(B, H, L, Dq), rand(B, H, L, Dv)
    w0, w1, wK = coefficients("per_head", H)
    is_causal = mask_kind == "causal"
    mask = None if is_causal else make_mask(mask_kind, B, H, L)
    expected = naive_gfsa(q, k, v, w0, w1, wK, 3, mask, is_causal)
    for impl, out in run_all(q, k, v, w0, w1, wK, 3, mask, is_causal).items():
        assert out.shape == (B, H, L, Dv)
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10, msg=impl)


@pytest.mark.parametrize("K", [1, 2, 2.5, 3, 4, 5])
@pytest.mark.parametrize("coef_kind", ["float", "per_head", "zero_dim", "broadcast_4d"])
def test_matches_naive_over_orders_and_coefficients(K, coef_kind):
    B, H, L, D = 2, 3, 6, 4
    q, k, v = rand(B, H, L, D), rand(B, H, L, D), rand(B, H, L, D)
    w0, w1, wK = coefficients(coef_kind, H)
    mask = make_mask("key_padding_bool", B, H, L)
    expected = naive_gfsa(q, k, v, w0, w1, wK, K, mask)
    for impl, out in run_all(q, k, v, w0, w1, wK, K, mask).items():
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10, msg=impl)


@pytest.mark.parametrize("is_causal", [False, True])
def test_custom_scale(is_causal):
    q, k, v = rand(2, 2, 6, 4), rand(2, 2, 6, 4), rand(2, 2, 6, 4)
    expected = naive_gfsa(q, k, v, 0.1, 1.0, 0.5, 4, is_causal=is_causal, scale=0.37)
    default = naive_gfsa(q, k, v, 0.1, 1.0, 0.5, 4, is_causal=is_causal)
    assert not torch.allclose(expected, default)  # the scale matters for these inputs
    for impl, out in run_all(q, k, v, 0.1, 1.0, 0.5, 4, is_causal=is_causal, scale=0.37).items():
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10, msg=impl)


@pytest.mark.parametrize("impl", ["fused", "materialized"])
@pytest.mark.parametrize("mask_kind", ["none", "causal", "padding_and_bias_float"])
def test_gradcheck(impl, mask_kind):
    B, H, L, D = 1, 2, 4, 3
    q, k, v = (rand(B, H, L, D, requires_grad=True) for _ in range(3))
    w0, w1, wK = (rand(H, requires_grad=True) for _ in range(3))
    is_causal = mask_kind == "causal"
    mask = None if is_causal else make_mask(mask_kind, B, H, L)

    def f(q, k, v, w0, w1, wK):
        return gfsa_attention(q, k, v, w0, w1, wK, 3, attn_mask=mask, is_causal=is_causal, impl=impl)

    assert torch.autograd.gradcheck(f, (q, k, v, w0, w1, wK))


def test_filter_rows_sum_to_dc_gain():
    H = 4
    A = attention_probs(rand(2, H, 8, 5), rand(2, H, 8, 5), make_mask("key_padding_bool", 2, H, 8))
    w0, w1, wK = coefficients("per_head", H)
    for K in (1, 2, 3.5, 5):
        rows = gfsa_filter(A, w0, w1, wK, K).sum(-1)
        torch.testing.assert_close(rows, (w0 + w1 + wK)[:, None].expand_as(rows))


@pytest.mark.parametrize("mask_kind", ["none", "causal", "key_padding_bool", "bias_float"])
def test_identity_coefficients_equal_sdpa(mask_kind):
    """w0=0, w1=1, wK=0 is plain attention, so a patched pretrained model starts identical to the original."""
    B, H, L, D = 2, 3, 7, 4
    q, k, v = rand(B, H, L, D), rand(B, H, L, D), rand(B, H, L, D)
    is_causal = mask_kind == "causal"
    mask = None if is_causal else make_mask(mask_kind, B, H, L)
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
    learnable_zero = torch.zeros(H, dtype=F64, requires_grad=True)
    for wK in (0.0, learnable_zero):
        outs = run_all(q, k, v, 0.0, 1.0, wK, 3, mask, is_causal)
        assert torch.equal(outs["fused"], sdpa)  # the second pass is skipped or multiplied by exactly 0
        torch.testing.assert_close(outs["materialized"], sdpa, rtol=1e-12, atol=1e-12)


def test_first_order_has_no_square_term():
    A = attention_probs(rand(2, 3, 6, 4), rand(2, 3, 6, 4))
    w0, w1, wK = coefficients("per_head", 3)
    eye = torch.eye(6, dtype=F64)
    expected = w0[:, None, None] * eye + (w1 + wK)[:, None, None] * A
    torch.testing.assert_close(gfsa_filter(A, w0, w1, wK, 1), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("w0", [0.0, 0.2])
def test_masked_key_columns_stay_zero(w0):
    """A padded key column is 0 in A and A², so only the identity term w0 (on the diagonal) remains."""
    B, H, L = 2, 3, 8
    keep = torch.ones(B, L, dtype=torch.bool)
    keep[0, 5:], keep[1, 2] = False, False
    A = attention_probs(rand(B, H, L, 4), rand(B, H, L, 4), keep[:, None, None, :])
    Hm = gfsa_filter(A, w0, 1.0, rand(H), 4)
    masked = ~keep[:, None, :].expand(B, L, L)  # [b, i, j] True where key j is padding
    off_diag = Hm - w0 * torch.eye(L, dtype=F64)
    assert torch.all(off_diag.permute(1, 0, 2, 3)[:, masked] == 0)
    assert torch.all(Hm.permute(1, 0, 2, 3)[:, ~masked] != 0)  # kept keys do get weight


def test_causal_filter_is_lower_triangular():
    A = attention_probs(rand(2, 3, 9, 4), rand(2, 3, 9, 4), is_causal=True)
    Hm = gfsa_filter(A, 0.1, 1.0, rand(3), 3)
    assert torch.all(Hm.triu(1) == 0)
    assert torch.all(Hm.tril().abs().sum((-2, -1)) > 0)


@pytest.mark.parametrize("Lq,Lk", [(3, 7), (7, 3)])
@pytest.mark.parametrize("impl", IMPLS)
def test_cross_attention_is_plain_sdpa(Lq, Lk, impl):
    B, H, D = 2, 2, 4
    q, k, v = rand(B, H, Lq, D), rand(B, H, Lk, D), rand(B, H, Lk, 5)
    mask = make_mask("key_padding_bool", B, H, Lk)
    out = gfsa_attention(q, k, v, 0.3, 1.0, rand(H), 3, attn_mask=mask, impl=impl)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    A = attention_probs(q, k, mask)
    assert gfsa_filter(A, 0.3, 1.0, 0.5, 3) is A


def naive_pad_filter(A, w0, w1, wK, K):
    """The official code's handling of non-square attention: zero-pad to n×n, filter, slice back."""
    Lq, Lk = A.shape
    n = max(Lq, Lk)
    P = torch.zeros(n, n, dtype=A.dtype)
    P[:Lq, :Lk] = A
    return naive_filter(P, w0, w1, wK, K)[:Lq, :Lk]


@pytest.mark.parametrize("Lq,Lk", [(3, 7), (7, 3), (5, 5)])
@pytest.mark.parametrize("impl", IMPLS)
def test_pad_to_square_matches_naive(Lq, Lk, impl):
    B, H, D = 2, 3, 4
    q, k, v = rand(B, H, Lq, D), rand(B, H, Lk, D), rand(B, H, Lk, 6)
    w0, w1, wK = coefficients("per_head", H)
    mask = make_mask("padding_float", B, H, Lk)
    out = gfsa_attention(q, k, v, w0, w1, wK, 3, attn_mask=mask, impl=impl, pad_to_square=True)
    expected = naive_gfsa(q, k, v, w0, w1, wK, 3, mask, heads_filter=lambda A, *c: naive_pad_filter(A, *c, 3))
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    A = attention_probs(q, k, mask)
    Hm = gfsa_filter(A, w0, w1, wK, 3, pad_to_square=True)
    for b in range(B):
        for h in range(H):
            ref = naive_pad_filter(A[b, h], w0[h], w1[h], wK[h], 3)
            torch.testing.assert_close(Hm[b, h], ref, rtol=1e-12, atol=1e-12)


def test_dropout_before_filter_uses_dropped_out_attention():
    """``before`` (official NLP/graph code): A² is formed from the dropped-out A."""
    B, H, L, D, p = 2, 3, 6, 4, 0.3
    q, k, v = rand(B, H, L, D), rand(B, H, L, D), rand(B, H, L, D)
    w0, w1, wK = coefficients("per_head", H)
    torch.manual_seed(123)
    out = gfsa_attention(q, k, v, w0, w1, wK, 3, dropout_p=p, impl="materialized", dropout_order="before")
    A = attention_probs(q, k)
    torch.manual_seed(123)
    A_drop = F.dropout(A, p)
    assert (A_drop == 0).any() and not (A == 0).any()
    expected = torch.stack(
        [
            torch.stack([naive_filter(A_drop[b, h], w0[h], w1[h], wK[h], 3) @ v[b, h] for h in range(H)])
            for b in range(B)
        ]
    )
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("Lk", [6, 4])
def test_dropout_after_filter_drops_out_H(Lk):
    """``after`` (official vision/code/speech code): the filtered H is dropped out, then applied to V."""
    B, H, L, D, p = 2, 3, 6, 4, 0.3
    q, k, v = rand(B, H, L, D), rand(B, H, Lk, D), rand(B, H, Lk, D)
    w0, w1, wK = coefficients("per_head", H)
    torch.manual_seed(7)
    out = gfsa_attention(q, k, v, w0, w1, wK, 3, dropout_p=p, impl="materialized", pad_to_square=True)
    eye = torch.eye(Lk, dtype=F64).expand(B, H, Lk, Lk)
    Hm = naive_gfsa(q, k, eye, w0, w1, wK, 3, heads_filter=lambda A, *c: naive_pad_filter(A, *c, 3))  # H·I = H
    torch.manual_seed(7)
    expected = F.dropout(Hm, p) @ v
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_gfsa_apply_dropout_orders_differ_and_zero_dropout_agrees():
    A = attention_probs(rand(2, 2, 5, 3), rand(2, 2, 5, 3))
    v = rand(2, 2, 5, 3)
    plain = [gfsa_apply(A, v, 0.1, 1.0, 0.5, 3, dropout_order=o) for o in ("before", "after")]
    torch.testing.assert_close(plain[0], plain[1], rtol=0, atol=0)
    torch.manual_seed(1)
    before = gfsa_apply(A, v, 0.1, 1.0, 0.5, 3, dropout_p=0.5, dropout_order="before")
    torch.manual_seed(1)
    after = gfsa_apply(A, v, 0.1, 1.0, 0.5, 3, dropout_p=0.5, dropout_order="after")
    assert not torch.allclose(before, after)


@pytest.mark.parametrize("is_causal", [False, True])
def test_auto_picks_the_table_path_by_length_and_materialized_with_dropout(monkeypatch, is_causal):
    """Without dropout: explicit-A blocks up to the table's length, the flash kernel above (float64 uses
    the fp32 entries); with attention dropout always materialized (the official semantics need A)."""
    B, H, L, D = 2, 3, 8, 4
    q, k, v = rand(B, H, L, D), rand(B, H, L, D), rand(B, H, L, D)
    args = (q, k, v, 0.1, 1.0, rand(H), 3)
    entry = ("cpu", "fp32", "causal" if is_causal else "full")
    for limit, expected in ((L, "materialized"), (L - 1, "fused")):
        monkeypatch.setitem(dispatch.AUTO_EXPLICIT_MAX_LEN, entry, {D: limit})
        auto = gfsa_attention(*args, is_causal=is_causal, impl="auto")
        assert torch.equal(auto, gfsa_attention(*args, is_causal=is_causal, impl=expected)), limit
    results = {}
    for impl in IMPLS:
        torch.manual_seed(5)
        results[impl] = gfsa_attention(*args, dropout_p=0.4, impl=impl)
    assert torch.equal(results["auto"], results["materialized"])
    # The fused path drops out each SDPA pass instead: same regularisation, different numbers.
    assert not torch.allclose(results["fused"], results["materialized"])


def test_auto_table_by_device_precision_causality_and_head_size(monkeypatch):
    """Each (device, precision, attention) entry has its own lengths per head size (the nearest listed
    one); fp64 uses fp32's, autocast's dtype counts for fp32 inputs, a device not listed always fuses."""
    table = {
        ("cpu", "fp32", "full"): {64: 100, 128: 300},
        ("cpu", "fp32", "causal"): {64: 20},
        ("cpu", "bf16", "full"): {64: 40},
        ("cpu", "fp16", "full"): {64: 60},
    }
    monkeypatch.setattr(dispatch, "AUTO_EXPLICIT_MAX_LEN", table)
    for dtype, L, d, is_causal, expected in [
        (torch.float32, 100, 64, False, "materialized"),
        (torch.float32, 101, 64, False, "fused"),
        (torch.float32, 200, 128, False, "materialized"),
        (torch.float32, 200, 256, False, "materialized"),  # nearest listed head size: 128
        (torch.float32, 200, 32, False, "fused"),  # nearest: 64
        (torch.float32, 200, 90, False, "fused"),  # between: the nearer one (64)
        (F64, 100, 64, False, "materialized"),
        (torch.float32, 21, 64, True, "fused"),
        (torch.float32, 20, 128, True, "materialized"),  # a single listed head size serves all
        (torch.bfloat16, 48, 64, False, "fused"),
        (torch.float16, 48, 64, False, "materialized"),
        (torch.bfloat16, 4, 64, True, "fused"),  # no (cpu, bf16, causal) entry
    ]:
        q = torch.zeros(1, 2, L, d, dtype=dtype)
        assert dispatch.table_impl(q, is_causal) == expected, (dtype, L, d, is_causal)
        assert dispatch.auto_impl(q, 0.0, is_causal) == expected, (dtype, L, d, is_causal)
    q = torch.zeros(1, 2, 48, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 inputs computed in bf16: bf16's entry
        assert dispatch.auto_impl(q) == "fused"
    assert dispatch.auto_impl(q) == "materialized"
    assert dispatch.auto_impl(torch.zeros(1, 2, 48, 64, device="meta")) == "fused"
    assert dispatch.auto_impl(torch.zeros(1, 2, 4096, 64), dropout_p=0.1) == "materialized"


def test_default_table_sends_long_full_attention_to_the_flash_kernel():
    """The measured crossovers (docs/performance.md): fp32 full attention with d=64 at 2048 tokens is fused
    (materialized was 20–50% slower there in issue 14's runs), d=128 materialized up to 2048; fp32 causal
    crosses at 512; bf16 causal or not at 1024; everything at 4096 is fused."""
    for L, expected in ((512, "materialized"), (1024, "materialized"), (2048, "fused"), (4096, "fused")):
        assert dispatch.table_impl(torch.empty(1, 1, L, 64)) == expected, L
    assert dispatch.table_impl(torch.empty(1, 1, 2048, 128)) == "materialized"
    assert dispatch.table_impl(torch.empty(1, 1, 4096, 128)) == "fused"
    assert dispatch.table_impl(torch.empty(1, 1, 512, 64), is_causal=True) == "materialized"
    assert dispatch.table_impl(torch.empty(1, 1, 1024, 64), is_causal=True) == "fused"
    for L, expected in ((1024, "materialized"), (2048, "fused")):
        for causal in (False, True):
            q = torch.empty(1, 1, L, 64, dtype=torch.bfloat16)
            assert dispatch.table_impl(q, is_causal=causal) == expected, (L, causal)


@pytest.fixture
def autotuning(monkeypatch):
    """Measuring on, from a clean slate, restored afterwards."""
    monkeypatch.delenv(dispatch.AUTOTUNE_ENV, raising=False)
    monkeypatch.delenv(dispatch.AUTOTUNE_CACHE_ENV, raising=False)
    dispatch.autotune_reset()
    previous = dispatch.autotune(True)
    yield
    dispatch.autotune(previous)
    monkeypatch.setattr(dispatch, "_autotune", None)
    dispatch.autotune_reset()


def _call(L=24, H=2, grad=True, coef=None, **kw):
    torch.manual_seed(L)
    q, k, v = (torch.randn(1, H, L, 8, requires_grad=grad) for _ in range(3))
    wK = torch.full((H,), 0.2, requires_grad=grad) if coef is None else coef
    return (q, k, v, 0.0, 1.0, wK, 3), kw


def test_autotune_measures_each_kind_once_and_takes_the_faster_path(autotuning):
    args, _ = _call()
    out = gfsa_attention(*args)
    choices = dispatch.autotune_choices()
    assert list(choices) == ["cpu|float32|full|8|32|tensor|train"]
    (choice,) = choices.values()
    assert choice["fused_ms"] > 0 and choice["materialized_ms"] > 0
    assert choice["impl"] == min(("fused", "materialized"), key=lambda i: choice[f"{i}_ms"])
    assert torch.equal(out, gfsa_attention(*args, impl=choice["impl"]))
    q, k, v, _, _, wK, _ = args
    assert all(t.grad is None for t in (q, k, v, wK))  # measured on detached copies
    out.sum().backward()
    assert all(t.grad is not None for t in (q, k, v, wK))

    gfsa_attention(*_call(L=30)[0])  # same bucket (≤ 32 tokens): no new measurement
    assert dispatch.autotune_choices() == choices
    with torch.no_grad():
        gfsa_attention(*args)  # forward only: its own kind
    gfsa_attention(*_call(coef=0.2)[0])  # plain-number coefficients
    gfsa_attention(*args, is_causal=True)
    gfsa_attention(*args, attn_mask=torch.ones(24, 24, dtype=torch.bool))
    gfsa_attention(*_call(L=40)[0])
    assert set(dispatch.autotune_choices()) == {
        "cpu|float32|full|8|32|tensor|train",
        "cpu|float32|full|8|32|tensor|infer",
        "cpu|float32|full|8|32|number|train",
        "cpu|float32|causal|8|32|tensor|train",
        "cpu|float32|mask|8|32|tensor|train",
        "cpu|float32|full|8|64|tensor|train",
    }
    q, k, v, w0, w1, wK, _ = args
    assert dispatch.auto_impl(q, 0.0, False, None, (w0, w1, wK), inputs=args) == choice["impl"]
    dispatch.autotune(False)  # off: the table again, nothing measured
    gfsa_attention(*_call(L=100)[0])
    assert len(dispatch.autotune_choices()) == 6
    assert dispatch.auto_impl(q, 0.0, False, None, (w0, w1, wK), inputs=args) == dispatch.table_impl(q)


def test_autotune_from_the_environment_keeps_choices_in_a_cache_file(autotuning, monkeypatch, tmp_path):
    dispatch.autotune_reset()
    monkeypatch.setattr(dispatch, "_autotune", None)  # as a fresh process: the environment decides
    cache = tmp_path / "autotune.json"
    monkeypatch.setenv(dispatch.AUTOTUNE_ENV, "1")
    monkeypatch.setenv(dispatch.AUTOTUNE_CACHE_ENV, str(cache))
    args, _ = _call()
    gfsa_attention(*args)
    data = json.loads(cache.read_text())
    assert data["format"] == "gfsa-autotune/1"
    (key,) = data["entries"]
    assert key.startswith("cpu|float32|full|8|32|tensor|train @ ") and f"torch {torch.__version__}" in key
    assert f"{torch.get_num_threads()} threads" in key  # a file from other hardware or threads does not apply

    # A later process reads the file instead of measuring: make the file say the other path.
    other = "fused" if data["entries"][key]["impl"] == "materialized" else "materialized"
    data["entries"][key] = {"impl": other, "fused_ms": None, "materialized_ms": None}
    cache.write_text(json.dumps(data))
    dispatch.autotune_reset()
    assert torch.equal(gfsa_attention(*args), gfsa_attention(*args, impl=other))
    assert dispatch.autotune_choices()[key.split(" @ ")[0]]["impl"] == other

    cache.write_text("not json")  # unreadable: one warning, then measured as without a file
    dispatch.autotune_reset()
    with pytest.warns(UserWarning, match="GFSA_AUTOTUNE_CACHE=.*not read"):
        gfsa_attention(*args)
    assert dispatch.autotune_choices()["cpu|float32|full|8|32|tensor|train"]["fused_ms"] > 0
    monkeypatch.setenv(dispatch.AUTOTUNE_ENV, "0")
    assert not dispatch.autotune_enabled()


def test_autotune_never_measures_while_torch_compile_traces(autotuning):
    args, _ = _call(grad=False)
    compiled = torch.compile(lambda *a: gfsa_attention(*a), backend="eager", fullgraph=True)
    torch._dynamo.reset()
    out = compiled(*args)
    assert dispatch.autotune_choices() == {}
    assert torch.equal(out, gfsa_attention(*args, impl=dispatch.table_impl(args[0])))


@pytest.mark.parametrize("K", [0, -1, 0.5, True, "3"])
def test_rejects_bad_order(K):
    q = rand(1, 1, 3, 2)
    with pytest.raises(ValueError, match="K must be a number >= 1"):
        gfsa_attention(q, q, q, 0.0, 1.0, 0.1, K)
    with pytest.raises(ValueError, match="K must be a number >= 1"):
        gfsa_filter(attention_probs(q, q), 0.0, 1.0, 0.1, K)


def test_rejects_bad_options():
    q = rand(1, 1, 3, 2)
    with pytest.raises(ValueError, match=r"impl must be one of \('auto', 'fused', 'materialized'\), got 'bogus'"):
        gfsa_attention(q, q, q, 0.0, 1.0, 0.1, 2, impl="bogus")
    with pytest.raises(ValueError, match=r"dropout_order must be one of \('before', 'after'\), got 'x'"):
        gfsa_attention(q, q, q, 0.0, 1.0, 0.1, 2, dropout_order="x")
    with pytest.raises(ValueError, match="dropout_order must be one of"):
        gfsa_apply(attention_probs(q, q), q, 0.0, 1.0, 0.1, 2, dropout_order="x")


@pytest.mark.parametrize("impl", IMPLS)
def test_rejects_causal_together_with_mask(impl):
    q = rand(1, 1, 3, 2)
    mask = torch.ones(3, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="either attn_mask or is_causal=True, not both"):
        gfsa_attention(q, q, q, 0.0, 1.0, 0.1, 2, attn_mask=mask, is_causal=True, impl=impl)


@pytest.mark.parametrize("impl", ["fused", "materialized"])
def test_float32_close_to_float64(impl):
    B, H, L, D = 2, 4, 32, 16
    q, k, v = rand(B, H, L, D), rand(B, H, L, D), rand(B, H, L, D)
    w0, w1, wK = coefficients("per_head", H)
    mask = make_mask("padding_and_bias_float", B, H, L)
    ref = gfsa_attention(q, k, v, w0, w1, wK, 3, attn_mask=mask, impl=impl)
    f32 = [t.float() for t in (q, k, v, w0, w1, wK, mask)]
    out = gfsa_attention(*f32[:6], 3, attn_mask=f32[6], impl=impl)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["fused", "materialized"])
def test_bf16_autocast_runs_and_trains_fp32_coefficients(impl):
    B, H, L, D = 2, 4, 32, 16
    q, k, v = (rand(B, H, L, D, dtype=torch.float32) for _ in range(3))
    mask = make_mask("key_padding_bool", B, H, L)

    def run(dtype):
        wK = torch.full((H,), 0.3, requires_grad=True)  # fp32 parameters, as a model under autocast has
        w0 = torch.full((H,), -0.05, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = gfsa_attention(q.to(dtype), k.to(dtype), v.to(dtype), w0, 1.0, wK, 3, attn_mask=mask, impl=impl)
        out.float().square().sum().backward()
        return out, w0.grad, wK.grad

    out16, gw0_16, gwK_16 = run(torch.bfloat16)
    out32, gw0_32, gwK_32 = run(torch.float32)
    assert out16.dtype == torch.bfloat16 and torch.isfinite(out16).all()
    torch.testing.assert_close(out16.float(), out32, rtol=0.02, atol=0.02)
    for g16, g32 in ((gw0_16, gw0_32), (gwK_16, gwK_32)):
        assert g16.dtype == torch.float32 and torch.isfinite(g16).all()
        torch.testing.assert_close(g16, g32, rtol=0.02, atol=0.5)


@pytest.mark.parametrize("w0", [0.0, 0.25])
def test_fully_masked_query_rows(w0):
    """A query row with every key masked has A = 0, so H's row is w0·e_i and the output is w0·v_i.

    SDPA on this torch returns 0 (not NaN) for such rows; the fused path relies on it and must agree
    with the materialized path, values and gradients.
    """
    B, H, L, D = 2, 3, 6, 4
    q, k, v = (rand(B, H, L, D, requires_grad=True) for _ in range(3))
    mask = torch.ones(B, 1, L, L, dtype=torch.bool)
    mask[:, :, 2, :] = False
    float_mask = torch.zeros(B, 1, L, L, dtype=F64).masked_fill(~mask, float("-inf"))
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.equal(sdpa[:, :, 2], torch.zeros(B, H, D, dtype=F64))
    assert torch.equal(attention_probs(q, k, mask)[:, :, 2], torch.zeros(B, H, L, dtype=F64))
    wK = rand(H)
    for m in (mask, float_mask):
        outs, grads = {}, {}
        for impl in ("fused", "materialized"):
            outs[impl] = gfsa_attention(q, k, v, w0, 1.0, wK, 3, attn_mask=m, impl=impl)
            grads[impl] = torch.autograd.grad(outs[impl].sum(), (q, k, v))
        torch.testing.assert_close(outs["materialized"][:, :, 2], w0 * v[:, :, 2], rtol=0, atol=0)
        torch.testing.assert_close(outs["fused"], outs["materialized"], rtol=1e-10, atol=1e-10)
        for g_fused, g_mat in zip(grads["fused"], grads["materialized"]):
            assert torch.isfinite(g_fused).all()
            torch.testing.assert_close(g_fused, g_mat, rtol=1e-10, atol=1e-10)


# The exact fast paths: one autograd.Function over (batch, head) blocks with the CPU flash kernel (fused) or
# an explicit A per block (materialized without dropout). Small budgets force every way of cutting blocks.
KERNELS = {"fused": kernels._FlashBlocks, "materialized": kernels._ExplicitBlocks}


def budgets(B: int, H: int, head_bytes: int):
    """Per head, two batch elements (with a remainder when B is odd), all at once."""
    return {"head": 1, "batch_pair": 2 * H * head_bytes, "all": 1 << 40}


@pytest.mark.parametrize("impl", ["fused", "materialized"])
@pytest.mark.parametrize("blocks", ["head", "batch_pair", "all"])
@pytest.mark.parametrize("mask_kind", ["none", "causal", "per_head_bool", "padding_and_bias_float"])
def test_blocked_paths_match_naive_and_gradcheck(monkeypatch, impl, blocks, mask_kind):
    B, H, L, D = 3, 2, 5, 3
    q, k, v = (rand(B, H, L, D, requires_grad=True) for _ in range(3))
    w0, w1, wK = (rand(H, requires_grad=True) for _ in range(3))
    kernel = KERNELS[impl]
    monkeypatch.setattr(kernel, "budget", budgets(B, H, kernel.head_bytes(q, k))[blocks])
    is_causal = mask_kind == "causal"
    mask = None if is_causal else make_mask(mask_kind, B, H, L)

    def f(q, k, v, w0, w1, wK):
        return gfsa_attention(q, k, v, w0, w1, wK, 3, attn_mask=mask, is_causal=is_causal, impl=impl)

    out = f(q, k, v, w0, w1, wK)
    assert type(out.grad_fn).__name__ == "_BlockedGFSABackward"  # the fast path ran, not a fallback
    torch.testing.assert_close(out, naive_gfsa(q, k, v, w0, w1, wK, 3, mask, is_causal), rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(f, (q, k, v, w0, w1, wK))


@pytest.mark.parametrize("mask_kind", ["causal", "padding_and_bias_float"])
def test_explicit_blocks_recompute_A_for_long_sequences(monkeypatch, mask_kind):
    """Short sequences keep A for the backward; long ones (here: all) recompute it, same numbers."""
    monkeypatch.setattr(kernels._ExplicitBlocks, "keep_ratio", 0)
    monkeypatch.setattr(kernels._ExplicitBlocks, "budget", 1)
    B, H, L, D = 2, 2, 5, 3
    q, k, v = (rand(B, H, L, D, requires_grad=True) for _ in range(3))
    wK = rand(H, requires_grad=True)
    is_causal = mask_kind == "causal"
    mask = None if is_causal else make_mask(mask_kind, B, H, L)

    def f(q, k, v, wK):
        return gfsa_attention(q, k, v, 0.1, 1.0, wK, 3, attn_mask=mask, is_causal=is_causal, impl="materialized")

    torch.testing.assert_close(f(q, k, v, wK), naive_gfsa(q, k, v, 0.1, 1.0, wK, 3, mask, is_causal))
    assert torch.autograd.gradcheck(f, (q, k, v, wK))


@pytest.mark.parametrize("impl", ["fused", "materialized"])
def test_blocked_paths_take_any_layout_and_coefficient_shape(monkeypatch, impl):
    """(B, L, H, D) views as attention modules produce them; (1, H, 1, 1) and 0-d learnable coefficients."""
    B, H, L, D = 2, 3, 6, 4
    kernel = KERNELS[impl]
    q, k, v = (rand(B, L, H, D).transpose(1, 2).requires_grad_() for _ in range(3))
    monkeypatch.setattr(kernel, "budget", budgets(B, H, kernel.head_bytes(q, k))["head"])
    w = rand(1, H, 1, 1, requires_grad=True)
    s = torch.tensor(0.2, dtype=F64, requires_grad=True)

    def f(q, k, v, w, s):
        return gfsa_attention(q, k, v, s, 1.0, w, 4, impl=impl)

    assert type(f(q, k, v, w, s).grad_fn).__name__ == "_BlockedGFSABackward"
    torch.testing.assert_close(f(q, k, v, w, s), naive_gfsa(q, k, v, s, 1.0, w, 4), rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(f, (q, k, v, w, s))


@pytest.mark.parametrize("impl", ["fused", "materialized"])
def test_fallbacks_where_the_fast_paths_do_not_apply(impl):
    """A learnable mask (a relative-position bias) needs its gradient; fused also needs equal head sizes."""
    B, H, L = 2, 2, 5
    q, k = rand(B, H, L, 3, requires_grad=True), rand(B, H, L, 3, requires_grad=True)
    v = rand(B, H, L, 3, requires_grad=True)
    bias = rand(1, H, L, L, requires_grad=True)
    wK = rand(H, requires_grad=True)
    out = gfsa_attention(q, k, v, 0.1, 1.0, wK, 3, attn_mask=bias, impl=impl)
    assert type(out.grad_fn).__name__ != "_BlockedGFSABackward"
    assert torch.autograd.gradcheck(
        lambda q, bias, wK: gfsa_attention(q, k, v, 0.1, 1.0, wK, 3, attn_mask=bias, impl=impl), (q, bias, wK)
    )
    v5 = rand(B, H, L, 5)
    out = gfsa_attention(q, k, v5, 0.1, 1.0, wK, 3, impl=impl)
    assert (type(out.grad_fn).__name__ == "_BlockedGFSABackward") == (impl == "materialized")
    torch.testing.assert_close(out, naive_gfsa(q, k, v5, 0.1, 1.0, wK, 3), rtol=1e-10, atol=1e-10)


def naive_efficient_attention(q, k, key_padding_mask=None):
    """The explicit n×n Efficient-Attention matrix, one head at a time: softmax over features, then over tokens."""
    B, H, L, _ = q.shape
    A = torch.zeros(B, H, L, L, dtype=q.dtype)
    for b in range(B):
        keep = torch.ones(L, dtype=torch.bool) if key_padding_mask is None else key_padding_mask[b]
        for h in range(H):
            rho_q = torch.exp(q[b, h]) / torch.exp(q[b, h]).sum(-1, keepdim=True)
            ek = torch.exp(k[b, h]) * keep[:, None]
            A[b, h] = rho_q @ (ek / ek.sum(0, keepdim=True)).T
    return A


@pytest.mark.parametrize("K", [1, 3, 4.5])
@pytest.mark.parametrize("padding", [False, True])
def test_linear_attention_matches_the_naive_filter_on_the_explicit_matrix(K, padding):
    B, H, L, D = 2, 3, 7, 4
    q, k, v = (rand(B, H, L, D, requires_grad=True) for _ in range(3))
    w0, w1, wK = (rand(H, requires_grad=True) for _ in range(3))
    keep = make_mask("key_padding_bool", B, H, L)[:, 0, 0] if padding else None
    A = naive_efficient_attention(q, k, keep)
    torch.testing.assert_close(A.sum(-1), torch.ones(B, H, L, dtype=F64), rtol=1e-12, atol=1e-12)  # row-stochastic
    if padding:
        assert torch.all(A.transpose(-1, -2)[~keep[:, None].expand(B, H, L)] == 0)  # padded keys get no weight
    expected = torch.stack(
        [torch.stack([naive_filter(A[b, h], w0[h], w1[h], wK[h], K) @ v[b, h] for h in range(H)]) for b in range(B)]
    )
    out = gfsa_linear_attention(q, k, v, w0, w1, wK, K, key_padding_mask=keep)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    assert torch.autograd.gradcheck(
        lambda *t: gfsa_linear_attention(*t, K, key_padding_mask=keep), (q, k, v, w0, w1, wK)
    )


def test_linear_attention_identity_coefficients_are_plain_efficient_attention():
    q, k, v = rand(2, 3, 6, 4), rand(2, 3, 6, 4), rand(2, 3, 6, 4)
    plain = naive_efficient_attention(q, k) @ v
    for wK in (0.0, torch.zeros(3, dtype=F64, requires_grad=True)):
        torch.testing.assert_close(gfsa_linear_attention(q, k, v, 0.0, 1.0, wK, 3), plain, rtol=1e-12, atol=1e-12)
