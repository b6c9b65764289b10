"""GFSA on timm families, each a tiny random-init model of the real architecture: DeiT and a RoPE ViT
(timm's shared Attention / AttentionRope), EVA and EVA-02 (RoPE), BEiT (its own and a shared relative
position bias), CaiT (talking heads), Swin and Swin V2 (cosine attention, log-spaced position bias).

(a) identity coefficients reproduce the stock model (fp32 ≤ 1e-5);
(b) with random per-head coefficients on every layer, the patched model equals the stock model run
    through its own explicit-softmax code with the naive filter put where timm applies attention
    dropout to A (float64 ≤ 1e-9): every family's own masks, biases and rotary embeddings included.
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

import gfsa
from gfsa.nn.attention import GFSACoefficients
from gfsa.nn.patching import patched_layers

FAMILIES = {  # name: (timm model, tiny overrides of the real architecture, layers)
    "deit": (
        "deit_tiny_patch16_224",
        {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 4},
        3,
    ),
    "vit_rope": (
        "vit_base_patch16_rope_224",
        {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4},
        2,
    ),
    "eva": (
        "eva_giant_patch14_224",
        {"img_size": 28, "patch_size": 14, "embed_dim": 32, "depth": 2, "num_heads": 4, "mlp_ratio": 2.0},
        2,
    ),
    "eva02": (
        "eva02_tiny_patch14_224",
        {"img_size": 28, "patch_size": 14, "embed_dim": 32, "depth": 2, "num_heads": 4},
        2,
    ),
    "beit": (
        "beit_base_patch16_224",
        {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4},
        2,
    ),
    "beit_shared_bias": (
        "beitv2_base_patch16_224",
        {
            "img_size": 32,
            "patch_size": 8,
            "embed_dim": 32,
            "depth": 2,
            "num_heads": 4,
            "use_shared_rel_pos_bias": True,
            "use_rel_pos_bias": False,
        },
        2,
    ),
    "cait": (
        "cait_xxs24_224",
        {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4, "depth_token_only": 1},
        2,
    ),
    "swin": (
        "swin_tiny_patch4_window7_224",
        {"img_size": 32, "window_size": 4, "embed_dim": 16, "depths": (2, 2), "num_heads": (2, 4)},
        4,
    ),
    "swinv2": (
        "swinv2_tiny_window8_256",
        {"img_size": 32, "window_size": 4, "embed_dim": 16, "depths": (2, 2), "num_heads": (2, 4)},
        4,
    ),
}


def build(name: str, dtype=torch.float32) -> nn.Module:
    """The family's tiny model; scales that start attention branches near zero are set to 1."""
    model_name, kwargs, _ = FAMILIES[name]
    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, num_classes=10, **kwargs).eval()
    with torch.no_grad():
        for m in model.modules():  # LayerScale inits (1e-5, 0.1) would hide what attention does
            for attr in ("gamma_1", "gamma_2"):
                if isinstance(getattr(m, attr, None), nn.Parameter):
                    getattr(m, attr).fill_(1.0)
            if type(m).__name__ == "LayerScale":
                m.gamma.data.fill_(1.0)
            if type(m).__name__ == "SwinTransformerV2Block":  # res-post-norm starts at zero
                m.norm1.weight.fill_(1.0)
                m.norm2.weight.fill_(1.0)
    return model.to(dtype)


def images(name: str, dtype=torch.float32) -> torch.Tensor:
    size = FAMILIES[name][1]["img_size"]
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1)).to(dtype)


class NaiveFilter(nn.Module):
    """Where timm applies attention dropout to the softmax matrix A (eval: the identity), H(A) instead:
    H = w0·I + w1·A + wK·(A + (K−1)(A² − A)), written out."""

    def __init__(self, g: GFSACoefficients):
        super().__init__()
        self.g = g

    def forward(self, A: torch.Tensor) -> torch.Tensor:
        w0, w1, wK = (w.to(A.dtype).view(-1, 1, 1) for w in (self.g.w0, self.g.w1, self.g.wK))
        eye = torch.eye(A.shape[-1], dtype=A.dtype)
        return w0 * eye + w1 * A + wK * (A + (self.g.settings.K - 1) * (A @ A - A))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_identity_coefficients_reproduce_the_stock_model(name):
    stock = build(name)
    model = gfsa.patch(copy.deepcopy(stock), layers="all")
    assert patched_layers(model) == list(range(FAMILIES[name][2]))
    x = images(name)
    with torch.no_grad():
        assert (model(x) - stock(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("name", list(FAMILIES))
def test_b_every_patched_layer_is_the_naive_filter_of_the_family_own_softmax(name):
    stock = build(name, torch.float64)
    model = gfsa.patch(copy.deepcopy(stock), layers="all", K=3)
    g = torch.Generator().manual_seed(3)
    modules = dict(stock.named_modules())
    with torch.no_grad():
        for path, m in model.named_modules():
            c = getattr(m, "gfsa", None)
            if isinstance(c, GFSACoefficients):
                c.w0.copy_(0.2 * torch.rand(c.num_heads, generator=g))
                c.w1.copy_(0.8 + 0.4 * torch.rand(c.num_heads, generator=g))
                c.wK.copy_(torch.rand(c.num_heads, generator=g) - 0.5)
                reference = modules[path]
                reference.fused_attn = False  # timm's explicit path: the softmax matrix is at hand
                reference.attn_drop = NaiveFilter(c)
        x = images(name, torch.float64)
        got, want = model.forward_features(x), stock.forward_features(x)
        plain = build(name, torch.float64).forward_features(x)
    assert (got - want).abs().max() <= 1e-9
    assert (got - plain).abs().max() > 1e-3 * plain.abs().max()  # the coefficients do change the model


def test_an_unknown_timm_attention_is_refused_by_name():
    coat = timm.create_model("coatnet_nano_rw_224", pretrained=False, num_classes=10)
    with pytest.raises(gfsa.UnsupportedModelError, match="does not support the timm attention") as err:
        gfsa.patch(coat)
    assert "\n" not in str(err.value) and not hasattr(coat, "gfsa_layers")
