"""Which parameters each preset decays (optim.no_decay) is what its official recipe does, by name: timm's
rule for DeiT/CaiT, Swin's set_weight_decay, the transformers scripts' substring lists for GLUE, GPT-2 and
code, every parameter for Graphormer-ZINC (v1's AdamW(self.parameters())), GraphGPS and the SpeechBrain
Branchformer; and the results record names the groups."""

from __future__ import annotations

import timm
import transformers as tf
from conftest import FAST, compose
from omegaconf import OmegaConf

import gfsa
from gfsa.runner.config import normalise
from gfsa.runner.train import run
from gfsa.zoo.recipes.common import param_groups


def _no_decay(preset: str) -> list[str]:
    cfg = normalise(OmegaConf.to_container(compose([f"preset={preset}", "paths.results_dir=results"]), resolve=True))
    return cfg["optim"]["no_decay"]


def _exempt(model, rules) -> set[str]:
    _, report = param_groups(model, 0.05, rules)
    assert report["decayed"]["tensors"] + report["not_decayed"]["tensors"] == len(list(model.parameters()))
    return set(report["not_decayed"]["names"])


def test_timm_presets_use_timms_rule():
    """DeiT: timm's create_optimizer (1-D, *.bias, model.no_weight_decay()); GFSA's wK is 1-D, so exempt."""
    from timm.optim import param_groups_weight_decay

    assert _no_decay("imagenet/deit_s") == _no_decay("imagenet/cait_s24") == ["1d", "model"]
    model = timm.create_model("deit_small_patch16_224")
    gfsa.patch(model, layers="all", K=3)
    groups = param_groups_weight_decay(model, 0.05, no_weight_decay_list=model.no_weight_decay())
    names = {id(p): n for n, p in model.named_parameters()}
    official = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    ours = _exempt(model, _no_decay("imagenet/deit_s"))
    assert ours == official and {"pos_embed", "cls_token", "blocks.0.attn.gfsa.wK"} <= ours


def test_swin_preset_matches_swins_set_weight_decay():
    """Swin's optimizer.py: 1-D, *.bias, absolute_pos_embed, and every relative_position_bias_table (2-D)."""
    model = timm.create_model("swin_small_patch4_window7_224")
    official = {
        n
        for n, p in model.named_parameters()
        if len(p.shape) == 1 or n.endswith(".bias") or n == "absolute_pos_embed" or "relative_position_bias_table" in n
    }
    ours = _exempt(model, _no_decay("imagenet/swin_s"))
    assert ours == official and any("relative_position_bias_table" in n for n in ours)


def test_transformers_presets_use_the_scripts_substring_lists():
    """run_glue_no_trainer.py / the CodeXGLUE scripts: ["bias", "LayerNorm.weight"]; run_clm_no_trainer.py:
    ["bias", "layer_norm.weight"], which leaves GPT-2's ln_1/ln_2/ln_f weights decayed. (Their weight decay is 0.)"""
    bert = tf.BertModel(tf.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64))
    for preset in ("glue/bert_base", "glue/roberta_base", "code/defect_codebert", "code/defect_codet5_small"):
        rules = _no_decay(preset)
        assert rules == ["LayerNorm.weight", "bias"]
        assert _exempt(bert, rules) == {n for n, _ in bert.named_parameters() if "bias" in n or "LayerNorm.weight" in n}
    gpt2 = tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=50))
    rules = _no_decay("lm/gpt2_ptb")
    assert rules == ["bias", "layer_norm.weight"]
    exempt = _exempt(gpt2, rules)
    assert exempt == {n for n, _ in gpt2.named_parameters() if "bias" in n}
    assert "transformer.ln_f.weight" not in exempt


def test_graphormer_zinc_gps_and_branchformer_decay_every_parameter(tmp_path):
    """Graphormer v1 (ZINC), GraphGPS and SpeechBrain hand every parameter to AdamW: biases, norms and the GFSA
    coefficient included. The default (no preset) keeps timm's rule."""
    from gfsa.zoo.backbones.asr import BranchformerEncoder, _config

    for preset in ("graph/graphormer_zinc", "graph/gps_zinc", "speech/branchformer_960h", "speech/branchformer_100h"):
        assert _no_decay(preset) == []
    cfg = OmegaConf.create(
        {"d_model": 32, "attention_heads": 4, "decoder_layers": 1, "ffn_dim": 64, "activation": "gelu", "dropout": 0.1}
        | {"attention_dropout": 0.1, "conv_kernel_sizes": [5, 5], "conv_channels": 32}
        | {"max_source_positions": 64, "max_target_positions": 64}
    )
    task = type("Task", (), {"vocab_size": 20, "num_mel_bins": 8})()
    encoder = BranchformerEncoder(_config(cfg, task, 0), num_layers=2, units=64, kernel=5, pos_encoding="symmetric")
    gfsa.patch(encoder, layers="all", K=3)
    assert _exempt(encoder, []) == set()
    exempt = _exempt(encoder, ["1d", "model"])
    assert "layers.0.attn.gfsa.wK" in exempt and "layers.0.attn.pos_bias_u" not in exempt
    default = normalise(OmegaConf.to_container(compose(["paths.results_dir=results"]), resolve=True))
    assert default["optim"]["no_decay"] == ["1d", "model"]


def test_record_names_the_groups(tmp_path, results_dir):
    record = run(compose([*FAST, "gfsa.layers=all", "with_baseline=false", "optim.no_decay=[gfsa]"], results_dir))
    groups = record["weight_decay_groups"]
    assert groups["no_decay"] == ["gfsa"] and groups["weight_decay"] == 0.05
    names = groups["not_decayed"]["names"]
    assert names and all(n.endswith(".gfsa.wK") for n in names)
    assert groups["not_decayed"]["tensors"] == len(names) == groups["not_decayed"]["parameters"] / 4  # 4 heads
    assert groups["decayed"]["tensors"] > len(names)  # biases and norms are decayed under [gfsa]


def test_no_decay_is_one_set_and_a_bad_value_names_the_fix():
    import pytest

    from gfsa.runner import results as R
    from gfsa.utils.errors import ConfigError

    def cfg(*o):
        return normalise(OmegaConf.to_container(compose([*o, "paths.results_dir=results"]), resolve=True))

    assert R.run_dir(cfg("optim.no_decay=[model,1d,1d]")) == R.run_dir(cfg())  # today's rule: the old run dirs
    assert R.run_dir(cfg("optim.no_decay=[]")) != R.run_dir(cfg())
    assert R.run_dir(cfg("optim.no_decay=[]", "optim.weight_decay=0")) == R.run_dir(cfg("optim.weight_decay=0"))
    with pytest.raises(ConfigError, match=r"optim.no_decay='bias': expected a list"):
        cfg("optim.no_decay=bias")
