"""The model-independent part of gfsa.patch: coefficients, apply_gfsa/apply_gfsa_to_probs, the native
adapter (in-repo models with ``gfsa_attention_modules()``), argument validation and errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from patch_helpers import coefficient_modules
from torch import nn

import gfsa
from gfsa.nn.attention import GFSACoefficients, apply_gfsa, apply_gfsa_to_probs, reset_call_counters
from gfsa.nn.functional import attention_probs, gfsa_attention, gfsa_filter
from gfsa.nn.layers import LayerSpecError
from gfsa.nn.patching import SUPPORTED, UnsupportedModelError, added_parameters, gfsa_parameters, patched_layers
from gfsa.nn.settings import GFSASettings

DIM, HEADS, B, L, S = 16, 4, 2, 6, 9  # S: context length of the cross-attention


# --------------------------------------------------------------------------------------------------
# a tiny in-repo model that opts in through gfsa_attention_modules()


class ToyAttention(nn.Module):
    """Multi-head attention calling apply_gfsa (fused) or apply_gfsa_to_probs (explicit matrix)."""

    def __init__(self, cross: bool = False, explicit: bool = False, dropout: float = 0.0):
        super().__init__()
        self.num_heads, self.is_cross_attention, self.explicit, self.dropout = HEADS, cross, explicit, dropout
        self.q, self.kv, self.o = nn.Linear(DIM, DIM), nn.Linear(DIM, 2 * DIM), nn.Linear(DIM, DIM)

    def heads(self, t):
        return t.view(t.shape[0], t.shape[1], HEADS, -1).transpose(1, 2)

    def qkv(self, x, context=None):
        k, v = self.kv(x if context is None else context).chunk(2, dim=-1)
        return self.heads(self.q(x)), self.heads(k), self.heads(v)

    def forward(self, x, context=None, mask=None):
        q, k, v = self.qkv(x, context)
        p = self.dropout if self.training else 0.0
        if self.explicit:
            out = apply_gfsa_to_probs(self, attention_probs(q, k, mask), v, p)
        else:
            out = apply_gfsa(self, q, k, v, mask, dropout_p=p)
        return self.o(out.transpose(1, 2).reshape(x.shape))


class ToyModel(nn.Module):
    """Two fused self-attention layers, a cross-attention layer, an explicit-matrix self-attention."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.embed = nn.Linear(3, DIM)
        self.attn = nn.ModuleList(
            [
                ToyAttention(dropout=dropout),
                ToyAttention(dropout=dropout),
                ToyAttention(cross=True, dropout=dropout),
                ToyAttention(explicit=True, dropout=dropout),
            ]
        )

    def gfsa_attention_modules(self):
        return list(self.attn)

    def forward(self, x, context, mask=None, cross_mask=None):
        h = self.embed(x)
        c = self.embed(context)
        for a in self.attn:
            h = h + (a(h, c, cross_mask) if a.is_cross_attention else a(h, mask=mask))
        return h


def toy(seed: int = 0, dropout: float = 0.0) -> ToyModel:
    torch.manual_seed(seed)
    return ToyModel(dropout).eval()


def toy_inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    x, c = torch.randn(B, L, 3, generator=g, dtype=dtype), torch.randn(B, S, 3, generator=g, dtype=dtype)
    keep = torch.ones(B, 1, 1, L, dtype=torch.bool)
    keep[1, ..., 4:] = False
    keep_c = torch.ones(B, 1, 1, S, dtype=torch.bool)
    keep_c[0, ..., 7:] = False
    return x, c, keep, keep_c


def by_hand(model: ToyModel, x, c, mask, cross_mask, pad_cross: bool) -> torch.Tensor:
    """The toy model's forward with every filter written as gfsa_filter on the explicit matrix."""
    h, ctx = model.embed(x), model.embed(c)
    for a in model.attn:
        q, k, v = a.qkv(h, ctx if a.is_cross_attention else None)
        A = attention_probs(q, k, cross_mask if a.is_cross_attention else mask)
        g = getattr(a, "gfsa", None)
        if g is not None:
            A = gfsa_filter(A, g.w0, g.w1, g.wK, g.settings.K, pad_to_square=pad_cross and a.is_cross_attention)
        h = h + a.o((A @ v).transpose(1, 2).reshape(h.shape))
    return h


