"""``gfsa export``: a trained run as a model the libraries load — a timm checkpoint with its GFSA settings
(vision), a transformers directory with config.gfsa and the tokenizer (text; speech, whose patched
encoder sits inside an encoder-decoder) — reloaded to the same outputs as the run's own model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as tf
from conftest import FAST, compose
from test_speech import PRESET_ON_CPU, TINY, _common, write_librispeech

import gfsa
from gfsa.ops.export import export
from gfsa.runner.restore import locate, restore
from gfsa.runner.train import run
from gfsa.utils.errors import ConfigError
from gfsa.zoo.demo import text as H

GFSA_EXE = str(Path(sys.executable).parent / "gfsa")


def _trained(record: dict):
    _, rec, ckpt = locate(record["run_dir"])
    return restore(rec, ckpt)


def test_a_vision_run_exports_a_timm_checkpoint_with_its_settings(tmp_path):
    rec = run(compose([*FAST, "gfsa.layers=selected", "gfsa.wK=0.3"], tmp_path / "results"))
    out = tmp_path / "export"
    done = subprocess.run([GFSA_EXE, "export", rec["run_dir"], str(out)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["kind"] == "timm" and manifest["gfsa"]["layers"] == "selected"
    model = gfsa.create_model(manifest["model_name"], checkpoint_path=out / "model.safetensors").eval()
    net = _trained(rec).model.net
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))
    assert gfsa.patched_layers(model) == [1, 3, 5]


def test_a_text_run_exports_a_transformers_directory(tmp_path):
    texts = H.sentences(200)
    ckpt = H.build_checkpoint("bert", tmp_path / "bert", texts)
    glue = H.write_glue(tmp_path / "glue")
    args = [
        *FAST,
        "backbone=bert",
        f"backbone.pretrained={ckpt}",
        "task=glue/cola",
        f"task.data_dir={glue}",
        "task.max_length=48",
        "gfsa.layers=all",
        "gfsa.wK=0.2",
    ]
    rec = run(compose(args, tmp_path / "results"))
    manifest = export(rec["run_dir"], tmp_path / "export")
    assert manifest["kind"] == "transformers" and manifest["class"] == "BertForSequenceClassification"
    model = gfsa.from_pretrained(tmp_path / "export", model_class=tf.AutoModelForSequenceClassification).eval()
    tok = tf.AutoTokenizer.from_pretrained(tmp_path / "export")  # the run's tokenizer travels with it
    batch = tok(["the cat sat on the mat", "a dog ran"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, _trained(rec).model(**batch))


def test_a_speech_run_exports_its_encoder_decoder_with_the_patched_encoder(tmp_path, monkeypatch):
    monkeypatch.setenv("GFSA_CACHE_DIR", str(tmp_path / "cache"))
    data = write_librispeech(tmp_path / "LibriSpeech")
    args = [*_common(data), "preset=speech/transformer_100h", "task.tokenizer=char", *PRESET_ON_CPU, *TINY]
    rec = run(compose([*args, "gfsa.layers=all", "gfsa.wK=0.2"], tmp_path / "results"))
    manifest = export(rec["run_dir"], tmp_path / "export")
    assert manifest["class"] == "Speech2TextForConditionalGeneration"
    assert manifest["extra_weights"]  # the CTC head the suite adds beside the library model
    model = gfsa.from_pretrained(tmp_path / "export", model_class=tf.Speech2TextForConditionalGeneration).eval()
    assert gfsa.patched_layers(model.model.encoder) == [0, 1] and not hasattr(model.model.decoder, "gfsa_layers")
    ours = _trained(rec).model.s2t
    features = torch.randn(2, 40, ours.config.input_feat_per_channel)
    tokens = torch.tensor([[2, 5, 6], [2, 7, 8]])
    with torch.no_grad():
        a = model(input_features=features, decoder_input_ids=tokens).logits
        b = ours(input_features=features, decoder_input_ids=tokens).logits
    assert torch.equal(a, b)


def test_what_cannot_be_exported_is_one_line_and_writes_nothing(tmp_path):
    rec = run(compose([*FAST, "gfsa.layers=none"], tmp_path / "results"))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not empty"):
        export(rec["run_dir"], busy)
    with pytest.raises(ConfigError, match="does not exist"):
        export(tmp_path / "nope", tmp_path / "out")
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["busy", "results"]
