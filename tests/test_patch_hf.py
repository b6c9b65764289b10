"""gfsa.patch on Hugging Face transformers models (tiny random-init configs of the real architectures).

Every family is checked against the stock model (identity coefficients), against an independent
eager computation of the filter (explicit softmax matrix, additive float mask, the formula written
out), for padding, gradients, learnable sets, state dicts and the family's own quirks (ALBERT's
shared module, GPT-2's causality and KV cache, cross-attention of encoder-decoder models).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import transformers as tf
from hf_families import FAMILIES, HEADS, VOCAB, B, L, build, inputs, main_outputs, max_diff
from patch_helpers import coefficient_modules, set_coefficients
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

import gfsa
from gfsa.nn.adapters import hf as gfsa_hf
from gfsa.nn.layers import LayerSpecError
from gfsa.nn.patching import UnsupportedModelError, added_parameters, gfsa_parameters, patched_layers

# The families of hf_families.py: the encoders and GPT-2 at 4 layers ("selected" patches layers 1 and 3),
# the encoder-decoders at 2 + 2.
NAMES = ["bert", "roberta", "albert", "gpt2", "t5", "bart", "plbart", "mbart", "speech_to_text"]
DEEP = ("bert", "roberta", "albert", "gpt2")
SEQ2SEQ = [n for n in NAMES if FAMILIES[n].kind in ("seq2seq", "speech2seq")]
SPEECH = [n for n in NAMES if FAMILIES[n].kind == "speech2seq"]
# cross-attention module names per encoder-decoder family
CROSS_SUFFIX = {"t5": "EncDecAttention", "bart": "encoder_attn", "plbart": "encoder_attn"}
CROSS_SUFFIX.update({"mbart": "encoder_attn", "speech_to_text": "encoder_attn"})

_MODELS: dict[str, tf.PreTrainedModel] = {}


def stock(name: str) -> tf.PreTrainedModel:
    """The unpatched model of a family (built once per session, eval mode, never modified)."""
    if name not in _MODELS:
        _MODELS[name] = build(name, layers=4 if name in DEEP else None)
    return _MODELS[name]


def fresh(name: str) -> tf.PreTrainedModel:
    """A copy of the stock model with the same weights, free to patch."""
    return copy.deepcopy(stock(name))


def outputs(model, batch: dict) -> list[torch.Tensor]:
    return main_outputs(model(**batch))


def patched(name: str, **kw) -> tf.PreTrainedModel:
    return gfsa.patch(fresh(name), **kw)


def attention_modules(model) -> list[tuple[int, torch.nn.Module, bool]]:
    """(layer, module, is_cross) for every attention module of the model, in depth order."""
    return [(i, m, c) for i, layer in enumerate(gfsa_hf.attention_layers(model)) for m, c in layer.modules]


@pytest.fixture(scope="module", autouse=True)
def _module_scope():
    yield
    _MODELS.clear()  # the tiny models live as long as this module's tests


# --------------------------------------------------------------------------------------------------
# an independent eager reference: explicit softmax matrix, additive float mask, formula written out

REF = "gfsa_test_reference"


def _reference_filter(A: torch.Tensor, w0, w1, wK, K: float) -> torch.Tensor:
    """H = w0·I + w1·A + wK·(A + (K−1)(A² − A)), zero-padding a non-square A to n×n and slicing back."""
    Lq, Lk = A.shape[-2:]
    n = max(Lq, Lk)
    P = A.new_zeros(*A.shape[:-2], n, n)
    P[..., :Lq, :Lk] = A
    eye = torch.eye(n, dtype=A.dtype)
    w0, w1, wK = (w.to(A.dtype).view(-1, 1, 1) for w in (w0, w1, wK))
    H = w0 * eye + w1 * P + wK * (P + (K - 1) * (P @ P - P))
    return H[..., :Lq, :Lk]


def reference_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    assert dropout == 0.0, "the reference runs in eval mode"
    position_bias = kwargs.get("position_bias")
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = (query @ key.transpose(-1, -2)) * scaling
    if position_bias is not None:  # T5
        scores = scores + position_bias
    if attention_mask is not None:
        assert attention_mask.dtype.is_floating_point
        scores = scores + attention_mask
    elif getattr(module, "is_causal", False) and query.shape[-2] > 1:
        causal = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    A = torch.softmax(scores, dim=-1)
    if attention_mask is not None:  # queries that see no key at all (left padding): zeros, as SDPA gives
        dead = (attention_mask <= torch.finfo(attention_mask.dtype).min / 2).all(dim=-1, keepdim=True)
        A = A.masked_fill(dead, 0.0)
    g = getattr(module, "gfsa", None)
    active = module._ref_active
    if active is not None:  # a shared module (ALBERT): only these calls are filtered
        call, module._ref_calls = module._ref_calls, module._ref_calls + 1
    if g is not None and (active is None or call in active):
        A = _reference_filter(A, g.w0, g.w1, g.wK, g.settings.K)
    return (A @ value).transpose(1, 2).contiguous(), A


AttentionInterface.register(REF, reference_attention)
AttentionMaskInterface.register(REF, eager_mask)


def reference_outputs(model, batch: dict, active_calls=None) -> list[torch.Tensor]:
    """Outputs of a patched model computed by the reference attention with its coefficients.

    ``active_calls``: for shared modules (ALBERT), the call indices that are filtered, as one set
    for every module or a function of the module's path (e.g. "encoder.albert_layer_groups.1…").
    """
    ref = copy.deepcopy(model)
    ref.set_attn_implementation(REF)
    paths = {id(m): n for n, m in ref.named_modules()}
    for _, m, _ in attention_modules(ref):
        m._ref_active = active_calls(paths[id(m)]) if callable(active_calls) else active_calls
        m._ref_calls = 0
    return outputs(ref, batch)


# --------------------------------------------------------------------------------------------------
# identity coefficients: the stock model, padding honoured


@pytest.mark.parametrize("name", NAMES)
def test_padding_matters_for_the_stock_model(name):
    model, padded = stock(name), inputs(name)
    unmasked = dict(padded, attention_mask=torch.ones_like(padded["attention_mask"]))
    with torch.no_grad():
        assert max_diff(outputs(model, padded), outputs(model, unmasked)) > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_identity_coefficients_reproduce_the_stock_model(name):
    model = patched(name)
    assert model.config._attn_implementation == "gfsa"
    assert len(coefficient_modules(model)) > 0
    for padded in (True, False):
        batch = inputs(name, padded)
        with torch.no_grad():
            want, got = outputs(stock(name), batch), outputs(model, batch)
        assert all(torch.isfinite(t).all() for t in got)
        assert max_diff(got, want) <= 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_identity_materialized_with_padded_cross_attention_reproduces_the_stock_model(name):
    model = patched(name, cross_attention="pad", impl="materialized")
    batch = inputs(name)
    with torch.no_grad():
        assert max_diff(outputs(model, batch), outputs(stock(name), batch)) <= 1e-5


# --------------------------------------------------------------------------------------------------
# non-identity coefficients


@pytest.mark.parametrize("name", NAMES)
def test_nonzero_wK_changes_the_outputs(name):
    model = patched(name)
    set_coefficients(model, wK=0.5)
    batch = inputs(name)
    with torch.no_grad():
        got = outputs(model, batch)
        assert all(torch.isfinite(t).all() for t in got)
        assert max_diff(got, outputs(stock(name), batch)) > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_nonzero_w0_changes_the_outputs(name):
    model = patched(name, w0=0.2)
    batch = inputs(name)
    with torch.no_grad():
        assert max_diff(outputs(model, batch), outputs(stock(name), batch)) > 1e-3


@pytest.mark.parametrize("impl", ["fused", "materialized"])
@pytest.mark.parametrize(
    ("name", "cross"), [(n, "plain") for n in NAMES] + [(n, "pad") for n in SEQ2SEQ], ids=lambda x: str(x)
)
def test_patched_model_matches_an_independent_eager_computation(name, cross, impl):
    K = 4 if name in ("t5", "gpt2") else 3
    model = patched(name, K=K, w0=0.05, cross_attention=cross, impl=impl)
    set_coefficients(model, wK="random")
    batch = inputs(name)
    with torch.no_grad():
        got, want = outputs(model, batch), reference_outputs(model, batch)
        assert max_diff(got, want) <= 2e-5
        # and the filter matters: the plain model is far away
        assert max_diff(got, outputs(stock(name), batch)) > 1e-3


def test_bert_attention_layer_matches_gfsa_filter_on_the_eager_matrix():
    """One BERT self-attention module, by hand: softmax(QKᵀ/√d + mask) → gfsa_filter → ·V."""
    model = patched("bert", K=3, w0=-0.01)
    set_coefficients(model, wK="random")
    batch = inputs("bert")
    attn = model.encoder.layer[2].attention.self
    seen = {}

    def hook(mod, args, kwargs, out):
        seen["x"], seen["out"] = (args[0] if args else kwargs["hidden_states"]), out[0]

    handle = attn.register_forward_hook(hook, with_kwargs=True)
    with torch.no_grad():
        model(**batch)
    handle.remove()
    x = seen["x"]

    def heads(t):
        return t.view(B, L, HEADS, -1).transpose(1, 2)

    with torch.no_grad():
        q, k, v = heads(attn.query(x)), heads(attn.key(x)), heads(attn.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        keep = batch["attention_mask"].bool()[:, None, None, :]
        A = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)
        H = gfsa.gfsa_filter(A, attn.gfsa.w0, attn.gfsa.w1, attn.gfsa.wK, 3)
        want = (H @ v).transpose(1, 2).reshape(B, L, -1)
    assert torch.allclose(seen["out"], want, atol=1e-6)
    assert not torch.allclose(seen["out"], (A @ v).transpose(1, 2).reshape(B, L, -1), atol=1e-3)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in SPEECH])
def test_padding_is_honoured_by_the_filter(name):
    """With wK≠0 and w0≠0, the padded row's valid positions equal the unpadded short sequence alone."""
    model = patched(name, w0=0.1)
    set_coefficients(model, wK=0.5)
    batch = inputs(name)
    keep = batch["attention_mask"][1].bool()
    alone = {
        k: (v[1:2, keep] if k in ("input_ids", "attention_mask", "position_ids") else v[1:2]) for k, v in batch.items()
    }
    with torch.no_grad():
        full, short = outputs(model, batch), outputs(model, alone)
    if name in SEQ2SEQ:  # decoder output (all positions), encoder output at the valid positions
        assert (full[0][1] - short[0][0]).abs().max() <= 1e-5
        assert (full[1][1, keep] - short[1][0]).abs().max() <= 1e-5
    else:
        assert (full[0][1, keep] - short[0][0]).abs().max() <= 1e-5


