"""The compared methods (AttnScale, FeatScale, ContraNorm): identity at init, exact math, gradients,
parameter counts, configuration, and a run paired with its baseline end to end."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import transformers as tf
from conftest import compose
from digits_runs import digits_runs
from omegaconf import OmegaConf

import gfsa
from gfsa.nn.functional import attention_probs
from gfsa.runner import results as R
from gfsa.utils.errors import ConfigError
from gfsa.zoo.methods import METHODS, apply_from_config, apply_method, method_parameters
from gfsa.zoo.methods.attnscale import AttnScale

IDENTITY = {"attnscale": {}, "featscale": {}, "contranorm": {"scale": 0.0, "learnable": True}}
ACTIVE = {"attnscale": {"init": 0.5}, "featscale": {"init": 0.3}, "contranorm": {"scale": 0.5, "learnable": True}}


def vit():
    torch.manual_seed(0)
    net = timm.create_model(
        "vit_tiny_patch16_224", img_size=8, patch_size=2, embed_dim=64, depth=3, num_heads=4, in_chans=1, num_classes=5
    )
    return net.eval(), {"x": torch.randn(3, 1, 8, 8)}


def hf(kind: str):
    torch.manual_seed(0)
    config, model = {
        "bert": (tf.BertConfig, tf.BertForSequenceClassification),
        "albert": (tf.AlbertConfig, tf.AlbertForSequenceClassification),
        "roberta": (tf.RobertaConfig, tf.RobertaForSequenceClassification),
    }[kind]
    cfg = config(
        vocab_size=60, hidden_size=32, embedding_size=16, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=40, num_labels=2, attention_probs_dropout_prob=0.0,
        initializer_range=0.5,  # large weights: attention far from uniform, so the methods show
    )  # fmt: skip
    net = model(cfg).eval()
    ids = torch.randint(5, 60, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0  # padding: masked keys must stay masked
    return net, {"input_ids": ids, "attention_mask": mask}


def out(net, inputs):
    y = net(**inputs)
    return y.logits if hasattr(y, "logits") else y


FAMILIES = {"vit": vit, "bert": lambda: hf("bert"), "albert": lambda: hf("albert"), "roberta": lambda: hf("roberta")}


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("method", METHODS)
def test_identity_at_init_then_gradients_reach_the_method(family, method):
    net, inputs = FAMILIES[family]()
    ref = out(net, inputs)
    ours = copy.deepcopy(net)
    apply_method(ours, method, **IDENTITY[method])
    torch.testing.assert_close(out(ours, inputs), ref, atol=1e-5, rtol=0)

    active = copy.deepcopy(net)
    apply_method(active, method, **ACTIVE[method])
    y = out(active, inputs)
    assert (y - ref).abs().max() > 1e-6, "a non-zero coefficient must change the output"
    y.square().sum().backward()
    params = method_parameters(active)
    assert params and all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    assert any(p.grad.abs().sum() > 0 for p in params)


def test_published_contranorm_is_not_an_identity():
    """ContraNorm with its fixed step s = 0.1 changes outputs from the start (the paper's setting)."""
    net, inputs = vit()
    ours = copy.deepcopy(net)
    assert apply_method(ours, "contranorm") == 0  # fixed s: no learnable parameter
    assert (out(ours, inputs) - out(net, inputs)).abs().max() > 1e-5


def test_attnscale_matches_the_official_matrix_form():
    """(A_dc + (1+ω)·(A − A_dc))·V, A_dc uniform over the keys a query may attend."""
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 3, 6, 4) for _ in range(3))
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    mask[1, ..., 4:] = False
    m = AttnScale(3, init=0.0)
    with torch.no_grad():
        m.omega.copy_(torch.tensor([0.5, -0.3, 1.0]))
    w = m.omega.view(-1, 1, 1)
    for attn_mask, causal in ((None, False), (mask, False), (None, True)):
        a = attention_probs(q, k, attn_mask, causal)
        allowed = (a > 0).float() if attn_mask is not None or causal else torch.ones_like(a)
        dc = allowed / allowed.sum(-1, keepdim=True)
        expected = (dc + (1 + w) * (a - dc)) @ v
        torch.testing.assert_close(m(a @ v, v, attn_mask, causal), expected, atol=1e-6, rtol=0)


def test_parameter_counts_on_the_paper_backbones():
    deit = timm.create_model("deit_small_patch16_224", pretrained=False)  # DeiT-S: 12 layers, 6 heads, width 384
    assert apply_method(copy.deepcopy(deit), "attnscale") == 12 * 6
    assert apply_method(copy.deepcopy(deit), "featscale") == 12 * 2 * 384
    assert apply_method(copy.deepcopy(deit), "contranorm") == 0
    assert apply_method(copy.deepcopy(deit), "contranorm", learnable=True) == 12 * 384
    bert, _ = hf("bert")
    assert apply_method(copy.deepcopy(bert), "contranorm", learnable=True) == 3 * 32
    albert, _ = hf("albert")  # one attention module shared by all layers: one set of parameters
    assert apply_method(copy.deepcopy(albert), "attnscale") == 4
    with pytest.raises(ValueError, match="shares its attention module"):
        apply_method(copy.deepcopy(albert), "featscale", layers="selected")
    assert apply_method(copy.deepcopy(deit), "attnscale", layers="selected") == 6 * 6


def test_a_method_replaces_gfsa_unless_combined_explicitly():
    cfg = OmegaConf.to_container(compose(["preset=glue/bert_base", "method=contranorm"]), resolve=True)
    with pytest.raises(ConfigError, match="gfsa.layers=all: add gfsa.layers=none") as e:
        apply_from_config(cfg, vit()[0])
    assert "\n" not in str(e.value)
    cfg = OmegaConf.to_container(
        compose(["method=attnscale", "gfsa.layers=all", "method.with_gfsa=true"]), resolve=True
    )
    net, inputs = vit()
    ref = out(net, inputs)
    gfsa.patch(net, layers="all")
    assert apply_from_config(cfg, net) == 3 * 4
    torch.testing.assert_close(out(net, inputs), ref, atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="method.layers='sometimes': unknown spec"):
        apply_from_config(OmegaConf.to_container(compose(["method=featscale", "method.layers=sometimes"])), vit()[0])
    with pytest.raises(
        ConfigError, match="method.scal: contranorm has no such option; its options are scale, temperature"
    ):
        apply_from_config(OmegaConf.to_container(compose(["method=contranorm", "+method.scal=0.2"])), vit()[0])


def test_contranorm_run_is_paired_with_its_baseline():
    runs = digits_runs()
    rec, base = runs["contranorm"], runs["baseline"]
    assert rec["variant"] == "contranorm" and "contranorm-seed0-" in rec["run_dir"]
    assert rec["gfsa"]["added_parameters"] == 6 * 64 and rec["gfsa"]["layers"] == []
    assert rec["pair_key"] == base["pair_key"] == runs["gfsa"]["pair_key"]
    assert R.run_dir(R.baseline_config(rec["config"])) == R.run_dir(base["config"])
    cmp = rec["comparison"]
    assert cmp["baseline_run"] == base["run_dir"]
    ours, theirs = rec["metrics"]["acc"]["value"], base["metrics"]["acc"]["value"]
    assert cmp["improvement_abs"] == pytest.approx(ours - theirs)
