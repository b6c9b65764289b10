"""gfsa.patch on timm vision models (tiny random-init DeiT/ViT, CaiT and Swin of the real architectures).

Each attention module is compared, through forward hooks, with the stock module (identity
coefficients) and with the filter computed by hand on the explicit softmax matrix; CaiT's
LayerScale (1e-5) would hide attention changes in the final output, so modules are compared too.
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from patch_helpers import coefficient_modules, set_coefficients
from timm.layers import Attention
from timm.models.cait import ClassAttn, TalkingHeadAttn
from timm.models.swin_transformer import WindowAttention

import gfsa
from gfsa.nn.layers import LayerSpecError
from gfsa.nn.patching import UnsupportedModelError, added_parameters, gfsa_parameters, patched_layers

IMG = 32
B = 2
COMMON = {"pretrained": False, "img_size": IMG, "num_classes": 10}
BUILDERS = {
    "deit": lambda: timm.create_model(
        "deit_tiny_patch16_224", patch_size=8, embed_dim=32, depth=4, num_heads=4, **COMMON
    ),
    "deit_distilled": lambda: timm.create_model(
        "deit_tiny_distilled_patch16_224", patch_size=8, embed_dim=32, depth=4, num_heads=4, **COMMON
    ),
    "cait": lambda: timm.create_model(
        "cait_xxs24_224", patch_size=8, embed_dim=32, depth=4, num_heads=4, depth_token_only=2, **COMMON
    ),
    # 8×8 tokens, 4×4 windows: the second block of stage 1 is shifted (shift 2); stage 2 is one window
    "swin": lambda: timm.create_model(
        "swin_tiny_patch4_window7_224", window_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4), **COMMON
    ),
}
NAMES = list(BUILDERS)
ATTENTION_CLASS = {"deit": Attention, "deit_distilled": Attention, "cait": TalkingHeadAttn, "swin": WindowAttention}
HEADS = {"deit": [4] * 4, "deit_distilled": [4] * 4, "cait": [4] * 4, "swin": [2, 2, 4, 4]}

_MODELS: dict[str, torch.nn.Module] = {}


def stock(name: str) -> torch.nn.Module:
    """The unpatched model (built once, eval mode, never modified)."""
    if name not in _MODELS:
        torch.manual_seed(0)
        model = BUILDERS[name]().eval()
        if name == "cait":  # LayerScale 1e-5 would make every block nearly the identity map
            with torch.no_grad():
                for blk in [*model.blocks, *model.blocks_token_only]:
                    blk.gamma_1.fill_(1.0)
                    blk.gamma_2.fill_(1.0)
        _MODELS[name] = model
    return _MODELS[name]


def fresh(name: str) -> torch.nn.Module:
    return copy.deepcopy(stock(name))


def patched(name: str, **kw) -> torch.nn.Module:
    return gfsa.patch(fresh(name), **kw)


def changed(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Clearly different: the logits of these tiny models are ~0.1, and identity runs agree to ~1e-7."""
    return (a - b).abs().max().item() > 1e-4 * b.abs().max().item()


def images(dtype=torch.float32) -> torch.Tensor:
    return torch.randn(B, 3, IMG, IMG, generator=torch.Generator().manual_seed(1)).to(dtype)


def attention_modules(model) -> list[torch.nn.Module]:
    """The self-attention modules in depth order (CaiT's class-attention blocks excluded)."""
    if hasattr(model, "blocks"):
        return [blk.attn for blk in model.blocks]
    return [blk.attn for stage in model.layers for blk in stage.blocks]


def run(model, x, **kw):
    """Final output and, per attention module in depth order, (input, mask, output)."""
    seen = []

    def hook(mod, args, kwargs, out):
        mask = kwargs.get("mask", kwargs.get("attn_mask", args[1] if len(args) > 1 else None))
        seen.append((args[0] if args else kwargs["x"], mask, out))

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in attention_modules(model)]
    try:
        with torch.no_grad():
            out = model(x, **kw)
    finally:
        for h in handles:
            h.remove()
    return out, seen