# --------------------------------------------------------------------------------------------------
# layer selection, gradients, learnable sets, parameter counts


def _loss(model, batch):
    g = torch.Generator().manual_seed(5)
    return sum((t * torch.randn(t.shape, generator=g)).sum() for t in outputs(model, batch))


@pytest.mark.parametrize("name", [n for n in NAMES if n != "albert"])
def test_gradients_reach_exactly_the_selected_layers(name):
    model = patched(name, layers="selected")
    assert patched_layers(model) == [1, 3]
    layers = attention_modules(model)
    assert len({i for i, _, _ in layers}) == 4
    for i, m, cross in layers:
        assert hasattr(m, "gfsa") == (i in (1, 3) and not cross), (i, cross)
    coeffs = coefficient_modules(model)
    assert sorted(c.layer for c in coeffs) == [1, 3]
    model.train()
    torch.manual_seed(0)
    _loss(model, inputs(name)).backward()
    params = gfsa_parameters(model)
    assert len(params) == 2 and all(p.requires_grad for p in params)
    for p in params:
        assert p.grad is not None and (p.grad != 0).all()
    for c in coeffs:
        assert c.w0.grad is None and c.w1.grad is None
    model.eval()


def test_albert_selected_layers_share_one_module_and_get_gradients():
    model = patched("albert", layers="selected")
    (c,) = coefficient_modules(model)
    assert c.shared_layers == [1, 3]
    assert added_parameters(model) == HEADS
    model.train()
    torch.manual_seed(0)
    _loss(model, inputs("albert")).backward()
    assert c.wK.grad is not None and (c.wK.grad != 0).all()


