"""The Branchformer attention equals SpeechBrain's RelPosMHAXL (the official GFSA speech code), checked in
float64 against an independent re-implementation of its formulas (tests/speechbrain_reference.py) that
evaluates every (query, key) pair from its distance instead of the table-and-shift trick."""

from __future__ import annotations

import pytest
import torch
from speechbrain_reference import rel_table, relpos_mha_reference

import gfsa
from gfsa.zoo.backbones.asr import BranchformerLayer, RelPositionAttention, relative_positions

E, H = 64, 8


class _Encoder(torch.nn.Module):
    """Just the attention modules, in the layout gfsa.patch expects of a native model."""

    def __init__(self, attn):
        super().__init__()
        self.attn = attn

    def gfsa_attention_modules(self):
        return [self.attn]


def _weights(attn: RelPositionAttention) -> dict:
    """The suite's parameters in SpeechBrain's layout: in_proj rows per head [q_h; k_h; v_h], no q/k/v bias."""
    d = E // H
    q, k, v = (lin.weight.reshape(H, d, E) for lin in (attn.linear_q, attn.linear_k, attn.linear_v))
    return {
        "in_proj_weight": torch.stack([q, k, v], dim=1).reshape(3 * E, E),
        "pos_bias_u": attn.pos_bias_u,
        "pos_bias_v": attn.pos_bias_v,
        "linear_pos_weight": attn.linear_pos.weight,
        "out_proj_weight": attn.linear_out.weight,
        "out_proj_bias": attn.linear_out.bias,
    }


@pytest.mark.parametrize("T", [13, 16])
@pytest.mark.parametrize("K", [None, 3])
def test_relpos_attention_equals_speechbrain_formulas_in_float64(T, K):
    torch.manual_seed(T)
    attn = RelPositionAttention(E, H, dropout=0.1).double().eval()
    for p in attn.parameters():  # SpeechBrain-like weight scale (xavier_normal), where the 1/√d_model scale matters
        torch.nn.init.normal_(p, std=(2.0 / (2 * E)) ** 0.5 * 2)
    assert all(lin.bias is None for lin in (attn.linear_q, attn.linear_k, attn.linear_v))
    beta = None
    if K is not None:
        gfsa.patch(_Encoder(attn), layers="all", K=K)
        beta = torch.randn(H, dtype=torch.float64)
        with torch.no_grad():
            attn.gfsa.wK.copy_(beta)
    x = torch.randn(2, T, E, dtype=torch.float64)
    valid = torch.ones(2, T, dtype=torch.bool)
    valid[1, T - 5 :] = False  # the second utterance has 5 padding frames
    pos = relative_positions(T, E, x.device, x.dtype)
    assert pos.shape == (2 * T - 1, E) and pos.dtype == torch.float64
    with torch.no_grad():
        ours = attn(x, pos, valid)
        ref = relpos_mha_reference(x, _weights(attn), H, ~valid, gfsa_beta=beta, gfsa_K=K or 3)
    assert ours.shape == ref.shape == (2, T, E)
    assert (ours - ref).abs().max().item() <= 1e-12
    # the scale is SpeechBrain's 1/√d_model: 1/√head_dim (what the suite had) is far off
    with torch.no_grad():
        other = relpos_mha_reference(
            x, _weights(attn), H, ~valid, scale=(E // H) ** -0.5, gfsa_beta=beta, gfsa_K=K or 3
        )
    assert (other - ref).abs().max().item() > 1e-3


def test_position_table_is_symmetric_as_speechbrain_and_signed_on_request():
    T = 7
    r = torch.arange(T - 1, -T, -1)  # row k ↔ distance T−1−k (query − key)
    sym = relative_positions(T, E, "cpu", torch.float64)
    assert torch.allclose(sym, rel_table(r, E, legacy_symmetric=True), atol=1e-15)
    assert torch.equal(sym[0], sym[-1])  # distance +6 and −6 embed alike
    signed = relative_positions(T, E, "cpu", torch.float64, "signed")
    assert torch.allclose(signed, rel_table(r, E, legacy_symmetric=False), atol=1e-15)
    assert not torch.allclose(signed[0], signed[-1])
    assert relative_positions(T, E, "cpu", torch.float32).dtype == torch.float32


def test_branchformer_layer_is_speechbrains_layout():
    """x + merge(attn, cgMLP) with no output LayerNorm; the cgMLP gate's depthwise convolution pads by
    reflection (SpeechBrain's Conv1d) and sees padding frames (no mask, as SpeechBrain and ESPnet)."""
    torch.manual_seed(0)
    layer = BranchformerLayer(E, H, units=32, kernel=5, dropout=0.0, attention_dropout=0.0).double().eval()
    torch.nn.init.normal_(layer.cgmlp.conv.weight)
    x = torch.randn(1, 9, E, dtype=torch.float64)
    valid = torch.ones(1, 9, dtype=torch.bool)
    pos = relative_positions(9, E, "cpu", torch.float64)
    m = layer.cgmlp
    residual, gate = m.channel_proj1(layer.norm_mlp(x)).chunk(2, -1)
    gate = torch.nn.functional.pad(m.norm(gate).transpose(1, 2), (2, 2), mode="reflect")
    gate = torch.nn.functional.conv1d(gate, m.conv.weight, m.conv.bias, groups=16).transpose(1, 2)
    cg = m.channel_proj2(residual * gate)
    expected = x + layer.merge_proj(torch.cat([layer.attn(layer.norm_mha(x), pos, valid), cg], -1))
    with torch.no_grad():
        assert (layer(x, pos, valid) - expected).abs().max().item() <= 1e-12
        # a padding frame's value changes the cgMLP output of real frames next to it (no mask)
        valid[0, 7:] = False
        y = x.clone()
        y[0, 8] += torch.randn(E, dtype=torch.float64)
        assert not torch.allclose(layer(x, pos, valid)[0, 6], layer(y, pos, valid)[0, 6])