@pytest.fixture(scope="module", autouse=True)
def _module_scope():
    yield
    _MODELS.clear()  # the tiny models live as long as this module's tests


# --------------------------------------------------------------------------------------------------
# the attention by hand: explicit softmax matrix, gfsa_filter, values


def _split(attn, x):
    Bw, N, _ = x.shape
    q, k, v = attn.qkv(x).reshape(Bw, N, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


def by_hand(attn, x, mask):
    """The attention module's output with its GFSA coefficients, computed from the explicit matrix."""
    Bw, N, _ = x.shape
    q, k, v = _split(attn, x)
    if isinstance(attn, TalkingHeadAttn):  # CaiT: talking heads before and after the softmax
        scores = attn.proj_l((q * attn.scale @ k.transpose(-2, -1)).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        A = attn.proj_w(scores.softmax(dim=-1).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    else:
        scores = (q @ k.transpose(-2, -1)) * attn.scale
        if isinstance(attn, WindowAttention):  # Swin: relative position bias, shift mask per window
            scores = scores + attn._get_rel_pos_bias()
            if mask is not None:
                nw = mask.shape[0]
                scores = (scores.view(-1, nw, attn.num_heads, N, N) + mask[None, :, None]).view(Bw, -1, N, N)
        elif mask is not None:  # ViT: a bool key mask, True = attend
            scores = scores.masked_fill(~mask, float("-inf"))
        A = scores.softmax(dim=-1)
    g = getattr(attn, "gfsa", None)
    H = gfsa.gfsa_filter(A, g.w0, g.w1, g.wK, g.settings.K) if g is not None else A
    return attn.proj((H @ v).transpose(1, 2).reshape(Bw, N, -1)), A


def key_mask(name) -> torch.Tensor:
    """ViT attention mask (B, 1, 1, N), True = attend: the second image drops its last 5 patches."""
    n = stock(name).patch_embed.num_patches + stock(name).num_prefix_tokens
    mask = torch.ones(B, 1, 1, n, dtype=torch.bool)
    mask[1, ..., -5:] = False
    return mask


# --------------------------------------------------------------------------------------------------
# identity coefficients


@pytest.mark.parametrize("name", NAMES)
def test_identity_coefficients_reproduce_every_attention_module_and_the_output(name):
    model = patched(name)
    assert all(type(m) is not ATTENTION_CLASS[name] for m in attention_modules(model))  # swapped
    assert all(isinstance(m, ATTENTION_CLASS[name]) for m in attention_modules(model))
    x = images()
    want, want_mods = run(stock(name), x)
    got, got_mods = run(model, x)
    assert len(got_mods) == len(want_mods) == 4
    for (_, _, o), (_, _, w) in zip(got_mods, want_mods, strict=True):
        assert (o - w).abs().max() <= 1e-5
    assert (got - want).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["deit", "deit_distilled"])
def test_vit_attention_mask_is_honoured(name):
    x, mask = images(), key_mask(name)
    want, _ = run(stock(name), x, attn_mask=mask)
    unmasked, _ = run(stock(name), x)
    assert (want - unmasked).abs().max() > 1e-3  # the mask matters
    model = patched(name)
    got, _ = run(model, x, attn_mask=mask)
    assert (got - want).abs().max() <= 1e-5
    # with the filter on, each module equals the masked computation by hand
    set_coefficients(model, wK=0.5, w0=0.1)
    out, mods = run(model, x, attn_mask=mask)
    assert (out - want).abs().max() > 1e-3
    for attn, (inp, m, o) in zip(attention_modules(model), mods, strict=True):
        assert m is mask
        hand, A = by_hand(attn, inp, m)
        assert (o - hand).abs().max() <= 1e-5
        assert A[1, ..., -5:].abs().max() == 0.0


def test_swin_has_a_shifted_block_and_passes_its_mask():
    model = stock("swin")
    blocks = [blk for stage in model.layers for blk in stage.blocks]
    shifts = [tuple(blk.shift_size) for blk in blocks]
    assert shifts == [(0, 0), (2, 2), (0, 0), (0, 0)]
    _, mods = run(model, images())
    masks = [m for _, m, _ in mods]
    assert masks[1] is not None and masks[1].min() == -100.0
    assert masks[0] is None


# --------------------------------------------------------------------------------------------------
# non-identity coefficients: independent computation


@pytest.mark.parametrize("K", [2, 3, 4])
@pytest.mark.parametrize("name", NAMES)
def test_each_attention_module_matches_the_filter_by_hand(name, K):
    model = patched(name, K=K, w0=0.05)
    set_coefficients(model, wK="random")
    x = images()
    out, mods = run(model, x)
    assert torch.isfinite(out).all()
    for attn, (inp, mask, o) in zip(attention_modules(model), mods, strict=True):
        hand, A = by_hand(attn, inp, mask)
        assert (o - hand).abs().max() <= 1e-5
        plain = attn.proj((A @ _split(attn, inp)[2]).transpose(1, 2).reshape(inp.shape))
        assert (o - plain).abs().max() > 1e-4  # the filter did something
    want, _ = run(stock(name), x)
    assert changed(out, want)


def test_cait_filter_acts_after_the_talking_heads_mix():
    """The mixed matrix is not row-stochastic: filtering it is not filtering the softmax."""
    model = patched("cait", K=4)
    set_coefficients(model, wK=0.5)
    _, mods = run(model, images())
    attn = attention_modules(model)[0]
    inp, _, out = mods[0]
    hand, A = by_hand(attn, inp, None)
    assert (A.sum(-1) - 1).abs().max() > 1e-2  # not row-stochastic
    assert (out - hand).abs().max() <= 1e-5
    q, k, v = _split(attn, inp)
    scores = attn.proj_l((q * attn.scale @ k.transpose(-2, -1)).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    S = scores.softmax(dim=-1)
    filtered_before_mix = attn.proj_w(gfsa.gfsa_filter(S, 0.0, 1.0, 0.5, 4).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    wrong = attn.proj((filtered_before_mix @ v).transpose(1, 2).reshape(inp.shape))
    assert (out - wrong).abs().max() > 1e-4


def test_cait_with_its_real_layerscale_init_is_checked_per_module():
    """At init (LayerScale 1e-5) the filter barely moves the logits; each module shows it plainly."""
    torch.manual_seed(0)
    base = BUILDERS["cait"]().eval()
    assert base.blocks[0].gamma_1.max().item() == pytest.approx(1e-5)
    model = gfsa.patch(copy.deepcopy(base), K=4)
    x = images()
    want, want_mods = run(base, x)
    got, got_mods = run(model, x)
    assert (got - want).abs().max() <= 1e-6
    assert all((o - w).abs().max() <= 1e-6 for (_, _, o), (_, _, w) in zip(got_mods, want_mods, strict=True))
    set_coefficients(model, wK=0.5)
    out, mods = run(model, x)
    for attn, (inp, mask, o), (_, _, w) in zip(attention_modules(model), mods, want_mods, strict=True):
        assert (o - by_hand(attn, inp, mask)[0]).abs().max() <= 1e-5
        assert (o - w).abs().max() > 1e-2 * w.abs().max()
    assert (out - want).abs().max() < 1e-3 * want.abs().max()  # hidden in the final output


def test_cait_class_attention_is_untouched():
    model = patched("cait", cross_attention="pad")
    assert len(model.blocks_token_only) == 2
    for blk in model.blocks_token_only:
        assert type(blk.attn) is ClassAttn and not hasattr(blk.attn, "gfsa")
    assert added_parameters(model) == 4 * 4


@pytest.mark.parametrize("name", NAMES)
def test_nonzero_w0_changes_the_outputs(name):
    model = patched(name, w0=0.2)
    x = images()
    out, mods = run(model, x)
    want, want_mods = run(stock(name), x)
    assert changed(out, want)
    assert all((o - w).abs().max() > 1e-3 for (_, _, o), (_, _, w) in zip(mods, want_mods, strict=True))


# --------------------------------------------------------------------------------------------------
# layer selection, gradients, learnable sets, parameter counts


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_exactly_the_selected_layers(name):
    model = patched(name, layers="selected")
    assert patched_layers(model) == [1, 3]
    mods = attention_modules(model)
    for i, m in enumerate(mods):
        assert hasattr(m, "gfsa") == (i in (1, 3))
        # unselected layers keep timm's own class and code path
        assert (type(m) is ATTENTION_CLASS[name]) == (i not in (1, 3))
    assert sorted(c.layer for c in coefficient_modules(model)) == [1, 3]
    model.train()
    torch.manual_seed(0)
    out = model(images())
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(5))).sum().backward()
    params = gfsa_parameters(model)
    assert len(params) == 2
    assert all(p.grad is not None and (p.grad != 0).all() for p in params)


@pytest.mark.parametrize("name", NAMES)
def test_added_parameters_are_heads_times_patched_modules(name):
    model = patched(name)
    assert added_parameters(model) == sum(HEADS[name])
    assert [c.num_heads for c in coefficient_modules(model)] == HEADS[name]
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in stock(name).parameters()) + sum(
        HEADS[name]
    )
    assert added_parameters(patched(name, layers="selected")) == HEADS[name][1] + HEADS[name][3]


@pytest.mark.parametrize("name", ["deit", "swin"])
def test_learn_selects_the_learnable_coefficients(name):
    model = patched(name, learn=("w0", "wK"))
    assert added_parameters(model) == 2 * sum(HEADS[name])
    for c in coefficient_modules(model):
        assert {n for n, _ in c.named_parameters()} == {"w0", "wK"}
        assert {n for n, _ in c.named_buffers()} == {"w1"}
    model(images()).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gfsa_parameters(model))

    frozen = patched(name, learn=())
    assert added_parameters(frozen) == 0 and gfsa_parameters(frozen) == []
    for c in coefficient_modules(frozen):
        assert {n for n, _ in c.named_buffers()} == {"w0", "w1", "wK"}