# modules that get coefficients with layers="all": (plain cross-attention, padded cross-attention)
MODULES = {n: (4, 4) for n in NAMES} | {n: (4, 6) for n in SEQ2SEQ} | {"albert": (1, 1)}


@pytest.mark.parametrize("name", NAMES)
def test_added_parameters_are_heads_times_patched_modules(name):
    plain, pad = MODULES[name]
    model = patched(name)
    assert len(coefficient_modules(model)) == plain
    assert added_parameters(model) == HEADS * plain
    assert (
        sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in stock(name).parameters()) + HEADS * plain
    )
    assert added_parameters(patched(name, cross_attention="pad")) == HEADS * pad
    assert added_parameters(patched(name, layers="selected")) == (HEADS if name == "albert" else 2 * HEADS)


@pytest.mark.parametrize("name", ["bert", "albert", "t5", "speech_to_text"])
def test_learn_selects_the_learnable_coefficients(name):
    n_modules = MODULES[name][0]
    model = patched(name, learn=("w0", "wK"))
    assert added_parameters(model) == 2 * HEADS * n_modules
    for c in coefficient_modules(model):
        assert {n for n, _ in c.named_parameters()} == {"w0", "wK"}
        assert {n for n, _ in c.named_buffers()} == {"w1"}
    model.train()
    _loss(model, inputs(name)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gfsa_parameters(model))

    frozen = patched(name, learn=())
    assert added_parameters(frozen) == 0 and gfsa_parameters(frozen) == []
    for c in coefficient_modules(frozen):
        assert list(c.parameters()) == []
        assert {n for n, _ in c.named_buffers()} == {"w0", "w1", "wK"}
    assert sum(p.numel() for p in frozen.parameters()) == sum(p.numel() for p in stock(name).parameters())


