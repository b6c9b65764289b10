"""ASR encoder-decoders with a joint CTC + attention loss; GFSA goes into the encoder's self-attention only.

``asr_transformer``: transformers' Speech2Text (``Speech2TextForConditionalGeneration`` from a
``Speech2TextConfig``: conv subsampling, pre-LN encoder and decoder). Its ``.net`` is the encoder
sub-model, a PreTrainedModel, so :func:`gfsa.patch` patches the encoder layers through the HF adapter
and the decoder keeps plain attention.

``branchformer``: Branchformer (Peng et al. 2022) written here after SpeechBrain's, which the official
GFSA code extends: per layer a relative-position self-attention branch (SpeechBrain's ``RelPosMHAXL``
with its symmetric position table; the position term is the additive mask that
:func:`gfsa.nn.attention.apply_gfsa` filters with) and a convolutional gating MLP branch (cgMLP), merged by
concatenation and a linear layer. Front-end: Speech2Text's conv subsampler; decoder: Speech2Text's
decoder (both differ from SpeechBrain's: docs/graph_speech.md). ``.net`` is the in-repo encoder
(``gfsa_attention_modules``).

Both share the CTC head, the loss (CTC weight, label smoothing) and the decoding: beam search over
the attention decoder, optionally fused with a language model (shallow fusion, SpeechBrain's ``lm_weight`` and
temperatures), the finished hypotheses rescored with CTC (``ctc_weight``), length-normalised.

``transformer_lm``: the language model for that fusion, SpeechBrain's LibriSpeech TransformerLM size (12 layers,
d 768, 12 heads, FFN 3072, GELU, post-LN) as transformers' OpenAI-GPT causal LM (learned positions where
SpeechBrain's are sinusoidal), trained by the suite on ``task=librispeech_lm``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Speech2TextConfig, Speech2TextForConditionalGeneration
from transformers.models.speech_to_text.modeling_speech_to_text import Conv1dSubsampler, Speech2TextDecoder

from gfsa.nn.attention import apply_gfsa
from gfsa.utils.errors import ConfigError
from gfsa.zoo.formats import BOS, EOS, PAD


class JointCTCAttentionASR(nn.Module):
    """Loss and decoding shared by the backbones; subclasses define ``encode`` and ``decoder_logits``.

    ``encode(features, feature_mask) -> (hidden (B, T', d), mask (B, T') bool)`` and
    ``decoder_logits(tokens (B, L), hidden, mask) -> (B, L, vocab)``.
    """

    def __init__(self, d_model: int, vocab_size: int, ctc_weight: float, label_smoothing: float):
        super().__init__()
        self.ctc_head = nn.Linear(d_model, vocab_size)
        self.ctc_weight = ctc_weight
        self.label_smoothing = label_smoothing

    def forward(self, features: torch.Tensor, feature_mask: torch.Tensor, tokens: torch.Tensor) -> dict:
        """Joint loss ``w·CTC + (1−w)·CE`` on targets ``tokens`` (B, L), 0-padded."""
        hidden, mask = self.encode(features, feature_mask)
        lengths = (tokens != PAD).sum(-1)
        ctc_logp = self.ctc_head(hidden).float().log_softmax(-1)
        ctc = F.ctc_loss(ctc_logp.transpose(0, 1), tokens, mask.sum(-1), lengths, blank=PAD, zero_infinity=True)
        B = tokens.shape[0]
        dec_in = torch.cat([tokens.new_full((B, 1), BOS), tokens], dim=1)
        target = torch.cat([tokens, tokens.new_full((B, 1), PAD)], dim=1)
        target[torch.arange(B), lengths] = EOS
        target = target.masked_fill(target == PAD, -100)
        logits = self.decoder_logits(dec_in, hidden, mask).float()
        att = F.cross_entropy(logits.transpose(1, 2), target, label_smoothing=self.label_smoothing)
        loss = self.ctc_weight * ctc + (1 - self.ctc_weight) * att
        real = target != -100  # teacher-forced token accuracy, </s> included (SpeechBrain's ACC)
        tokens = real.sum()
        acc = ((logits.argmax(-1) == target) & real).sum() / tokens.clamp(min=1)
        return {"loss": loss, "ctc_loss": ctc.detach(), "att_loss": att.detach(), "acc": acc.detach(), "tokens": tokens}

    @torch.no_grad()
    def decode(
        self,
        features: torch.Tensor,
        feature_mask: torch.Tensor,
        beam_size: int = 1,
        ctc_weight: float = 0.0,
        max_len_ratio: float = 1.0,
        lm: nn.Module | None = None,
        lm_weight: float = 0.0,
        temperature: float = 1.0,
        lm_temperature: float = 1.0,
        ranked: bool = False,
    ) -> list:
        """Token ids per utterance: beam search (``beam_size=1``: greedy) over the attention decoder, at most
        ``max_len_ratio`` × encoder frames long. The beam ranks ``(1−ctc_weight)·log p_att + lm_weight·log p_lm``
        (shallow fusion with ``lm``, a causal LM over the same tokens; log-softmax of logits / temperature, as
        SpeechBrain); the finished hypotheses are scored ``((1−ctc_weight)·log p_att + ctc_weight·log p_ctc +
        lm_weight·log p_lm) / (length + 1)`` (without CTC when it can emit none of them). ``ranked``: every
        finished hypothesis with its score, best first, instead of the best one's tokens."""
        hidden, mask = self.encode(features, feature_mask)
        # the beam's ranking, divided by (1 − ctc_weight): plain attention scores when no LM is fused
        fusion = (lm_weight / (1 - ctc_weight) if ctc_weight < 1 else lm_weight) if lm is not None else 0.0
        hyps = self._beam_search(hidden, mask, beam_size, max_len_ratio, lm, fusion, temperature, lm_temperature)
        ctc_logp = self.ctc_head(hidden).float().log_softmax(-1) if ctc_weight > 0 else None
        out = []
        for b, cands in enumerate(hyps):
            att = torch.tensor([a for _, a, _ in cands], device=hidden.device)
            lm_score = torch.tensor([s for _, _, s in cands], device=hidden.device)
            score = att + fusion * lm_score if fusion else att
            if ctc_logp is not None:
                lengths = torch.tensor([len(t) for t, _, _ in cands], device=hidden.device)
                targets = torch.zeros(len(cands), max(1, int(lengths.max())), dtype=torch.long, device=hidden.device)
                for i, (t, _, _) in enumerate(cands):
                    targets[i, : len(t)] = torch.tensor(t, dtype=torch.long)
                lp = ctc_logp[b : b + 1, : int(mask[b].sum())].expand(len(cands), -1, -1).transpose(0, 1)
                frames = torch.full_like(lengths, lp.shape[0])
                ctc = -F.ctc_loss(lp, targets, frames, lengths, blank=PAD, reduction="none")
                if torch.isfinite(ctc).any():  # CTC cannot emit more tokens than frames: those get −inf
                    score = (1 - ctc_weight) * att + ctc_weight * ctc
                    if fusion:
                        score = score + lm_weight * lm_score
            score = score / torch.tensor([len(t) + 1 for t, _, _ in cands], device=hidden.device)
            if ranked:
                order = score.argsort(descending=True).tolist()
                out.append([(cands[i][0], float(score[i])) for i in order])
            else:
                out.append(cands[int(score.argmax())][0])
        return out

    @torch.no_grad()
    def _beam_search(
        self,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        K: int,
        ratio: float,
        lm: nn.Module | None = None,
        fusion: float = 0.0,
        temperature: float = 1.0,
        lm_temperature: float = 1.0,
    ) -> list[list]:
        """Finished hypotheses per utterance as (tokens without <s>/</s>, summed attention log-probability,
        summed LM log-probability), ranked by attention + ``fusion`` × LM."""
        B = hidden.shape[0]
        max_len = (mask.sum(-1).float() * ratio).ceil().long().clamp(min=1)
        mem, mem_mask = hidden.repeat_interleave(K, 0), mask.repeat_interleave(K, 0)
        seqs = torch.full((B * K, 1), BOS, dtype=torch.long, device=hidden.device)
        att_sum = torch.full((B, K), float("-inf"), device=hidden.device)
        att_sum[:, 0] = 0.0  # one live hypothesis to start from
        lm_sum = torch.zeros(B, K, device=hidden.device)
        lm_positions = getattr(getattr(lm, "config", None), "n_positions", None) if lm is not None else None
        finished: list[list] = [[] for _ in range(B)]
        done = torch.zeros(B, dtype=torch.bool, device=hidden.device)
        for t in range(int(max_len.max()) + 1):  # t tokens so far; at max_len only </s> may follow
            logits = self.decoder_logits(seqs, mem, mem_mask)[:, -1].float()
            logp = (logits / temperature if temperature != 1 else logits).log_softmax(-1)
            V = logp.shape[-1]
            logp[:, [PAD, BOS]] = float("-inf")
            last = (t >= max_len).repeat_interleave(K)
            logp[last] = torch.where(torch.arange(V, device=logp.device) == EOS, logp[last], float("-inf"))
            cand_att = (att_sum.view(-1, 1) + logp).view(B, K * V)
            cand = cand_att
            if fusion:
                context = seqs[:, -lm_positions:] if lm_positions else seqs
                lm_logp = (lm(context)[:, -1].float() / lm_temperature).log_softmax(-1)
                cand_lm = (lm_sum.view(-1, 1) + lm_logp).view(B, K * V)
                cand = cand_att + fusion * cand_lm
            top, idx = cand.topk(min(2 * K, K * V), dim=-1)
            top_att = cand_att.gather(1, idx)
            top_lm = cand_lm.gather(1, idx) if fusion else torch.zeros_like(top)
            src, tok = idx // V, idx % V
            is_eos = (tok == EOS) & torch.isfinite(top)
            ended = is_eos & (torch.arange(top.shape[1], device=top.device) < K) & ~done[:, None]
            for b, r in ended.nonzero().tolist():
                finished[b].append((seqs[b * K + src[b, r], 1:].tolist(), float(top_att[b, r]), float(top_lm[b, r])))
            live, pos = top.masked_fill(is_eos, float("-inf")).topk(K, dim=-1)
            rows = (torch.arange(B, device=top.device)[:, None] * K + src.gather(1, pos)).view(-1)
            seqs = torch.cat([seqs[rows], tok.gather(1, pos).view(-1, 1)], dim=1)
            done |= torch.tensor([len(f) >= K for f in finished], device=done.device) | ~torch.isfinite(live).any(-1)
            att_sum = top_att.gather(1, pos).masked_fill(is_eos.gather(1, pos) | done[:, None], float("-inf"))
            lm_sum = top_lm.gather(1, pos)
            if bool(done.all()):
                break
        return [f or [(seqs[b * K, 1:].tolist(), 0.0, 0.0)] for b, f in enumerate(finished)]


