"""GFSA on a GPU: the exact paths against the naive formula in fp32/bf16/fp16 with masks and causal attention,
gradients, autocast as models run, autotune, the cached decoding path and torch.compile.

Marked ``cuda`` and skipped (with the reason shown) where there is no CUDA device: `gfsa bench gpu` runs
them on a GPU machine (``pytest -m cuda tests/test_cuda.py``). ``GFSA_TEST_DEVICE=cpu`` runs the same tests
on the CPU: how `gfsa bench gpu --device cpu --fast` (tests/test_benchmarks.py) keeps them exercised here.
The reference is test_functional.py's independent per-head loop in float64, on the CPU, fed the very
inputs the device saw (already rounded to the dtype under test).
"""

from __future__ import annotations

import os

import pytest
import torch
from test_functional import make_mask, naive_gfsa

import gfsa
from gfsa.nn import dispatch
from gfsa.nn.attention import GFSACoefficients
from gfsa.nn.functional import gfsa_attention

DEVICE = os.environ.get("GFSA_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        DEVICE.startswith("cuda") and not torch.cuda.is_available(),
        reason="needs a CUDA GPU (run gfsa bench gpu on one)",
    ),
]
F64 = torch.float64
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Output tolerance against the float64 formula on the same (rounded) inputs: a few roundings of O(1) values.
TOL = {torch.float32: 2e-4, torch.bfloat16: 3e-2, torch.float16: 4e-3}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def coefficients(H: int):
    """Per-head fp32 coefficients as a patched model holds them: w0 in [0, 0.2), w1 in [0.8, 1.2), wK in [-0.5, 0.5)."""
    return 0.2 * torch.rand(H), 0.8 + 0.4 * torch.rand(H), torch.rand(H) - 0.5


def to_device(mask, dtype):
    if mask is None:
        return None
    return mask.to(DEVICE, dtype if mask.is_floating_point() else torch.bool)


def reference(q, k, v, coefs, mask, is_causal):
    """The float64 formula on the CPU, on exactly the device's inputs."""
    cpu = [t.detach().double().cpu() for t in (q, k, v)]
    m = None if mask is None else (mask.double().cpu() if mask.is_floating_point() else mask.cpu())
    return naive_gfsa(*cpu, *(c.double() for c in coefs), 3, mask=m, is_causal=is_causal)


@pytest.mark.parametrize("mask_kind", ["none", "causal", "key_padding_bool", "padding_and_bias_float"])
@pytest.mark.parametrize("impl", ["fused", "materialized", "auto"])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_exact_paths_match_the_naive_formula(dtype, impl, mask_kind):
    dt = DTYPES[dtype]
    B, H, L, D = 2, 4, 80, 32
    q, k, v = (torch.randn(B, H, L, D).to(DEVICE, dt) for _ in range(3))
    coefs = coefficients(H)
    causal = mask_kind == "causal"
    mask = to_device(None if mask_kind in ("none", "causal") else make_mask(mask_kind, B, H, L), dt)
    out = gfsa_attention(q, k, v, *(c.to(DEVICE) for c in coefs), 3, attn_mask=mask, is_causal=causal, impl=impl)
    assert out.dtype == dt and out.device.type == torch.device(DEVICE).type
    ref = reference(q, k, v, coefs, mask, causal)
    torch.testing.assert_close(out.double().cpu(), ref, atol=TOL[dt], rtol=TOL[dt])


@pytest.mark.parametrize("mask_kind", ["none", "causal", "key_padding_bool"])
@pytest.mark.parametrize("impl", ["fused", "materialized"])
def test_gradients_match_the_naive_formula(impl, mask_kind):
    """fp32 gradients of q, k, v and the per-head coefficients against float64 autograd of the formula."""
    B, H, L, D = 2, 2, 48, 16
    q, k, v = (torch.randn(B, H, L, D, device=DEVICE, requires_grad=True) for _ in range(3))
    coefs = [c.to(DEVICE).requires_grad_() for c in coefficients(H)]
    causal = mask_kind == "causal"
    mask = to_device(make_mask(mask_kind, B, H, L) if mask_kind == "key_padding_bool" else None, torch.float32)
    g = torch.randn(B, H, L, D)
    out = gfsa_attention(q, k, v, *coefs, 3, attn_mask=mask, is_causal=causal, impl=impl)
    grads = torch.autograd.grad(out, (q, k, v, *coefs), g.to(DEVICE))

    ref_in = [t.detach().double().cpu().requires_grad_() for t in (q, k, v, *coefs)]
    m = None if mask is None else mask.cpu()
    ref = naive_gfsa(*ref_in[:3], *ref_in[3:], 3, mask=m, is_causal=causal)
    ref_grads = torch.autograd.grad(ref, ref_in, g.double())
    for name, got, want in zip(("q", "k", "v", "w0", "w1", "wK"), grads, ref_grads, strict=True):
        torch.testing.assert_close(got.double().cpu(), want, atol=1e-3, rtol=1e-3, msg=name)


