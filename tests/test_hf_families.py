"""GFSA in any transformers model that uses the attention interface, on tiny random-init configs of the
real architectures (tests/hf_families.py: Llama, Qwen2/3, Mistral with a short sliding window, Gemma3,
Phi-3, GPT-2, BERT, RoBERTa, ALBERT, DistilBERT, ViT, DINOv2, T5, BART, PLBART, mBART, Speech2Text,
Whisper). Per family:

(a) identity coefficients reproduce the stock model (fp32 ≤ 1e-5);
(b) with random per-head coefficients, a patched layer's output equals the naive H·V built from that
    layer's EAGER attention probabilities (float64 ≤ 1e-9; ≤ 1e-6 with eager's own fp32 softmax);
(c) causal stacks: no leak from future tokens;
(d) padding does not change real tokens;
(e) output_attentions=True returns the filtered H at the patched layer.
Features GFSA cannot honour (Gemma2's logit soft-capping, GPT-OSS's attention sinks) are one line.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from hf_families import FAMILIES, build, inputs, main_outputs, max_diff
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

import gfsa
from gfsa.nn.adapters import hf
from gfsa.nn.attention import GFSACoefficients

K = 3
SUPPORTED = [n for n, f in FAMILIES.items() if not f.unsupported]
DECODERS = [n for n in SUPPORTED if FAMILIES[n].kind in ("causal", "seq2seq", "speech2seq")]
PADDED = [n for n in SUPPORTED if FAMILIES[n].kind in ("causal", "encoder", "seq2seq")]


def set_random_coefficients(model, seed: int = 3) -> None:
    """Non-identity per-head coefficients: w0 in [0, 0.2), w1 in [0.8, 1.2), wK in [-0.5, 0.5)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for c in model.modules():
            if isinstance(c, GFSACoefficients):
                n = c.num_heads
                c.w0.copy_(0.2 * torch.rand(n, generator=g))
                c.w1.copy_(0.8 + 0.4 * torch.rand(n, generator=g))
                c.wK.copy_(torch.rand(n, generator=g) - 0.5)


def naive_filter(A: torch.Tensor, g: GFSACoefficients) -> torch.Tensor:
    """H = w0·I + w1·A + wK·(A + (K−1)(A² − A)), written out (square A)."""
    w0, w1, wK = (w.to(A.dtype).view(-1, 1, 1) for w in (g.w0, g.w1, g.wK))
    eye = torch.eye(A.shape[-1], dtype=A.dtype)
    return w0 * eye + w1 * A + wK * (A + (g.settings.K - 1) * (A @ A - A))


@contextlib.contextmanager
def fp64_softmax():
    """Llama-style and ViT eager code runs ``softmax(dtype=torch.float32)`` even on float64 scores; this
    keeps float64 while the eager reference runs."""
    orig = torch.nn.functional.softmax

    def softmax(input, dim=None, _stacklevel=3, dtype=None):
        if dtype is not None and input.dtype == torch.float64:
            dtype = torch.float64
        return orig(input, dim=dim, _stacklevel=_stacklevel, dtype=dtype)

    torch.nn.functional.softmax = softmax
    try:
        yield
    finally:
        torch.nn.functional.softmax = orig


CAPTURED: list[tuple] = []


def _capture(module, query, key, value, attention_mask, **kwargs):
    """The "gfsa" implementation, recording (module, value, output) of the patched modules."""
    out, weights = hf.gfsa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if getattr(module, "gfsa", None) is not None:
        CAPTURED.append((module, value, out))
    return out, weights


AttentionInterface.register("gfsa_capture", _capture)
AttentionMaskInterface.register("gfsa_capture", sdpa_mask)


def eager_attentions(name: str, batch: dict, softmax64: bool = True) -> list[torch.Tensor]:
    """Self-attention probabilities of the eager build, in layer order (encoder, then decoder)."""
    model = build(name, "eager", torch.float64)
    with torch.no_grad(), fp64_softmax() if softmax64 else contextlib.nullcontext():
        out = model(**batch, output_attentions=True)
    if getattr(out, "encoder_attentions", None) is not None:
        return list(out.encoder_attentions) + list(out.decoder_attentions)
    return list(out.attentions)