def _valid_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


class TransformerASR(JointCTCAttentionASR):
    """Speech2Text encoder-decoder (``.s2t``); ``.net`` is its encoder, the GFSA patch target."""

    def __init__(self, config: Speech2TextConfig, ctc_weight: float, label_smoothing: float):
        super().__init__(config.d_model, config.vocab_size, ctc_weight, label_smoothing)
        self.s2t = Speech2TextForConditionalGeneration(config)

    @property
    def net(self) -> nn.Module:
        return self.s2t.model.encoder

    def encode(self, features: torch.Tensor, feature_mask: torch.Tensor):
        hidden = self.net(input_features=features, attention_mask=feature_mask.long()).last_hidden_state
        lengths = self.net._get_feat_extract_output_lengths(feature_mask.sum(-1))
        return hidden, _valid_mask(lengths, hidden.shape[1])

    def decoder_logits(self, tokens: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.s2t.model.decoder(
            input_ids=tokens, encoder_hidden_states=hidden, encoder_attention_mask=mask.long(), use_cache=False
        )
        return self.s2t.lm_head(out.last_hidden_state)


class RelPositionAttention(nn.Module):
    """SpeechBrain's ``RelPosMHAXL`` (the attention of the official GFSA Branchformer) as SDPA:
    ``softmax(((q+u)·kᵀ + (q+v)·pᵀ)/√d_model)`` = SDPA(q+u, k, v, scale=1/√d_model) with the position term
    as additive mask. As SpeechBrain: the scale is 1/√d_model (not 1/√head_dim), q/k/v have no bias (its
    packed ``in_proj_weight``), attention dropout acts on the probabilities (after the GFSA filter)."""

    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, d_model // num_heads
        self.scale = d_model**-0.5  # SpeechBrain: self.scale = 1 / math.sqrt(self.embed_dim)
        self.linear_q = nn.Linear(d_model, d_model, bias=False)
        self.linear_k = nn.Linear(d_model, d_model, bias=False)
        self.linear_v = nn.Linear(d_model, d_model, bias=False)
        self.linear_pos = nn.Linear(d_model, d_model, bias=False)
        self.linear_out = nn.Linear(d_model, d_model)
        self.pos_bias_u = nn.Parameter(torch.zeros(num_heads, self.head_dim))
        self.pos_bias_v = nn.Parameter(torch.zeros(num_heads, self.head_dim))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``x`` (B, T, d), ``pos`` the (2T−1, d) table of :func:`relative_positions`, ``valid`` (B, T) real frames."""
        B, T, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, -1, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.linear_q(x)), heads(self.linear_k(x)), heads(self.linear_v(x))
        p = self.linear_pos(pos).view(-1, self.num_heads, self.head_dim).transpose(0, 1)  # (H, 2T−1, d)
        bd = (q + self.pos_bias_v[:, None]) @ p.transpose(-1, -2)  # (B, H, T, 2T−1)
        # row (T−1) − i + j of the table is distance i − j: SpeechBrain's rel_shift, as a gather
        rel = (T - 1) - torch.arange(T, device=x.device)[:, None] + torch.arange(T, device=x.device)[None, :]
        bias = bd.gather(-1, rel.expand(B, self.num_heads, T, T)) * self.scale
        bias = bias.masked_fill(~valid[:, None, None, :], float("-inf"))
        out = apply_gfsa(
            self,
            q + self.pos_bias_u[:, None],
            k,
            v,
            bias,
            scale=self.scale,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.linear_out(out.transpose(1, 2).reshape(B, T, -1))


POS_ENCODINGS = ("symmetric", "signed")


def relative_positions(T: int, d_model: int, device, dtype, encoding: str = "symmetric") -> torch.Tensor:
    """Sinusoidal embeddings of the relative distances r = T−1, …, 0, …, −(T−1) (query − key): (2T−1, d_model),
    ``[sin(s·ω₀), cos(r·ω₀), sin(s·ω₁), …]`` with ω_m = 10000^(−2m/d).

    ``symmetric``: s = |r|, SpeechBrain's ``RelPosEncXL`` as every SpeechBrain release and the GFSA code
    compute it (``pe_future[:, 0::2] = sinusoids``: past and future distances get the same embedding);
    ``signed``: s = r, Transformer-XL's. Float32 as SpeechBrain, float64 for float64 inputs."""
    work = torch.float64 if dtype == torch.float64 else torch.float32
    r = torch.arange(T - 1, -T, -1, device=device, dtype=work)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, device=device, dtype=work) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(2 * T - 1, d_model, device=device, dtype=work)
    pe[:, 0::2] = torch.sin((r.abs() if encoding == "symmetric" else r) * freq)
    pe[:, 1::2] = torch.cos(r * freq)
    return pe.to(dtype)


