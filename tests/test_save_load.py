"""GFSA models that save and load: ``save_pretrained`` + ``gfsa.from_pretrained`` (transformers) and
``gfsa.save_timm`` + ``gfsa.create_model`` (timm) give back the patched model with its trained
coefficients and identical outputs; explicit settings that disagree with a checkpoint's are one line."""

from __future__ import annotations

import pytest
import timm
import torch
import transformers as tf
from hf_families import build, inputs, main_outputs, max_diff
from test_hf_families import set_random_coefficients

import gfsa
from gfsa.nn.attention import GFSACoefficients
from gfsa.nn.saving import SettingsMismatchError

MODELS = {  # family -> the class to load with (an Auto class or a concrete one)
    "llama": tf.AutoModelForCausalLM,
    "bert": tf.AutoModel,
    "bart": tf.BartModel,
    "whisper": tf.AutoModel,
}


def coefficients(model) -> dict:
    return {
        n: (m.w0.clone(), m.w1.clone(), m.wK.clone())
        for n, m in model.named_modules()
        if isinstance(m, GFSACoefficients)
    }


@pytest.mark.parametrize("name", list(MODELS))
def test_save_pretrained_then_from_pretrained_round_trips(name, tmp_path):
    model = gfsa.patch(build(name), layers="selected", K=4, learn=("w0", "wK"))
    set_random_coefficients(model, seed=7)  # "trained"
    model.save_pretrained(tmp_path)
    back = gfsa.from_pretrained(tmp_path, model_class=MODELS[name]).eval()
    assert type(back).__name__ == type(model).__name__ and back.config._attn_implementation == "gfsa"
    assert back.gfsa_settings == model.gfsa_settings and gfsa.patched_layers(back) == gfsa.patched_layers(model)
    saved, loaded = coefficients(model), coefficients(back)
    assert saved.keys() == loaded.keys() and saved
    for key, values in saved.items():
        assert all(torch.equal(a, b) for a, b in zip(values, loaded[key], strict=True)), key
    batch = inputs(name)
    with torch.no_grad():
        assert max_diff(main_outputs(model(**batch)), main_outputs(back(**batch))) == 0
    assert gfsa.patch(back, settings=model.gfsa_settings) is back  # patching again keeps the trained values
    assert all(torch.equal(a, b) for a, b in zip(coefficients(back)[key], saved[key], strict=True))


def test_a_stock_loader_drops_the_coefficients_which_is_why_gfsa_from_pretrained_exists(tmp_path):
    model = gfsa.patch(build("llama"), layers="all")
    model.save_pretrained(tmp_path)
    stock, info = tf.AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert info["unexpected_keys"] and all(".gfsa." in k for k in info["unexpected_keys"])
    assert gfsa.patched_layers(stock) == []


def test_a_stock_checkpoint_loads_and_is_patched_at_identity(tmp_path):
    stock = build("llama")
    stock.save_pretrained(tmp_path)
    model = gfsa.from_pretrained(tmp_path, tf.AutoModelForCausalLM, settings={"layers": "all"}).eval()
    assert gfsa.patched_layers(model) == [0, 1]
    for w0, w1, wK in coefficients(model).values():
        assert torch.all(w0 == 0) and torch.all(w1 == 1) and torch.all(wK == 0)
    batch = inputs("llama")
    with torch.no_grad():
        assert max_diff(main_outputs(stock(**batch)), main_outputs(model(**batch))) <= 1e-5


def test_settings_that_disagree_with_the_checkpoint_are_one_line(tmp_path):
    gfsa.patch(build("bert"), layers="all", K=3).save_pretrained(tmp_path)
    with pytest.raises(SettingsMismatchError, match=r"was trained with GFSA K=3 \(asked 5\)") as err:
        gfsa.from_pretrained(tmp_path, settings={"layers": "all", "K": 5})
    assert "\n" not in str(err.value)
    assert gfsa.patched_layers(gfsa.from_pretrained(tmp_path, settings={"layers": "all", "K": 3})) == [0, 1]


TIMM = {"model_name": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 8, "depth": 2, "num_classes": 10}


def _timm():
    torch.manual_seed(0)
    kwargs = {k: v for k, v in TIMM.items() if k != "model_name"}
    return timm.create_model(TIMM["model_name"], **kwargs).eval(), kwargs


def test_timm_checkpoint_with_its_settings_round_trips(tmp_path):
    model, kwargs = _timm()
    gfsa.patch(model, layers=[1], K=3, wK=0.0)
    set_random_coefficients(model, seed=2)
    ckpt = gfsa.save_timm(model, tmp_path / "vit.safetensors", TIMM["model_name"], **kwargs)
    assert (tmp_path / "vit.safetensors.gfsa.json").is_file()
    back = gfsa.create_model(TIMM["model_name"], checkpoint_path=ckpt).eval()
    assert back.gfsa_settings == model.gfsa_settings
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), back(x))
    with pytest.raises(SettingsMismatchError, match="was trained with GFSA layers=.1. .asked 'all'."):
        gfsa.create_model(TIMM["model_name"], checkpoint_path=ckpt, settings={"layers": "all"})
    # timm's own loader refuses the coefficient keys: why the settings travel beside the weights
    with pytest.raises(RuntimeError, match="Unexpected key"):
        timm.create_model(TIMM["model_name"], checkpoint_path=str(ckpt), **kwargs)