# --------------------------------------------------------------------------------------------------
# the native adapter


def test_native_identity_reproduces_the_unpatched_model_and_the_mask_matters():
    base, (x, c, m, cm) = toy(), toy_inputs()
    model = gfsa.patch(copy.deepcopy(base), cross_attention="pad")
    with torch.no_grad():
        want = base(x, c, m, cm)
        assert (want - base(x, c)).abs().max() > 1e-3
        assert (model(x, c, m, cm) - want).abs().max() <= 1e-6
    assert patched_layers(model) == [0, 1, 2, 3]
    assert [g.cross for g in coefficient_modules(model)] == [False, False, True, False]


@pytest.mark.parametrize("impl", ["auto", "fused", "materialized"])
@pytest.mark.parametrize("cross", ["plain", "pad"])
def test_native_model_matches_the_filter_by_hand(cross, impl):
    base, (x, c, m, cm) = toy(), toy_inputs()
    model = gfsa.patch(copy.deepcopy(base), K=3, w0=0.1, cross_attention=cross, impl=impl)
    assert hasattr(model.attn[2], "gfsa") == (cross == "pad")
    with torch.no_grad():
        for i, g in enumerate(coefficient_modules(model)):
            g.wK.copy_(torch.linspace(-0.5, 0.5, HEADS) * (i + 1))
        got = model(x, c, m, cm)
        assert (got - by_hand(model, x, c, m, cm, pad_cross=True)).abs().max() <= 1e-5
        assert (got - base(x, c, m, cm)).abs().max() > 1e-3


def test_native_padded_cross_attention_changes_the_output():
    x, c, m, cm = toy_inputs()
    plain = gfsa.patch(toy(), layers=[2], cross_attention="plain")
    pad = gfsa.patch(toy(), layers=[2], cross_attention="pad", wK=0.5)
    assert coefficient_modules(plain) == [] and added_parameters(plain) == 0
    assert added_parameters(pad) == HEADS
    with torch.no_grad():
        assert (pad(x, c, m, cm) - plain(x, c, m, cm)).abs().max() > 1e-3
        assert (plain(x, c, m, cm) - toy()(x, c, m, cm)).abs().max() == 0.0


def test_native_selected_layers_and_gradients():
    model = gfsa.patch(toy(), layers="selected", learn=("w0", "w1", "wK"))
    assert patched_layers(model) == [1, 3]
    assert [hasattr(a, "gfsa") for a in model.attn] == [False, True, False, True]
    assert added_parameters(model) == 2 * 3 * HEADS
    x, c, m, cm = toy_inputs()
    model(x, c, m, cm).square().mean().backward()
    params = gfsa_parameters(model)
    assert len(params) == 6
    assert all(p.grad is not None and (p.grad != 0).all() for p in params)


def test_native_state_dict():
    model = gfsa.patch(toy(), wK=0.3)
    result = model.load_state_dict(toy(seed=5).state_dict(), strict=False)
    gfsa_keys = {k for k in model.state_dict() if ".gfsa." in k}
    assert len(gfsa_keys) == 3 * 3  # cross-attention stays plain
    assert set(result.missing_keys) == gfsa_keys and result.unexpected_keys == []
    assert all(torch.equal(c.wK, torch.full((HEADS,), 0.3)) for c in coefficient_modules(model))
    other = gfsa.patch(toy(seed=7))
    other.load_state_dict(model.state_dict())
    x, c, m, cm = toy_inputs()
    with torch.no_grad():
        assert torch.equal(other(x, c, m, cm), model(x, c, m, cm))


def test_native_dtypes():
    x, c, m, cm = toy_inputs(torch.float64)
    base = toy().double()
    model = gfsa.patch(copy.deepcopy(base), wK=0.5, cross_attention="pad")
    with torch.no_grad():
        got = model(x, c, m, cm)
        assert got.dtype == torch.float64
        assert (got - by_hand(model, x, c, m, cm, pad_cross=True)).abs().max() <= 1e-12
        x32, c32 = x.float(), c.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = gfsa.patch(toy(), wK=0.5, cross_attention="pad")(x32, c32, m, cm)
        assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
        assert (low.double() - got).abs().max() <= 0.05 * got.abs().max()