class ConvolutionalGatingMLP(nn.Module):
    """cgMLP (SpeechBrain's ``ConvolutionBranch``): Linear+GELU up to ``units``, half gated by a depthwise
    convolution over time (CSGU: LayerNorm, conv, dropout), down. As SpeechBrain (and ESPnet) the padding
    frames are not masked, and the convolution pads by reflection (SpeechBrain's ``Conv1d`` default;
    zeros when the sequence is shorter than the kernel's half-width, where reflection is undefined)."""

    def __init__(self, d_model: int, units: int, kernel: int, dropout: float):
        super().__init__()
        self.channel_proj1 = nn.Sequential(nn.Linear(d_model, units), nn.GELU())
        self.norm = nn.LayerNorm(units // 2)
        self.conv = nn.Conv1d(units // 2, units // 2, kernel, groups=units // 2)
        self.pad = (kernel - 1) // 2
        nn.init.normal_(self.conv.weight, std=1e-6)  # the gate starts as identity (ESPnet's init)
        nn.init.ones_(self.conv.bias)
        self.dropout = nn.Dropout(dropout)
        self.channel_proj2 = nn.Linear(units // 2, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual, gate = self.channel_proj1(x).chunk(2, dim=-1)
        gate = self.norm(gate).transpose(1, 2)
        mode = "reflect" if gate.shape[-1] > self.pad else "constant"
        gate = self.conv(F.pad(gate, (self.pad, self.pad), mode=mode)).transpose(1, 2)
        return self.channel_proj2(self.dropout(residual * gate))


class BranchformerLayer(nn.Module):
    """x + merge([attention(LN x), cgMLP(LN x)]) (concatenation merge; SpeechBrain's layer has no output norm)."""

    def __init__(self, d_model: int, num_heads: int, units: int, kernel: int, dropout: float, attention_dropout: float):
        super().__init__()
        self.norm_mha = nn.LayerNorm(d_model)
        self.attn = RelPositionAttention(d_model, num_heads, attention_dropout)
        self.norm_mlp = nn.LayerNorm(d_model)
        self.cgmlp = ConvolutionalGatingMLP(d_model, units, kernel, dropout)
        self.merge_proj = nn.Linear(2 * d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        a = self.dropout(self.attn(self.norm_mha(x), pos, valid))
        m = self.dropout(self.cgmlp(self.norm_mlp(x)))
        return x + self.dropout(self.merge_proj(torch.cat([a, m], dim=-1)))


class BranchformerEncoder(nn.Module):
    """Conv subsampling (×4) and dropout, ``num_layers`` Branchformer layers, final LayerNorm (eps 1e-6).
    As SpeechBrain's encoder: the front-end output is not scaled by √d and the position table has no dropout."""

    def __init__(self, config: Speech2TextConfig, num_layers: int, units: int, kernel: int, pos_encoding: str):
        super().__init__()
        d = config.d_model
        self.d_model = d
        self.pos_encoding = pos_encoding
        self.num_conv_layers = config.num_conv_layers
        self.subsample = Conv1dSubsampler(config)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            BranchformerLayer(
                d, config.encoder_attention_heads, units, kernel, config.dropout, config.attention_dropout
            )
            for _ in range(num_layers)
        )
        self.after_norm = nn.LayerNorm(d, eps=1e-6)

    def gfsa_attention_modules(self) -> list[nn.Module]:
        return [layer.attn for layer in self.layers]

    def forward(self, features: torch.Tensor, feature_mask: torch.Tensor):
        x = self.dropout(self.subsample(features))
        lengths = feature_mask.sum(-1)
        for _ in range(self.num_conv_layers):  # stride 2, padding k//2 per conv layer (odd kernels)
            lengths = (lengths - 1) // 2 + 1
        valid = _valid_mask(lengths, x.shape[1])
        pos = relative_positions(x.shape[1], self.d_model, x.device, x.dtype, self.pos_encoding)
        for layer in self.layers:
            x = layer(x, pos, valid)
        return self.after_norm(x), valid


class BranchformerASR(JointCTCAttentionASR):
    """Branchformer encoder (``.net``) + Speech2Text decoder with a tied output layer."""

    def __init__(
        self,
        config: Speech2TextConfig,
        num_layers: int,
        units: int,
        kernel: int,
        ctc_weight: float,
        label_smoothing: float,
        pos_encoding: str = "symmetric",
    ):
        super().__init__(config.d_model, config.vocab_size, ctc_weight, label_smoothing)
        self.net = BranchformerEncoder(config, num_layers, units, kernel, pos_encoding)
        self.decoder = Speech2TextDecoder(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.decoder.embed_tokens.weight

    def encode(self, features: torch.Tensor, feature_mask: torch.Tensor):
        return self.net(features, feature_mask)

    def decoder_logits(self, tokens: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.decoder(
            input_ids=tokens, encoder_hidden_states=hidden, encoder_attention_mask=mask.long(), use_cache=False
        )
        return self.lm_head(out.last_hidden_state)


def _config(cfg, task, encoder_layers: int) -> Speech2TextConfig:
    if int(cfg.d_model) % int(cfg.attention_heads):
        raise ConfigError(
            f"backbone.d_model={cfg.d_model} is not divisible by backbone.attention_heads={cfg.attention_heads}"
        )
    return Speech2TextConfig(
        vocab_size=task.vocab_size,
        d_model=int(cfg.d_model),
        encoder_layers=encoder_layers,
        decoder_layers=int(cfg.decoder_layers),
        encoder_attention_heads=int(cfg.attention_heads),
        decoder_attention_heads=int(cfg.attention_heads),
        encoder_ffn_dim=int(cfg.ffn_dim),
        decoder_ffn_dim=int(cfg.ffn_dim),
        activation_function=str(cfg.activation),
        dropout=float(cfg.dropout),
        attention_dropout=float(cfg.attention_dropout),
        activation_dropout=float(cfg.dropout),
        num_conv_layers=len(cfg.conv_kernel_sizes),
        conv_kernel_sizes=list(cfg.conv_kernel_sizes),
        conv_channels=int(cfg.conv_channels),
        input_feat_per_channel=task.num_mel_bins,
        input_channels=1,
        max_source_positions=int(cfg.max_source_positions),
        max_target_positions=int(cfg.max_target_positions),
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        decoder_start_token_id=BOS,
    )


def build_transformer(cfg, task) -> TransformerASR:
    config = _config(cfg, task, int(cfg.encoder_layers))
    return TransformerASR(config, float(cfg.ctc_weight), float(cfg.label_smoothing))


def build_branchformer(cfg, task) -> BranchformerASR:
    if any(int(k) % 2 == 0 for k in cfg.conv_kernel_sizes):
        raise ConfigError(f"backbone.conv_kernel_sizes={list(cfg.conv_kernel_sizes)}: use odd kernel sizes")
    if cfg["pos_encoding"] not in POS_ENCODINGS:
        raise ConfigError(f"backbone.pos_encoding={cfg['pos_encoding']}: choose {' or '.join(POS_ENCODINGS)}")
    config = _config(cfg, task, 0)
    return BranchformerASR(
        config,
        int(cfg.encoder_layers),
        int(cfg.csgu_units),
        int(cfg.csgu_kernel),
        float(cfg.ctc_weight),
        float(cfg.label_smoothing),
        str(cfg["pos_encoding"]),
    )


class TransformerLM(nn.Module):
    """Token ids → next-token logits of an OpenAI-GPT causal LM (``.net``; its ``config`` bounds the context)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.config = net.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(input_ids=input_ids, attention_mask=attention_mask).logits


def build_lm(cfg, task) -> TransformerLM:
    from transformers import OpenAIGPTConfig, OpenAIGPTLMHeadModel

    if int(cfg.d_model) % int(cfg.heads):
        raise ConfigError(f"backbone.d_model={cfg.d_model} is not divisible by backbone.heads={cfg.heads}")
    p = float(cfg.dropout)
    config = OpenAIGPTConfig(
        vocab_size=int(task.vocab_size),
        n_positions=int(cfg.max_positions),
        n_embd=int(cfg.d_model),
        n_layer=int(cfg.layers),
        n_head=int(cfg.heads),
        afn="gelu",
        resid_pdrop=p,
        embd_pdrop=p,
        attn_pdrop=p,
    )
    return TransformerLM(OpenAIGPTLMHeadModel(config))


def load_language_model(source: str, tokenizer_digest: str, vocab_size: int) -> TransformerLM:
    """The LM of a finished ``task=librispeech_lm`` run (its run dir, or its ``checkpoints/last.ckpt``), in eval
    mode; a one-line ConfigError when it is not one or was trained with other tokens than this task's."""
    path = Path(source).expanduser()
    ckpt = path / "checkpoints" / "last.ckpt" if path.is_dir() else path
    run_dir = path if path.is_dir() else path.parent.parent
    record = run_dir / "result.json"
    fix = "pass the run dir of a finished python run.py preset=speech/transformer_lm run"
    if not record.is_file() or not ckpt.is_file():
        raise ConfigError(f"task.lm_checkpoint={source}: no result.json and checkpoints/last.ckpt there; {fix}")
    rec = json.loads(record.read_text())
    cfg = rec["config"]
    if cfg["task"]["type"] != "librispeech_lm" or cfg["backbone"]["type"] != "transformer_lm":
        raise ConfigError(f"task.lm_checkpoint={source}: a {cfg['task']['type']} run, not a language model; {fix}")
    data = rec["data"] if isinstance(rec.get("data"), dict) else {}  # the record's data report: its token digest
    if "tokenizer" not in data or data["tokenizer"] != tokenizer_digest:
        raise ConfigError(
            f"task.lm_checkpoint={source}: the LM was trained with other tokens than this task's; train it with the "
            "same task.train_splits, task.tokenizer and task.vocab_size"
        )
    from omegaconf import OmegaConf

    lm = build_lm(OmegaConf.create(cfg["backbone"]), SimpleNamespace(vocab_size=vocab_size))
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]  # the suite's own checkpoint
    lm.load_state_dict({k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")})
    return lm.eval().requires_grad_(False)
