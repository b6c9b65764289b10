"""Hugging Face transformers backbones: any model whose attention goes through transformers' attention
interface (BERT, ALBERT, RoBERTa, GPT-2, CodeBERT, PLBART, CodeT5 as presets; Llama, Qwen, Mistral,
DistilBERT, ... through backbone=hf_causal_lm | hf_encoder).

``backbone.pretrained`` is a hub name or a local directory (``save_pretrained`` output); the
tokenizer loads from the same place (``task.tokenizer`` follows it). ``backbone.init=random``
builds the same architecture from that config with fresh weights. The task's ``head`` picks what
the wrapper returns:

- ``sequence``: transformers' ``*ForSequenceClassification`` (BERT/ALBERT pooler, RoBERTa head,
  the decoder's last EOS state for PLBART and T5): what the official GLUE script fine-tunes.
- ``pair``: CodeT5's ``CloneModel``: each sequence encoded alone (first token, or the decoder's
  last EOS state for encoder-decoders), the two vectors concatenated, then dense-tanh-linear.
- ``causal_lm``: ``*ForCausalLM`` logits.

The library model is ``.net``, which is what :func:`gfsa.patch` receives.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from gfsa.utils.errors import ConfigError
from gfsa.zoo.hub import is_local, pretrained_error, use_hub

INITS = ("pretrained", "random")
HEADS = ("sequence", "pair", "causal_lm")


class SequenceClassifier(nn.Module):
    """Batch (token ids, masks) → class logits of a ``*ForSequenceClassification`` model."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, **inputs):
        return self.net(**inputs).logits


class PairClassifier(nn.Module):
    """Two sequences per example, encoded separately and classified together (CodeT5's CloneModel).

    Encoder-only models give their first token's state; encoder-decoders the decoder's state at
    the last EOS of the input (the decoder reads the input shifted right, as in T5's and BART's
    ``*ForSequenceClassification``).
    """

    def __init__(self, net: nn.Module, num_classes: int):
        super().__init__()
        self.net = net
        hidden = net.config.hidden_size
        self.dense = nn.Linear(2 * hidden, hidden)
        self.out_proj = nn.Linear(hidden, num_classes)

    def encode(self, input_ids, attention_mask):
        config = self.net.config
        if not config.is_encoder_decoder:
            return self.net(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
        extra = {}
        if hasattr(self.net, "_shift_right"):  # T5 does not derive decoder inputs itself
            extra["decoder_input_ids"] = self.net._shift_right(input_ids)
        hidden = self.net(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra
        ).last_hidden_state
        eos = input_ids.eq(config.eos_token_id)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        last = (eos * positions).argmax(-1)
        return hidden[torch.arange(len(hidden), device=hidden.device), last]

    def forward(self, input_ids, attention_mask):
        batch = input_ids.shape[0]
        vec = self.encode(input_ids.flatten(0, 1), attention_mask.flatten(0, 1))
        x = torch.tanh(self.dense(vec.reshape(batch, -1)))
        return self.out_proj(x)


class CausalLM(nn.Module):
    """Token ids → next-token logits; no KV cache (GFSA needs the whole sequence at once)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, input_ids, attention_mask=None):
        return self.net(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def _max_positions(config) -> int | None:
    n = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if n and config.model_type == "roberta":  # positions start after the padding index
        n -= config.pad_token_id + 1
    return n


def check_compatible(tokenizer, net: nn.Module, task, source: str) -> None:
    """Tokenizer and model must agree: vocabulary size, pad and EOS ids, sequence length."""
    config = net.config
    n_emb = net.get_input_embeddings().num_embeddings
    tok_name = getattr(tokenizer, "name_or_path", "") or "task.tokenizer"
    fix = "load both from one checkpoint (backbone.pretrained, which task.tokenizer follows)"
    if len(tokenizer) > n_emb:
        raise ConfigError(
            f"tokenizer {tok_name} has {len(tokenizer)} tokens but backbone.pretrained={source} embeds only {n_emb}: {fix}"
        )
    if task.head != "causal_lm":
        if tokenizer.pad_token_id is None:
            raise ConfigError(f"tokenizer {tok_name} has no pad token, which batching {task.head} inputs needs: {fix}")
        if config.pad_token_id is not None and tokenizer.pad_token_id != config.pad_token_id:
            raise ConfigError(
                f"tokenizer {tok_name} pads with id {tokenizer.pad_token_id} but backbone.pretrained={source} "
                f"expects {config.pad_token_id}: {fix}"
            )
        if config.is_encoder_decoder and tokenizer.eos_token_id != config.eos_token_id:
            raise ConfigError(
                f"tokenizer {tok_name} ends sequences with id {tokenizer.eos_token_id} but backbone.pretrained={source} "
                f"classifies at EOS id {config.eos_token_id}: {fix}"
            )
    limit = _max_positions(config)
    if limit and task.max_length > limit:
        raise ConfigError(
            f"{task.length_option}={task.max_length} exceeds the {limit} positions of backbone.pretrained={source}: "
            f"lower {task.length_option}"
        )


def build(cfg, task) -> nn.Module:
    """The wrapper for ``task.head`` around the checkpoint ``backbone.pretrained``."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    if cfg["pretrained"] is None:
        raise ConfigError(
            f"backbone.pretrained is not set: backbone={cfg['name']} loads any transformers model, pass "
            "backbone.pretrained=<hub id or local dir written by save_pretrained>"
        )
    source = os.path.expanduser(str(cfg["pretrained"]))
    init = str(cfg["init"])
    if init not in INITS:
        raise ConfigError(f"backbone.init={init}: choose one of {', '.join(INITS)}")
    head = getattr(task, "head", None)
    if head not in HEADS:
        raise ConfigError(
            f"task {task.cfg.name} is not a text task: backbone {cfg.name} needs one of {', '.join(HEADS)}"
        )
    kwargs = {"num_labels": task.num_classes} if head == "sequence" else {}
    if not is_local(source):
        use_hub()
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as e:
        raise pretrained_error(source, "config", e) from None
    auto = {"sequence": AutoModelForSequenceClassification, "pair": AutoModel, "causal_lm": AutoModelForCausalLM}[head]
    try:
        net = auto.from_config(config) if init == "random" else auto.from_pretrained(source, config=config)
    except (OSError, ValueError) as e:
        raise pretrained_error(source, "model", e) from None
    check_compatible(task.tokenizer, net, task, source)
    if head == "sequence":
        return SequenceClassifier(net)
    if head == "pair":
        return PairClassifier(net, task.num_classes)
    return CausalLM(net)
