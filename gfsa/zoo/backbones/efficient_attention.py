"""Long Range Arena encoders for sequence classification, written here: Efficient Attention and softmax.

``efficient_attention``: a pre-LN Transformer encoder whose attention is Efficient Attention (Shen et al.,
2021), ``A = ρ_q(Q)·ρ_k(K)ᵀ`` computed as ``ρ_q(Q)·(ρ_k(K)ᵀ·V)`` in O(n·d²); GFSA runs on it through
:func:`gfsa.nn.attention.apply_gfsa_linear` (:func:`gfsa.nn.functional.gfsa_linear_attention`), still linear in n:
the paper's appendix (GFSA on a linear Transformer, LRA ListOps and Image). ``lra_transformer``: the same
encoder with softmax attention (SDPA; GFSA through :func:`gfsa.nn.attention.apply_gfsa`), the quadratic baseline
to compare with. Both define ``gfsa_attention_modules()``, so :func:`gfsa.patch` needs no adapter and an
unpatched module computes plain attention.

Defaults are a small LRA encoder (2 layers, width 64, 2 heads, MLP 128, learned positions, mean pooling
over real tokens); LRA's own ListOps Transformer is larger (6 layers, width 512, 8 heads, MLP 2048):
set ``backbone.*`` for that.
"""

from __future__ import annotations

import torch
from torch import nn

from gfsa.nn.attention import apply_gfsa, apply_gfsa_linear
from gfsa.utils.errors import ConfigError

ATTENTIONS = ("efficient", "softmax")
POOLS = ("mean", "cls")


class SelfAttention(nn.Module):
    """Multi-head self-attention, Efficient (linear) or softmax; GFSA comes from ``self.gfsa`` when patched."""

    def __init__(self, dim: int, num_heads: int, kind: str, attention_dropout: float):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"backbone.dim={dim} is not divisible by backbone.num_heads={num_heads}")
        self.num_heads, self.head_dim, self.kind = num_heads, dim // num_heads, kind
        self.attention_dropout = attention_dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``x`` (B, L, dim); ``keep`` (B, L) bool, True for real tokens."""
        B, L, C = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.kind == "efficient":
            out = apply_gfsa_linear(self, q, k, v, keep)
        else:
            dropout_p = self.attention_dropout if self.training else 0.0
            out = apply_gfsa(self, q, k, v, keep[:, None, None, :], False, None, dropout_p)
        return self.proj(out.transpose(1, 2).reshape(B, L, C))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_dim: int, kind: str, dropout: float, attention_dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads, kind, attention_dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), keep))
        return x + self.drop(self.mlp(self.norm2(x)))


class LRAEncoder(nn.Module):
    """Token ids → class logits; ``cls`` pooling prepends a learned token, ``mean`` averages real tokens."""

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        max_length: int,
        kind: str = "efficient",
        dim: int = 64,
        depth: int = 2,
        num_heads: int = 2,
        mlp_dim: int = 128,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        pool: str = "mean",
    ):
        super().__init__()
        if kind not in ATTENTIONS:
            raise ConfigError(f"backbone.attention={kind}: choose one of {', '.join(ATTENTIONS)}")
        if pool not in POOLS:
            raise ConfigError(f"backbone.pool={pool}: choose one of {', '.join(POOLS)}")
        self.pool = pool
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Embedding(max_length + (pool == "cls"), dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_dim, kind, dropout, attention_dropout) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.normal_(self.pos.weight, std=0.02)

    def gfsa_attention_modules(self) -> list[nn.Module]:
        return [block.attn for block in self.blocks]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        keep = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        x = self.embed(input_ids)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1)
            keep = torch.cat([keep.new_ones(len(x), 1), keep], dim=1)
        if x.shape[1] > self.pos.num_embeddings:
            raise ValueError(f"sequence of {x.shape[1]} tokens exceeds the {self.pos.num_embeddings} positions")
        x = self.drop(x + self.pos.weight[: x.shape[1]])
        for block in self.blocks:
            x = block(x, keep)
        x = self.norm(x)
        if self.cls is not None:
            return self.head(x[:, 0])
        weights = keep.unsqueeze(-1).to(x.dtype)
        return self.head((x * weights).sum(1) / weights.sum(1).clamp_min(1.0))


def _build(cfg, task, kind: str, attention_dropout: float) -> LRAEncoder:
    missing = [a for a in ("vocab_size", "max_length", "num_classes") if not hasattr(task, a)]
    if missing:
        raise ConfigError(
            f"backbone {cfg.name} reads token sequences: task {task.cfg.name} has no {', '.join(missing)} (try task=listops)"
        )
    return LRAEncoder(
        task.vocab_size,
        task.num_classes,
        task.max_length,
        kind=kind,
        dim=int(cfg.dim),
        depth=int(cfg.depth),
        num_heads=int(cfg.num_heads),
        mlp_dim=int(cfg.mlp_dim),
        dropout=float(cfg.dropout),
        attention_dropout=attention_dropout,
        pool=str(cfg.pool),
    )


def build(cfg, task) -> LRAEncoder:
    """``backbone=efficient_attention``: Efficient (linear) attention. It forms no attention matrix, so
    it has no attention dropout (and its config no ``attention_dropout``)."""
    return _build(cfg, task, "efficient", attention_dropout=0.0)


def build_softmax(cfg, task) -> LRAEncoder:
    """``backbone=lra_transformer``: the same encoder with softmax attention."""
    return _build(cfg, task, "softmax", attention_dropout=float(cfg.attention_dropout))