@pytest.mark.parametrize("name", NAMES)
def test_training_with_attention_dropout_reaches_the_coefficients(name):
    model = patched(name, layers="selected")
    for m in attention_modules(model):
        m.attn_drop.p = 0.2
    model.train()
    torch.manual_seed(0)
    a = model(images())
    a.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gfsa_parameters(model))
    torch.manual_seed(1)
    with torch.no_grad():
        assert (model(images()) - a).abs().max() > 1e-5  # dropout is active


# --------------------------------------------------------------------------------------------------
# state dicts


@pytest.mark.parametrize("name", NAMES)
def test_stock_state_dict_loads_with_only_gfsa_keys_missing(name):
    model = patched(name, learn=("w0", "wK"))
    set_coefficients(model, wK=0.5)
    result = model.load_state_dict(stock(name).state_dict(), strict=False)
    gfsa_keys = {k for k in model.state_dict() if ".gfsa." in k}
    assert len(gfsa_keys) == 3 * 4
    assert set(result.missing_keys) == gfsa_keys
    assert result.unexpected_keys == []
    assert set(model.state_dict()) - gfsa_keys == set(stock(name).state_dict())
    set_coefficients(model, wK=0.0)
    got, _ = run(model, images())
    want, _ = run(stock(name), images())
    assert (got - want).abs().max() <= 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_patched_state_dict_round_trips(name):
    model = patched(name, w0=0.05)
    set_coefficients(model, wK="random")
    other = patched(name)
    other.load_state_dict(model.state_dict(), strict=True)
    a, _ = run(model, images())
    b, _ = run(other, images())
    assert torch.equal(a, b)
    assert changed(b, run(stock(name), images())[0])