# --------------------------------------------------------------------------------------------------
# state dicts


@pytest.mark.parametrize("name", NAMES)
def test_stock_state_dict_loads_with_only_gfsa_keys_missing(name):
    model = patched(name, cross_attention="pad", learn=("w0", "wK"))
    set_coefficients(model, wK=0.5)
    result = model.load_state_dict(stock(name).state_dict(), strict=False)
    gfsa_keys = {k for k in model.state_dict() if ".gfsa." in k}
    assert gfsa_keys and all(k.rsplit(".", 1)[1] in ("w0", "w1", "wK") for k in gfsa_keys)
    assert set(result.missing_keys) == gfsa_keys
    assert result.unexpected_keys == []
    set_coefficients(model, wK=0.0)
    batch = inputs(name)
    with torch.no_grad():
        assert max_diff(outputs(model, batch), outputs(stock(name), batch)) <= 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_patched_state_dict_round_trips(name):
    model = patched(name, w0=0.05)
    set_coefficients(model, wK="random")
    other = patched(name)
    other.load_state_dict(model.state_dict(), strict=True)
    batch = inputs(name)
    with torch.no_grad():
        assert max_diff(outputs(other, batch), outputs(model, batch)) == 0.0
        assert max_diff(outputs(other, batch), outputs(stock(name), batch)) > 1e-3


# --------------------------------------------------------------------------------------------------
# ALBERT: one attention module shared by all layers


def test_albert_filters_only_the_selected_calls():
    batch = inputs("albert")
    results = {}
    for spec in ([0], [3], [1, 3], "none"):
        model = patched("albert", layers=spec)
        set_coefficients(model, wK=0.5)
        with torch.no_grad():
            results[str(spec)] = outputs(model, batch)
            if spec != "none":
                # a manual loop over the calls: the reference filters exactly these call indices
                want = reference_outputs(model, batch, active_calls=set(spec))
                assert max_diff(results[str(spec)], want) <= 1e-5
                everywhere = reference_outputs(model, batch, active_calls={0, 1, 2, 3})
                assert max_diff(results[str(spec)], everywhere) > 1e-3
    with torch.no_grad():
        plain = outputs(stock("albert"), batch)
    assert max_diff(results["none"], plain) <= 1e-5
    assert max_diff(results["[0]"], results["[3]"]) > 1e-3
    assert max_diff(results["[0]"], plain) > 1e-3 and max_diff(results["[3]"], plain) > 1e-3