def real_rows(name: str, batch: dict, layer: int, n_enc: int) -> torch.Tensor | None:
    """(B, L) bool of the query rows to compare: left-padding rows see no key at all."""
    fam = FAMILIES[name]
    if fam.kind in ("seq2seq", "speech2seq") and layer >= n_enc:
        return None  # decoder inputs are not padded
    if fam.left_pad and "attention_mask" in batch:
        return batch["attention_mask"].bool()
    return None


def n_encoder_layers(model) -> int:
    cfg = model.config
    return getattr(cfg, "encoder_layers", None) or getattr(cfg, "num_layers", None) or cfg.num_hidden_layers


def amax(t: torch.Tensor) -> float:
    """Max of |t|, a NaN counting as infinitely wrong."""
    return float("inf") if torch.isnan(t).any() else t.abs().max().item()


@pytest.mark.parametrize("name", SUPPORTED)
def test_a_identity_coefficients_reproduce_the_stock_model(name):
    stock = build(name)
    model = gfsa.patch(copy.deepcopy(stock), layers="all", K=K)
    batch = inputs(name)
    with torch.no_grad():
        assert max_diff(main_outputs(stock(**batch)), main_outputs(model(**batch))) <= 1e-5
        if name in DECODERS:  # the ordinary path as well as the cached prefill
            assert max_diff(main_outputs(stock(**batch)), main_outputs(model(**batch, use_cache=False))) <= 1e-5


def _layer_errors(name: str, impl: str, use_cache: bool | None, softmax64: bool = True) -> float:
    batch = inputs(name, padded=softmax64, dtype=torch.float64)
    extra = {} if use_cache is None else {"use_cache": use_cache}
    attn = eager_attentions(name, batch, softmax64)
    n_layers = len(hf.attention_layers(build(name)))
    n_enc = n_encoder_layers(build(name))
    worst = 0.0
    for i in range(n_layers):
        model = gfsa.patch(build(name), layers=[i], K=K, impl=impl).to(torch.float64)
        set_random_coefficients(model, seed=10 + i)
        model.set_attn_implementation("gfsa_capture")
        CAPTURED.clear()
        with torch.no_grad():
            model(**batch, **extra)
        calls = CAPTURED if name != "albert" else [CAPTURED[i]]  # ALBERT: one shared module, call i = layer i
        assert len(calls) == 1, f"{name} layer {i}: {len(calls)} patched calls"
        module, value, out = calls[0]
        groups = getattr(module, "num_key_value_groups", 1)
        ref = (naive_filter(attn[i], module.gfsa) @ repeat_kv(value, groups)).transpose(1, 2)
        diff = (out - ref).abs().amax(dim=(-2, -1))
        rows = real_rows(name, batch, i, n_enc)
        worst = max(worst, amax(diff[rows] if rows is not None else diff))
    return worst


@pytest.mark.parametrize("impl", ["auto", "fused"])
@pytest.mark.parametrize("name", SUPPORTED)
def test_b_a_patched_layer_is_the_naive_filter_of_the_eager_probabilities(name, impl):
    use_cache = False if name in DECODERS else None
    assert _layer_errors(name, impl, use_cache) <= 1e-9


@pytest.mark.parametrize("name", [n for n in DECODERS if FAMILIES[n].kind == "causal"] + ["bart", "t5"])
def test_b_the_cached_prefill_is_the_naive_filter_too(name):
    assert _layer_errors(name, "auto", use_cache=True) <= 1e-9


@pytest.mark.parametrize("name", ["llama", "vit"])
def test_b_with_eager_own_fp32_softmax(name):
    assert _layer_errors(name, "auto", False if name in DECODERS else None, softmax64=False) <= 1e-6


