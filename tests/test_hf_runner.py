"""The runner with any transformers model: ``backbone=hf_causal_lm`` (a tiny random-init Llama with grouped
query attention) on WikiText-2 and ``backbone=hf_encoder`` (a tiny DistilBERT) on GLUE CoLA, each
checkpoint written by ``save_pretrained`` with its tokenizer, as a hub download would be."""

from __future__ import annotations

import math

import pytest
import transformers as tf
from conftest import FAST, compose

from gfsa.runner.train import run, run_job
from gfsa.utils.errors import ConfigError
from gfsa.zoo.demo import text as H


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_runner")
    texts = H.sentences(300)
    llama_tok = H.gpt2_tokenizer(texts)
    llama = root / "llama"
    llama_tok.save_pretrained(llama)
    tf.LlamaForCausalLM(
        tf.LlamaConfig(
            vocab_size=len(llama_tok),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            bos_token_id=llama_tok.eos_token_id,
            eos_token_id=llama_tok.eos_token_id,
        )
    ).save_pretrained(llama)
    bert_tok = H.bert_tokenizer(texts)
    distil = root / "distilbert"
    bert_tok.save_pretrained(distil)
    tf.DistilBertModel(
        tf.DistilBertConfig(
            vocab_size=len(bert_tok), dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64
        )
    ).save_pretrained(distil)
    wiki = root / "wikitext2"
    wiki.mkdir()
    for split, seed in (("train", 4), ("valid", 5)):
        body = "".join(f" = Article {i} = \n \n {s} . \n \n" for i, s in enumerate(H.sentences(40, seed)))
        (wiki / f"wiki.{split}.raw").write_text(body)
    return {"llama": llama, "distilbert": distil, "wiki": wiki, "glue": H.write_glue(root / "glue")}


def test_any_causal_lm_on_wikitext(models, results_dir):
    cfg = compose(
        [
            *FAST,
            "backbone=hf_causal_lm",
            f"backbone.pretrained={models['llama']}",
            "backbone.name=tiny_llama",
            "task=wikitext2",
            f"task.data_dir={models['wiki']}",
            "task.block_size=32",
            "gfsa.layers=all",
            "with_baseline=true",
        ],
        results_dir,
    )
    rec = run_job(cfg)
    assert rec["backbone"] == "tiny_llama" and rec["gfsa"]["layers"] == [0, 1]
    assert rec["gfsa"]["added_parameters"] == 2 * 4  # one wK per query head (GQA: 4 query, 2 kv heads)
    m = rec["metrics"]
    assert m["perplexity"]["value"] == pytest.approx(math.exp(m["loss"]["value"]), rel=1e-6)
    assert rec["comparison"]["improvement_pct"] is not None  # paired with its baseline


def test_any_encoder_on_glue(models, results_dir):
    cfg = compose(
        [
            *FAST,
            "backbone=hf_encoder",
            f"backbone.pretrained={models['distilbert']}",
            "task=glue/cola",
            f"task.data_dir={models['glue']}",
            "task.max_length=48",
            "gfsa.layers=selected",
        ],
        results_dir,
    )
    rec = run(cfg)
    assert rec["gfsa"]["layers"] == [1] and set(rec["metrics"]) >= {"mcc", "loss"}


def test_a_missing_checkpoint_name_is_one_line(results_dir):
    with pytest.raises(ConfigError, match="backbone.pretrained is not set: backbone=hf_causal_lm") as err:
        run(compose([*FAST, "backbone=hf_causal_lm", "task=wikitext2"], results_dir))
    assert "\n" not in str(err.value) and not any(results_dir.iterdir())