def test_native_model_without_attention_layers_raises_layer_spec_error():
    class Empty(nn.Module):
        def gfsa_attention_modules(self):
            return []

    with pytest.raises(LayerSpecError, match="no attention layers"):
        gfsa.patch(Empty())


# --------------------------------------------------------------------------------------------------
# apply_gfsa and apply_gfsa_to_probs on single modules


def _qkv(Lq=L, Lk=L, dtype=torch.float32):
    g = torch.Generator().manual_seed(2)
    return (torch.randn(B, HEADS, n, 8, generator=g, dtype=dtype) for n in (Lq, Lk, Lk))


def _module(w0=0.0, w1=1.0, wK=0.0, K=3, cross=False, **settings):
    m = nn.Module()
    m.gfsa = GFSACoefficients(HEADS, GFSASettings(K=K, w0=w0, w1=w1, wK=wK, **settings), cross=cross)
    return m


def test_apply_gfsa_without_coefficients_is_sdpa():
    q, k, v = _qkv()
    mask = torch.rand(L, L, generator=torch.Generator().manual_seed(3)) > 0.3
    mask.fill_diagonal_(True)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.equal(apply_gfsa(nn.Module(), q, k, v, mask), want)
    assert torch.allclose(apply_gfsa(_module(), q, k, v, mask), want, atol=1e-6)
    causal = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(apply_gfsa(_module(), q, k, v, is_causal=True), causal, atol=1e-6)


@pytest.mark.parametrize("impl", ["fused", "materialized"])
def test_apply_gfsa_with_coefficients(impl):
    q, k, v = _qkv()
    m = _module(w0=0.1, wK=0.4, K=4, impl=impl)
    A = attention_probs(q, k, is_causal=True)
    want = gfsa_filter(A, 0.1, 1.0, 0.4, 4) @ v
    got = apply_gfsa(m, q, k, v, is_causal=True)
    assert (got - want).abs().max() <= 1e-5
    assert (got - F.scaled_dot_product_attention(q, k, v, is_causal=True)).abs().max() > 1e-2
    # causality survives the filter: the first query sees only the first key
    assert torch.allclose(got[..., 0, :], (0.1 + 1.0 + 0.4) * v[..., 0, :], atol=1e-5)


def test_apply_gfsa_cross_attention_plain_or_padded():
    q, k, v = _qkv(Lq=L, Lk=S)
    plain = _module(wK=0.5, cross=True)
    want = F.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(apply_gfsa(plain, q, k, v), want, atol=1e-6)
    pad = _module(wK=0.5, cross=True, cross_attention="pad")
    A = attention_probs(q, k)
    padded = torch.zeros(B, HEADS, S, S)
    padded[..., :L, :] = A
    H = (0.5 * (A + 2 * ((padded @ padded)[..., :L, :] - A)) + A) @ v
    got = apply_gfsa(pad, q, k, v)
    assert (got - H).abs().max() <= 1e-5 and (got - want).abs().max() > 1e-3


def test_apply_gfsa_to_probs_on_a_non_stochastic_matrix():
    _, _, v = _qkv()
    attn = torch.rand(B, HEADS, L, L, generator=torch.Generator().manual_seed(4))
    assert torch.equal(apply_gfsa_to_probs(nn.Module(), attn, v), attn @ v)
    m = _module(w0=0.2, wK=0.3, K=4)
    H = 0.2 * torch.eye(L) + attn + 0.3 * (attn + 3 * (attn @ attn - attn))
    assert (apply_gfsa_to_probs(m, attn, v) - H @ v).abs().max() <= 1e-5


