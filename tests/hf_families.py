"""Tiny random-init models of the transformers families GFSA is checked on, with matching inputs.

Every builder takes ``attn_implementation`` so that the same weights (seeded) can be built as
``eager`` (reference probabilities), ``sdpa`` (stock) and later patched. Sizes are tiny on purpose:
the checks run on a 2-core CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import transformers as tf

VOCAB = 100
HEADS = 4
B, L, VALID = 2, 10, 6  # batch, sequence length, real tokens of the padded row
DEC_L = 6
IMG = 32

DECODER = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": HEADS,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
    "vocab_size": VOCAB,
    "max_position_embeddings": 64,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
ENCODER = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": HEADS,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}
SEQ2SEQ = {
    "vocab_size": VOCAB,
    "d_model": 32,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": HEADS,
    "decoder_attention_heads": HEADS,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "decoder_start_token_id": 2,
}
VISION = {
    "image_size": IMG,
    "patch_size": 8,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": HEADS,
    "intermediate_size": 64,
    "num_channels": 3,
}


@dataclass
class Family:
    name: str
    build: Callable[[], tf.PreTrainedModel]  # builds from a config; attn implementation passed in
    kind: str  # "causal" (decoder-only LM), "encoder", "vision", "seq2seq", "speech2seq"
    pad_id: int = 0
    left_pad: bool = False
    generative: bool = False  # model.generate() with a KV cache is checked
    unsupported: str | None = None  # the interface keyword GFSA cannot honour (expected error)
    stock_attn: str = "sdpa"  # Gemma2 sets _supports_sdpa = False: its stock build is eager
    depth: tuple[str, ...] = ("num_hidden_layers",)  # the config keys of the layer count (build(layers=N))
    notes: dict = field(default_factory=dict)


def _family(model_cls, config_cls, base: dict, **extra):
    """A builder: the config ``base`` + ``extra`` (+ the sizes ``build`` passes), this attention implementation."""

    def build(attn="sdpa", **sizes):
        return model_cls._from_config(config_cls(**{**base, **extra, **sizes}), attn_implementation=attn)

    return build


def _decoder(model_cls, config_cls, **extra):
    return _family(model_cls, config_cls, DECODER, **extra)


def _encoder(model_cls, config_cls, **extra):
    return _family(model_cls, config_cls, ENCODER, **extra)


def _seq2seq(model_cls, config_cls, **extra):
    return _family(model_cls, config_cls, SEQ2SEQ, **extra)


_gpt2 = _family(
    tf.GPT2LMHeadModel,
    tf.GPT2Config,
    {"vocab_size": VOCAB, "n_embd": 32, "n_layer": 2, "n_head": HEADS, "n_positions": 64},
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
_albert = _encoder(
    tf.AlbertModel,
    tf.AlbertConfig,
    embedding_size=16,
    num_hidden_groups=1,
    inner_group_num=1,
    pad_token_id=0,
    bos_token_id=2,
    eos_token_id=3,
)
T5 = {"vocab_size": VOCAB, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2}
_t5 = _family(
    tf.T5Model,
    tf.T5Config,
    T5,
    num_heads=HEADS,
    relative_attention_num_buckets=8,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)
DISTILBERT = {"vocab_size": VOCAB, "dim": 32, "n_layers": 2, "n_heads": HEADS, "hidden_dim": 64}
_distilbert = _family(tf.DistilBertModel, tf.DistilBertConfig, DISTILBERT, max_position_embeddings=64, pad_token_id=0)
_vit = _family(tf.ViTModel, tf.ViTConfig, VISION)
_dinov2 = _family(tf.Dinov2Model, tf.Dinov2Config, VISION)


FEATS, FRAMES, VALID_FRAMES = 8, 16, 9


_s2t = _seq2seq(
    tf.Speech2TextModel,
    tf.Speech2TextConfig,
    max_source_positions=64,
    max_target_positions=64,
    input_feat_per_channel=FEATS,
    input_channels=1,
    num_conv_layers=2,
    conv_channels=16,
)


MEL, SRC = 8, 16  # Whisper: 8 mel bins, 16 encoder positions = 32 input frames


_whisper = _seq2seq(
    tf.WhisperModel,
    tf.WhisperConfig,
    num_mel_bins=MEL,
    max_source_positions=SRC,
    max_target_positions=32,
    decoder_start_token_id=3,
    suppress_tokens=None,
    begin_suppress_tokens=None,
)

_gpt_oss = _decoder(
    tf.GptOssForCausalLM,
    tf.GptOssConfig,
    head_dim=8,
    num_local_experts=2,
    num_experts_per_tok=1,
    sliding_window=4,
    layer_types=["sliding_attention", "full_attention"],
)


ENC_DEC = ("encoder_layers", "decoder_layers")
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family("llama", _decoder(tf.LlamaForCausalLM, tf.LlamaConfig), "causal", left_pad=True, generative=True),
        Family("qwen2", _decoder(tf.Qwen2ForCausalLM, tf.Qwen2Config), "causal", left_pad=True, generative=True),
        Family(
            "qwen3", _decoder(tf.Qwen3ForCausalLM, tf.Qwen3Config, head_dim=8), "causal", left_pad=True, generative=True
        ),
        # sliding_window=4 < L: every layer is a sliding-window layer (DynamicSlidingWindowLayer in the cache)
        Family(
            "mistral",
            _decoder(tf.MistralForCausalLM, tf.MistralConfig, sliding_window=4),
            "causal",
            left_pad=True,
            generative=True,
        ),
        # Gemma3 text: q/k norm, query_pre_attn_scalar scaling, alternating sliding/full layers, no softcap
        Family(
            "gemma3",
            _decoder(
                tf.Gemma3ForCausalLM,
                tf.Gemma3TextConfig,
                head_dim=8,
                sliding_window=4,
                layer_types=["sliding_attention", "full_attention"],
                query_pre_attn_scalar=8,
            ),
            "causal",
            left_pad=True,
            generative=True,
        ),
        Family("phi3", _decoder(tf.Phi3ForCausalLM, tf.Phi3Config), "causal", left_pad=True, generative=True),
        Family("gpt2", _gpt2, "causal", left_pad=True, generative=True, depth=("n_layer",)),
        # expected errors: logit soft-capping (Gemma2 default 50.0), attention sinks (GPT-OSS)
        Family(
            "gemma2",
            _decoder(tf.Gemma2ForCausalLM, tf.Gemma2Config, head_dim=8, sliding_window=4, query_pre_attn_scalar=8),
            "causal",
            left_pad=True,
            unsupported="softcap",
            stock_attn="eager",
        ),
        Family("gpt_oss", _gpt_oss, "causal", left_pad=True, unsupported="s_aux", stock_attn="eager"),
        Family("bert", _encoder(tf.BertModel, tf.BertConfig, pad_token_id=0), "encoder"),
        Family(
            "roberta",
            _encoder(tf.RobertaModel, tf.RobertaConfig, pad_token_id=1, bos_token_id=0, eos_token_id=2),
            "encoder",
            pad_id=1,
        ),
        Family("albert", _albert, "encoder"),
        Family("distilbert", _distilbert, "encoder", depth=("n_layers",)),
        Family("vit", _vit, "vision"),
        Family("dinov2", _dinov2, "vision"),
        Family("t5", _t5, "seq2seq", depth=("num_layers", "num_decoder_layers")),
        *(
            Family(name, _seq2seq(model, config, max_position_embeddings=64), "seq2seq", pad_id=1, depth=ENC_DEC)
            for name, model, config in (
                ("bart", tf.BartModel, tf.BartConfig),
                ("plbart", tf.PLBartModel, tf.PLBartConfig),
                ("mbart", tf.MBartModel, tf.MBartConfig),
            )
        ),
        # Speech2Text: _supports_sdpa = False
        Family("speech_to_text", _s2t, "speech2seq", pad_id=1, stock_attn="eager", depth=ENC_DEC),
        Family("whisper", _whisper, "speech2seq", pad_id=1, depth=ENC_DEC),
    ]
}


def build(
    name: str, attn: str | None = None, dtype=torch.float32, seed: int = 0, layers: int | None = None
) -> tf.PreTrainedModel:
    """The family's tiny model with seeded weights: same seed, same weights for every ``attn``
    (default: the family's stock implementation, sdpa for all but Gemma2 and Speech2Text). ``layers``:
    another depth (each stack of an encoder-decoder)."""
    fam = FAMILIES[name]
    torch.manual_seed(seed)
    model = fam.build(attn or fam.stock_attn, **({k: layers for k in fam.depth} if layers else {}))
    return model.to(dtype).eval()


def inputs(name: str, padded: bool = True, dtype=torch.float32, seed: int = 1) -> dict:
    """A batch of 2; with ``padded`` the second row has only VALID real tokens (frames)."""
    fam = FAMILIES[name]
    g = torch.Generator().manual_seed(seed)
    out = {}
    if fam.kind == "vision":
        return {"pixel_values": torch.randn(B, 3, IMG, IMG, generator=g, dtype=torch.float32).to(dtype)}
    if name == "whisper":
        # Whisper's encoder takes no attention mask (fixed 30 s windows): no padding
        out["input_features"] = torch.randn(B, MEL, 2 * SRC, generator=g).to(dtype)
    elif name == "speech_to_text":
        out["input_features"] = torch.randn(B, FRAMES, FEATS, generator=g).to(dtype)
        mask = torch.ones(B, FRAMES, dtype=torch.long)
        if padded:
            mask[1, VALID_FRAMES:] = 0
            out["input_features"][1, VALID_FRAMES:] = 0.0
        out["attention_mask"] = mask
    else:
        ids = torch.randint(3, VOCAB, (B, L), generator=g)
        mask = torch.ones(B, L, dtype=torch.long)
        if padded:
            if fam.left_pad:
                mask[1, : L - VALID] = 0
            else:
                mask[1, VALID:] = 0
            ids[1][mask[1] == 0] = fam.pad_id
        out["input_ids"], out["attention_mask"] = ids, mask
        if fam.left_pad:
            out["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    if fam.kind in ("seq2seq", "speech2seq"):
        out["decoder_input_ids"] = torch.randint(3, VOCAB, (B, DEC_L), generator=g)
    return out


def main_outputs(out) -> list[torch.Tensor]:
    """The tensors compared between two runs: logits / last hidden state (+ encoder output)."""
    main = out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state
    enc = getattr(out, "encoder_last_hidden_state", None)
    return [main] if enc is None else [main, enc]


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Max |a − b| over the pairs; NaN counts as infinitely wrong."""
    d = [(x.double() - y.double()).abs() for x, y in zip(a, b, strict=True)]
    return float("inf") if any(t.isnan().any() for t in d) else max(t.max().item() for t in d)