@pytest.mark.parametrize("impl", ["fused", "materialized", "auto"])
def test_autocast_bf16_as_models_run_trains_fp32_coefficients(impl):
    """fp32 activations and parameters under bf16 autocast: bf16 output close to fp32, fp32 coefficient grads."""
    B, H, L, D = 2, 4, 64, 32
    q, k, v = (torch.randn(B, H, L, D, device=DEVICE) for _ in range(3))
    mask = to_device(make_mask("key_padding_bool", B, H, L), torch.float32)

    def run(low: bool):
        w0, w1, wK = (c.to(DEVICE).requires_grad_() for c in coefficients(H))
        with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16, enabled=low):
            out = gfsa_attention(q, k, v, w0, w1, wK, 3, attn_mask=mask, impl=impl)
        out.float().square().sum().backward()
        return out, w0.grad, wK.grad

    torch.manual_seed(1)
    out16, gw0_16, gwK_16 = run(True)
    torch.manual_seed(1)
    out32, gw0_32, gwK_32 = run(False)
    assert out16.dtype == torch.bfloat16 and torch.isfinite(out16).all()
    torch.testing.assert_close(out16.float(), out32, rtol=0.02, atol=0.02)
    for g16, g32 in ((gw0_16, gw0_32), (gwK_16, gwK_32)):
        assert g16.dtype == torch.float32 and torch.isfinite(g16).all()
        torch.testing.assert_close(g16, g32, rtol=0.02, atol=0.5)


def test_auto_follows_the_table_and_dropout_needs_the_explicit_matrix():
    B, H, L, D = 1, 2, 64, 32
    q, k, v = (torch.randn(B, H, L, D, device=DEVICE) for _ in range(3))
    wK = torch.full((H,), 0.3, device=DEVICE)
    path = dispatch.table_impl(q)
    assert path in ("fused", "materialized")
    assert torch.equal(gfsa_attention(q, k, v, 0.0, 1.0, wK, 3), gfsa_attention(q, k, v, 0.0, 1.0, wK, 3, impl=path))
    torch.manual_seed(3)
    auto = gfsa_attention(q, k, v, 0.0, 1.0, wK, 3, dropout_p=0.3)
    torch.manual_seed(3)
    assert torch.equal(auto, gfsa_attention(q, k, v, 0.0, 1.0, wK, 3, dropout_p=0.3, impl="materialized"))


def test_autotune_measures_on_the_device(monkeypatch):
    monkeypatch.delenv(dispatch.AUTOTUNE_CACHE_ENV, raising=False)
    dispatch.autotune_reset()
    previous = dispatch.autotune(True)
    try:
        q, k, v = (torch.randn(2, 4, 96, 32, device=DEVICE, requires_grad=True) for _ in range(3))
        wK = torch.full((4,), 0.3, device=DEVICE, requires_grad=True)
        out = gfsa_attention(q, k, v, 0.0, 1.0, wK, 3, is_causal=True)
        (choice,) = dispatch.autotune_choices().items()
        key, entry = choice
        assert key == f"{torch.device(DEVICE).type}|float32|causal|32|128|tensor|train"
        assert entry["fused_ms"] > 0 and entry["materialized_ms"] > 0
        assert entry["impl"] == min(("fused", "materialized"), key=lambda i: entry[f"{i}_ms"])
        assert torch.equal(out, gfsa_attention(q, k, v, 0.0, 1.0, wK, 3, is_causal=True, impl=entry["impl"]))
    finally:
        dispatch.autotune(previous)
        dispatch.autotune_reset()