@pytest.mark.parametrize("order", ["before", "after"])
def test_dropout_order(order):
    q, k, v = _qkv()
    A = attention_probs(q, k)
    m = _module(wK=0.5, dropout_order=order)
    torch.manual_seed(11)
    got = apply_gfsa_to_probs(m, A, v, dropout_p=0.3)
    torch.manual_seed(11)
    got_fused_api = apply_gfsa(m, q, k, v, dropout_p=0.3)  # auto → materialized under dropout
    torch.manual_seed(11)
    if order == "before":
        want = gfsa_filter(F.dropout(A, 0.3), 0.0, 1.0, 0.5, 3) @ v
    else:
        want = F.dropout(gfsa_filter(A, 0.0, 1.0, 0.5, 3), 0.3) @ v
    assert (got - want).abs().max() <= 1e-5
    assert (got_fused_api - want).abs().max() <= 1e-5
    assert (got - gfsa_filter(A, 0.0, 1.0, 0.5, 3) @ v).abs().max() > 1e-2  # dropout happened


def test_fused_impl_with_dropout_runs_and_is_random():
    q, k, v = _qkv()
    m = _module(wK=0.5, impl="fused")
    torch.manual_seed(0)
    a = apply_gfsa(m, q, k, v, dropout_p=0.3)
    torch.manual_seed(1)
    b = apply_gfsa(m, q, k, v, dropout_p=0.3)
    assert torch.isfinite(a).all() and (a - b).abs().max() > 1e-3
    exact = gfsa_attention(q, k, v, 0.0, 1.0, 0.5, 3)
    assert (apply_gfsa(m, q, k, v) - exact).abs().max() <= 1e-6


def test_model_with_attention_dropout_trains_and_is_deterministic_in_eval():
    model = gfsa.patch(toy(dropout=0.3), wK=0.5)
    x, c, m, cm = toy_inputs()
    model.train()
    torch.manual_seed(0)
    a = model(x, c, m, cm)
    a.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gfsa_parameters(model))
    torch.manual_seed(1)
    with torch.no_grad():
        assert (model(x, c, m, cm) - a).abs().max() > 1e-3
        model.eval()
        assert torch.equal(model(x, c, m, cm), model(x, c, m, cm))


# --------------------------------------------------------------------------------------------------
# GFSACoefficients


def test_coefficients_learnable_sets_and_repr():
    s = GFSASettings(K=4, w0=0.1, w1=1.0, wK=0.2, learn=("w0", "wK"))
    c = GFSACoefficients(3, s)
    assert {n for n, _ in c.named_parameters()} == {"w0", "wK"}
    assert {n for n, _ in c.named_buffers()} == {"w1"}
    assert torch.equal(c.w0, torch.full((3,), 0.1)) and torch.equal(c.wK, torch.full((3,), 0.2))
    assert "heads=3" in repr(c) and "K=4" in repr(c) and "'w0', 'wK'" in repr(c)
    frozen = GFSACoefficients(3, GFSASettings(learn=()))
    assert list(frozen.parameters()) == [] and set(frozen.state_dict()) == {"w0", "w1", "wK"}


def test_shared_module_calls_and_reset():
    c = GFSACoefficients(2, GFSASettings())
    assert all(c.active() for _ in range(5))  # not shared: always active
    c.shared_layers = [1, 3]
    assert [c.active() for _ in range(5)] == [False, True, False, True, False]
    holder = nn.Sequential(nn.Linear(2, 2))
    holder[0].gfsa = c
    reset_call_counters(holder)
    assert c.calls == 0 and [c.active() for _ in range(2)] == [False, True]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"K": 0}, "K"),
        ({"K": True}, "K"),
        ({"impl": "flash"}, "impl"),
        ({"dropout_order": "never"}, "dropout_order"),
        ({"cross_attention": "square"}, "cross_attention"),
        ({"wK": "abc"}, "gfsa.wK='abc': expected a finite number"),
        ({"learn": ["w9"]}, "unknown"),
        ({"layers": ""}, "empty"),
    ],
)
def test_settings_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        GFSASettings(**kw)


# --------------------------------------------------------------------------------------------------
# patch(): errors and bookkeeping