def test_albert_with_two_layer_groups_of_two_layers():
    """4 layers over 2 groups (2 AlbertLayers each): layers 0,1 call group 0, layers 2,3 group 1."""
    torch.manual_seed(0)
    config = tf.AlbertConfig(**(stock("albert").config.to_dict() | {"num_hidden_groups": 2, "inner_group_num": 2}))
    base = tf.AlbertModel(config).eval()
    model = gfsa.patch(copy.deepcopy(base), layers=[1, 2])
    coeffs = coefficient_modules(model)
    assert [c.shared_layers for c in coeffs] == [[1], [1], [0], [0]]
    assert added_parameters(model) == 4 * HEADS  # four distinct attention modules
    set_coefficients(model, wK=0.5)
    batch = inputs("albert")
    with torch.no_grad():
        got = outputs(model, batch)
        want = reference_outputs(model, batch, lambda path: {1} if ".albert_layer_groups.0." in path else {0})
        assert max_diff(got, want) <= 1e-5
        assert max_diff(got, outputs(base, batch)) > 1e-3


def test_albert_call_counter_resets_between_forwards():
    model = patched("albert", layers="selected")
    set_coefficients(model, wK=0.5)
    (c,) = coefficient_modules(model)
    batch = inputs("albert")
    with torch.no_grad():
        first = outputs(model, batch)
        assert c.calls == 4
        second = outputs(model, batch)
        assert c.calls == 4
        c.calls = 2  # a stale counter (e.g. an interrupted forward) is reset by the next forward
        third = outputs(model, batch)
    assert max_diff(first, second) == 0.0 and max_diff(first, third) == 0.0


# --------------------------------------------------------------------------------------------------
# GPT-2: causality and generation


def test_gpt2_patched_stays_causal():
    model = patched("gpt2", w0=0.1)
    set_coefficients(model, wK=0.5)
    ids = inputs("gpt2", padded=False)["input_ids"]
    changed = ids.clone()
    changed[:, 5] = (changed[:, 5] + 7) % (VOCAB - 3) + 3
    with torch.no_grad():
        a, b = model(changed).logits, model(ids).logits
    assert (a[:, :5] - b[:, :5]).abs().max() <= 1e-5
    assert (a[:, 5:] - b[:, 5:]).abs().amax(dim=-1).min() > 1e-4