def test_fused_path_memory_grows_linearly_with_the_length():
    """fused never forms an n×n matrix: doubling n doubles its forward+backward peak (an n×n one would quadruple)."""
    from gfsa.ops.bench.common import peak_bytes

    def peak(L: int, D: int = 64) -> int:
        q, k, v = (torch.randn(1, 2, L, D, device=DEVICE, requires_grad=True) for _ in range(3))
        wK = torch.full((2,), 0.3, device=DEVICE, requires_grad=True)
        g = torch.randn(1, 2, L, D, device=DEVICE)

        def step():
            torch.autograd.grad(gfsa_attention(q, k, v, 0.0, 1.0, wK, 3, impl="fused"), (q, k, v, wK), g)

        step()
        return peak_bytes(step, torch.device(DEVICE))

    small, large = peak(1024), peak(2048)
    assert 1.5 < large / small < 2.6, (small, large)
    assert large < 2 * 2048 * 2048 * 4  # below one n×n fp32 matrix per head


def _gpt2(dtype):
    import transformers as tf

    torch.manual_seed(0)
    config = tf.GPT2Config(
        n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=64, bos_token_id=0, eos_token_id=0
    )
    model = gfsa.patch(tf.GPT2LMHeadModel(config).eval(), layers="all", K=3)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for c in model.modules():
            if isinstance(c, GFSACoefficients):
                c.w0.copy_(0.2 * torch.rand(c.num_heads, generator=g))
                c.wK.copy_(torch.rand(c.num_heads, generator=g) - 0.5)
    return model.to(DEVICE, dtype)


def test_cached_greedy_decoding_equals_decoding_without_a_cache():
    model = _gpt2(torch.float32)
    ids = torch.randint(3, 100, (2, 12), generator=torch.Generator().manual_seed(5)).to(DEVICE)
    kw = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
    kw.update(return_dict_in_generate=True, output_logits=True, attention_mask=torch.ones_like(ids))
    cached, full = model.generate(ids, use_cache=True, **kw), model.generate(ids, use_cache=False, **kw)
    assert torch.equal(cached.sequences, full.sequences)
    diff = max((a - b).abs().max().item() for a, b in zip(cached.logits, full.logits, strict=True))
    assert diff <= 1e-3


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_cached_decoding_token_by_token_equals_a_full_forward(dtype):
    """Teacher-forced: each new token through the KV cache (A·V rows kept) against a full forward of the prefix."""
    from transformers import DynamicCache

    dt = DTYPES[dtype]
    tol = 1e-3 if dt == torch.float32 else 0.15
    model = _gpt2(dt)
    ids = torch.randint(3, 100, (2, 16), generator=torch.Generator().manual_seed(6)).to(DEVICE)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids[:, :8], cache=cache, use_cache=True)
        for t in range(8, 16):
            step = model(input_ids=ids[:, t : t + 1], cache=cache, use_cache=True).logits[:, -1]
            full = model(input_ids=ids[:, : t + 1], use_cache=False).logits[:, -1]
            assert torch.isfinite(step).all()
            assert (step.float() - full.float()).abs().max().item() <= tol, t


@pytest.mark.parametrize("impl", ["fused", "materialized"])
def test_compiled_attention_equals_eager(impl):
    """torch.compile (inductor, fullgraph) of GFSA attention: forward and gradients as eager."""
    B, H, L, D = 2, 4, 128, 32
    q, k, v = (torch.randn(B, H, L, D, device=DEVICE, requires_grad=True) for _ in range(3))
    wK = torch.full((H,), 0.3, device=DEVICE, requires_grad=True)

    def f(q, k, v, wK):
        return gfsa_attention(q, k, v, 0.05, 1.0, wK, 3, is_causal=True, impl=impl)

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)
    eager, got = f(q, k, v, wK), compiled(q, k, v, wK)
    torch.testing.assert_close(got, eager, atol=1e-4, rtol=1e-4)
    g = torch.randn_like(eager)
    for a, b in zip(torch.autograd.grad(got, (q, k, v, wK), g), torch.autograd.grad(eager, (q, k, v, wK), g)):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def test_compiled_patched_vit_trains_as_eager():
    import timm

    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=10
    )
    gfsa.patch(model, layers="all", wK=0.3)
    model = model.to(DEVICE).train()
    x = torch.randn(4, 3, 32, 32, device=DEVICE)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    wK = [m.wK for m in model.modules() if isinstance(m, GFSACoefficients)]
    eager, got = model(x), compiled(x)
    torch.testing.assert_close(got, eager, atol=1e-3, rtol=1e-3)
    for a, b in zip(torch.autograd.grad(got.square().sum(), wK), torch.autograd.grad(eager.square().sum(), wK)):
        torch.testing.assert_close(a, b, atol=1e-2, rtol=1e-2)