def test_unsupported_module_names_the_supported_families():
    with pytest.raises(UnsupportedModelError) as err:
        gfsa.patch(nn.Linear(4, 4))
    assert isinstance(err.value, TypeError)
    assert SUPPORTED in str(err.value) and "Linear" in str(err.value)
    for family in ("bert", "roberta", "albert", "gpt2", "t5", "bart", "speech_to_text", "Cait", "Swin"):
        assert family in str(err.value)


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"learn": ("wK", "bias")}, ValueError, "bias"),
        ({"learn": "wK"}, ValueError, "unknown"),  # a bare string is not a list of names
        ({"K": 0}, ValueError, "K"),
        ({"K": -1}, ValueError, "K"),
        ({"layers": [0, 4]}, LayerSpecError, "out of range"),
        ({"layers": "last:0"}, LayerSpecError, "last"),
        ({"layers": "everything"}, LayerSpecError, "unknown spec"),
        ({"layers": True}, LayerSpecError, "not a layer spec"),
        ({"impl": "flash"}, ValueError, "impl"),
        ({"dropout_order": "never"}, ValueError, "dropout_order"),
        ({"cross_attention": "square"}, ValueError, "cross_attention"),
    ],
)
def test_bad_arguments_raise_and_leave_the_model_untouched(kw, error, match):
    model = toy()
    with pytest.raises(error, match=match):
        gfsa.patch(model, **kw)
    assert patched_layers(model) == [] and coefficient_modules(model) == []
    gfsa.patch(model)
    assert patched_layers(model) == [0, 1, 2, 3]


def test_patching_twice_keeps_the_coefficients_or_raises():
    model = gfsa.patch(toy(), wK=0.0)
    for m in coefficient_modules(model):
        m.wK.data.fill_(0.7)  # "trained"
    assert gfsa.patch(model, wK=0.0) is model  # the same settings: nothing reset
    assert all(torch.all(m.wK == 0.7) for m in coefficient_modules(model))
    with pytest.raises(ValueError, match="already patched with GFSA .layers=all, K=3.*not with layers=all, K=4"):
        gfsa.patch(model, K=4)
    none = gfsa.patch(toy(), layers="none")
    assert patched_layers(none) == [] and coefficient_modules(none) == []
    with pytest.raises(ValueError, match="already patched"):
        gfsa.patch(none, layers="all")


def test_layer_specs_resolve_against_the_model_depth():
    assert patched_layers(gfsa.patch(toy(), layers="last:2")) == [2, 3]
    assert patched_layers(gfsa.patch(toy(), layers=[-1, 0])) == [0, 3]
    assert patched_layers(gfsa.patch(toy(), layers="even")) == [0, 2]
    assert patched_layers(toy()) == []
    assert gfsa.patch(toy(), layers=1) is not None


def test_gfsa_parameters_for_an_optimizer_without_weight_decay():
    model = gfsa.patch(toy(), learn=("w0", "wK"))
    params = gfsa_parameters(model)
    ids = {id(p) for p in params}
    assert len(params) == 2 * 3 and all(p.requires_grad for p in params)
    rest = [p for p in model.parameters() if id(p) not in ids]
    assert len(rest) + len(params) == len(list(model.parameters()))
    opt = torch.optim.AdamW([{"params": rest}, {"params": params, "weight_decay": 0.0}], lr=0.1)
    x, c, m, cm = toy_inputs()
    model(x, c, m, cm).square().mean().backward()
    before = [p.detach().clone() for p in params]
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, params, strict=True))


def test_settings_are_one_normalised_value():
    """Spellings a config or a caller may use are one settings object (equal, same hash)."""
    a = GFSASettings(layers=-1, K="3", wK="0.5", learn="wK")
    b = GFSASettings(layers=[-1], K=3.0, wK=0.5, learn=("wK",))
    assert a == b and hash(a) == hash(b)
    assert a.to_config() == {
        "layers": [-1],
        "K": 3,
        "w0": 0.0,
        "w1": 1.0,
        "wK": 0.5,
        "learn": ["wK"],
        "impl": "auto",
        "dropout_order": "after",
        "cross_attention": "plain",
    }
    assert GFSASettings.from_mapping(a.to_config()) == a


def test_settings_defaults_are_the_gfsa_config_group():
    """The library's defaults and conf/gfsa/default.yaml say the same (the YAML is what runs use)."""
    import yaml
    from conftest import CONF_DIR

    assert GFSASettings.from_mapping(yaml.safe_load((CONF_DIR / "gfsa" / "default.yaml").read_text())) == GFSASettings(
        layers="selected"
    )