def test_gpt2_generation_with_and_without_the_cache_agree():
    """The KV cache also keeps the rows of A·V (tests/test_decode.py has the details)."""
    model = patched("gpt2")
    set_coefficients(model, wK=0.5)
    prompt = inputs("gpt2", padded=False)["input_ids"][:, :4]
    kw = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    out = model.generate(prompt, use_cache=False, **kw)
    assert torch.equal(model.generate(prompt, **kw), out)
    # greedy decoding by hand with full forwards
    ids = prompt
    with torch.no_grad():
        for _ in range(4):
            ids = torch.cat([ids, model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ids)
    # the identity-coefficient model generates what the stock model generates
    identity = patched("gpt2")
    assert torch.equal(identity.generate(prompt, **kw), stock("gpt2").generate(prompt, **kw))


# --------------------------------------------------------------------------------------------------
# encoder-decoder: cross-attention


@pytest.mark.parametrize("name", SEQ2SEQ)
def test_cross_attention_stays_plain_by_default(name):
    suffix = CROSS_SUFFIX[name]
    model = patched(name)
    cross = [(n, m) for n, m in model.named_modules() if n.endswith(suffix)]
    assert len(cross) == 2
    assert all(c for _, m, c in attention_modules(model) if any(m is x for _, x in cross))
    assert all(not hasattr(m, "gfsa") for _, m in cross)
    selfattn = [m for _, m, c in attention_modules(model) if not c]
    assert len(selfattn) == 4 and all(hasattr(m, "gfsa") for m in selfattn)

    padded = patched(name, cross_attention="pad")
    cross_p = [m for n, m in padded.named_modules() if n.endswith(suffix)]
    assert all(hasattr(m, "gfsa") and m.gfsa.cross for m in cross_p)
    batch = inputs(name)
    # with the same self-attention coefficients, filtering the cross-attention changes the outputs
    set_coefficients(model, wK=0.5)
    set_coefficients(padded, wK=0.5)
    with torch.no_grad():
        plain_out, pad_out = outputs(model, batch), outputs(padded, batch)
        assert max_diff(plain_out, pad_out) > 1e-3
        assert (plain_out[1] - pad_out[1]).abs().max() <= 1e-6  # the encoder has no cross-attention
        for m in cross_p:
            m.gfsa.wK.zero_()
        assert max_diff(outputs(padded, batch), plain_out) <= 1e-5


# --------------------------------------------------------------------------------------------------
# dtypes


@pytest.mark.parametrize("name", ["bert", "gpt2", "t5", "bart", "speech_to_text"])
def test_float64_models(name):
    batch = inputs(name)
    if name in SPEECH:
        batch["input_features"] = batch["input_features"].double()
    base = fresh(name).double()
    model = gfsa.patch(copy.deepcopy(base))
    with torch.no_grad():
        assert max_diff(outputs(model, batch), outputs(base, batch)) <= 1e-10
        set_coefficients(model, wK=0.5)
        want = reference_outputs(model, batch)
        got = outputs(model, batch)
        assert all(t.dtype == torch.float64 for t in got)
        assert max_diff(got, want) <= 1e-10
        # patched first, moved afterwards: the coefficients follow the dtype
        late = patched(name).double()
        set_coefficients(late, wK=0.5)
        assert all(c.wK.dtype == torch.float64 for c in coefficient_modules(late))
        assert max_diff(outputs(late, batch), got) <= 1e-10


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_autocast(name):
    model = patched(name)
    set_coefficients(model, wK=0.5)
    batch = inputs(name)
    seen = []
    attn = next(m for _, m, _ in attention_modules(model) if hasattr(m, "gfsa"))
    handle = attn.register_forward_hook(lambda mod, args, out: seen.append(out[0].dtype))
    with torch.no_grad():
        full = outputs(model, batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = outputs(model, batch)
    handle.remove()
    n = len(seen) // 2  # ALBERT's shared module runs once per layer
    assert seen == [torch.float32] * n + [torch.bfloat16] * n  # the patched attention ran in bf16
    assert all(torch.isfinite(t).all() for t in low)
    scale = max(t.abs().max().item() for t in full)
    assert max_diff([t.float() for t in low], full) <= 0.1 * scale


# --------------------------------------------------------------------------------------------------
# errors


def test_a_transformers_model_without_the_attention_interface_is_one_line():
    """A model none of whose modules calls ALL_ATTENTION_FUNCTIONS (here a state-space model)."""
    mamba = tf.MambaModel(tf.MambaConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, state_size=4))
    with pytest.raises(UnsupportedModelError, match="mamba .MambaModel.: none of its modules calls") as err:
        gfsa.patch(mamba)
    assert "\n" not in str(err.value)
    assert not hasattr(mamba, "gfsa_layers")


def test_user_subclass_of_a_supported_model_is_patched():
    class MyBert(tf.BertModel):
        pass

    model = MyBert(stock("bert").config).eval()
    model.load_state_dict(stock("bert").state_dict())
    gfsa.patch(model)
    assert added_parameters(model) == 4 * HEADS
    batch = inputs("bert")
    with torch.no_grad():
        assert max_diff(outputs(model, batch), outputs(stock("bert"), batch)) <= 1e-5


@pytest.mark.parametrize("name", ["bert", "albert", "t5"])
def test_patching_twice_with_other_settings_raises(name):
    model = patched(name)
    with pytest.raises(ValueError, match="already patched"):
        gfsa.patch(model, K=5)
    none = patched(name, layers="none")
    with pytest.raises(ValueError, match="already patched"):
        gfsa.patch(none)


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"learn": ("wK", "w2")}, ValueError, "w2"),
        ({"K": 0}, ValueError, "K"),
        ({"layers": [4]}, LayerSpecError, "out of range"),
        ({"layers": "bogus"}, LayerSpecError, "unknown spec"),
        ({"cross_attention": "square"}, ValueError, "cross_attention"),
        ({"impl": "flash"}, ValueError, "impl"),
    ],
)
def test_bad_arguments_raise_and_leave_the_model_untouched(kw, error, match):
    model = fresh("bert")
    with pytest.raises(error, match=match):
        gfsa.patch(model, **kw)
    assert patched_layers(model) == [] and coefficient_modules(model) == []
    assert model.config._attn_implementation == stock("bert").config._attn_implementation
    gfsa.patch(model)  # still patchable
    assert patched_layers(model) == [0, 1, 2, 3]