@pytest.mark.parametrize("name", DECODERS)
def test_c_no_leak_from_future_tokens(name):
    fam = FAMILIES[name]
    model = gfsa.patch(build(name), layers="all", K=K).to(torch.float64)
    set_random_coefficients(model)
    batch = inputs(name, padded=False, dtype=torch.float64)
    key = "decoder_input_ids" if fam.kind in ("seq2seq", "speech2seq") else "input_ids"
    t = batch[key].shape[1] // 2
    changed = dict(batch)
    changed[key] = batch[key].clone()
    changed[key][:, t + 1 :] = (changed[key][:, t + 1 :] + 7) % 90 + 3
    with torch.no_grad():
        a, b = main_outputs(model(**batch))[0], main_outputs(model(**changed))[0]
    assert amax(a[:, : t + 1] - b[:, : t + 1]) <= 1e-12
    assert (a[:, t + 1 :] - b[:, t + 1 :]).abs().max() > 1e-6  # the check has teeth


@pytest.mark.parametrize("name", PADDED)
def test_d_padding_does_not_change_real_tokens(name):
    fam = FAMILIES[name]
    model = gfsa.patch(build(name), layers="all", K=K).to(torch.float64)
    set_random_coefficients(model)
    batch = inputs(name, dtype=torch.float64)
    keep = batch["attention_mask"][1].bool()
    alone = {
        k: (v[1:2, keep] if k in ("input_ids", "attention_mask", "position_ids") else v[1:2]) for k, v in batch.items()
    }
    with torch.no_grad():
        full, short = main_outputs(model(**batch)), main_outputs(model(**alone))
    if fam.kind == "seq2seq":
        err = max(amax(full[0][1] - short[0][0]), amax(full[1][1, keep] - short[1][0]))
    else:
        err = amax(full[0][1, keep] - short[0][0])
    assert err <= 1e-10


@pytest.mark.parametrize("name", SUPPORTED)
def test_e_output_attentions_returns_the_filtered_matrix(name):
    batch = inputs(name, dtype=torch.float64)
    attn = eager_attentions(name, batch)
    n_enc = n_encoder_layers(build(name))
    for i in range(len(attn)):
        model = gfsa.patch(build(name), layers=[i], K=K).to(torch.float64)
        set_random_coefficients(model, seed=20 + i)
        with torch.no_grad():
            out = model(**batch, output_attentions=True)
        got = (
            list(out.encoder_attentions) + list(out.decoder_attentions)
            if getattr(out, "encoder_attentions", None) is not None
            else list(out.attentions)
        )
        g = next(m.gfsa for m in model.modules() if hasattr(m, "gfsa") and not m.gfsa.cross)
        for j in range(i + 1):  # layers after i see other inputs than the eager model's
            want = naive_filter(attn[j], g) if j == i else attn[j]
            diff = (got[j] - want).abs().amax(dim=(1, -1))
            rows = real_rows(name, batch, j, n_enc)
            assert amax(diff[rows] if rows is not None else diff) <= 1e-9, (i, j)


@pytest.mark.parametrize("name", [n for n, f in FAMILIES.items() if f.unsupported])
def test_what_gfsa_cannot_honour_is_one_line(name, monkeypatch):
    kw = FAMILIES[name].unsupported
    model = build(name)
    with pytest.raises(hf.UnsupportedAttentionError) as err:
        gfsa.patch(model, layers="all")
    assert kw in str(err.value) and name in str(err.value) and "\n" not in str(err.value)
    assert not hasattr(model, "gfsa_layers") and model.config._attn_implementation != "gfsa"
    # the run-time backstop, for a model whose config does not announce the feature
    monkeypatch.setattr(hf, "check_supported", lambda m: None)
    gfsa.patch(model, layers="all")
    with pytest.raises(hf.UnsupportedAttentionError) as err, torch.no_grad():
        model(**inputs(name))
    assert kw in str(err.value) and "\n" not in str(err.value)


def test_every_family_is_found_with_its_layers_and_kinds():
    """The generic discovery: every layer of every family, self- and cross-attention told apart."""
    expected = {"causal": 2, "encoder": 2, "vision": 2, "seq2seq": 4, "speech2seq": 4}
    for name in SUPPORTED:
        model = build(name)
        layers = hf.attention_layers(model)
        assert len(layers) == expected[FAMILIES[name].kind], name
        cross = [c for layer in layers for _, c in layer.modules if c]
        assert len(cross) == (2 if FAMILIES[name].kind in ("seq2seq", "speech2seq") else 0), name