# --------------------------------------------------------------------------------------------------
# dtypes


@pytest.mark.parametrize("name", NAMES)
def test_float64_models(name):
    base = fresh(name).double()
    model = gfsa.patch(copy.deepcopy(base))
    x = images(torch.float64)
    got, _ = run(model, x)
    want, _ = run(base, x)
    assert got.dtype == torch.float64
    assert (got - want).abs().max() <= 1e-10
    set_coefficients(model, wK=0.5)
    out, mods = run(model, x)
    for attn, (inp, mask, o) in zip(attention_modules(model), mods, strict=True):
        assert (o - by_hand(attn, inp, mask)[0]).abs().max() <= 1e-10
    late = patched(name).double()  # patched first, moved afterwards
    set_coefficients(late, wK=0.5)
    assert (run(late, x)[0] - out).abs().max() <= 1e-10


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_autocast(name):
    model = patched(name)
    set_coefficients(model, wK=0.5)
    full, _ = run(model, images())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, mods = run(model, images())
    assert all(o.dtype == torch.bfloat16 for _, _, o in mods)
    assert torch.isfinite(low).all()
    assert (low.float() - full).abs().max() <= 0.1 * full.abs().max()


# --------------------------------------------------------------------------------------------------
# errors


def test_unsupported_timm_attention_names_the_supported_families():
    diff = timm.create_model(
        "vit_tiny_patch16_224", patch_size=8, embed_dim=32, depth=2, num_heads=4, attn_layer="diff", **COMMON
    )
    with pytest.raises(UnsupportedModelError, match="DiffAttention") as err:
        gfsa.patch(diff)
    for family in ("VisionTransformer", "Cait", "SwinTransformer", "bert", "t5"):
        assert family in str(err.value)
    assert not hasattr(diff, "gfsa_layers")


def test_parallel_attention_blocks_are_one_layer_each_and_other_models_are_refused():
    parallel = timm.create_model(
        "vit_small_patch16_18x2_224", patch_size=8, embed_dim=32, depth=2, num_heads=4, **COMMON
    ).eval()
    gfsa.patch(parallel, layers=[1])
    assert patched_layers(parallel) == [1] and added_parameters(parallel) == 2 * 4  # two attention modules
    resnet = timm.create_model("resnet10t", pretrained=False, num_classes=10)
    with pytest.raises(UnsupportedModelError, match="ResNet"):
        gfsa.patch(resnet)


def test_a_user_subclass_of_a_timm_model_is_patched():
    from timm.models.vision_transformer import VisionTransformer

    class MyViT(VisionTransformer):
        pass

    model = MyViT(img_size=IMG, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=10)
    gfsa.patch(model, layers="last:1")
    assert [hasattr(blk.attn, "gfsa") for blk in model.blocks] == [False, True]


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"learn": ("wk",)}, ValueError, "wk"),
        ({"K": 0}, ValueError, "K"),
        ({"K": 0.5}, ValueError, "K"),
        ({"layers": [-5]}, LayerSpecError, "out of range"),
        ({"layers": "first:9"}, LayerSpecError, "first"),
        ({"dropout_order": "during"}, ValueError, "dropout_order"),
    ],
)
def test_bad_arguments_raise_and_leave_the_model_untouched(kw, error, match):
    model = fresh("swin")
    with pytest.raises(error, match=match):
        gfsa.patch(model, **kw)
    assert patched_layers(model) == [] and coefficient_modules(model) == []
    assert all(type(m) is WindowAttention for m in attention_modules(model))
    gfsa.patch(model)
    assert gfsa.patch(model) is model  # the same settings again: nothing changes
    with pytest.raises(ValueError, match="already patched"):
        gfsa.patch(model, K=5)
